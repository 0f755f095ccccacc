"""The chapter's other studies (issue 6) end to end on tiny random models, each checked against a plain
recomputation of one of its numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lamina import LaminaError, capture
from lamina.capture import residual_sites
from lamina.studies import run_study
from lamina.testing import single_token_words


def _doc(folder):
    doc = json.loads((folder / "results.json").read_text())
    assert doc["claims"] and all({"claim", "criterion", "measured", "verdict"} <= set(c) for c in doc["claims"])
    assert (folder / "report.html").read_text().count("data:image/png;base64") >= 1
    return doc


def test_mi_theory_needs_no_model(tmp_path):
    settings = {"n_samples": 3000, "n_pairs": 20, "pair_samples": 500, "sample_sizes": "100,1000,5000",
                "repeats": 3}
    folder = run_study("mi-theory", out=tmp_path / "t", overrides=settings, reports_root=tmp_path)
    doc = _doc(folder)
    assert doc["model"]["name"] == "synthetic data (no model)" and len(doc["claims"]) == 8
    b = doc["results"]["basics"]
    # MI = H(x) + H(y) - H(x, y) with the same bins: an identity, up to float64 rounding.
    assert b["MI_xy"] == pytest.approx(b["H_x"] + b["H_y"] - b["H_xy"], abs=1e-12)
    # noise = 1: rho = 1/sqrt(2), MI = -0.5 log2(1 - 1/2) = 0.5 bits exactly.
    assert b["MI_xy_analytic"] == pytest.approx(0.5, abs=1e-12)
    assert b["MI_xy"] > b["MI_xz"] >= 0
    # The same seed reproduces the same numbers.
    again = run_study("mi-theory", out=tmp_path / "t2", overrides=settings, reports_root=tmp_path)
    assert (folder / "results.json").read_text() == (again / "results.json").read_text()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_mi_layers_matches_a_plain_recomputation(tiny_models, tmp_path, cache_dir, arch):
    from lamina.stats import pairwise_mutual_information, upper_triangle

    model = tiny_models[arch]
    text = tmp_path / "t.txt"
    text.write_text("The river bends twice before it reaches the sea, and the old town sits on the second bend.")
    folder = run_study("mi-layers", model=model, out=tmp_path / "m", text_file=text, reports_root=tmp_path)
    doc = _doc(folder)
    pl = doc["results"]["per_layer"]
    assert len(pl) == model.n_layers + 1
    acts = capture(model, text.read_text(), residual_sites(model))
    hidden = acts.residual_stream().double().numpy()[:, 1:]  # skip_first
    want = upper_triangle(pairwise_mutual_information(hidden[2], bins=15, trim_z=5.0)).mean()
    assert pl[2]["mi_mean"] == pytest.approx(want, abs=1e-12)  # same estimator on the same float32 values


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_qkv_layers(tiny_models, tmp_path, cache_dir, arch):
    model = tiny_models[arch]
    folder = run_study("qkv-layers", model=model, out=tmp_path / "q", reports_root=tmp_path)
    pl = _doc(folder)["results"]["per_layer"]
    assert len(pl) == model.n_layers
    first = pl[0]["target"]["Q"]["cosine_mean"]
    if model.adapter.absolute_positions:
        assert first < 1  # the same word at different positions: position embeddings differ
    else:
        assert first == pytest.approx(1.0, abs=1e-6)  # rotary: the layer-0 query of one token is one vector


def test_rsa_categories(tiny_models, tmp_path, cache_dir):
    from lamina.stats import category_selectivity, correlation_matrix

    model = tiny_models["gpt-neox"]
    with pytest.raises(LaminaError, match="too few single-token words"):
        run_study("rsa-categories", model=model, out=tmp_path / "bad", reports_root=tmp_path)
    words = single_token_words(model, 12)
    cats = tmp_path / "cats.txt"
    cats.write_text("\n".join(f"c{i}: {', '.join(words[4 * i:4 * i + 4])}" for i in range(3)))
    folder = run_study("rsa-categories", model=model, out=tmp_path / "r", text_file=cats,
                       overrides={"n_permutations": 50}, reports_root=tmp_path)
    doc = _doc(folder)
    res = doc["results"]
    assert res["counts"] == {"c0": 4, "c1": 4, "c2": 4} and res["dropped"] == []
    layer = res["layer"]
    acts = capture(model, [f"The next word is {w}" for w in words], f"blocks.{layer}.attn.hook_k", positions="index:-1")
    want = category_selectivity(correlation_matrix(acts.numpy(f"blocks.{layer}.attn.hook_k")), np.repeat([0, 1, 2], 4))
    assert res["detail"]["K"]["selectivity"] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_effective_dim(tiny_models, tmp_path, cache_dir, arch):
    from sklearn.decomposition import PCA

    model = tiny_models[arch]
    folder = run_study("effective-dim", model=model, out=tmp_path / "e", overrides={"n_tokens": 300},
                       reports_root=tmp_path)
    doc = _doc(folder)
    claim0 = doc["claims"][0]
    if model.adapter.absolute_positions:  # position embeddings: a real test against the shuffled copies
        assert claim0["by_construction"] is None and claim0["p"] is not None
    else:  # rotary: the same layer-0 vectors in another order, so the same spectrum (shown, not counted)
        assert claim0["by_construction"] and claim0["verdict"] == "holds" and not claim0["counted"]
    arrays = np.load(folder / "arrays.npz")
    assert doc["results"]["n_tokens"] == 299  # one window of 300 tokens minus its first token
    # The spectrum of the last hidden state against scikit-learn's PCA on a plain capture of the same tokens.
    from lamina.testing import offline_text

    ids = model.tokenizer(offline_text(), add_special_tokens=False)["input_ids"][3000:3300]
    acts = capture(model, [ids], residual_sites(model), add_special_tokens=False)
    hidden = acts.residual_stream().double().numpy()[-1, 1:]
    want = PCA().fit(hidden).explained_variance_ratio_
    got = arrays["spectrum_text"][-1]
    np.testing.assert_allclose(got, want[:got.size], atol=1e-10)  # two SVDs of the same float64 matrix
    n95 = doc["results"]["per_layer"][-1]["text"]["n95"]
    assert n95 == PCA(0.95, svd_solver="full").fit(hidden).n_components_


@pytest.mark.parametrize("arch", ["gpt2", "gpt-neox", "llama"])
def test_logit_lens_causal(tiny_models, tmp_path, cache_dir, arch):
    model = tiny_models[arch]
    folder = run_study("logit-lens", model=model, out=tmp_path / "l", reports_root=tmp_path)
    doc = _doc(folder)
    res = doc["results"]
    assert res["kind"] == "causal"
    # The lens at the last hidden state runs the real final norm + head: the model's logits, to float32 rounding.
    assert res["lens_vs_model_logits_max_abs"] < 1e-4 and doc["claims"][0]["verdict"] == "holds"
    assert doc["claims"][0]["by_construction"] and not doc["claims"][0]["counted"]  # an identity, not a finding
    assert len(res["grid_top_tokens"]) == model.n_layers + 1
    assert res["grid_top_tokens"][-1] == res["final_predictions"]


def test_logit_lens_bert_right_and_wrong_way(tiny_models, tmp_path, cache_dir):
    import torch

    model = tiny_models["bert"]
    folder = run_study("logit-lens", model=model, out=tmp_path / "b", overrides={"mask_word": "is"},
                       reports_root=tmp_path)
    doc = _doc(folder)
    res = doc["results"]
    assert res["kind"] == "masked" and "[MASK]" in res["text"]
    assert res["lens_vs_model_logits_max_abs"] < 1e-4 and doc["claims"][0]["verdict"] == "holds"
    # The wrong way really is the decoder alone: differs from the whole head on the same hidden state.
    hf = model.hf
    h = torch.randn(1, model.d_model)
    with torch.no_grad():
        assert not torch.allclose(hf.cls(h[None])[0], hf.cls.predictions.decoder(h))
    with pytest.raises(LaminaError, match="not found"):
        run_study("logit-lens", model=model, out=tmp_path / "x", overrides={"mask_word": "zebra"},
                  reports_root=tmp_path)
