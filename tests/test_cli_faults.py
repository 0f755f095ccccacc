"""A hostile user at the command line: every mistake ends in ONE line ``error: ...`` and exit status 2, decided
before any model loads wherever the mistake does not depend on the model; real bugs keep their traceback.

The CLI runs in-process (``lamina.cli.main``) except where a real signal to a real process is the point. Each
case also checks that nothing outside the output folder was touched (a snapshot of the test's folder).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import lamina
import lamina.capture
import lamina.capture.model_checks as model_checks
import lamina.capture.models as models
from lamina.cli import main
from lamina.errors import LaminaError

TEXT = "I drink coffee in the morning. The coffee is hot, and coffee keeps me awake at night. " * 3
SITE = "blocks.0.hook_resid_post"


# ------------------------------------------------------------------------------------------------ helpers

def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime (to prove nothing was touched)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns if path.is_file() else 0)
    return out


def fails(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit status 2 and exactly one stderr line ``error: ...``; return that line."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch, cache_dir):
    """A private working folder with input files, and a guard: loading any model fails the test."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes(("Café au lait, crème brûlée. " * 5).encode("latin-1"))
    (tmp_path / "utf16.txt").write_bytes(TEXT.encode("utf-16"))
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "blank.txt").write_text(" \n\n\t \n", encoding="utf-8")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "thesis.tex").write_text("do not touch", encoding="utf-8")

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded although the mistake was known before loading")

    monkeypatch.setattr(lamina.capture, "load_model", no_load)
    monkeypatch.setattr(models, "load_model", no_load)
    monkeypatch.setattr(lamina, "load_model", no_load)
    return tmp_path


def capture_args(model="tiny-model-folder", **over) -> list[str]:
    opts = {"--text-file": "good.txt", "--sites": SITE, "--out": "acts", **over}
    return ["capture", model, *[x for k, v in opts.items() for x in (k, v)]]


# ------------------------------------------------------------------------- inputs and options, before loading

