"""`lamina run STUDY --backend nnsight`: the whole study reads the model through nnsight, with the same report."""

from __future__ import annotations

import json

import pytest

from lamina.cli import main

pytest.importorskip("nnsight")


def _results(folder):
    doc = json.loads((folder / "results.json").read_text())
    return doc["results"], doc["claims"], doc["baseline"]


def test_study_through_nnsight_equals_hooks(tiny_paths, tmp_path, capsys):
    path = str(tiny_paths["gpt2"])
    for backend in ("hooks", "nnsight"):
        assert main(["run", "qkv-layers", "--model", path, "--out", str(tmp_path / backend), "--backend", backend,
                     "--baseline", "random-init"]) == 0
    hooks, nnsight = _results(tmp_path / "hooks"), _results(tmp_path / "nnsight")
    assert nnsight == hooks  # the same rows bit for bit, so the same numbers, claims and baseline


def test_remote_run_without_key_is_one_line_before_loading(tiny_paths, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    loads = []
    monkeypatch.setattr("lamina.studies.runner.load_cached", lambda *a, **k: loads.append(a))
    code = main(["run", "path-length", "--model", str(tiny_paths["gpt2"]), "--backend", "nnsight", "--remote",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err
    assert "key" in err.lower() and loads == []


def test_remote_needs_the_nnsight_backend(tmp_path, capsys):
    assert main(["run", "path-length", "--remote", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nnsight" in err and "\n" not in err
