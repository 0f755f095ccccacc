"""The nnsight capture backend: the same capture plan run through nnsight's tracing, locally or on NDIF.

``capture(..., backend="nnsight")`` and ``capture_reduced(..., backend="nnsight")`` run the plan of the hook
backend -- tokens, batches, padding, selected positions, the per-site gather and the reducers -- but read each
site inside an nnsight trace (``envoy.output`` / ``envoy.input``) instead of through forward hooks. The same
:class:`~lamina.capture.run._Recorder` gathers the selected rows and feeds the reducers inside the trace, so
locally the results are the hook backend's, bit for bit (the same modules run the same kernels), and with
``remote=True`` only the selected rows and reducer states travel back from NDIF, never whole activations.

Where a site lives comes from lamina's layout registry: a site is ``(module path, "input" | "output", part)``
(:class:`~lamina.capture.layout.HookPoint`), and the module path is also the nnsight envoy path. The envoys are
read in the order the model's forward pass reaches them, measured once with plain hooks on a one-token pass
(nnsight serves a module's value only while the forward pass is at it); for a model loaded without weights that
pass runs under ``FakeTensorMode`` (:mod:`lamina.capture.weightless`).

Isolation: nnsight replaces the ``forward`` of every module it wraps. It therefore wraps a *twin* of the HF
module tree -- new module objects sharing the original's parameters and buffers (no weight is copied) -- and
never sees the lamina tokenizer (tokens go in as ids; the remote wrapper gets a copy of the tokenizer), so the
hook backend in the same process runs on untouched modules and ``model.tokenizer.padding_side`` is unchanged.

nnsight is optional (``pip install 'lamina[nnsight]'``) and imported only when this backend is used: importing
it mounts ``.save`` on every Python object and patches ``Tensor.backward`` process-wide.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import weakref

import torch

from ..errors import LaminaError
from .hooks import StopForward, _first_tensor

__all__ = ["BACKENDS", "check_backend", "nnsight_passes", "resolve_backend", "using_backend"]

#: Capture backends: forward hooks on the real modules (default), or nnsight tracing (locally or on NDIF).
BACKENDS = ("hooks", "nnsight")

# Twin module trees wrapped by nnsight, per original HF module (dropped with it).
_WRAPPED: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


_DEFAULT: "contextvars.ContextVar[tuple[str, bool]]" = contextvars.ContextVar("lamina_capture_backend",
                                                                             default=("hooks", False))


@contextlib.contextmanager
def using_backend(backend: str = "hooks", remote: bool = False):
    """Within the ``with`` block, captures that name no backend use this one (e.g. a whole study on nnsight:
    ``with using_backend("nnsight"): run_study(...)``).

    Raises:
        LaminaError: as :func:`check_backend`.
    """
    check_backend(backend, remote)
    token = _DEFAULT.set((backend, bool(remote)))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def resolve_backend(backend: str | None, remote: bool | None) -> tuple[str, bool]:
    """The ``(backend, remote)`` of a capture: the arguments given, else those of :func:`using_backend`, checked."""
    default_backend, default_remote = _DEFAULT.get()
    backend = default_backend if backend is None else backend
    remote = (default_remote if backend == default_backend else False) if remote is None else bool(remote)
    check_backend(backend, remote)
    return backend, remote


def check_backend(backend: str, remote: bool) -> None:
    """Validate the ``backend`` / ``remote`` options before any work.

    Raises:
        LaminaError: an unknown backend, ``remote=True`` without the nnsight backend, or nnsight missing.
    """
    if backend not in BACKENDS:
        raise LaminaError(f"backend={backend!r} is not valid; use one of {', '.join(BACKENDS)}")
    if remote and backend != "nnsight":
        raise LaminaError("remote execution runs through nnsight; pass backend='nnsight' (--backend nnsight) "
                          "with remote=True (--remote)")
    if backend == "nnsight":
        _import_nnsight()


def _import_nnsight():
    try:
        import nnsight
    except ImportError:
        raise LaminaError("the nnsight backend needs nnsight: pip install 'lamina[nnsight]' "
                          "(or pip install 'nnsight>=0.8')") from None
    return nnsight


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A module's first input, by the hook backend's rule (:func:`lamina.capture.hooks.hooked`)."""
    return args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))


