"""Models loaded without weights (``load_model(spec, weights=False)``): sites and widths equal the loaded model's
for every family, and a remote capture of such a model runs end to end against an in-process NDIF stand-in that
holds the weights, with the hook backend's numbers on the loaded model."""

from __future__ import annotations

import io
import shutil

import pytest
import torch

import lamina
from lamina.capture import capture_reduced
from lamina.capture import reduce as R
from lamina.errors import LaminaError
from lamina.testing import ALL_TINY_TYPES, TINY_ARCHS, TINY_VARIANTS, is_masked, make_tiny_model

TEXTS = ["the cat sat on the mat and the dog ran off", "a b", "coffee is hot, coffee is good. the end of it",
         "one more short text"]
KEY = "ndif-test-key-77ab20"  # a fake API key
REPO = "org/tiny"  # the hub id the stand-in serves


def _without_weights(src, dst):
    """A copy of a saved model folder with its config and tokenizer files only."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dst


def _same_sites(weightless, loaded):
    from lamina.capture.backend_nnsight import _forward_order
    from lamina.capture.run import _Recorder

    assert weightless.weightless and not loaded.weightless
    assert all(p.is_meta for p in weightless.hf.parameters())  # no weight storage at all
    assert weightless.sites() == loaded.sites() and weightless.arch == loaded.arch
    assert weightless.site_widths() == loaded.site_widths()  # every site, without a real forward pass
    keys = list(_Recorder(loaded, loaded.sites(), None).groups)
    assert _forward_order(weightless, keys) == _forward_order(loaded, keys)  # the order nnsight reads them in


def test_weightless_sites_tiny_archs(tiny_paths, tiny_models, tmp_path):
    for arch in TINY_ARCHS:
        folder = _without_weights(tiny_paths[arch], tmp_path / arch)
        _same_sites(lamina.load_model(folder, weights=False), tiny_models[arch])


@pytest.mark.parametrize("arch", [t for t in (*ALL_TINY_TYPES, *TINY_VARIANTS) if t not in
                                  ("gpt2", "gpt_neo", "gpt_neox", "llama", "bert")])
def test_weightless_sites_every_type(arch, tokenizers, tmp_path):
    """The 33 supported model types and the layout variants (fused QKV layouts, MoE, post-norm OPT, ...)."""
    path = make_tiny_model(arch, tmp_path / "w", seed=1,
                           tokenizer=tokenizers["wordpiece" if is_masked(arch) else "bpe"])
    folder = _without_weights(path, tmp_path / "c")
    _same_sites(lamina.load_model(folder, weights=False), lamina.load_model(path))


def test_weightless_reads_no_weights(tiny_paths, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    folder = _without_weights(tiny_paths["llama"], tmp_path / "m")
    with pytest.raises(LaminaError, match="it has no weights"):
        lamina.load_model(folder)
    loaded = lamina.load_model(tiny_paths["llama"])

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_load))
    model = lamina.load_model(folder, weights=False)
    assert model.provenance["weights"] is False and model.device == torch.device("cpu")
    assert [t.ids for t in lamina.capture.tokenize(model, TEXTS)] == \
        [t.ids for t in lamina.capture.tokenize(loaded, TEXTS)]


def test_weightless_runs_nothing_locally(tiny_paths, tmp_path):
    model = lamina.load_model(_without_weights(tiny_paths["gpt2"], tmp_path / "m"), weights=False)
    sites = "blocks.0.hook_resid_post"
    calls = [lambda: lamina.capture(model, TEXTS, sites),
             lambda: lamina.capture(model, TEXTS, sites, backend="nnsight"),
             lambda: capture_reduced(model, TEXTS, {sites: R.Moments()}),
             lambda: capture_reduced(model, TEXTS, {sites: R.Moments()}, backend="nnsight")]
    for call in calls:
        with pytest.raises(LaminaError, match=r"loaded without weights \(weights=False\), so it cannot capture "
                                              r"locally; load it with weights or capture remotely") as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(LaminaError, match="cannot be checked locally"):
        model.check()
    with pytest.raises(LaminaError, match="device and device_map do not apply"):
        lamina.load_model(tiny_paths["gpt2"], weights=False, device_map="auto")


# -- the remote path against an NDIF stand-in that holds the weights ----------------------------------------

class _Server:
    """Stands in for NDIF: a model with weights (the client has none) and, per request, what the service does --
    the request serialised as nnsight's RemoteBackend sends it, deserialised against the server's own model with
    lamina's modules hidden (the server has no lamina), run there, and only its saved values sent back (through
    torch.save/torch.load, like the result download)."""

    def __init__(self, served):
        from lamina.capture import ndif

        self.wrapper = ndif.remote_wrapper(served)
        self.requests: list = []

    def __call__(self, client_wrapper, key):
        from nnsight.tracing.backend import Backend

        server = self

        class Request(Backend):
            def __call__(self, tracer):
                server.requests.append(client_wrapper.to_model_key())
                server.run(tracer)

        return Request()

    def run(self, tracer):
        import linecache

        from nnsight.intervention.backends.local import LocalSimulationBackend
        from nnsight.ndif import pull_env
        from nnsight.schema.request import RequestModel
        from nnsight.tracing.tracer import _saves, mark
        from nnsight.tracing.util import push

        pull_env()
        blob = RequestModel.serialize(tracer, compress=False)
        assert KEY.encode() not in blob
        filename = tracer.info.frame.f_code.co_filename
        line = linecache.cache.get(filename)  # deserialize registers the block's source under this name
        hiding = LocalSimulationBackend(self.wrapper)
        hidden = hiding._hide_local_modules()
        try:
            restored = RequestModel.deserialize(blob, self.wrapper._remoteable_persistent_objects())
        finally:
            hiding._restore(hidden)
            if line is None:
                linecache.cache.pop(filename, None)
            else:
                linecache.cache[filename] = line
        restored.execute(restored.info.code)
        saved = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in _saves()}
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        result = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=False)
        for value in result.values():
            mark(value)
        push(tracer.info.frame, result)


def _hub_folder(root, src):
    """An HF hub cache holding ``REPO``'s config and tokenizer files and no weights (what a laptop that once
    loaded ``weights=False`` online keeps)."""
    commit = "0" * 40
    repo = root / ("models--" + REPO.replace("/", "--"))
    _without_weights(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture
def ndif_standin(tiny_paths, tmp_path, monkeypatch):
    """``REPO`` in an offline HF cache without weights, an API key, and NDIF replaced by a :class:`_Server` for
    the tiny llama; returns ``(server, loaded model)``."""
    import huggingface_hub.constants
    import nnsight.modeling.huggingface as hf_wrapper

    from lamina.capture import ndif

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(_hub_folder(tmp_path / "hub",
                                                                                 tiny_paths["llama"])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    monkeypatch.setitem(hf_wrapper._ID_CACHE, REPO, REPO)  # the hub id resolves without the network
    served = lamina.load_model(tiny_paths["llama"])  # the weights, on the "server" only
    served.provenance.update(source="hub", id=REPO)  # what the service's model is named by
    server = _Server(served)
    monkeypatch.setattr(ndif, "check_service", lambda repo_id, key: None)  # tested in test_backend_nnsight
    monkeypatch.setattr(ndif, "request_backend", server)
    return server, served


def _equal(a, b):
    assert a.sites == b.sites
    for site in a.sites:
        # Bit-identical: the server runs the same modules and kernels on the same weights and padded batches.
        assert torch.equal(a[site], b[site]), site


def _reducers():
    return {"blocks.*.hook_resid_post": [R.Moments(), R.Covariance()], "blocks.0.attn.hook_v": R.TopK(3)}


def test_remote_capture_weightless(ndif_standin):
    server, served = ndif_standin
    model = lamina.load_model(REPO, weights=False)
    assert model.weightless and model.provenance["source"] == "hub" and model.provenance["id"] == REPO
    sites = "blocks.*.hook_resid_post,blocks.1.attn.hook_q,blocks.0.mlp.hook_post,logits"
    remote = lamina.capture(model, TEXTS, sites, batch_size=2, positions="index:1", backend="nnsight", remote=True)
    _equal(lamina.capture(served, TEXTS, sites, batch_size=2, positions="index:1"), remote)
    assert len(server.requests) == 2 and all(f'"repo_id": "{REPO}"' in k for k in server.requests)
    red = capture_reduced(model, TEXTS, _reducers(), batch_size=2, backend="nnsight", remote=True)
    ref = capture_reduced(served, TEXTS, _reducers(), batch_size=2)
    for key in ref:
        for x, y in zip(ref[key] if isinstance(ref[key], list) else [ref[key]],
                        red[key] if isinstance(red[key], list) else [red[key]]):
            sx, sy = x.state_dict(), y.state_dict()
            for name in sx:
                # Bit-identical: the same rows reach the same reducer code in the same order.
                assert torch.equal(torch.as_tensor(sx[name]), torch.as_tensor(sy[name])), (key, name)


def test_cli_remote_reads_no_weights(ndif_standin, tmp_path, capsys):
    from lamina.capture.activations import Activations
    from lamina.cli import main

    server, served = ndif_standin
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. coffee is hot.\n\nthe end of it", "utf-8")
    args = ["capture", REPO, "--text-file", str(text), "--sites", "blocks.*.hook_resid_post", "--quiet",
            "--split-paragraphs", "--positions", "index:2"]
    assert main(args + ["--out", str(tmp_path / "a"), "--backend", "nnsight", "--remote"]) == 0
    out = capsys.readouterr()
    assert "captured 2 rows" in out.out and KEY not in out.out + out.err
    assert len(server.requests) == 1
    got = Activations.load(tmp_path / "a")
    _equal(lamina.capture(served, ["the cat sat on the mat. coffee is hot.", "the end of it"],
                          "blocks.*.hook_resid_post", positions="index:2"), got)
    assert got.provenance["backend"] == "nnsight-remote" and got.provenance["model"]["weights"] is False
    # Without --remote the same command needs the weights, which the cache does not hold.
    assert main(args + ["--out", str(tmp_path / "b")]) == 2
    assert main(args + ["--out", str(tmp_path / "c"), "--backend", "nnsight", "--remote", "--device-map",
                        "auto"]) == 2
    assert "--remote runs the model on NDIF and loads no weights here" in capsys.readouterr().err


def test_study_runs_remotely_with_its_local_baseline(ndif_standin, tiny_paths, tmp_path, capsys, cache_dir):
    """`lamina run STUDY --model HUB_ID --backend nnsight --remote`: the study's captures run on the service, its
    random-init baseline here (from the config alone), and the report equals a local run's."""
    import json

    from lamina.cli import main

    server, served = ndif_standin
    assert main(["run", "qkv-layers", "--model", REPO, "--backend", "nnsight", "--remote",
                 "--out", str(tmp_path / "remote")]) == 0
    assert main(["run", "qkv-layers", "--model", str(tiny_paths["llama"]), "--out", str(tmp_path / "local")]) == 0
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    remote, local = (json.loads((tmp_path / k / "results.json").read_text()) for k in ("remote", "local"))
    assert server.requests  # the trained model's captures went to the service
    # Bit-identical rows give identical numbers; the baseline is the same seeded copy, built from the config.
    assert remote["results"] == local["results"] and remote["claims"] == local["claims"]
    assert remote["baseline"]["results"] == local["baseline"]["results"]
    provenance = json.loads((tmp_path / "remote" / "provenance.json").read_text())
    assert provenance["check"]["skipped"] and KEY not in json.dumps(provenance)
