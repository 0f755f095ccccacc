"""``capture_reduced``: forward passes whose selected rows go to online reducers on the model's device.

Memory is bounded by the reducers' states (and the rows they are asked to keep), not by the corpus: the
activations of a batch are reduced where they were computed and dropped. With ``store=True`` the capture is
checkpointed per chunk of batches under ``cache_dir("store", key)`` and resumes after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from typing import Sequence

import numpy as np
import torch

from .. import _version
from .._malloc import release_free_memory
from ..errors import LaminaError
from .activations import Rows
from .models import Model
from .reduce import Reducer
from .run import (TOKENS_PER_BATCH, _as_texts, _batches, _pad_batch, _Recorder, _text_key, _tokenizer_hash,
                  forward_prefixes, passes, selected_rows, tokenize)
from .select import as_selector
from .sites import parse_site
from .store import Store

__all__ = ["capture_reduced", "Reduced", "CHECKPOINT_SECONDS"]

#: With ``store=True`` and no ``chunk_batches``: commit a checkpoint after at least this much forward time.
CHECKPOINT_SECONDS = 60.0
#: Test hook: seconds to sleep after each checkpoint (lets a test kill a run between chunks).
_SLEEP_ENV = "LAMINA_TEST_CHUNK_SLEEP"


class Reduced(Mapping):
    """The result of :func:`capture_reduced`: the reducers by site (or tuple of sites), the rows, provenance.

    ``reduced["blocks.3.mlp.hook_pre"]`` is the reducer (or list of reducers) given for that site;
    ``reduced.rows`` describes every selected row (text, position, token), like ``Activations.rows``.
    """

    def __init__(self, reducers: dict, rows: Rows, provenance: dict):
        self._reducers = reducers
        self.rows = rows
        self.provenance = provenance

    def __getitem__(self, key):
        try:
            return self._reducers[key]
        except KeyError:
            raise LaminaError(f"no reducer for {key!r}; reduced: {', '.join(map(str, self._reducers))}") from None

    def __iter__(self):
        return iter(self._reducers)

    def __len__(self) -> int:
        return len(self._reducers)

    def layers(self, kind: str) -> list[int]:
        """Block indices with a reducer for one site kind (``"mlp.hook_pre"``...)."""
        out = []
        for key in self._reducers:
            if isinstance(key, str):
                layer, k = parse_site(key)
                if layer is not None and k == kind:
                    out.append(layer)
        return sorted(out)

    def __repr__(self) -> str:
        return f"Reduced({len(self.rows)} rows, {len(self._reducers)} sites)"


def _bindings(model: Model, reducers: Mapping) -> tuple[dict, list[tuple[tuple[str, ...], Reducer]]]:
    """Expand ``{pattern or tuple of sites: reducer(s)}`` into one fresh reducer per site (or tuple)."""
    if not isinstance(reducers, Mapping) or not reducers:
        raise LaminaError("reduce needs a mapping {site pattern or tuple of sites: reducer or list of reducers}")
    out: dict = {}
    flat: list[tuple[tuple[str, ...], Reducer]] = []
    for key, value in reducers.items():
        templates = list(value) if isinstance(value, (list, tuple)) else [value]
        if not templates or not all(isinstance(t, Reducer) for t in templates):
            raise LaminaError(f"the reducers for {key!r} must be Reducer objects (lamina.capture.reduce)")
        if isinstance(key, tuple):
            groups = [tuple(_one_site(model, s) for s in key)]
            if len(set(groups[0])) != len(groups[0]):
                raise LaminaError(f"the tuple key {key!r} names a site twice; name each site once")
            names = [groups[0]]
        else:
            names = model.sites(key)
            groups = [(n,) for n in names]
        for name, sites in zip(names, groups):
            if name in out:
                raise LaminaError(f"{name!r} is matched by two reducer keys; give each site one key")
            made = [t.fresh() for t in templates]
            out[name] = made if isinstance(value, (list, tuple)) else made[0]
            flat.extend((sites, r) for r in made)
    return out, flat


def _one_site(model: Model, pattern: str) -> str:
    matched = model.sites(pattern)
    if len(matched) != 1:
        raise LaminaError(f"{pattern!r} in a tuple key matches {len(matched)} sites; name exactly one site each "
                          "(a tuple binds several sites to one reducer)")
    return matched[0]


def _sinks(flat: list[tuple[tuple[str, ...], Reducer]]) -> dict:
    """Site -> one callable that feeds every reducer of that site (joined for multi-site reducers)."""
    per_site: dict[str, list] = {}
    for sites, reducer in flat:
        if len(sites) == 1:
            per_site.setdefault(sites[0], []).append(reducer.update)
            continue
        parts: dict[str, torch.Tensor] = {}

        def put(site, x, rows, sites=sites, reducer=reducer, parts=parts):
            # Rows come in a scratch buffer (or the module's output) valid only during this hook: keep a copy
            # until the last of the reducer's sites arrives in this forward pass.
            parts[site] = x if len(parts) + 1 == len(sites) else x.clone()
            if len(parts) == len(sites):
                xs = tuple(parts[s] for s in sites)
                parts.clear()
                reducer.update(xs, rows)

        for site in sites:
            per_site.setdefault(site, []).append(lambda x, rows, site=site, put=put: put(site, x, rows))

    def fan(fns):
        if len(fns) == 1:
            return fns[0]

        def each(x, rows):
            for fn in fns:
                fn(x, rows)

        return each

    return {site: fan(fns) for site, fns in per_site.items()}


def _store_key(model, texts, sites, selector, flat, batch_size, padding_side, add_special_tokens) -> str:
    specs = [{"sites": list(s), "reducer": r.spec()} for s, r in flat]
    for spec in specs:
        if "unnamed:" in json.dumps(spec):
            raise LaminaError("store=True needs reducers whose transform is a module-level function (not a "
                              "lambda or a local function), so a later run can recognise the capture")
    blob = json.dumps({
        "format": 1,
        "model": {k: v for k, v in model.provenance.items() if k != "path"},
        "dtype": str(model.dtype),
        "tokenizer": _tokenizer_hash(model),
        "texts": hashlib.sha256("\x00".join(map(_text_key, texts)).encode("utf-8")).hexdigest(),
        "sites": list(sites),
        "positions": selector.key,
        "reducers": specs,
        "batches": [batch_size, TOKENS_PER_BATCH, padding_side],
        "special_tokens": add_special_tokens,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def capture_reduced(
    model: Model,
    texts: str | Sequence[str],
    reduce: Mapping,
    *,
    positions="all",
    batch_size: int | None = None,
    progress: bool | None = None,
    padding_side: str = "right",
    add_special_tokens: bool = True,
    store: bool = False,
    chunk_batches: int | None = None,
    backend: str | None = None,
    remote: bool | None = None,
) -> Reduced:
    """Run the model over ``texts`` and feed the selected rows at each site to online reducers.

    Args:
        model: a loaded :class:`Model`.
        texts: a string, a list of strings, or a list of token-id sequences.
        reduce: ``{site pattern: reducer or [reducers]}``; every site matching a pattern gets a fresh copy of
            the reducer (``reducer.fresh()``). A tuple of site names binds several sites to one reducer, which
            gets a tuple of row tensors (e.g. a covariance over Q, K and V together, or per-row dot products).
        positions, batch_size, padding_side, add_special_tokens: as in :func:`lamina.capture`.
        progress: show a progress bar (None: for more than 20 batches).
        store: checkpoint per chunk of batches under ``cache_dir("store", key)``; a later call with the same
            inputs resumes an interrupted capture, or returns a finished one without running the model.
        chunk_batches: batches per checkpoint (None: one checkpoint per ``CHECKPOINT_SECONDS`` of work).
        backend, remote: as in :func:`lamina.capture`; with ``backend="nnsight"`` the reducers run inside the
            trace (on NDIF with ``remote=True``: only their states come back).

    Returns:
        :class:`Reduced`: the reducers by site, the rows and the provenance (``bytes_written`` by the store).

    Raises:
        LaminaError: as :func:`lamina.capture`; a reducer key matching no site or two keys one site; store=True
            with a position rule or transform that cannot be named.
    """
    from .backend_nnsight import resolve_backend

    backend, remote = resolve_backend(backend, remote)
    texts = _as_texts(texts)
    selector = as_selector(positions)
    if padding_side not in ("left", "right"):
        raise LaminaError(f"padding_side={padding_side!r} is not valid; use 'left' or 'right'")
    if chunk_batches is not None and chunk_batches < 1:
        raise LaminaError(f"chunk_batches must be >= 1 (got {chunk_batches})")
    by_key, flat = _bindings(model, reduce)
    order = {s: i for i, s in enumerate(model.sites())}
    names = sorted({s for sites, _ in flat for s in sites}, key=order.__getitem__)

    tokenized = tokenize(model, texts, add_special_tokens=add_special_tokens)
    chosen = [selector(t) for t in tokenized]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chosen])]).astype(int)
    n_rows = int(offsets[-1])
    if n_rows == 0:
        raise LaminaError("the position rule selected no tokens; check the positions option")
    device = model.device
    for _, r in flat:
        r.bind(n_rows, device)
    fed = forward_prefixes(model, tokenized, chosen)  # a causal LM reads each text up to its last selected token
    batches = _batches([len(t.ids) for t in fed], batch_size)
    reducers = [r for _, r in flat]

    st = None
    if store:
        if selector.key is None:
            raise LaminaError("store=True needs a named position rule ('all', 'word:W', select.word(...)...), "
                              "not a bare function")
        key = _store_key(model, texts, names, selector, flat, batch_size, padding_side, add_special_tokens)
        st = Store(key, {"model": model.summary(), "sites": names, "n_batches": len(batches), "n_rows": n_rows,
                         "reducers": [{"sites": list(s), **r.spec()} for s, r in flat]})
    with (st.open() if st is not None else _nothing()):
        done, rows_done = st.resume(reducers, device) if st is not None else (0, 0)
        if done < len(batches):
            _run(model, fed, chosen, offsets, batches, done, names, flat, padding_side, progress, st,
                 chunk_batches, backend, remote)
        if st is not None and not st.complete:
            st.finish(len(batches), n_rows)
    for sites, r in flat:
        if not r.finite():
            raise LaminaError(f"NaN or infinite activations at {', '.join(sites)}; load the model in float32 "
                              "(dtype='float32') or check its weights")
    rows = selected_rows(model, tokenized, chosen)
    provenance = {"model": model.summary(), "lamina_version": _version.__version__, "sites": names,
                  "positions": selector.key or selector.description, "n_texts": len(texts),
                  "tokenizer_sha256": _tokenizer_hash(model), "add_special_tokens": add_special_tokens,
                  "reducers": [{"sites": list(s), **r.spec()} for s, r in flat]}
    if backend != "hooks":
        provenance["backend"] = backend + ("-remote" if remote else "")
    if st is not None:
        provenance.update({"store": str(st.folder), "bytes_written": st.bytes_written, "resumed_at_batch": done})
    return Reduced(by_key, rows, provenance)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


#: Free heap bytes above which the heap is trimmed after a batch (see :func:`lamina._malloc.release_free_memory`).
TRIM_FREE_BYTES = 256 << 20


def _run(model, tokenized, chosen, offsets, batches, start, names, flat, padding_side, progress, st,
         chunk_batches, backend="hooks", remote=False) -> None:
    """The batch loop from batch ``start`` on, with a checkpoint after each chunk when storing."""
    runner = model.hf if "logits" in names else model.module(model.adapter.base)
    recorder = _Recorder(model, names, None, sinks=_sinks(flat))
    reducers = [r for _, r in flat]
    recorder.reducers = reducers  # a remote backend sends their states back (capture/ndif.py)
    device = model.device
    todo = range(start, len(batches))
    show = progress if progress is not None else len(batches) > 20
    iterator = todo
    if show:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc=f"reduce {model.name}", unit="batch", initial=0, total=len(todo))
    sleep = float(os.environ.get(_SLEEP_ENV, "0") or 0)
    chunk_start, clock = start, time.perf_counter()
    with torch.no_grad(), passes(model, runner, recorder, backend, remote) as forward:
        for j in iterator:
            batch = batches[j]
            items = [tokenized[i] for i in batch]
            ids, mask = _pad_batch(model, items, padding_side, device)
            width = ids.shape[1]
            flat_index = []
            for b, (t, pos) in enumerate(zip(items, (chosen[i] for i in batch))):
                shift = width - len(t.ids) if padding_side == "left" else 0
                flat_index.extend(b * width + shift + p for p in pos)
            rows = slice(int(offsets[batch.start]), int(offsets[batch.stop]))
            identity = len(flat_index) == ids.numel() and flat_index == list(range(len(flat_index)))
            recorder.start_batch(torch.tensor(flat_index, dtype=torch.long, device=device), rows, identity)
            if rows.stop > rows.start:
                forward(ids, mask)
            # The forward's freed temporaries go back to the OS: reused in place they fragment the heap around
            # the reducers' long-lived blocks, and the resident size crept up ~0.1-0.2 GB per batch (lamina._malloc).
            release_free_memory(at_least=TRIM_FREE_BYTES)
            last = j + 1 == len(batches)
            due = (j + 1 - chunk_start >= chunk_batches) if chunk_batches else \
                time.perf_counter() - clock >= CHECKPOINT_SECONDS
            if st is not None and (due or last):
                st.checkpoint(reducers, (chunk_start, j + 1),
                              (int(offsets[batches[chunk_start].start]), rows.stop))
                chunk_start, clock = j + 1, time.perf_counter()
                if sleep and not last:
                    time.sleep(sleep)