def _forward_order(model, keys) -> list[tuple[str, str]]:
    """The recorder's ``(module path, io)`` keys in the order a forward pass reaches them (a one-token probe;
    shapes only for a weightless model, see :func:`lamina.capture.weightless.probe_pass`)."""
    from .weightless import probe_pass

    seen: list = []

    def note(key):
        return lambda _t: seen.append(key) if key not in seen else None

    probe_pass(model, {key: note(key) for key in keys})
    missing = [k for k in keys if k not in seen]
    if missing:
        raise LaminaError(f"module {missing[0][0]!r} does not run in {model.name}'s forward pass, so nnsight "
                          "cannot read it; use the hook backend for this site")
    return seen


def _forward_kwargs(model, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """The keyword arguments of one forward pass, as the hook backend builds them
    (:func:`lamina.capture.run._forward`)."""
    from .run import forward_kwargs

    return forward_kwargs(model, ids, mask)


def _twin(hf: torch.nn.Module) -> torch.nn.Module:
    """New module objects over the same parameters and buffers (a deep copy whose tensors are shared)."""
    memo = {id(t): t for t in list(hf.parameters()) + list(hf.buffers())}
    twin = copy.deepcopy(hf, memo)
    twin.eval()
    return twin


def _local_envoy(model):
    """nnsight's envoy tree over a twin of ``model.hf`` (made once per model)."""
    nnsight = _import_nnsight()
    wrapped = _WRAPPED.get(model.hf)
    if wrapped is None:
        with _quiet():
            wrapped = _WRAPPED[model.hf] = nnsight.NNsight(_twin(model.hf))
    return wrapped


@contextlib.contextmanager
def _quiet():
    """Silence nnsight's notice that a submodule named ``output`` is served as ``E_output`` (BERT's layers):
    lamina finds envoys by module, not by name."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nnsight already serves on every module.*")
        yield


def _envoys(root, order) -> list:
    """``(key, envoy)`` per recorder key, found by module identity (nnsight renames a submodule whose name it
    serves itself, e.g. BERT's ``attention.output`` becomes ``E_output``; the module is the same)."""
    module = root._module
    return [(key, root.interleaver.envoys[id(module.get_submodule(key[0]))]) for key in order]


def _visit(envoys, recorder, tracer) -> None:
    """The body of one trace: read each site's module value in forward order and hand it to the recorder,
    which gathers the selected rows into its buffers or feeds them to the reducers; stop the forward pass
    after the last one (the rest of the model is not run, as with the hook backend)."""
    for key, envoy in envoys:
        io = key[1]
        if io == "output":
            value = _first_tensor(envoy.output)
        else:
            args, kwargs = envoy.inputs
            value = _first_input(args, kwargs)
        try:
            recorder._read(key, value)
        except StopForward:  # every site read: locally the rest of the forward pass is skipped
            if tracer is not None:
                tracer.stop()
            return


@contextlib.contextmanager
def nnsight_passes(model, recorder, *, remote: bool = False):
    """Yield ``forward(ids, mask)``: one nnsight trace of a batch that lets ``recorder`` read its sites.

    Locally the trace runs on a twin of the model (shared weights, own modules). With ``remote=True`` each
    batch is one NDIF request (see :mod:`lamina.capture.ndif`): the recorder's sinks (reducers) run there and
    their states come back, or the selected rows of each site when the recorder fills buffers.
    """
    order = _forward_order(model, list(recorder.groups))
    if remote:
        from .ndif import remote_passes

        with remote_passes(model, recorder, order) as forward:
            yield forward
        return
    root = _local_envoy(model)
    envoys = _envoys(root, order)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> None:
        kwargs = _forward_kwargs(model, ids, mask)
        with root.trace(**kwargs) as tracer:
            _visit(envoys, recorder, tracer)

    yield forward
