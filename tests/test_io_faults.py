"""Nothing lost, nothing corrupted under faults: output folders (``--out``, ``atomic_dir``), killed writes, the
activation cache (damaged, truncated, foreign entries; orphaned temporaries; unwritable caches; concurrent
writers and readers) and the ``batch_size`` hang. Issue 10; the data-loss and hang cases are regressions."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import lamina
import lamina._io as io
import lamina._outdir as outdir
from lamina import LaminaError
from lamina.cache import (CacheWarning, cache_entries, cache_limit_bytes, describe, discard_entry,
                          load_entry, orphans, store_entry)
from lamina.capture.activations import Activations, DamagedActivations, Rows
from lamina.capture.run import _batches
from lamina.cli import main

TEXT = "The coffee was hot. I like coffee a lot."
SITES = "blocks.*.hook_resid_post"


# ------------------------------------------------------------------------------------------------ helpers

@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""
    def _timeout(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _acts(n_rows: int = 6, width: int = 4, seed: int = 0) -> Activations:
    """Activations built directly (no model): seeded values, so two processes build identical ones."""
    g = torch.Generator().manual_seed(seed)
    rows = Rows(np.zeros(n_rows, np.int64), np.arange(n_rows), np.arange(n_rows) + 10,
                tuple(f"t{i}" for i in range(n_rows)))
    return Activations({"blocks.0.hook_resid_post": torch.randn(n_rows, width, generator=g),
                        "blocks.1.hook_resid_post": torch.randn(n_rows, width, generator=g)}, rows, {"seed": seed})


def _same(a: Activations, b: Activations) -> bool:
    return (a.sites == b.sites and all(torch.equal(a[s], b[s]) for s in a.sites)
            and a.rows.token == b.rows.token and np.array_equal(a.rows.position, b.rows.position))


def _siblings(path: Path) -> list[str]:
    """Temporaries beside ``path`` (what a write may leave behind)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith((".tmp-", ".old-")))


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def _capture_argv(tiny_paths, out) -> list:
    text = Path(tiny_paths["gpt2"]).parent / "faults-text.txt"
    text.write_text(TEXT + "\n\nA second paragraph about tea.\n", encoding="utf-8")
    return ["capture", tiny_paths["gpt2"], "--text-file", text, "--sites", SITES, "--quiet", "--out", out]


# ------------------------------------------------------------------------------------ --out: never lose data

