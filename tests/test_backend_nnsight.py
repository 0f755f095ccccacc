"""The nnsight capture backend: parity with the hook backend (tiny models of every family, the bundled model),
isolation of the hook backend from nnsight's module patching, and the remote (NDIF) path up to the network
boundary (a serialised request run in-process by nnsight's LocalSimulationBackend; HTTP replaced)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("nnsight")

import lamina  # noqa: E402
from lamina.capture import ndif  # noqa: E402
from lamina.capture import reduce as R  # noqa: E402
from lamina.capture import capture_reduced  # noqa: E402
from lamina.errors import LaminaError  # noqa: E402

# Texts of different lengths: every batch of 2 is padded.
TEXTS = ["the cat sat on the mat and the dog ran off", "a b", "coffee is hot, coffee is good. the end of it",
         "one more short text"]
KEY = "ndif-test-key-4f1c9e"  # a fake API key: it must appear in no output


def _equal_acts(a, b):
    assert a.sites == b.sites
    for site in a.sites:
        # Bit-identical: both backends run the same modules with the same kernels and the same gather code.
        assert torch.equal(a[site], b[site]), site
    assert (a.rows.position == b.rows.position).all() and a.rows.token == b.rows.token


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_capture_parity_every_family(tiny, padding_side):
    hooks = lamina.capture(tiny, TEXTS, "*", batch_size=2, padding_side=padding_side)
    traced = lamina.capture(tiny, TEXTS, "*", batch_size=2, padding_side=padding_side, backend="nnsight")
    _equal_acts(hooks, traced)
    assert traced.provenance["backend"] == "nnsight" and "backend" not in hooks.provenance


def _reducers():
    return {"blocks.*.hook_resid_post": [R.Moments(), R.Covariance()], "blocks.0.attn.hook_v": R.TopK(3),
            ("blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"): R.Covariance()}


def _equal_states(a, b):
    assert list(a) == list(b)
    for key in a:
        ra, rb = (a[key] if isinstance(a[key], list) else [a[key]]), (b[key] if isinstance(b[key], list) else [b[key]])
        for x, y in zip(ra, rb):
            sx, sy = x.state_dict(), y.state_dict()
            assert sx.keys() == sy.keys()
            for name in sx:
                # Bit-identical: the reducers get the same rows in the same order (same kernels upstream).
                assert torch.equal(torch.as_tensor(sx[name]), torch.as_tensor(sy[name])), (key, name)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_capture_reduced_parity(tiny_models, arch):
    model = tiny_models[arch]
    hooks = capture_reduced(model, TEXTS, _reducers(), batch_size=2, positions="index:1")
    traced = capture_reduced(model, TEXTS, _reducers(), batch_size=2, positions="index:1",
                                    backend="nnsight")
    _equal_states(hooks, traced)


def test_hook_backend_unaffected(tiny_models):
    """nnsight patches the forward of every module it wraps: it gets a twin (shared weights), so the lamina
    model's modules and tokenizer are untouched and the hook backend gives the same numbers as before."""
    model = tiny_models["gpt-neox"]
    before = lamina.capture(model, TEXTS, "*", batch_size=2)
    side = model.tokenizer.padding_side
    lamina.capture(model, TEXTS, "*", batch_size=2, backend="nnsight")
    capture_reduced(model, TEXTS, _reducers_neox(), backend="nnsight")
    assert not any("forward" in vars(m) for m in model.hf.modules())  # no instance-level forward patch
    assert model.tokenizer.padding_side == side
    _equal_acts(before, lamina.capture(model, TEXTS, "*", batch_size=2))


def _reducers_neox():
    return {"blocks.*.hook_resid_post": R.Moments()}


def test_bad_backend_options(tiny_models):
    model = tiny_models["gpt2"]
    with pytest.raises(LaminaError, match="backend='torch' is not valid"):
        lamina.capture(model, TEXTS, "logits", backend="torch")
    with pytest.raises(LaminaError, match="pass backend='nnsight'"):
        lamina.capture(model, TEXTS, "logits", remote=True)


@pytest.mark.slow
def test_capture_parity_default_model():
    model = lamina.load_model("default")
    texts = TEXTS + ["Coffee, tea and water: the three drinks of the morning, in that order."]
    hooks = lamina.capture(model, texts, "*", batch_size=3)
    _equal_acts(hooks, lamina.capture(model, texts, "*", batch_size=3, backend="nnsight"))


