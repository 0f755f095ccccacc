"""The claim record, verdict rules, the report's claims table and index, and report folders that are always one
run's complete output (a Ctrl-C while figures are drawn keeps the previous report whole)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from lamina.studies import base, runner
from lamina.studies.base import StudyOutput
from lamina.studies.claims import VERDICTS, Claim, decide, format_value, tally


def _claim(**kw):
    args = dict(source="lamina", criterion="x > null mean + 2 sd", measured={"x": 1.0}, verdict="holds",
                null={"what": "shuffled", "mean": 0.0, "sd": 0.1})
    args.update(kw)
    return Claim("x is large", **args)


def test_claim_record_validates_its_fields():
    c = _claim(p=0.01, ci=(0.5, 1.5))
    assert c["verdict"] == "holds" and c["counted"] and c["ci"] == [0.5, 1.5]
    json.dumps(c)  # JSON-able as it is
    with pytest.raises(ValueError, match="verdict"):
        _claim(verdict="yes")
    with pytest.raises(ValueError, match="null"):
        _claim(null=None)
    with pytest.raises(ValueError, match="what"):
        _claim(null={"mean": 0})
    with pytest.raises(ValueError, match="criterion"):
        _claim(criterion="")
    assert _claim(null=None, null_reason="an exact identity")["null"] is None
    assert not _claim(by_construction="rotary: no position embedding")["counted"]
    assert not _claim(verdict="not applicable")["counted"]


@pytest.mark.parametrize("effect, significant, applicable, expected", [
    (True, True, True, "holds"),
    (True, False, True, "inconclusive"),  # the effect is there but the null overlaps
    (False, True, True, "does not hold"),
    (False, False, True, "does not hold"),
    (None, True, True, "inconclusive"),  # cannot be computed here
    (True, True, False, "not applicable"),
])
def test_decide(effect, significant, applicable, expected):
    assert decide(effect, significant, applicable=applicable) == expected


def test_tally_skips_claims_true_by_construction():
    claims = [_claim(), _claim(verdict="does not hold"), _claim(by_construction="identity"),
              _claim(verdict="inconclusive"), _claim(verdict="not applicable")]
    t = tally(claims)
    assert [t[v] for v in VERDICTS] == [1, 1, 1, 1] and t["by construction"] == 1


@pytest.mark.parametrize("value, text", [(0.3675428128779634, "0.368"), (-0.004, "-0.004"), (12.345, "12.3"),
                                         (946.2, "946"), (7e-114, "7.00e-114"), (3, "3"), (None, "n/a"),
                                         (float("nan"), "nan"), ({"tau": -0.36754}, "tau -0.368")])
def test_format_value_rounds_for_people(value, text):
    assert format_value(value) == text


# A tiny study registered for these tests only: a per-item mean against a shuffled null.
@dataclass(frozen=True)
class _Cfg:
    effect: float = 1.0


def _compute(model, config, inputs):
    rng = np.random.default_rng(0)
    x = rng.normal(config.effect if getattr(model, "trained", True) else 0.0, 1.0, 200)
    return StudyOutput({"mean": float(x.mean())}, [], arrays={"x": x})


def _claims(output, config, baseline):
    m = output.results["mean"]
    se = float(output.arrays["x"].std(ddof=1) / np.sqrt(len(output.arrays["x"])))
    return [Claim("the mean is positive", source="lamina", criterion="mean > 2 standard errors",
                  measured={"mean": m}, null={"what": "zero mean", "mean": 0.0, "sd": se},
                  verdict=decide(m > 0, m > 2 * se))]


def _figures(output, folder):
    from lamina.report.figures import new_figure, save

    fig, ax = new_figure()
    ax[0, 0].hist(output.arrays["x"])
    name = save(fig, folder, "hist")
    if getattr(_figures, "interrupt", False):
        raise KeyboardInterrupt
    return [(name, "values")]


@pytest.fixture
def toy_study(monkeypatch):
    import sys
    import types

    module = types.ModuleType("lamina_toy_study")
    module.compute, module.claims, module.figures = _compute, _claims, _figures
    monkeypatch.setitem(sys.modules, module.__name__, module)
    _compute.__module__ = module.__name__
    study = base.Study("toy", "a toy", _Cfg, _compute, _figures, needs="none", module=module.__name__)
    monkeypatch.setitem(base.REGISTRY, "toy", study)
    monkeypatch.setattr(base, "get_study", lambda name: base.REGISTRY[name])
    monkeypatch.setattr(runner, "get_study", lambda name: base.REGISTRY[name])
    return study


def test_report_shows_criterion_null_verdict_and_index_counts(tmp_path, toy_study):
    folder = runner.run_study("toy", model=None, reports_root=tmp_path)
    doc = json.loads((folder / "results.json").read_text())
    assert doc["claims"][0]["verdict"] == "holds" and doc["verdicts"]["holds"] == 1
    assert doc["baseline"] == {"skipped": "not applicable: this study uses no model"}
    page = (folder / "report.html").read_text()
    for text in ("mean &gt; 2 standard errors", "zero mean", "holds", "Random-init baseline: not applicable"):
        assert text in page
    index = (tmp_path / "index.html").read_text()
    assert "<td class='yes'>1</td>" in index
    folder2 = runner.run_study("toy", model=None, reports_root=tmp_path, overrides={"effect": 0.0})
    doc = json.loads((folder2 / "results.json").read_text())
    assert doc["claims"][0]["verdict"] != "holds"  # no effect: the criterion fails


def test_interrupted_rerun_keeps_the_previous_report_whole(tmp_path, toy_study, monkeypatch):
    folder = runner.run_study("toy", model=None, reports_root=tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "my_notes.txt").write_text("mine")  # a user's file in the report folder is never lost
    monkeypatch.setattr(_figures, "interrupt", True, raising=False)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study("toy", model=None, reports_root=tmp_path, overrides={"effect": 0.0})
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "my_notes.txt"}
    assert after == before  # results, figures and report all from the first run
    assert (folder / "my_notes.txt").read_text() == "mine"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]  # no temporaries left
    monkeypatch.setattr(_figures, "interrupt", False, raising=False)
    runner.run_study("toy", model=None, reports_root=tmp_path, overrides={"effect": 0.0})
    assert (folder / "my_notes.txt").read_text() == "mine"
    assert json.loads((folder / "results.json").read_text())["config"]["effect"] == 0.0
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert len(set(modes.values())) == 1, modes  # report files and figures get the same permissions


def test_a_real_study_records_its_check_baseline_and_claims(tmp_path, tiny_models, cache_dir):
    """qkv-layers on a tiny Llama: the model's `lamina check` outcome lands in provenance.json, the random-init
    baseline's results in results.json, and every claim carries the baseline's verdict beside its own."""
    folder = runner.run_study("qkv-layers", model=tiny_models["llama"], reports_root=tmp_path)
    doc = json.loads((folder / "results.json").read_text())
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["check"]["passed"] is True
    assert provenance["baseline_model"]["source"] == "random-init"
    assert "results" in doc["baseline"] and doc["baseline"]["model"]["name"].endswith("random-init")
    assert doc["claims"] and all(c["baseline"]["verdict"] in VERDICTS for c in doc["claims"])
    assert sum(doc["verdicts"][v] for v in VERDICTS) + doc["verdicts"]["by construction"] >= len(doc["claims"])
    assert "random-init baseline" in (folder / "report.html").read_text()