def test_out_into_a_user_folder_is_refused_and_nothing_is_touched(tiny_paths, cache_dir, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    code, err = _cli(capsys, *_capture_argv(tiny_paths, thesis))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "thesis.tex" in err[0]
    assert sorted(os.listdir(thesis)) == ["thesis.tex"] and (thesis / "thesis.tex").read_text() == "\\documentclass{article}"
    assert _siblings(thesis) == []


def test_out_dot_never_empties_the_working_folder(tiny_paths, cache_dir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    code, err = _cli(capsys, *_capture_argv(tiny_paths, "."))
    assert code == 2 and len(err) == 1 and "notes.txt" in err[0]
    assert os.listdir(work) == ["notes.txt"]
    (work / "notes.txt").unlink()  # even an empty working folder is not replaced (the shell would lose it)
    code, err = _cli(capsys, *_capture_argv(tiny_paths, "."))
    assert code == 2 and len(err) == 1 and "current folder" in err[0] and os.listdir(work) == []


def test_out_naming_a_file_is_refused(tiny_paths, cache_dir, tmp_path, capsys):
    target = tmp_path / "acts"
    target.write_text("not a folder")
    code, err = _cli(capsys, *_capture_argv(tiny_paths, target))
    assert code == 2 and len(err) == 1 and "is a file" in err[0] and target.read_text() == "not a folder"
    code, err = _cli(capsys, *_capture_argv(tiny_paths, target / "sub"))  # a file as a parent folder
    assert code == 2 and len(err) == 1 and target.read_text() == "not a folder"


def test_save_and_atomic_dir_refuse_a_user_folder_whoever_calls_them(tmp_path):
    # The API itself refuses (the CLI also checks early, before loading a model): the regression of issue 10.
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("tex")
    with pytest.raises(LaminaError, match="did not create"):
        _acts().save(thesis)
    with pytest.raises(LaminaError, match="did not create"):
        with io.atomic_dir(thesis, exists="replace") as tmp:
            (tmp / "results.json").write_text("{}")
    assert os.listdir(thesis) == ["thesis.tex"] and _siblings(thesis) == []


def test_out_user_folder_refused_in_a_separate_process(tiny_paths, cache_dir, tmp_path):
    # The real command: exit status 2 and exactly one line on stderr, no traceback.
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("tex")
    env = dict(os.environ, LAMINA_CACHE_DIR=str(cache_dir), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "lamina.cli", *map(str, _capture_argv(tiny_paths, thesis))],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert os.listdir(thesis) == ["thesis.tex"]


def test_rerun_replaces_a_lamina_folder_and_keeps_the_users_files(tiny_paths, cache_dir, tmp_path, capsys):
    out = tmp_path / "acts"
    argv = _capture_argv(tiny_paths, out)
    assert _cli(capsys, *argv)[0] == 0
    first = Activations.load(out)
    (out / "mine.txt").write_text("my notes")
    (out / "plots").mkdir()
    (out / "plots" / "fig.png").write_bytes(b"png")
    argv[argv.index(SITES)] = "blocks.0.hook_mlp_out"
    assert _cli(capsys, *argv)[0] == 0
    second = Activations.load(out)
    assert second.sites == ["blocks.0.hook_mlp_out"] and first.sites != second.sites
    assert (out / "mine.txt").read_text() == "my notes" and (out / "plots" / "fig.png").read_bytes() == b"png"
    assert io.read_manifest(out) == {"activations.json", "activations.safetensors"}
    assert _siblings(out) == []


def test_output_folder_and_files_get_the_usual_modes(tmp_path):
    mask = os.umask(0o022)
    try:
        out = _acts().save(tmp_path / "acts")
        io.atomic_write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(mask)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    for path in [out / "activations.json", out / "activations.safetensors", tmp_path / "report.json"]:
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path  # not mkstemp's 0600


def test_empty_folder_symlink_and_legacy_capture_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _same(Activations.load(_acts().save(empty)), _acts())
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    _acts().save(link)
    assert link.is_symlink() and _same(Activations.load(target), _acts())
    legacy = tmp_path / "legacy"  # written by lamina before manifests: format 1, two files
    legacy.mkdir()
    (legacy / "activations.json").write_text(json.dumps({"format": 1, "sites": [], "tokens": [], "provenance": {}}))
    (legacy / "activations.safetensors").write_bytes(b"old")
    (legacy / "mine.txt").write_text("kept")
    _acts(seed=3).save(legacy)
    assert _same(Activations.load(legacy), _acts(seed=3)) and (legacy / "mine.txt").read_text() == "kept"


def test_replace_removes_old_lamina_files_and_refuses_clashes(tmp_path):
    out = tmp_path / "report"
    with io.atomic_dir(out, exists="replace") as tmp:
        (tmp / "results.json").write_text("1")
        (tmp / "old-figure.png").write_text("1")
    (out / "notes.md").write_text("mine")
    with io.atomic_dir(out, exists="replace") as tmp:
        (tmp / "results.json").write_text("2")
    assert sorted(os.listdir(out)) == [io.MANIFEST, "notes.md", "results.json"]  # old-figure.png was lamina's
    (out / "summary.txt").write_text("mine too")
    with pytest.raises(LaminaError, match="summary.txt"):  # the new run writes a file of the user's name
        with io.atomic_dir(out, exists="replace") as tmp:
            (tmp / "results.json").write_text("3")
            (tmp / "summary.txt").write_text("lamina")
    assert (out / "summary.txt").read_text() == "mine too" and (out / "results.json").read_text() == "2"
    assert _siblings(out) == []


def test_a_manifest_pointing_outside_the_folder_is_not_trusted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("keep")
    (out / io.MANIFEST).write_text(json.dumps({"kind": "lamina output folder", "version": 1,
                                               "files": ["../precious.txt"]}))
    with pytest.raises(LaminaError, match="did not create"):
        io.check_output_dir(out)
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_two_rename_fallback_and_a_file_arriving_during_the_swap(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with io.atomic_dir(out, exists="replace") as tmp:
        (tmp / "a.txt").write_text("old")
    (out / "mine.txt").write_text("mine")
    monkeypatch.setattr(outdir, "_renameat2", lambda *a: False)  # no renameat2: two renames
    carry = outdir._carry

    def carry_then_a_user_writes(src, dst, files, dirs):
        carry(src, dst, files, dirs)
        (src / "late.txt").write_text("arrived during the swap")  # not carried: must be moved, never lost

    monkeypatch.setattr(outdir, "_carry", carry_then_a_user_writes)
    with io.atomic_dir(out, exists="replace") as tmp:
        (tmp / "a.txt").write_text("new")
    assert {p: (out / p).read_text() for p in ["a.txt", "mine.txt", "late.txt"]} == {
        "a.txt": "new", "mine.txt": "mine", "late.txt": "arrived during the swap"}
    assert _siblings(out) == []


def test_an_exception_in_the_block_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "out"
    with io.atomic_dir(out, exists="replace") as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_dir(out, exists="replace") as tmp:
            (tmp / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "old" and _siblings(out) == []


# ------------------------------------------------------------------------- kill -9 in the middle of a write

_KILL_HELPER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import lamina._io as io
    import lamina._outdir as outdir

    mode, out, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    def pause(*_):
        marker.write_text(str(os.getpid()))
        time.sleep(120)  # killed here

    if mode == "body":  # a real capture save, killed inside save_file
        import lamina.capture.activations as A
        write = A.save_file
        A.save_file = lambda tensors, path: (write(tensors, path), pause())
        import torch, numpy as np
        rows = A.Rows(np.zeros(2, np.int64), np.arange(2), np.arange(2), ("a", "b"))
        A.Activations({"blocks.0.hook_resid_post": torch.ones(2, 3)}, rows, {}).save(out)
    else:
        if mode == "retire":  # killed after the swap, before the old folder is removed
            outdir._retire = pause
        elif mode == "between-renames":  # no renameat2; killed between its two renames
            outdir._renameat2 = lambda *a: False
            rename = os.rename
            def slow_rename(src, dst):
                rename(src, dst)
                if Path(dst).name.startswith(".old-"):
                    pause()
            os.rename = slow_rename
        with io.atomic_dir(out, exists="replace") as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "b.txt").write_text("new")
""")


def _killed_during(mode: str, out: Path, tmp_path: Path) -> None:
    helper = tmp_path / "kill_helper.py"
    helper.write_text(_KILL_HELPER)
    marker = tmp_path / f"ready-{mode}"
    proc = subprocess.Popen([sys.executable, str(helper), mode, str(out), str(marker)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        for _ in range(1200):  # up to 60 s for the helper to reach the pause
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), f"helper exited with {proc.poll()} before the pause"
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait()


def _old_folder(out: Path) -> None:
    with io.atomic_dir(out, exists="replace") as tmp:
        (tmp / "a.txt").write_text("old")
    (out / "mine.txt").write_text("mine")


def test_kill_inside_a_capture_save_leaves_the_old_folder_and_the_rerun_cleans(tmp_path):
    out = tmp_path / "acts"
    _acts(seed=1).save(out)
    (out / "mine.txt").write_text("mine")
    _killed_during("body", out, tmp_path)
    assert _same(Activations.load(out), _acts(seed=1)) and (out / "mine.txt").read_text() == "mine"
    assert len(_siblings(out)) == 1  # the dead process's temporary ...
    _acts(seed=2).save(out)  # ... is removed by the next write
    assert _same(Activations.load(out), _acts(seed=2)) and (out / "mine.txt").read_text() == "mine"
    assert _siblings(out) == []


def test_kill_after_the_swap_leaves_the_new_folder_and_the_rerun_cleans(tmp_path):
    out = tmp_path / "out"
    _old_folder(out)
    _killed_during("retire", out, tmp_path)
    assert (out / "a.txt").read_text() == "new" and (out / "b.txt").read_text() == "new"
    assert (out / "mine.txt").read_text() == "mine" and len(_siblings(out)) == 1
    with io.atomic_dir(out, exists="replace") as tmp:
        (tmp / "a.txt").write_text("third")
    assert sorted(os.listdir(out)) == [io.MANIFEST, "a.txt", "mine.txt"] and _siblings(out) == []


def test_kill_between_the_fallback_renames_is_recovered_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    _old_folder(out)
    _killed_during("between-renames", out, tmp_path)
    assert not out.exists() and len(_siblings(out)) == 2  # the parked old folder and the new one
    io.clean_stale_temps(out.parent, out.name)  # what the next write (or read) of the folder does first
    assert (out / "a.txt").read_text() == "old" and (out / "mine.txt").read_text() == "mine"
    assert not (out / "b.txt").exists() and _siblings(out) == []


def test_temporaries_of_live_processes_are_never_cleaned(tmp_path):
    live = tmp_path / f".tmp-out-{os.getppid()}-0123abcd"
    dead = tmp_path / ".tmp-out-999999999-0123abcd"  # above any pid_max (4194304): never a live process
    live.mkdir()
    dead.mkdir()
    assert io.stale_temps(tmp_path) == [dead]
    io.clean_stale_temps(tmp_path)
    assert live.exists() and not dead.exists()


# ------------------------------------------------------------------------------------- batch_size: no hang

@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_capture_rejects_a_batch_size_that_is_not_a_positive_whole_number(tiny_models, cache_dir, bad):
    with deadline(30), pytest.raises(LaminaError, match="batch_size"):
        lamina.capture(tiny_models["gpt2"], TEXT, SITES, batch_size=bad)


def test_batches_always_end_and_cover_every_text_once():
    with deadline(5):
        with pytest.raises(ValueError):
            _batches([5, 6], 0)
        lengths = [3, 4000, 5, 2, 5000, 1]
        for size in (None, 1, 2, 100):
            batches = _batches(lengths, size)
            assert [i for b in batches for i in b] == list(range(len(lengths)))
            assert all(len(b) >= 1 and (size is None or len(b) <= size) for b in batches)


# ------------------------------------------------------------------------------- the cache under faults

def _entry(cache_dir: Path) -> Path:
    (entry,) = [p for p in (cache_dir / "activations").iterdir() if not p.name.startswith(".")]
    return entry


def _damage_and_recapture(model, cache_dir, damage, recwarn_match: str):
    reference = lamina.capture(model, TEXT, SITES)
    lamina.capture(model, TEXT, SITES, cache=True)
    entry = _entry(cache_dir)
    damage(entry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = lamina.capture(model, TEXT, SITES, cache=True)
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1 and "\n" not in str(cache_warnings[0].message)
    assert recwarn_match in str(cache_warnings[0].message)
    assert _same(again, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # the rewritten entry is sound: no warning on reuse
        assert _same(lamina.capture(model, TEXT, SITES, cache=True), reference)
    return entry


def test_truncated_entry_is_discarded_with_one_warning_and_recomputed(tiny_models, cache_dir):
    def truncate(entry):
        data = (entry / "activations.safetensors").read_bytes()
        (entry / "activations.safetensors").write_bytes(data[: len(data) // 2])

    _damage_and_recapture(tiny_models["gpt2"], cache_dir, truncate, "truncated")


def test_a_flipped_byte_is_caught_by_the_checksum(tiny_models, cache_dir):
    def flip(entry):
        path = entry / "activations.safetensors"
        data = bytearray(path.read_bytes())
        data[-40] ^= 0x40  # inside the last tensor's data: the file still parses, the values are wrong
        path.write_bytes(bytes(data))

    _damage_and_recapture(tiny_models["gpt2"], cache_dir, flip, "checksum")


def test_flipped_byte_changes_values_that_a_plain_load_would_use(tmp_path):
    # The null for the checksum test above: the same flip, read without verification, gives other values.
    out = _acts().save(tmp_path / "acts")
    path = out / "activations.safetensors"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x40
    path.write_bytes(bytes(data))
    from safetensors.torch import load_file

    raw = load_file(str(path))
    assert not all(torch.equal(raw[f"site/{s}"], _acts()[s]) for s in _acts().sites)
    with pytest.raises(DamagedActivations, match="checksum"):
        Activations.load(out)


def test_damaged_metadata_missing_files_and_foreign_entries(tiny_models, cache_dir):
    model = tiny_models["gpt2"]
    _damage_and_recapture(model, cache_dir, lambda e: (e / "activations.json").write_text("{not json"),
                          "not valid JSON")

    def edit_metadata(entry):  # still valid JSON of the right shape, but not what was written
        meta = json.loads((entry / "activations.json").read_text())
        meta["tokens"][0] = meta["tokens"][0] + "x"
        (entry / "activations.json").write_text(json.dumps(meta))

    _damage_and_recapture(model, cache_dir, edit_metadata, "activations.json fails its checksum")
    _damage_and_recapture(model, cache_dir, lambda e: (e / "activations.safetensors").unlink(), "missing")

    def foreign_file(entry):
        import shutil

        shutil.rmtree(entry)
        entry.write_text("someone else's file")

    _damage_and_recapture(model, cache_dir, foreign_file, "not a folder")

    def legacy(entry):  # an entry of lamina < 0.2: format 1, no checksum
        meta = json.loads((entry / "activations.json").read_text())
        meta.pop("checksum")
        meta["format"] = 1
        (entry / "activations.json").write_text(json.dumps(meta))

    _damage_and_recapture(model, cache_dir, legacy, "no checksum")


def test_loading_a_damaged_user_folder_is_one_clear_error(tmp_path):
    out = _acts().save(tmp_path / "acts")
    (out / "activations.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}")  # a foreign, tiny file
    with pytest.raises(LaminaError) as info:
        Activations.load(out)
    assert "damaged" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LaminaError, match="no saved activations"):
        Activations.load(tmp_path / "nowhere")


def test_orphaned_temporaries_are_counted_and_cleaned(tiny_models, cache_dir, capsys):
    model = tiny_models["gpt2"]
    lamina.capture(model, TEXT, SITES, cache=True)
    root = cache_dir / "activations"
    dead = root / ".tmp-0123abcd-999999999-0123abcd"
    dead.mkdir()
    (dead / "activations.safetensors").write_bytes(b"\0" * 5000)
    live = root / f".tmp-4567-{os.getpid()}-0123abcd"  # being written by a live process (this one)
    live.mkdir()
    assert orphans() == [dead] and "1 orphans" in describe()
    lamina.capture(model, "Another text here.", SITES, cache=True)  # a store cleans them
    assert not dead.exists() and live.exists() and orphans() == []
    dead.mkdir()
    assert main(["cache", "--clear", "activations"]) == 0  # and so does clearing
    assert not dead.exists() and live.exists() and cache_entries() == []
    capsys.readouterr()


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EACCES, "Permission denied"),
    "safetensors",
])
def test_a_cache_that_cannot_be_written_warns_and_the_run_finishes(tiny_models, cache_dir, monkeypatch, failure):
    # We run as root here, so chmod cannot make a folder read-only: the writer raises instead (safetensors
    # reports a full disk as its own SafetensorError, not an OSError: both are covered).
    import lamina.capture.activations as A
    from safetensors import SafetensorError

    if failure == "safetensors":
        failure = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def failing_write(tensors, path):
        Path(path).write_bytes(b"partial")
        raise failure

    monkeypatch.setattr(A, "save_file", failing_write)
    model = tiny_models["gpt2"]
    with pytest.warns(CacheWarning, match="cannot be written") as caught:
        acts = lamina.capture(model, TEXT, SITES, cache=True)
    caught = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert _same(acts, lamina.capture(model, TEXT, SITES))
    assert cache_entries() == [] and os.listdir(cache_dir / "activations") == []  # no half entry, no temporary


def test_cache_size_limit_values(monkeypatch, tiny_models, cache_dir):
    for raw, expected in [("0", None), ("inf", None), ("1e400", None), ("2", 2 * 1024**3), ("", 20 * 1024**3)]:
        monkeypatch.setenv("LAMINA_CACHE_MAX_GB", raw)
        assert cache_limit_bytes() == expected, raw
    for raw in ["nan", "abc", "-1", "20GB"]:
        monkeypatch.setenv("LAMINA_CACHE_MAX_GB", raw)
        with pytest.raises(LaminaError, match="LAMINA_CACHE_MAX_GB"):
            cache_limit_bytes()
        with pytest.raises(LaminaError, match="LAMINA_CACHE_MAX_GB"):  # before anything is computed
            lamina.capture(tiny_models["gpt2"], TEXT, SITES, cache=True)


def test_an_entry_evicted_while_it_is_read_is_read_whole_or_missed(cache_dir, monkeypatch):
    import lamina.capture.activations as A

    entry = cache_dir / "activations" / "k"
    assert store_entry(entry, _acts())
    read = A.load_file

    def evicted_mid_read(path):
        discard_entry(entry)  # another process evicts it between our open and our read
        return read(path)

    monkeypatch.setattr(A, "load_file", evicted_mid_read)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same(load_entry(entry), _acts())  # read whole through the open handle
        assert load_entry(entry) is None  # gone: a quiet miss
    assert not entry.exists() and os.listdir(entry.parent) == []


_RACE_ACTS = """
n = 2000
rows = Rows(np.zeros(n, np.int64), np.arange(n), np.arange(n), tuple(f"t{i}" for i in range(n)))
expected = Activations({"blocks.0.hook_resid_post": torch.arange(n * 64.0).reshape(n, 64)}, rows, {})
"""

_RACE_WRITER = """
import os, sys, time, warnings
from pathlib import Path
import numpy as np, torch
from lamina.cache import discard_entry, store_entry
from lamina.capture.activations import Activations, Rows

entry, seconds, gate = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
warnings.simplefilter("error")  # a cache warning (a write that failed) fails the writer
""" + _RACE_ACTS + """
(gate / str(os.getpid())).touch()  # start together, after the slow imports: a real race
while len(os.listdir(gate)) < 3:
    time.sleep(0.01)
writes, end = 0, time.time() + seconds
while time.time() < end:
    discard_entry(entry)  # force real contention: every round writes the entry anew
    writes += store_entry(entry, expected)
print(writes)
"""


def test_two_writers_and_a_reader_of_one_entry(cache_dir, tmp_path):
    # Two writer processes store (and remove) one entry in a loop while this process reads it: every read is
    # the whole entry or a quiet miss, never an error, a warning or a torn entry; nothing is left behind.
    helper = tmp_path / "race_writer.py"
    helper.write_text(_RACE_WRITER)
    entry = cache_dir / "activations" / "shared-entry"
    env = dict(os.environ, LAMINA_CACHE_DIR=str(cache_dir), OMP_NUM_THREADS="1")
    gate = tmp_path / "gate"
    gate.mkdir()
    writers = [subprocess.Popen([sys.executable, str(helper), str(entry), "1.5", str(gate)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    scope = {"np": np, "torch": torch, "Rows": Rows, "Activations": Activations}
    exec(_RACE_ACTS, scope)
    expected, hits, misses = scope["expected"], 0, 0
    (gate / "reader").touch()
    with deadline(120):
        while len(os.listdir(gate)) < 3:
            time.sleep(0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            while any(w.poll() is None for w in writers):
                got = load_entry(entry)
                if got is None:
                    misses += 1
                else:
                    assert _same(got, expected)
                    hits += 1
    results = [w.communicate(timeout=60) for w in writers]
    for writer, (out, err) in zip(writers, results):
        assert writer.returncode == 0, err
    assert all(int(out) > 0 for out, _ in results) and hits > 0  # everyone took part: the race was real
    if entry.exists():
        assert _same(Activations.load(entry), expected)
    assert orphans() == [] and [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []
