"""The activation cache: least-recently-used eviction under $LAMINA_CACHE_MAX_GB, and `lamina cache`."""

from __future__ import annotations

import os
import time

import pytest

import lamina
from lamina import LaminaError
from lamina.cache import cache_entries, cache_limit_bytes, evict
from lamina.cli import main


def _fake_entry(root, name, size, used):
    folder = root / "activations" / name
    folder.mkdir(parents=True)
    (folder / "activations.safetensors").write_bytes(b"\0" * size)
    (folder / "activations.json").write_text("{}")
    os.utime(folder / "activations.json", (used, used))
    return folder


def test_evict_removes_least_recently_used_first(cache_dir, monkeypatch):
    now = time.time()
    old = _fake_entry(cache_dir, "old", 4000, now - 300)
    mid = _fake_entry(cache_dir, "mid", 4000, now - 200)
    new = _fake_entry(cache_dir, "new", 4000, now - 100)
    (cache_dir / "activations" / ".tmp-half-written").mkdir()  # never listed, never counted
    assert [e.path.name for e in cache_entries()] == ["old", "mid", "new"]
    removed = evict(keep=old, limit=9000)  # 12 kB of entries must fit 9 kB; "old" is protected
    assert removed == [mid] and old.exists() and new.exists()
    monkeypatch.setenv("LAMINA_CACHE_MAX_GB", "0")
    assert cache_limit_bytes() is None and evict() == []
    monkeypatch.setenv("LAMINA_CACHE_MAX_GB", "lots")
    with pytest.raises(LaminaError, match="LAMINA_CACHE_MAX_GB"):
        cache_limit_bytes()


def test_capture_marks_use_and_keeps_the_cache_under_its_limit(tiny_models, cache_dir, monkeypatch):
    model = tiny_models["gpt2"]
    monkeypatch.setenv("LAMINA_CACHE_MAX_GB", str(1e-9))  # ~1 byte: only the entry just written may stay
    lamina.capture(model, "The first text.", "blocks.0.hook_resid_post", cache=True)
    first = cache_entries()
    assert len(first) == 1
    lamina.capture(model, "A second, different text.", "blocks.0.hook_resid_post", cache=True)
    second = cache_entries()
    assert len(second) == 1 and second[0].path != first[0].path
    monkeypatch.setenv("LAMINA_CACHE_MAX_GB", "20")
    lamina.capture(model, "The first text.", "blocks.0.hook_resid_post", cache=True)
    entry = first[0].path  # written again under the same content key
    os.utime(entry / "activations.json", (1, 1))  # pretend it was last used long ago
    assert cache_entries()[0].path == entry
    lamina.capture(model, "The first text.", "blocks.0.hook_resid_post", cache=True)  # a hit marks the use
    assert cache_entries()[-1].path == entry


def test_cache_command(tiny_models, cache_dir, capsys):
    lamina.capture(tiny_models["gpt2"], "Some text.", "blocks.0.hook_resid_post", cache=True)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "activations" in out and "1 entries" in out
    assert main(["cache", "--clear", "activations"]) == 0
    assert cache_entries() == []


def test_listing_and_eviction_survive_entries_vanishing_meanwhile(cache_dir, monkeypatch):
    import shutil

    import lamina.cache as cache_module

    now = time.time()
    a = _fake_entry(cache_dir, "a", 4000, now - 200)
    b = _fake_entry(cache_dir, "b", 4000, now - 100)
    (cache_dir / "activations" / "stray-file").write_text("not an entry")  # listed nowhere, removed by clear
    size = cache_module._size

    def size_then_vanish(path):  # another process evicts "a" right after we looked at it
        n = size(path)
        if path == a:
            shutil.rmtree(a, ignore_errors=True)
        return n

    monkeypatch.setattr(cache_module, "_size", size_then_vanish)
    assert [e.path for e in cache_entries()] == [a, b]  # no error although "a" vanished
    a = _fake_entry(cache_dir, "a", 4000, now - 200)
    assert evict(limit=4100) == [a] and b.exists()  # "a" was gone before we removed it: no error, "b" kept
    monkeypatch.setattr(cache_module, "_size", size)
    assert main(["cache", "--clear", "activations"]) == 0
    assert os.listdir(cache_dir / "activations") == []


def _fake_store(root, name, size, used):
    """A reduced-capture store entry as lamina.capture.store lays it out (its lock file records the last use)."""
    folder = root / "store" / name
    folder.mkdir(parents=True)
    (folder / "state-000001.safetensors").write_bytes(b"\0" * size)
    (folder / "lock").write_text("")
    os.utime(folder / "lock", (used, used))
    return folder


def test_stores_are_listed_counted_and_cleared(tiny_models, cache_dir, capsys):
    from lamina.capture.reduce import Moments
    from lamina.capture.reduced import capture_reduced

    red = capture_reduced(tiny_models["gpt2"], ["Some text.", "More text here."],
                          {"blocks.0.hook_resid_post": Moments()}, store=True)
    (entry,) = cache_entries("store")
    assert str(entry.path) == red.provenance["store"] and entry.size > 0
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.strip().startswith("store"))
    assert "1 entries" in line and f"{entry.size / 1024**3:7.2f} GB" in line
    assert main(["cache", "--clear", "store"]) == 0
    assert "cleared store" in capsys.readouterr().out and cache_entries("store") == []


def test_eviction_counts_stores_with_activations_least_recently_used_first(cache_dir):
    now = time.time()
    old_store = _fake_store(cache_dir, "s-old", 4000, now - 300)
    acts = _fake_entry(cache_dir, "a-mid", 4000, now - 200)
    new_store = _fake_store(cache_dir, "s-new", 4000, now - 100)
    removed = evict(limit=9000)  # 12 kB over both kinds must fit 9 kB: the least recently used one goes
    assert removed == [old_store] and acts.exists() and new_store.exists()
    assert evict(limit=4000) == [acts]


def test_a_store_held_by_a_running_capture_is_never_deleted(cache_dir):
    """A live capture holds its store's lock: neither eviction nor --clear removes its (incomplete) store."""
    from lamina.cache import clear_cache
    from lamina.capture.store import Store

    stale = _fake_store(cache_dir, "dead-run", 1000, time.time() - 500)  # an incomplete store nobody holds
    live = Store("live", {"n_batches": 3}, root=cache_dir / "store" / "live")
    with live.open():
        os.utime(live.folder / "lock", (1, 1))  # the oldest use of all: first in line for eviction
        assert evict(limit=1) == [stale]
        assert clear_cache("store") == 0 and live.folder.is_dir()
    assert clear_cache("store") > 0 and not live.folder.exists()  # released: now it may go


def test_a_finished_store_evicts_older_entries_beyond_the_limit(tiny_models, cache_dir, monkeypatch):
    from lamina.capture.reduce import Moments
    from lamina.capture.reduced import capture_reduced

    old = _fake_entry(cache_dir, "old", 4000, time.time() - 100)
    monkeypatch.setenv("LAMINA_CACHE_MAX_GB", str(1e-9))  # ~1 byte: only the store just written may stay
    red = capture_reduced(tiny_models["gpt2"], "Some text.", {"blocks.0.hook_resid_post": Moments()}, store=True)
    assert not old.exists() and [str(e.path) for e in cache_entries("store")] == [red.provenance["store"]]
