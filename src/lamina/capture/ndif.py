"""Remote capture on NDIF (the National Deep Inference Fabric) through nnsight's ``RemoteBackend``.

Each batch is one request: the trace body (read the sites in forward order, gather the selected rows, update
the reducers) travels as source with the recorder, and what comes back is only what the body saves -- the
selected rows of each site and the reducers' states -- never whole activations. lamina's own code travels by
value (``nnsight.register``), so the service needs nothing of lamina installed. The client needs no weights:
a model loaded with ``weights=False`` (config and tokenizer only, module tree on the meta device) names the
sites and the request, and NDIF's copy computes them.

Before the first request, one-line errors that say what to do replace the network's tracebacks:

- no API key: ``NDIF_API_KEY`` (or nnsight's config, ``nnsight login``) is read here and only here; it goes to
  nnsight's request headers and nowhere else (not into results, provenance or any message);
- the service cannot be reached (``GET /status``);
- the model is not hosted (not RUNNING in ``/status``'s deployments);
- the client's nnsight differs from the service's (``GET /env``; major.minor must match).
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch

from ..errors import LaminaError

__all__ = ["api_key", "check_service", "host", "hosted_models", "remote_passes", "remote_wrapper", "request_backend",
           "STATUS_TIMEOUT"]

#: Seconds to wait for NDIF's status and environment endpoints (connect, read) before calling it unreachable.
STATUS_TIMEOUT = (5.0, 30.0)

_SIGNUP = "get a key at https://login.ndif.us and run: export NDIF_API_KEY=..."


def _config():
    from nnsight import CONFIG

    return CONFIG


def host() -> str:
    """The NDIF API host (nnsight's ``CONFIG.API.HOST``, ``$NDIF_HOST`` overrides)."""
    return os.environ.get("NDIF_HOST") or _config().API.HOST


def api_key() -> str:
    """The NDIF API key from ``$NDIF_API_KEY`` or nnsight's config; never logged or stored by lamina.

    Raises:
        LaminaError: no key is set.
    """
    key = os.environ.get("NDIF_API_KEY") or _config().API.APIKEY
    if not key or not str(key).strip():
        raise LaminaError(f"--remote needs an NDIF API key and none is set; {_SIGNUP}")
    return str(key).strip()


def _get(path: str, key: str) -> dict:
    import httpx

    url = host().rstrip("/") + path
    try:
        response = httpx.get(url, headers={"ndif-api-key": key},
                             timeout=httpx.Timeout(STATUS_TIMEOUT[0], read=STATUS_TIMEOUT[1]))
    except httpx.HTTPError as exc:
        raise LaminaError(f"NDIF at {host()} cannot be reached ({type(exc).__name__}); check your network or "
                          "https://status.ndif.us and try again later (or set NDIF_HOST)") from None
    if response.status_code in (401, 403):
        raise LaminaError(f"NDIF refused the API key (HTTP {response.status_code}); check NDIF_API_KEY "
                          "(https://login.ndif.us)")
    if response.status_code >= 400:
        raise LaminaError(f"NDIF at {host()} answered {path} with HTTP {response.status_code}; try again later "
                          "(https://status.ndif.us)")
    try:
        return response.json()
    except ValueError:
        raise LaminaError(f"NDIF at {host()} answered {path} with something that is not JSON; check NDIF_HOST "
                          "points at the NDIF API") from None


def hosted_models(status: dict) -> list[str]:
    """Repo ids of the models NDIF's ``/status`` reports as RUNNING."""
    out = set()
    for name, value in (status.get("deployments") or {}).items():
        if value.get("application_state") == "RUNNING":
            out.add(value.get("repo_id") or name)
    return sorted(out)


def _minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split("+")[0].split(".")[:2])


def check_service(repo_id: str, key: str) -> None:
    """Raise a one-line LaminaError unless NDIF answers, runs ``repo_id`` and speaks this client's nnsight."""
    import nnsight

    hosted = hosted_models(_get("/status", key))
    if repo_id not in hosted:
        shown = ", ".join(hosted[:6]) + (" ..." if len(hosted) > 6 else "") if hosted else "none right now"
        raise LaminaError(f"NDIF does not host {repo_id} (running: {shown}); pick a hosted model or run it "
                          "locally without --remote")
    remote = (_get("/env", key).get("packages") or {}).get("nnsight")
    if remote and _minor(remote) != _minor(nnsight.__version__):
        raise LaminaError(f"NDIF runs nnsight {remote} but this client has {nnsight.__version__}; "
                          f"run: pip install 'nnsight=={remote}'")


