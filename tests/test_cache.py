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
