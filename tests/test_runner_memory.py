"""One model resident at a time: when a random-init baseline would not fit beside the trained model, the runner
frees the trained weights first, and the report is the same as when both fit."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import weakref

import pytest

import lamina.capture
from lamina import _malloc
from lamina.capture.random_init import RandomInitPlan, random_init_copy
from lamina.studies import runner


def _run(path, out, monkeypatch, free):
    monkeypatch.setattr(runner, "_free_bytes", lambda device: free)
    runner.release_models()
    trained = runner.load_cached(str(path))
    alive = weakref.ref(trained.hf)
    del trained
    seen = {}
    real = random_init_copy  # the function itself (not an earlier spy)

    def spy(model, **kwargs):
        gc.collect()
        seen["trained_alive_at_copy"] = alive() is not None
        return real(model, **kwargs)

    monkeypatch.setattr(lamina.capture, "random_init_copy", spy)
    folder = runner.run_study("path-length", model=str(path), out=out, baseline="random-init")
    doc = json.loads((folder / "results.json").read_text())
    return doc, seen


def test_baseline_that_does_not_fit_runs_after_the_trained_model_is_freed(tiny_paths, tmp_path, monkeypatch):
    path = tiny_paths["llama"]
    roomy, seen_roomy = _run(path, tmp_path / "roomy", monkeypatch, free=None)  # unknown free memory: keep both
    tight, seen_tight = _run(path, tmp_path / "tight", monkeypatch, free=0)  # nothing free: one at a time
    assert seen_roomy == {"trained_alive_at_copy": True}
    assert seen_tight == {"trained_alive_at_copy": False}
    # The same seeded copy and the same numbers either way; the trained model's summary is kept for the report.
    assert tight["baseline"] == roomy["baseline"]
    assert tight["results"] == roomy["results"] and tight["model"] == roomy["model"]
    assert [c["verdict"] for c in tight["claims"]] == [c["verdict"] for c in roomy["claims"]]
    runner.release_models()


def test_random_init_from_a_plan_equals_from_the_model(tiny_models):
    model = tiny_models["gpt2"]
    a = random_init_copy(model, seed=3)
    b = random_init_copy(RandomInitPlan.of(model), seed=3)
    for (name, p), (_, q) in zip(a.hf.state_dict().items(), b.hf.state_dict().items()):
        assert (p == q).all(), name  # the same seeded draws: bit-identical


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc._free_heap_bytes() is None,
                    reason="glibc >= 2.33 only")
def test_free_heap_pages_go_back_to_the_os_only_above_the_threshold():
    # 64 KiB blocks come from the heap; freeing all but every 8th leaves free memory the heap cannot shrink
    # past (its top is still in use) -- the fragmentation a long capture builds up between batches.
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 64 << 10, 2048  # 128 MiB in all
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # resident
    for i, b in enumerate(blocks):
        if i % 8:
            libc.free(b)
    try:
        free = _malloc._free_heap_bytes()
        assert free >= 100 << 20  # 112 MiB freed (glibc's own bookkeeping aside)
        before = _rss()
        assert not _malloc.release_free_memory(at_least=free + (1 << 30))  # below the threshold: left alone
        assert _rss() > before - (16 << 20)
        assert _malloc.release_free_memory(at_least=64 << 20)
        assert _rss() < before - (64 << 20)  # most of the 112 MiB left the resident set
    finally:
        for i, b in enumerate(blocks):
            if i % 8 == 0:
                libc.free(b)