def _hub_id(model) -> str:
    if model.provenance.get("source") != "hub":
        raise LaminaError(f"--remote runs a model NDIF hosts, named by its Hugging Face id (e.g. "
                          f"meta-llama/Llama-3.1-8B); {model.name} is a {model.provenance.get('source')} model")
    return model.provenance["id"]


def remote_wrapper(model):
    """nnsight's ``TransformersModel`` over a twin of ``model.hf`` (shared weights) and a copy of the
    tokenizer, keyed by the model's hub id: what a request names the server's model by. The twin of a weightless
    model stays on the meta device (its pipeline is built there, as nnsight's own meta models are)."""
    from nnsight.modeling.transformers import TransformersModel

    from .backend_nnsight import _quiet, _twin

    twin = _twin(model.hf)
    twin.name_or_path = _hub_id(model)
    placement = {"device": "meta"} if model.weightless else {}
    with _quiet():
        return TransformersModel(twin, tokenizer=copy.deepcopy(model.tokenizer), task="text-generation",
                                 **placement)


def request_backend(wrapper, key: str):
    """The nnsight ``RemoteBackend`` for a request: the model key, the host and the key (in a header only)."""
    from nnsight.intervention.backends.remote import RemoteBackend

    try:
        model_key = wrapper.to_model_key()
    except Exception as exc:  # the hub id is canonicalised through huggingface.co
        raise LaminaError(f"cannot resolve {wrapper.repo_id} on huggingface.co ({type(exc).__name__}); check the "
                          "id and your network") from None
    return RemoteBackend(model_key, host=host(), api_key=key, verbose=False)


class _Rows:
    """A sink keeping one site's selected rows of the current batch (what a remote capture sends back)."""

    def __init__(self, site: str, store: dict):
        self.site, self.store = site, store

    def __call__(self, x: torch.Tensor, rows) -> None:
        self.store[self.site] = x.clone()


def _remote_recorder(model, recorder, store: dict):
    """A recorder reading the same sites as ``recorder`` whose buffers are replaced by row-keeping sinks, so the
    request carries no host buffer and brings back only this batch's selected rows."""
    from .run import _Recorder

    names, sinks = [], {}
    for consumers in recorder.groups.values():
        for c in consumers:
            names.append(c.site)
            sinks[c.site] = c.sink if c.sink is not None else _Rows(c.site, store)
    return _Recorder(model, names, None, sinks=sinks)


def _reducers_of(recorder) -> list:
    return list(getattr(recorder, "reducers", ()))


@contextlib.contextmanager
def remote_passes(model, recorder, order, *, backend_factory=None):
    """Yield ``forward(ids, mask)``: one NDIF request per batch (see the module docstring).

    ``backend_factory(wrapper, key)`` builds the nnsight backend of a request (default:
    :func:`request_backend`); tests pass nnsight's ``LocalSimulationBackend`` to run the serialised request
    in-process.
    """
    import nnsight

    import lamina

    from .backend_nnsight import _envoys, _forward_kwargs, _visit

    key = api_key()
    repo_id = _hub_id(model)
    if backend_factory is None:
        check_service(repo_id, key)
        backend_factory = request_backend
    nnsight.register(lamina)  # lamina's reducers and recorder travel by value; NDIF needs no lamina install
    wrapper = remote_wrapper(model)
    store: dict = {}
    remote = _remote_recorder(model, recorder, store)
    envoys = _envoys(wrapper, order)
    reducers = _reducers_of(recorder)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> None:
        from nnsight.intervention.backends.remote import RemoteError

        remote.start_batch(recorder.flat_index, recorder.rows, recorder.identity)
        kwargs = _forward_kwargs(model, ids, mask)
        store.clear()
        try:
            with wrapper.trace(**kwargs, backend=backend_factory(wrapper, key)):
                _visit(envoys, remote, None)
                back = nnsight.save({"rows": store, "states": [r.state_dict() for r in reducers]})
        except RemoteError as exc:
            raise LaminaError(f"NDIF could not run the request: {_first_line(exc)}; check `lamina check` locally "
                              "and https://status.ndif.us") from None
        except OSError as exc:  # the websocket / connection failed mid-request
            raise LaminaError(f"NDIF at {host()} cannot be reached ({type(exc).__name__}); check your network "
                              "and try again") from None
        for r, state in zip(reducers, back["states"]):
            r.load_state_dict(state, device=recorder.flat_index.device)
        for consumers in recorder.groups.values():
            for c in consumers:
                if c.buffer is not None:
                    c.buffer[recorder.rows].copy_(back["rows"][c.site])

    yield forward


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
