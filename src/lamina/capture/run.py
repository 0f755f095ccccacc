"""``capture``: batched forward passes that keep only the requested sites and positions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import _version
from ..errors import LaminaError
from ..paths import cache_dir
from ._buffers import host_buffers
from .activations import Activations, Rows
from .batches import TOKENS_PER_BATCH, _batches, _pad_batch, forward_kwargs, forward_prefixes  # noqa: F401
from .hooks import StopForward, hooked
from .models import Model, resolve_dtype
from .select import Selector, TokenizedText, as_selector
from .sites import hook_point, parse_site

__all__ = ["capture", "tokenize", "measure_widths", "residual_sites", "capture_cache_key"]



def residual_sites(model: Model) -> list[str]:
    """The sites that make up the L+1 hidden states (see :meth:`Activations.residual_stream`)."""
    return [f"blocks.{i}.hook_resid_pre" for i in range(model.n_layers)] + [
        f"blocks.{model.n_layers - 1}.hook_resid_post"
    ]


def _as_texts(texts) -> list:
    """A list of texts; each is a string or an already tokenised 1-D sequence of integer token ids (returned
    as a list of ints)."""
    if isinstance(texts, str):
        texts = [texts]
    try:
        texts = list(texts)
    except TypeError:
        raise LaminaError(f"texts must be a string or a list of strings or token-id sequences, not "
                          f"{type(texts).__name__}") from None
    if not texts:
        raise LaminaError("no texts given; pass a string or a non-empty list of strings")
    for i, text in enumerate(texts):
        if isinstance(text, str):
            if not text.strip():
                raise LaminaError(f"text {i} is empty; every text must contain some words")
            continue
        if isinstance(text, (bytes, bytearray)):
            raise LaminaError(f"text {i} is bytes; decode it to a str first (e.g. data.decode('utf-8'))")
        ids = np.asarray(text.detach().cpu() if isinstance(text, torch.Tensor) else text)
        if not ids.size:
            raise LaminaError(f"text {i} has no token ids")
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise LaminaError(f"text {i} is neither a string nor a 1-D sequence of integer token ids "
                              f"(got {type(text).__name__} of {ids.dtype} with shape {ids.shape})")
        texts[i] = ids.tolist()
    return texts


def _text_key(text) -> str:
    return text if isinstance(text, str) else "ids:" + ",".join(str(int(t)) for t in text)


def tokenize(model: Model, texts: str | Sequence[str], *, add_special_tokens: bool = True) -> list[TokenizedText]:
    """Tokenise texts one by one (no padding), with character offsets when the tokenizer offers them.

    Raises:
        LaminaError: an empty text, or a text longer than the model's context.
    """
    texts = _as_texts(texts)
    tok = model.tokenizer
    fast = bool(getattr(tok, "is_fast", False))
    strings = [t for t in texts if isinstance(t, str)]
    enc = tok(strings, add_special_tokens=add_special_tokens, return_offsets_mapping=fast,
              return_special_tokens_mask=True) if strings else None
    limit = model.context_length
    out = []
    k = -1
    for i, text in enumerate(texts):
        if not isinstance(text, str):  # pre-tokenised: ids used as given
            ids = tuple(int(x) for x in text)
            n_vocab = _vocab_rows(model)
            bad = next((t for t in ids if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise LaminaError(f"text {i} has token id {bad}, outside {model.name}'s vocabulary (0..{n_vocab - 1}); "
                                  "pass ids made by this model's tokenizer")
            if limit is not None and len(ids) > limit:
                raise LaminaError(f"text {i} has {len(ids)} tokens but {model.name} takes at most {limit}")
            out.append(TokenizedText(i, tok.decode(list(ids)), ids, None, (0,) * len(ids)))
            continue
        k += 1
        ids = tuple(int(x) for x in enc["input_ids"][k])
        if not ids:
            raise LaminaError(f"text {i} has no tokens; pass some text")
        if limit is not None and len(ids) > limit:
            raise LaminaError(f"text {i} has {len(ids)} tokens but {model.name} takes at most {limit}; "
                              "split it into shorter texts")
        offsets = tuple(tuple(map(int, o)) for o in enc["offset_mapping"][k]) if fast else None
        special = tuple(int(x) for x in enc["special_tokens_mask"][k])
        out.append(TokenizedText(i, text, ids, offsets, special))
    return out


def _vocab_rows(model: Model) -> int:
    """Rows of the input embedding: the token ids the model accepts."""
    embedding = model.hf.get_input_embeddings()
    rows = getattr(embedding, "num_embeddings", None)
    return int(rows) if rows is not None else int(model.config.vocab_size)


_TOKENIZER_HASHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tokenizer_hash(model: Model) -> str:
    """Hash of the tokenizer's definition, remembered per tokenizer object and size (added tokens change it):
    serialising a 49k-token tokenizer takes ~25 ms, and every cached capture asks."""
    tok = model.tokenizer
    known = _TOKENIZER_HASHES.get(tok)
    if known is None or known[0] != len(tok):
        backend = getattr(tok, "backend_tokenizer", None)
        blob = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
        known = _TOKENIZER_HASHES[tok] = (len(tok), hashlib.sha256(blob.encode("utf-8")).hexdigest())
    return known[1]


def capture_cache_key(model: Model, texts: Sequence[str], sites: Sequence[str], selector: Selector,
                      dtype: torch.dtype, add_special_tokens: bool) -> str | None:
    """Content address of a capture, or None when the position rule has no key (not cacheable)."""
    if selector.key is None:
        return None
    texts_sha = hashlib.sha256("\x00".join(map(_text_key, texts)).encode("utf-8")).hexdigest()
    blob = json.dumps({
        "format": 1,
        "model": {k: v for k, v in model.provenance.items() if k != "path"},
        "tokenizer": _tokenizer_hash(model),
        "texts": texts_sha,
        "sites": list(sites),
        "positions": selector.key,
        "dtype": str(dtype),
        "special_tokens": add_special_tokens,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class _Consumer:
    site: str
    slicer: object  # callable or None
    buffer: torch.Tensor
    sink: object = None  # callable(rows_tensor, rows_slice): reducers (capture_reduced) instead of a buffer


class _Recorder:
    """Per-module hook functions that gather the selected rows straight into preallocated buffers, or hand
    them (on the model's device) to sinks that reduce them."""

    def __init__(self, model: Model, sites: Sequence[str], buffers: dict[str, torch.Tensor] | None,
                 sinks: dict | None = None):
        self.groups: dict[tuple[str, str], list[_Consumer]] = {}
        for site in sites:
            layer, _ = parse_site(site)
            point = hook_point(model.adapter, site)
            slicer = point.part(model.config) if point.part else None
            key = (model.resolve_path(point.module_path(layer)), point.io)
            buf = buffers[site] if buffers is not None else None
            sink = sinks.get(site) if sinks is not None else None
            self.groups.setdefault(key, []).append(_Consumer(site, slicer, buf, sink))
        self.widths: dict[str, int] = {}
        self.fired: set[tuple[str, str]] = set()
        self.flat_index: torch.Tensor | None = None
        self.rows = slice(0, 0)
        self.identity = False
        self.scratch: dict[tuple, torch.Tensor] = {}
        # Sinks consume their rows inside the hook, so sites read only by sinks share one scratch per width.
        self.shared = {key: all(c.sink is not None for c in cs) for key, cs in self.groups.items()}

    def hooks(self):
        return {key: (lambda t, key=key: self._read(key, t)) for key in self.groups}

    def start_batch(self, flat_index: torch.Tensor, rows: slice, identity: bool = False) -> None:
        """``identity``: the batch selects every token in order (no padding), so sinks get the module's output
        itself, with no copy."""
        self.flat_index, self.rows, self.identity = flat_index, rows, identity
        self.fired = set()

    def _read(self, key, tensor: torch.Tensor) -> None:
        if tensor.device != self.flat_index.device:  # a model split over devices: rows to its home device
            tensor = tensor.to(self.flat_index.device)
        width = tensor.shape[-1]
        flat = tensor.reshape(-1, width)
        consumers = self.groups[key]
        n = self.flat_index.numel()
        if len(consumers) == 1 and consumers[0].slicer is None and consumers[0].buffer is not None:
            dest = consumers[0].buffer[self.rows]
            if dest.dtype == flat.dtype and dest.device == flat.device:
                torch.index_select(flat, 0, self.flat_index, out=dest)  # straight into the buffer
            else:
                dest.copy_(flat.index_select(0, self.flat_index), non_blocking=True)
        else:
            if self.identity and self.shared[key]:
                gathered = flat
            else:
                slot = (width, flat.dtype, flat.device) if self.shared[key] else key
                scratch = self.scratch.get(slot)
                if scratch is None or scratch.shape[0] < n or scratch.dtype != flat.dtype:
                    scratch = self.scratch[slot] = torch.empty((max(n, 1), width), dtype=flat.dtype,
                                                               device=flat.device)
                gathered = torch.index_select(flat, 0, self.flat_index, out=scratch[:n])
            for c in consumers:
                part = c.slicer(gathered) if c.slicer else gathered
                if c.sink is not None:
                    c.sink(part, self.rows)
                elif c.buffer is None:
                    self.widths[c.site] = int(part.shape[-1])
                else:
                    c.buffer[self.rows].copy_(part, non_blocking=True)
        self.fired.add(key)
        if len(self.fired) == len(self.groups):
            raise StopForward


def _forward(model: Model, runner: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
    try:
        runner(**forward_kwargs(model, ids, mask))
    except StopForward:
        pass


@contextlib.contextmanager
def passes(model: Model, runner: torch.nn.Module, recorder: _Recorder, backend: str = "hooks",
           remote: bool = False):
    """Yield ``forward(ids, mask)``, one forward pass in which ``recorder`` reads its sites: through hooks on
    the real modules, or through nnsight tracing (locally or on NDIF; :mod:`lamina.capture.backend_nnsight`)."""
    if not remote:
        from .weightless import require_weights

        require_weights(model)  # a model loaded with weights=False runs only on NDIF
    if backend == "nnsight":
        from .backend_nnsight import nnsight_passes

        with nnsight_passes(model, recorder, remote=remote) as forward:
            yield forward
        return
    with hooked(model.hf, recorder.hooks()):
        yield lambda ids, mask: _forward(model, runner, ids, mask)


def measure_widths(model: Model) -> dict[str, int]:
    """Width of every site's vectors, read from a one-token forward pass."""
    names = model.sites()
    recorder = _Recorder(model, names, None)
    recorder.start_batch(torch.zeros(1, dtype=torch.long, device=model.device), slice(0, 1))
    from .weightless import probe_pass

    probe_pass(model, recorder.hooks())  # a real pass, or shapes only for a weightless model (no weights)
    return {name: recorder.widths[name] for name in names}


def capture(
    model: Model,
    texts: str | Sequence[str],
    sites: str | Sequence[str],
    *,
    positions="all",
    batch_size: int | None = None,
    dtype: str | torch.dtype = torch.float32,
    progress: bool | None = None,
    cache: bool = False,
    padding_side: str = "right",
    add_special_tokens: bool = True,
    backend: str | None = None,
    remote: bool | None = None,
) -> Activations:
    """Run the model over ``texts`` and keep the activations at ``sites`` for the selected positions.

    Args:
        model: a loaded :class:`Model`.
        texts: a string, a list of strings, or a list of token-id sequences (used as given).
        sites: site names or glob patterns (``"blocks.*.hook_resid_post"``, ``"blocks.3.*"``) or a list.
        positions: ``"all"``, a :mod:`lamina.select` selector (``select.word("coffee")``), ``"word:W"``,
            ``"index:N"`` or a callable taking a :class:`~lamina.capture.select.TokenizedText`.
        batch_size: texts per forward pass; None packs up to ~4096 tokens (padded) per pass.
        dtype: storage dtype of the captured values (float32 by default).
        progress: show a progress bar (None: only for captures of more than 20 batches).
        cache: reuse/store the result in the content-addressed cache under the user cache dir.
        padding_side: ``"right"`` or ``"left"``; results do not depend on it (position ids follow the mask).
        add_special_tokens: let the tokenizer add BOS/CLS/SEP as it normally does.
        backend: ``"hooks"`` (forward hooks on the real modules) or ``"nnsight"`` (nnsight tracing; same
            numbers, see :mod:`lamina.capture.backend_nnsight`); None: the one set by ``using_backend`` (hooks).
        remote: with ``backend="nnsight"``, run on NDIF (API key from ``NDIF_API_KEY``; see
            :mod:`lamina.capture.ndif`); only the selected rows come back.

    Returns:
        :class:`Activations` with ``acts[site]`` of shape (n_rows, width), rows ordered by text then position.

    Raises:
        LaminaError: empty input, unknown site, a word not found, a text longer than the context, or NaN
            activations.
    """
    from .backend_nnsight import resolve_backend

    backend, remote = resolve_backend(backend, remote)
    texts = _as_texts(texts)
    names = model.sites(sites)
    selector = as_selector(positions)
    store_dtype = resolve_dtype(dtype)
    if padding_side not in ("left", "right"):
        raise LaminaError(f"padding_side={padding_side!r} is not valid; use 'left' or 'right'")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise LaminaError(f"batch_size={batch_size!r} is not valid; use a whole number of texts per forward "
                          "pass, at least 1 (or None to pack ~4096 tokens per pass)")
    key = capture_cache_key(model, texts, names, selector, store_dtype, add_special_tokens) if cache else None
    entry = cache_dir("activations", key) if key else None
    if entry is not None:
        from ..cache import load_entry

        cached = load_entry(entry)  # None: absent, or damaged (discarded with a warning): recompute
        if cached is not None:
            return cached

    tokenized = tokenize(model, texts, add_special_tokens=add_special_tokens)
    chosen = [selector(t) for t in tokenized]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chosen])])
    n_rows = int(offsets[-1])
    if n_rows == 0:
        raise LaminaError("the position rule selected no tokens; check the positions option")
    widths = model.site_widths()
    buffers = host_buffers({s: (n_rows, widths[s]) for s in names}, store_dtype)  # reused across captures

    runner = model.hf
    if "logits" not in names:
        runner = model.module(model.adapter.base)  # the LM head is not needed: skip it
    recorder = _Recorder(model, names, buffers)
    fed = forward_prefixes(model, tokenized, chosen)
    batches = _batches([len(t.ids) for t in fed], batch_size)
    show = progress if progress is not None else len(batches) > 20
    iterator = batches
    if show:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=f"capture {model.name}", unit="batch")
    device = model.device
    with torch.no_grad(), passes(model, runner, recorder, backend, remote) as forward:
        for batch in iterator:
            items = [fed[i] for i in batch]
            ids, mask = _pad_batch(model, items, padding_side, device)
            width = ids.shape[1]
            flat = []
            for b, (t, pos) in enumerate(zip(items, (chosen[i] for i in batch))):
                shift = width - len(t.ids) if padding_side == "left" else 0
                flat.extend(b * width + shift + p for p in pos)
            recorder.start_batch(torch.tensor(flat, dtype=torch.long, device=device),
                                 slice(int(offsets[batch.start]), int(offsets[batch.stop])))
            forward(ids, mask)
    for site, buf in buffers.items():
        # One reduction instead of a full boolean mask: NaN and inf propagate into the sum; only a sum that is
        # not finite (a NaN, an inf, or -- never seen in practice -- a float32 overflow) gets the exact check.
        if buf.is_floating_point() and not torch.isfinite(buf.sum(dtype=torch.float32)) \
                and not torch.isfinite(buf).all():
            raise LaminaError(f"NaN or infinite activations at {site}; load the model in float32 "
                              "(dtype='float32') or check its weights")
    rows = selected_rows(model, tokenized, chosen)
    provenance = {
        "model": model.summary(),
        "lamina_version": _version.__version__,
        "sites": names,
        "positions": selector.key or selector.description,
        "dtype": str(store_dtype).replace("torch.", ""),
        "n_texts": len(texts),
        "tokenizer_sha256": _tokenizer_hash(model),
        "add_special_tokens": add_special_tokens,
    }
    if backend != "hooks":
        provenance["backend"] = backend + ("-remote" if remote else "")
    acts = Activations(buffers, rows, provenance)
    if entry is not None:
        from ..cache import store_entry

        store_entry(entry, acts)  # a cache that cannot be written warns; the result is returned all the same
    return acts


def selected_rows(model: Model, tokenized: list[TokenizedText], chosen: list) -> Rows:
    """What each captured row is: text index, position, token id and token, for the positions ``chosen`` of
    each tokenised text (rows ordered by text, then position)."""
    ids = [tokenized[i].ids[p] for i, c in enumerate(chosen) for p in c]
    return Rows(
        text_index=np.repeat(np.arange(len(tokenized)), [len(c) for c in chosen]),
        position=np.array([p for c in chosen for p in c], dtype=np.int64),
        token_id=np.array(ids, dtype=np.int64),
        token=tuple(_decode_tokens(model, ids)),
    )


def _decode_tokens(model: Model, ids: list[int]) -> list[str]:
    unique = {i: model.tokenizer.decode([i]) for i in set(ids)}
    return [unique[i] for i in ids]