@pytest.mark.parametrize("argv, expected", [
    (capture_args(**{"--text-file": "latin1.txt"}), "is not UTF-8 text (byte 0xe9 on line 1)"),
    (["run", "mi-layers", "--text-file", "latin1.txt"], "is not UTF-8 text"),
    (["run", "effective-dim", "--corpus", "latin1.txt"], "--corpus latin1.txt is not UTF-8 text"),
    (capture_args(**{"--text-file": "utf16.txt"}), "is UTF-16 text; convert it to UTF-8"),
    (capture_args(**{"--text-file": "binary.bin"}), "is a binary file"),
    (capture_args(**{"--text-file": "empty.txt"}), "is empty"),
    (["run", "mi-layers", "--text-file", "blank.txt"], "is empty"),
    (capture_args(**{"--text-file": "a-folder"}), "is a folder; pass a text file"),
    (["run", "effective-dim", "--corpus", "a-folder"], "is a folder"),
    (capture_args(**{"--text-file": "missing.txt"}), "does not exist"),
    (capture_args(**{"--text-file": "/dev/zero"}), "is a binary file"),  # stops at the first block, not at OOM
    (["run", "mi-theory", "--text-file", "good.txt"], "does not read --text-file"),
    (["run", "mi-layers", "--corpus", "good.txt"], "does not read --corpus; pass your file as --text-file"),
    (["run", "token-length", "--text-file", "good.txt"], "pass your file as --corpus"),
    (capture_args(**{"--out": "thesis.tex"}), "is a file, not a folder"),
    (["run", "mi-layers", "--out", "thesis.tex"], "is a file, not a folder"),
    (capture_args(**{"--out": "thesis.tex/acts"}), "is a file"),
    (capture_args(**{"--out": ""}), "--out is empty"),
    (["run", "mi-layers", "--out", ""], "--out is empty"),
    (capture_args(**{"--sites": ""}), "--sites is empty"),
    (capture_args(**{"--sites": " , "}), "--sites is empty"),
    (capture_args(**{"--positions": "foo:bar"}), "positions 'foo:bar' not understood"),
    (capture_args(**{"--positions": "word:"}), "not understood"),
    (capture_args(**{"--positions": "index:x"}), "not understood"),
    (capture_args(**{"--batch-size": "0"}), "--batch-size: must be a whole number >= 1"),
    (capture_args(**{"--batch-size": "-3"}), "--batch-size: must be a whole number >= 1"),
    (capture_args(**{"--batch-size": "two"}), "--batch-size: must be a whole number >= 1"),
    (capture_args(**{"--device": "cuda:7"}), "device 'cuda:7' is not available"),
    (capture_args(**{"--device": "tpu"}), "device 'tpu' is not a torch device"),
    (["sites", "tiny", "--device", "banana"], "is not a torch device"),
    (["sites", "tiny", "--device", "meta"], "device 'meta' holds no weights"),
    (["run", "mi-layers", "--device", "cuda"], "device 'cuda' is not available"),
    (["demo", "--device", "mps"], "device 'mps' is not available"),
    (["sites", "tiny", "--dtype", "int7"], "unknown dtype 'int7'"),
    (["run", "mi-layers", "--set", "bins"], "--set 'bins' is not key=value"),
    (["run", "mi-layers", "--set", "=3"], "is not key=value"),
    (["run", "mi-layers", "--set", "binz=3"], "unknown setting 'binz'"),
    (["run", "mi-layers", "--set", "bins=3", "--set", "bins=5"], "--set bins is given twice"),
    (["run", "mi-layers", "--set", "max_tokens=many"], "expected a"),
    (["run", "mi-layers", "--set", "skip_first=maybe"], "expected true or false"),
    (["run", "mi-layers", "--model", "a", "--model", "a"], "--model a is given twice"),
    (["run", "mi-theory", "--model", "gpt2"], "uses no model"),
    (["run", "mi-layers", "--model", "gpt2", "--model", "./typo"], "no folder or file './typo'"),  # before gpt2
    (capture_args(**{"--out": "."}), "--out . is a folder lamina did not create"),
    (["demo", "--reports", "thesis.tex"], "is a file"),
    (["run", "mi-layers", "--model", "a", "--model", "b", "--out", "thesis.tex"], "is a file"),
    (["run", "nope"], "unknown study 'nope'"),
    (["info", "nope"], "unknown study 'nope'"),
    (["demo", "--only", "nope"], "unknown study 'nope'"),
    (["run"], "lamina run: the following arguments are required: study"),
    ([], "the following arguments are required: command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["cache", "--clear", "bogus"], "invalid choice: 'bogus'"),
    (["capture", "tiny", "--sites", SITE], "the following arguments are required: --text-file"),
    (["run", "mi-layers", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_mistake_is_one_line_before_any_model_loads(work, capsys, argv, expected):
    before = snapshot(work)
    line = fails(capsys, argv)
    assert expected in line, line
    assert snapshot(work) == before  # nothing created, nothing changed (no reports/, no acts/)


def test_read_only_output_folder_is_refused_before_loading(work, capsys, monkeypatch):
    # As root, chmod does not stop writes, so the probe's failure is simulated where it happens.
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    assert "cannot be written" in fails(capsys, capture_args(**{"--out": "acts"}))
    assert "cannot be written" in fails(capsys, ["run", "mi-layers", "--out", "report"])
    assert "cannot be written" in fails(capsys, ["run", "mi-layers"])  # the default reports/ folder
    assert "cannot be written" in fails(capsys, ["demo", "--reports", "reports"])
    assert not (work / "acts").exists() and not (work / "reports").exists()


def test_a_folder_lamina_did_not_create_is_refused(work, capsys):
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("keep", encoding="utf-8")
    before = snapshot(work)
    assert "lamina did not create" in fails(capsys, capture_args(**{"--out": "mine"}))
    assert "lamina did not create" in fails(capsys, ["run", "mi-layers", "--out", "mine"])
    assert snapshot(work) == before


@pytest.mark.parametrize("value, expected", [("nan", "is not a size"), ("-1", "is not a size"),
                                             ("abc", "is not a number")])
def test_cache_limit_is_checked_first(work, capsys, monkeypatch, value, expected):
    monkeypatch.setenv("LAMINA_CACHE_MAX_GB", value)
    for argv in (["run", "mi-layers"], ["cache"], ["cache", "--clear", "activations"], ["demo"]):
        assert expected in fails(capsys, argv)


# ------------------------------------------------------------------------------------------ study settings

@pytest.mark.parametrize("study, setting, expected", [
    ("coffee-mi", "bins=1", "bins must be >= 2"),
    ("coffee-mi", "bins=bogus", "is not a bin rule"),
    ("coffee-mi", "bins=100000", "bins must be <= 255"),
    ("coffee-mi", "alpha=nan", "alpha must be a number, not nan"),
    ("coffee-mi", "trim_z=inf", "trim_z must be a positive finite number"),
    ("coffee-mi", "layer=-1", "layer must be >= 0"),
    ("coffee-mi", "seed=-1", "seed must be >= 0"),
    ("coffee-mi", "n_neighbors=0", "n_neighbors must be >= 1"),
    ("coffee-mi", "correction=holm", "correction must be one of fdr_bh, bonferroni"),
    ("mi-theory", "noise=inf", "noise must be finite"),
    ("mi-theory", "noise=nan", "noise must be a number, not nan"),
    ("mi-theory", "noise=0", "noise must be > 0"),
    ("mi-theory", "n_samples=-5", "n_samples must be >= 50"),
    ("mi-theory", "bins=1", "bins must be >= 2"),
    ("mi-theory", "bin_sweep=", "bin_sweep is empty"),
    ("mi-theory", "bin_sweep=5,1", "bin_sweep values must be >= 2"),
    ("mi-theory", "rho=1", "rho must be in [0, 1)"),
    ("mi-theory", "n_samples=1e12", "expected a"),
    ("punctuation-clusters", "plot_points=0", "plot_points must be >= 1"),
    ("punctuation-clusters", "deep_layer=-2", "deep_layer must be >= 0"),
    ("path-length", "alpha=2", "alpha must be in (0, 1)"),
    ("path-length", "scatter_every=0", "scatter_every must be >= 1"),
    ("mi-layers", "bins=0", "bins must be >= 2"),
    ("mi-layers", "trim_z=-1", "trim_z must be a positive finite number"),
    ("mi-layers", "n_permutations=5", "n_permutations must be >= "),
    ("effective-dim", "thresholds=0.5,nan", "thresholds values must be a number, not nan"),
    ("effective-dim", "thresholds=0.5,1.5", "thresholds values must be in (0, 1]"),
    ("token-length", "block=-3", "block must be >= 0"),
    ("token-length", "n_tokens=10", "n_tokens must be >= 100"),
    ("token-length", "compare=./typo", "no folder or file './typo'"),  # was: after the main model's computation
    ("qkv-similarity", "extreme=1", "extreme must be in (0, 1)"),
    ("rsa-categories", "layer=-2", "layer must be >= 0"),
    ("logit-lens", "top_k=0", "top_k must be >= 1"),
])
def test_setting_out_of_range_is_refused_before_loading(work, capsys, study, setting, expected):
    line = fails(capsys, ["run", study, "--set", setting])
    assert expected in line, line


def _numeric_fields():
    import dataclasses
    import typing

    from lamina.studies import REGISTRY, _load_all

    _load_all()
    for name, study in REGISTRY.items():
        hints = typing.get_type_hints(study.config_cls)
        for f in dataclasses.fields(study.config_cls):
            text = str(hints[f.name])
            if "int" in text or "float" in text:
                yield name, f.name, text


@pytest.mark.parametrize("study, field, kind", list(_numeric_fields()))
def test_every_numeric_setting_is_range_checked(work, capsys, study, field, kind):
    # -1 is outside the range of every numeric setting of every study (counts, layers, seeds, fractions,
    # thresholds, scales), and NaN is never a valid float setting.
    assert field in fails(capsys, ["run", study, "--set", f"{field}=-1"])
    if "float" in kind:
        assert field in fails(capsys, ["run", study, "--set", f"{field}=nan"])


# ----------------------------------------------------------------------- settings that need the model

@pytest.fixture
def tiny_gpt2(tiny_paths, cache_dir, tmp_path, monkeypatch):
    """The tiny GPT-2 folder (2 blocks, a 512-token vocabulary); computing a study fails the test."""
    from lamina.studies import REGISTRY, _load_all
    from lamina.studies.base import Study

    monkeypatch.chdir(tmp_path)
    _load_all()

    def no_compute(*args, **kwargs):
        raise AssertionError("the study was computed although the setting was known to be invalid")

    for name, study in list(REGISTRY.items()):
        monkeypatch.setitem(REGISTRY, name, Study(**{**study.__dict__, "compute": no_compute}))
    return tiny_paths["gpt2"]


@pytest.mark.parametrize("study, setting, expected", [
    ("logit-lens", "top_k=100000", "top_k=100000 is larger than gpt2's vocabulary"),
    ("logit-lens", "layer=99", "layer=99 does not exist: gpt2 has hidden states 0..2"),
    ("coffee-mi", "layer=2", "layer=2 does not exist: gpt2 has blocks 0..1"),
    ("punctuation-clusters", "deep_layer=50", "deep_layer=50 does not exist"),
    ("token-length", "block=5", "block=5 does not exist"),
    ("qkv-similarity", "layer=1000", "layer=1000 does not exist"),
    ("rsa-categories", "layer=7", "layer=7 does not exist"),
])
def test_setting_out_of_the_models_range_is_refused_before_computing(tiny_gpt2, capsys, tmp_path, study, setting,
                                                                      expected):
    line = fails(capsys, ["run", study, "--model", tiny_gpt2, "--set", setting])
    assert expected in line, line
    assert not (tmp_path / "reports").exists()


# ----------------------------------------------------------------------------------------- model loading

def _damage(src: Path, dst: Path, how: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if how == "config-not-json":
        (dst / "config.json").write_text("{ not json", encoding="utf-8")
    elif how == "config-no-model-type":
        (dst / "config.json").write_text("[]", encoding="utf-8")
    elif how == "weights-missing":
        weights.unlink()
    elif how == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "weights-garbage":
        weights.write_bytes(b"\0" * 64)
    elif how == "shard-missing":
        weights.rename(dst / "model-00001-of-00001.safetensors")
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"x": "model-00001-of-00001.safetensors", "y": "model-00002-of-00002.safetensors"}}))
    elif how == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (dst / name).unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize("how, expected", [
    ("config-not-json", "this folder is damaged: config.json is not valid JSON"),
    ("config-no-model-type", "this folder is damaged: config.json has no model_type"),
    ("weights-missing", "this folder is damaged: it has no weights"),
    ("weights-truncated", "this folder is damaged: model.safetensors is truncated"),
    ("weights-garbage", "this folder is damaged: model.safetensors is not a readable safetensors file"),
    ("shard-missing", "this folder is damaged: weight file model-00002-of-00002.safetensors"),
    ("no-tokenizer", "has no tokenizer"),
])
def test_damaged_model_folder_says_what_is_damaged(tiny_paths, tmp_path, capsys, monkeypatch, how, expected):
    monkeypatch.chdir(tmp_path)
    folder = _damage(tiny_paths["gpt2"], tmp_path / "model", how)
    line = fails(capsys, ["sites", folder])
    assert expected in line, line
    assert "hub" not in line  # a local folder is never reported as a download problem


@pytest.mark.parametrize("spec, expected", [
    ("./no/such/folder", "no folder or file './no/such/folder'; check the path"),
    ("a/b/c", "no folder or file 'a/b/c'"),
    ("fake.gguf", "is not a GGUF file"),
    ("missing.gguf", "GGUF file 'missing.gguf' not found"),
    ("good.txt", "is neither a model folder nor a .gguf file"),
])
def test_model_spec_mistakes(tmp_path, capsys, monkeypatch, spec, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake.gguf").write_text("not a gguf", encoding="utf-8")
    (tmp_path / "good.txt").write_text(TEXT, encoding="utf-8")
    assert expected in fails(capsys, ["sites", spec])


def _hub_guard(monkeypatch):
    """Record AutoConfig lookups; any that may go online (local_files_only not set) fails the test."""
    from transformers import AutoConfig

    original = AutoConfig.from_pretrained.__func__
    calls = []

    def lookup(cls, *args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        if not kwargs.get("local_files_only"):
            raise AssertionError("the hub was contacted although it is unreachable")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(lookup))
    return calls


def test_unknown_hub_id_offline_fails_fast_with_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    attempts = []

    def unreachable(address, timeout=None, *args):
        attempts.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    calls = _hub_guard(monkeypatch)
    started = time.perf_counter()
    line = fails(capsys, ["sites", "no-such-org/no-such-model"])
    seconds = time.perf_counter() - started
    assert "the hub is unreachable" in line and "Network is unreachable" in line, line
    assert len(attempts) == 1 and attempts[0][1] <= 2  # one quick probe, no retries
    assert calls == [True]  # only the local cache was consulted
    assert seconds < 10  # was ~28 s of retries; generous: the shared CI machine may be slow to import


def test_hub_offline_mode_needs_no_probe(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the hub offline"))
    _hub_guard(monkeypatch)
    assert "HF_HUB_OFFLINE is set" in fails(capsys, ["sites", "no-such-org/no-such-model"])


def test_hub_probe_that_hangs_is_abandoned(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    def hangs(*args, **kwargs):  # a connection that never answers, then fails (after the test is long gone)
        time.sleep(30)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    started = time.perf_counter()
    reason = model_checks.hub_unreachable(timeout=0.3)
    assert "did not answer" in reason
    assert time.perf_counter() - started < 3  # the timeout (0.3 s) + 0.5 s grace, with slack for a busy machine


# ------------------------------------------------------------------------------------------ token ids (API)

@pytest.fixture(scope="module")
def gpt2_model(tiny_paths):
    return lamina.load_model(tiny_paths["gpt2"])


@pytest.mark.parametrize("texts, expected", [
    ([[1, 2, 100000]], "token id 100000, outside gpt2's vocabulary (0..511)"),
    ([[5, -1]], "token id -1, outside"),
    ([[1.0, 2.0]], "neither a string nor a 1-D sequence of integer token ids"),
    ([[[1, 2], [3, 4]]], "neither a string nor a 1-D sequence"),
    ([b"bytes"], "is bytes; decode it"),
    ([[]], "has no token ids"),
    (42, "texts must be a string or a list"),
])
def test_token_ids_are_checked(gpt2_model, texts, expected):
    with pytest.raises(LaminaError, match=re.escape(expected)):
        lamina.capture(gpt2_model, texts, SITE)


def test_valid_token_ids_still_capture(gpt2_model):
    import numpy as np
    import torch

    ids = [3, 17, 200, 511]
    for form in (ids, np.array(ids, dtype=np.int32), torch.tensor(ids)):
        acts = lamina.capture(gpt2_model, [form], SITE)
        assert acts.rows.token_id.tolist() == ids


# ------------------------------------------------------------------------------------------------ compare

def test_compare_refuses_what_is_not_a_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"a": 1}), encoding="utf-8")
    (tmp_path / "listing").mkdir()
    (tmp_path / "listing" / "results.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain.json").write_text("{}", encoding="utf-8")
    before = snapshot(tmp_path)
    assert "is not a lamina report" in fails(capsys, ["compare", "other", "other"])
    assert "is not a lamina report" in fails(capsys, ["compare", "listing"])
    for folder in ("broken", "empty", "plain.json", "missing"):
        assert "has no readable results.json" in fails(capsys, ["compare", folder])
    assert "is a file" in fails(capsys, ["compare", "other", "--out", "plain.json"])
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------- bugs and signals

def test_a_real_bug_keeps_its_traceback(work, monkeypatch):
    import lamina.studies.runner as runner

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(runner, "run_study", bug)
    monkeypatch.setattr("lamina.studies.run_study", bug)
    with pytest.raises(ZeroDivisionError):
        main(["run", "mi-theory"])


def test_the_studies_read_what_the_table_says():
    """runner.READS (used to refuse a --text-file/--corpus a study would ignore) matches the studies' code."""
    import importlib

    from lamina.studies import REGISTRY, _load_all
    from lamina.studies.runner import READS

    _load_all()
    assert set(READS) == set(REGISTRY)  # a new study must say what it reads
    for name, study in REGISTRY.items():
        source = Path(importlib.import_module(study.compute.__module__).__file__).read_text(encoding="utf-8")
        reads = {key for key in ("text", "corpus") if f'inputs.get("{key}")' in source}
        if "_sentences(inputs)" in source:  # qkv-layers reads the sentences through qkv-similarity's helper
            reads.add("text")
        assert reads == set(READS[name]), name


_INTERRUPTIBLE = """
import sys, time
import lamina.studies as studies
from lamina.cli import main
studies._load_all()
study = studies.REGISTRY["mi-theory"]

def slow(*args, **kwargs):
    print("computing", flush=True)
    time.sleep(60)

studies.REGISTRY["mi-theory"] = type(study)(**{**study.__dict__, "compute": slow})
sys.exit(main(["run", "mi-theory", "--out", sys.argv[1]]))
"""


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    env = {**os.environ, "LAMINA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, str(tmp_path / "out")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "computing"  # interrupted in the middle of the work
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
    assert not (tmp_path / "out").exists()


def test_closed_output_pipe_is_quiet(work, monkeypatch, capsys):
    """`lamina list | true`: the reader is gone; no traceback, the shell's status for SIGPIPE."""

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["list"]) == 141
    assert capsys.readouterr().err == ""