def test_capture_parity_default_model_some_sites():
    # The bundled model (30 blocks), a padded batch, sites of several kinds including the first and last.
    model = lamina.load_model("default")
    sites = "blocks.0.hook_resid_pre,blocks.7.attn.hook_k,blocks.15.mlp.hook_post,blocks.29.hook_resid_post"
    hooks = lamina.capture(model, TEXTS[:3], sites, batch_size=3)
    _equal_acts(hooks, lamina.capture(model, TEXTS[:3], sites, batch_size=3, backend="nnsight"))
    red = {"blocks.3.hook_mlp_out": R.Covariance()}
    _equal_states(capture_reduced(model, TEXTS[:3], red, batch_size=3),
                  capture_reduced(model, TEXTS[:3], red, batch_size=3, backend="nnsight"))


# -- the remote path, up to the network boundary ------------------------------------------------------------

class _Response:
    def __init__(self, status: int, payload):
        self.status_code, self._payload = status, payload

    def json(self):
        return self._payload


def _status(*repo_ids, state="RUNNING"):
    return {"deployments": {r: {"repo_id": r, "application_state": state, "deployment_level": "HOT"}
                            for r in repo_ids}}


@pytest.fixture
def hub_model(tiny_models, monkeypatch):
    """A tiny model presented as the hub model ``org/tiny`` (its id resolved without the network)."""
    import nnsight.modeling.huggingface as hf_wrapper

    model = tiny_models["llama"]
    monkeypatch.setitem(model.provenance, "source", "hub")
    monkeypatch.setitem(model.provenance, "id", "org/tiny")
    monkeypatch.setitem(hf_wrapper._ID_CACHE, "org/tiny", "org/tiny")
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    return model


@pytest.fixture
def service(monkeypatch):
    """Replace NDIF's HTTP endpoints: ``service["/status"]`` etc. hold a response or an exception."""
    import httpx
    import nnsight

    answers = {"/status": _Response(200, _status("org/tiny", "meta-llama/Llama-3.1-8B")),
               "/env": _Response(200, {"packages": {"nnsight": nnsight.__version__}})}
    seen = []

    def fake_get(url, headers=None, timeout=None):
        seen.append((url, headers))
        answer = answers[url[url.rindex("/"):]]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(httpx, "get", fake_get)
    answers["seen"] = seen
    return answers


class _Recording:
    """Stands in for nnsight's RemoteBackend: builds the request exactly as it would (envelope + serialised
    block), records it, then runs it through nnsight's LocalSimulationBackend (deserialised with lamina's
    modules hidden, as on a server without lamina)."""

    requests: list = []

    def __init__(self, wrapper, key):
        from nnsight.intervention.backends.local import LocalSimulationBackend

        self.sim = LocalSimulationBackend(wrapper)
        self.model_key = wrapper.to_model_key()

    def __call__(self, tracer):
        from nnsight.schema.request import RequestModel

        blob = RequestModel.serialize(tracer, compress=False)
        _Recording.requests.append((RequestModel(model_key=self.model_key), blob))
        return self.sim(tracer)


def _simulated(monkeypatch):
    real = ndif.remote_passes

    def passes(model, recorder, order, **_):
        return real(model, recorder, order, backend_factory=_Recording)

    monkeypatch.setattr(ndif, "remote_passes", passes)
    _Recording.requests = []


def test_remote_request_built_and_run(hub_model, monkeypatch, capsys):
    _simulated(monkeypatch)
    sites = "blocks.*.hook_resid_post,blocks.1.attn.hook_q"
    hooks = lamina.capture(hub_model, TEXTS, sites, batch_size=2, positions="index:1")
    remote = lamina.capture(hub_model, TEXTS, sites, batch_size=2, positions="index:1", backend="nnsight",
                            remote=True)
    _equal_acts(hooks, remote)
    assert remote.provenance["backend"] == "nnsight-remote"
    assert len(_Recording.requests) == 2  # one request per batch
    for request, blob in _Recording.requests:
        assert request.model_key.endswith('"repo_id": "org/tiny", "revision": null, "task": "text-generation"}')
        assert KEY.encode() not in blob and KEY not in request.metadata()
    red = capture_reduced(hub_model, TEXTS, _reducers(), batch_size=2, positions="index:1",
                                 backend="nnsight", remote=True)
    _equal_states(capture_reduced(hub_model, TEXTS, _reducers(), batch_size=2, positions="index:1"), red)
    out = capsys.readouterr()
    assert KEY not in out.out + out.err and KEY not in repr(remote.provenance) + repr(red.provenance)


def test_remote_rows_only(hub_model, monkeypatch):
    """What comes back from a request is only the selected rows (and reducer states), not whole activations."""
    _simulated(monkeypatch)
    kept = []
    real = ndif._Rows.__call__
    monkeypatch.setattr(ndif._Rows, "__call__", lambda self, x, rows: (kept.append(tuple(x.shape)),
                                                                       real(self, x, rows)))
    lamina.capture(hub_model, TEXTS[:2], "blocks.0.hook_resid_post", batch_size=2, positions="index:1",
                   backend="nnsight", remote=True)
    assert kept == [(2, hub_model.d_model)]  # 2 selected rows of a batch padded to 11 tokens x 2 texts


