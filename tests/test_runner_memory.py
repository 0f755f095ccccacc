"""One model resident at a time: when a random-init baseline would not fit beside the trained model, the runner
frees the trained weights first, and the report is the same as when both fit."""

from __future__ import annotations

import gc
import json
import weakref

import lamina.capture
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
