"""Every registered study runs on every supported architecture (tiny random models) with small settings:
studies adapt to depth, width, context length, GQA widths, fused QKV layouts and masked vs causal heads."""

from __future__ import annotations

import json

import pytest

from lamina.studies import REGISTRY, run_study
from lamina.studies import _load_all
from lamina.testing import TINY_ARCHS, single_token_words

_load_all()

SMALL = {
    "punctuation-clusters": {"n_per_type": 20},
    "token-length": {"n_tokens": 300, "seq_len": 100, "compare": "none"},
    "effective-dim": {"n_tokens": 150},
    "mi-theory": {"n_samples": 500, "n_pairs": 6, "pair_samples": 200, "sample_sizes": "100,300", "repeats": 2},
    "rsa-categories": {"n_permutations": 20},
    "coffee-mi": {"knn": False},
}


def _matrix():
    """Every (study, architecture) pair. The default suite runs each study on the llama (with its random-init
    baseline) and on one other family in rotation, so every family runs several studies; the rest are `slow`
    (``make test-all``) to keep the default suite within its time budget."""
    others = [a for a in TINY_ARCHS if a != "llama"]
    model_studies = [s for s in sorted(REGISTRY) if REGISTRY[s].needs != "none"]
    rotation = {s: others[i % len(others)] for i, s in enumerate(model_studies)}
    cases = []
    for study in sorted(REGISTRY):
        for arch in TINY_ARCHS:
            if REGISTRY[study].needs == "none":
                if arch == TINY_ARCHS[0]:  # needs no model: run once
                    cases.append(pytest.param(study, arch, id=f"{study}-{arch}"))
                continue
            default = arch == "llama" or rotation[study] == arch
            cases.append(pytest.param(study, arch, id=f"{study}-{arch}",
                                      marks=() if default else pytest.mark.slow))
    return cases


@pytest.mark.parametrize(("study", "arch"), _matrix())
def test_every_study_on_every_architecture(tiny_models, tmp_path, cache_dir, study, arch):
    model = tiny_models[arch]
    overrides = dict(SMALL.get(study, {}))
    text_file = None
    if study == "logit-lens" and model.is_masked_lm:
        overrides["mask_word"] = "is"  # one token in the tiny WordPiece vocabulary
    if study == "rsa-categories":  # the tiny vocabularies split most nouns: use words that are one token
        words = single_token_words(model, 12)
        text_file = tmp_path / "cats.txt"
        text_file.write_text("\n".join(f"c{i}: {', '.join(words[4 * i:4 * i + 4])}" for i in range(3)))
    # The random-init baseline doubles each run; once per study (on the llama) is enough to show it works.
    folder = run_study(study, model=model, out=tmp_path / "r", overrides=overrides, text_file=text_file,
                       reports_root=tmp_path, baseline="random-init" if arch == "llama" else "none")
    doc = json.loads((folder / "results.json").read_text())
    assert doc["study"] == study and doc["claims"]
    if "per_layer" in doc["results"]:
        assert len(doc["results"]["per_layer"]) in (model.n_layers, model.n_layers + 1)