def test_remote_missing_key(hub_model, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY")
    monkeypatch.setattr(ndif._config().API, "APIKEY", None)
    with pytest.raises(LaminaError, match="needs an NDIF API key.*export NDIF_API_KEY"):
        lamina.capture(hub_model, TEXTS, "logits", backend="nnsight", remote=True)


def test_remote_unreachable(hub_model, service):
    import httpx

    service["/status"] = httpx.ConnectError("connection refused")
    with pytest.raises(LaminaError, match="cannot be reached.*try again later") as err:
        lamina.capture(hub_model, TEXTS, "logits", backend="nnsight", remote=True)
    assert "\n" not in str(err.value) and KEY not in str(err.value)
    assert service["seen"][0][1] == {"ndif-api-key": KEY}  # the key goes in the header, nowhere else


def test_remote_model_not_hosted(hub_model, service):
    service["/status"] = _Response(200, _status("meta-llama/Llama-3.1-8B", "openai-community/gpt2"))
    with pytest.raises(LaminaError, match=r"does not host org/tiny \(running: meta-llama/Llama-3.1-8B, "
                                          r"openai-community/gpt2\); pick a hosted model"):
        lamina.capture(hub_model, TEXTS, "logits", backend="nnsight", remote=True)


def test_remote_version_mismatch(hub_model, service):
    service["/env"] = _Response(200, {"packages": {"nnsight": "0.9.2"}})
    with pytest.raises(LaminaError, match=r"NDIF runs nnsight 0.9.2 but this client has .*pip install "
                                          r"'nnsight==0.9.2'"):
        lamina.capture(hub_model, TEXTS, "logits", backend="nnsight", remote=True)


def test_remote_service_error_and_dropped_connection(hub_model, service, monkeypatch):
    """A job the service fails, or a websocket that cannot connect, each end in one line."""
    import websocket
    from nnsight.intervention.backends import remote as nn_remote

    def refused(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(websocket, "create_connection", refused)
    with pytest.raises(LaminaError, match="cannot be reached .ConnectionRefusedError."):
        lamina.capture(hub_model, TEXTS, "logits", backend="nnsight", remote=True)

    def failed(self, request, tracer):
        raise nn_remote.RemoteError("Model org/tiny ran out of memory\non the server")

    monkeypatch.setattr(nn_remote.RemoteBackend, "request", failed)
    with pytest.raises(LaminaError, match="NDIF could not run the request: Model org/tiny ran out of memory "
                                          "on the server") as err:
        lamina.capture(hub_model, TEXTS, "logits", backend="nnsight", remote=True)
    assert "\n" not in str(err.value)


def test_remote_needs_hub_model(tiny_models, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    with pytest.raises(LaminaError, match="named by its Hugging Face id"):
        lamina.capture(tiny_models["gpt2"], TEXTS, "logits", backend="nnsight", remote=True)


def test_cli_backend_options(tiny_paths, tmp_path, monkeypatch, capsys):
    from lamina.cli import main

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat", "utf-8")
    args = ["capture", str(tiny_paths["gpt2"]), "--text-file", str(text), "--sites", "blocks.0.hook_resid_post",
            "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a"), "--backend", "nnsight"]) == 0
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(ndif._config().API, "APIKEY", None)
    assert main(args + ["--out", str(tmp_path / "b"), "--backend", "nnsight", "--remote"]) == 2
    assert "error: --remote needs an NDIF API key" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "c"), "--remote"]) == 2
    assert "pass backend='nnsight'" in capsys.readouterr().err


def test_using_backend_sets_the_default(tiny_models, monkeypatch):
    """A study calls capture()/capture_reduced() with no backend: using_backend() chooses it for the block."""
    from lamina.capture import backend_nnsight

    model = tiny_models["gpt2"]
    used = []
    real = backend_nnsight.nnsight_passes
    monkeypatch.setattr(backend_nnsight, "nnsight_passes", lambda *a, **k: (used.append(k), real(*a, **k))[1])
    hooks = lamina.capture(model, TEXTS, "blocks.1.hook_mlp_out")
    assert used == []
    with backend_nnsight.using_backend("nnsight"):
        traced = lamina.capture(model, TEXTS, "blocks.1.hook_mlp_out")
        capture_reduced(model, TEXTS, {"blocks.0.hook_resid_post": R.Moments()})
        lamina.capture(model, TEXTS, "blocks.1.hook_mlp_out", backend="hooks")  # an explicit choice wins
    assert used == [{"remote": False}, {"remote": False}]
    _equal_acts(hooks, traced)
    with pytest.raises(LaminaError, match="backend='nnsight'"):
        with backend_nnsight.using_backend("hooks", remote=True):
            pass
