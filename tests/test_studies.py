"""Studies run end to end on tiny random models; results.json has the documented keys; CLI errors are one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lamina import LaminaError
from lamina.cli import main
from lamina.studies import get_study, run_study
from lamina.studies.base import parse_overrides


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def _check_report(folder, keys):
    doc = json.loads((folder / "results.json").read_text())
    assert set(doc) == {"study", "lamina_version", "model", "config", "results", "claims", "verdicts", "baseline"}
    assert keys <= set(doc["results"]), keys - set(doc["results"])
    assert doc["claims"] and all({"claim", "criterion", "measured", "verdict"} <= set(c) for c in doc["claims"])
    assert (folder / "report.html").read_text().count("data:image/png;base64") >= 3
    assert json.loads((folder / "provenance.json").read_text())["environment"]["torch"]
    return doc


@pytest.mark.parametrize("arch", ["gpt2", pytest.param("llama", marks=pytest.mark.slow), "bert"])
def test_coffee_mi_end_to_end(tiny_models, tmp_path, cache_dir, arch):
    folder = run_study("coffee-mi", model=tiny_models[arch], out=tmp_path / "r", reports_root=tmp_path)
    doc = _check_report(folder, {"positions", "layer", "mi", "distance", "tau", "p", "mi_untrimmed", "per_layer"})
    r = doc["results"]
    assert r["n_occurrences"] == 7 and len(r["per_layer"]) == tiny_models[arch].n_layers
    assert {"layer", "attn", "mlp", "t", "t_p", "fisher_z", "fisher_p"} <= set(r["per_layer"][0])
    mi = np.array(r["mi"])
    np.testing.assert_allclose(mi, mi.T)  # a symmetric MI matrix
    assert _finite(r["per_layer"])
    # Re-running reuses the activation cache and gives an identical results.json.
    again = run_study("coffee-mi", model=tiny_models[arch], out=tmp_path / "r2", reports_root=tmp_path)
    assert (again / "results.json").read_bytes() == (folder / "results.json").read_bytes()
    assert (tmp_path / "index.html").is_file()


def test_punctuation_clusters_end_to_end(tiny_models, tmp_path, cache_dir):
    folder = run_study("punctuation-clusters", model=tiny_models["gpt-neox"], out=tmp_path / "p",
                       overrides={"n_per_type": "12", "plot_points": "20"}, reports_root=tmp_path)
    doc = _check_report(folder, {"n_internal", "n_terminal", "per_layer"})
    r = doc["results"]
    assert r["n_internal"] == r["n_terminal"] == 12
    assert len(r["per_layer"]) == tiny_models["gpt-neox"].n_layers + 1
    assert {"internal", "terminal", "mixed"} <= set(r["per_layer"][0])
    # Layer 0 of a model with position embeddings (here rotary: none at layer 0): commas are one vector.
    assert r["per_layer"][0]["distinct_vectors"]["internal"] <= 2
    assert _finite(r["per_layer"])


def test_config_validation_and_overrides():
    study = get_study("coffee-mi")
    cfg = parse_overrides(study.config_cls, {"layer": "5", "trim_z": "none", "bins": "fd", "knn": "false"})
    assert (cfg.layer, cfg.trim_z, cfg.bins, cfg.knn) == (5, None, "fd", False)
    with pytest.raises(LaminaError, match="valid: word"):
        parse_overrides(study.config_cls, {"colour": "red"})
    with pytest.raises(LaminaError, match="expected a int"):
        parse_overrides(study.config_cls, {"n_neighbors": "many"})
    with pytest.raises(LaminaError, match="correction"):
        parse_overrides(study.config_cls, {"correction": "holm"})


def test_cli_run_list_and_errors(tiny_paths, tmp_path, cache_dir, capsys):
    assert main(["list"]) == 0
    assert "coffee-mi" in capsys.readouterr().out
    assert main(["info", "qkv-similarity"]) == 0
    assert "target = 'her'" in capsys.readouterr().out
    assert main(["info", "no-such-study"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown study")
    assert main(["run", "no-such-study"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown study 'no-such-study'; choose one of: coffee-mi") and err.count("\n") == 1
    text = tmp_path / "tea.txt"
    text.write_text("Tea is nice. I like tea with milk. Green tea or black tea? Tea!")
    assert main(["run", "coffee-mi", "--model", str(tiny_paths["gpt2"]), "--text-file", str(text),
                 "--out", str(tmp_path / "c")]) == 2  # 'coffee' does not occur
    err = capsys.readouterr().err
    assert err.startswith("error: word 'coffee' not found") and err.count("\n") == 1
    assert main(["run", "coffee-mi", "--model", str(tiny_paths["gpt2"]), "--text-file", str(text), "--set",
                 "word=tea", "--set", "knn=false", "--out", str(tmp_path / "c")]) == 0
    assert "report:" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "results.json").read_text())["results"]["n_occurrences"] == 5


def test_compare_reports_cli(tiny_models, tmp_path, cache_dir, capsys):
    a = run_study("coffee-mi", model=tiny_models["gpt2"], out=tmp_path / "a", overrides={"knn": False},
                  reports_root=tmp_path)
    b = run_study("coffee-mi", model=tiny_models["llama"], out=tmp_path / "b", overrides={"knn": False},
                  reports_root=tmp_path)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "report.html").is_file()
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("arch", ["gpt2", pytest.param("gpt-neo", marks=pytest.mark.slow), "bert"])
def test_path_length_end_to_end(tiny_models, tmp_path, cache_dir, arch):
    from lamina.studies.texts import PHILOSOPHER_PARAGRAPH

    model = tiny_models[arch]
    short = tmp_path / "short.txt"  # the tiny 512-token vocabulary splits the full paragraph into ~850 tokens
    short.write_text(PHILOSOPHER_PARAGRAPH[:700])
    folder = run_study("path-length", model=model, out=tmp_path / "pl", text_file=short, reports_root=tmp_path)
    doc = _check_report(folder, {"n_tokens", "per_layer", "final_step_ratio"})
    pl = doc["results"]["per_layer"]
    assert len(pl) == model.n_layers
    assert {"pearson", "pearson_with_token0", "spearman", "p_adjusted"} <= set(pl[0]["attn"])
    if model.adapter.pre_norm:
        # Pre-norm: the hidden step is attn + mlp, so |step|^2 = |a|^2 + |m|^2 + 2 cos |a||m| (checked on means).
        arrays = np.load(folder / "arrays.npz")
        a, m, h, c = arrays["pl_attn"], arrays["pl_mlp"], arrays["pl_hidden"], arrays["cos"]
        np.testing.assert_allclose(h**2, a**2 + m**2 + 2 * c * a * m, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("arch", [pytest.param("gpt2", marks=pytest.mark.slow), "llama", "bert"])
def test_token_length_end_to_end(tiny_models, tmp_path, cache_dir, arch):
    from lamina import capture
    from lamina.studies.texts import corpus_text
    from lamina.studies.token_length import R_EDGES, TokenLengthConfig, corpus_windows, token_lengths

    model = tiny_models[arch]
    settings = {"n_tokens": 600, "seq_len": 128, "skip_tokens": 50}
    folder = run_study("token-length", model=model, out=tmp_path / "tl", overrides=settings, reports_root=tmp_path)
    doc = _check_report(folder, {"per_layer", "length", "block", "r_length_log_freq", "short_token_bimodality",
                                 "random_subset_bimodality"})
    res = doc["results"]
    assert res["n_tokens"] == 600 and res["n_windows"] == 5 and len(res["per_layer"]) == model.n_layers
    # The framework's random-init baseline is the null; the study builds no second random copy of its own.
    assert "comparison" not in res and doc["baseline"]["model"]["name"].endswith("-random-init")
    assert len(doc["baseline"]["results"]["per_layer"]) == model.n_layers
    assert len(doc["claims"]) == 6  # five from the write-up plus the random-init null
    assert doc["claims"][5]["null"]["value"] == pytest.approx(
        np.mean([p["std_r"] for p in doc["baseline"]["results"]["per_layer"]]), abs=1e-12)
    # Recompute one layer's r per neuron with np.corrcoef from a plain capture of the same windows.
    config = TokenLengthConfig(**settings)
    windows, counts, _ = corpus_windows(model, corpus_text()[0], config)
    flat = np.concatenate(windows)
    assert counts.sum() >= flat.size and np.all(counts[flat] > 0)
    lengths = token_lengths(model, flat)
    layer = model.n_layers - 1
    A = capture(model, windows, f"blocks.{layer}.mlp.hook_pre", add_special_tokens=False).numpy(
        f"blocks.{layer}.mlp.hook_pre")
    r = np.array([np.corrcoef(lengths, A[:, j])[0, 1] for j in range(A.shape[1])])
    # float32 activations, float64 statistics in both: agreement to float64 rounding of the same numbers.
    assert res["per_layer"][layer]["mean_r"] == pytest.approx(r.mean(), abs=1e-10)
    assert res["per_layer"][layer]["std_r"] == pytest.approx(r.std(), abs=1e-10)
    hist = np.load(folder / "arrays.npz")["r_hist"][layer]
    np.testing.assert_array_equal(hist, np.histogram(r, R_EDGES)[0])


def test_token_lengths_count_the_space_by_choice(tiny_models):
    from lamina.studies.token_length import token_lengths

    gpt2, bert = tiny_models["gpt2"], tiny_models["bert"]
    ids = gpt2.tokenizer(" the cat", add_special_tokens=False)["input_ids"]
    decoded = [gpt2.tokenizer.decode([i]) for i in ids]
    assert token_lengths(gpt2, ids).tolist() == [len(s) for s in decoded]
    assert token_lengths(gpt2, ids, "stripped").tolist() == [len(s.strip()) for s in decoded]
    pieces = bert.tokenizer("unbelievable", add_special_tokens=False)["input_ids"]
    text = [bert.tokenizer.convert_ids_to_tokens(i).removeprefix("##") for i in pieces]
    assert token_lengths(bert, pieces).tolist() == [len(s) for s in text]  # "##" is not a character


def test_random_init_copy_is_a_seeded_null(tiny_models):
    import torch

    from lamina.capture import random_init_copy

    model = tiny_models["llama"]
    a, b, c = random_init_copy(model, seed=3), random_init_copy(model, seed=3), random_init_copy(model, seed=4)
    pa, pb, pc, po = (dict(m.hf.named_parameters()) for m in (a, b, c, model))
    assert pa.keys() == po.keys()
    name = next(k for k in pa if k.endswith("q_proj.weight"))
    assert torch.equal(pa[name], pb[name]) and not torch.equal(pa[name], pc[name])
    assert not torch.equal(pa[name], po[name])
    assert a.provenance["source"] == "random-init" and a.sites() == model.sites()


def test_cli_several_models_writes_a_comparison(tiny_paths, tmp_path, cache_dir, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The river bends twice before it reaches the sea, and the town sits on the second bend.")
    argv = ["run", "path-length", "--text-file", str(text), "--out", str(tmp_path / "many"),
            "--model", str(tiny_paths["gpt2"]), "--model", str(tiny_paths["llama"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "comparison:" in out
    assert (tmp_path / "many" / "path-length" / "compare" / "report.html").is_file()
    assert len(list((tmp_path / "many" / "path-length").glob("*/results.json"))) == 2


@pytest.mark.parametrize("arch", ["gpt2", "llama", pytest.param("bert", marks=pytest.mark.slow)])
def test_qkv_similarity_end_to_end(tiny_models, tmp_path, cache_dir, arch):
    from lamina import capture
    from lamina.studies.qkv_similarity import S_EDGES, target_and_previous
    from lamina.studies.texts import HER_SENTENCES

    model = tiny_models[arch]
    folder = run_study("qkv-similarity", model=model, out=tmp_path / "q", reports_root=tmp_path)
    doc = _check_report(folder, {"n_sentences", "layer", "widths", "detail", "per_layer"})
    res = doc["results"]
    widths = model.site_widths()
    assert res["widths"] == {p: widths[f"blocks.0.attn.hook_{p.lower()}"] for p in "QKV"}  # GQA: K, V narrower
    assert len(res["per_layer"]) == model.n_layers and len(doc["claims"]) == 9
    # The QK block of the target's cosine matrix, recomputed by hand from a plain capture.
    layer = res["layer"]
    acts = capture(model, list(HER_SENTENCES), f"blocks.{layer}.attn.hook_[qk]",
                   positions=target_and_previous("her"))
    q = acts.numpy(f"blocks.{layer}.attn.hook_q")[1::2]
    k = acts.numpy(f"blocks.{layer}.attn.hook_k")[1::2]
    qn = q / np.linalg.norm(q, axis=0)
    kn = k / np.linalg.norm(k, axis=0)
    hist = np.load(folder / "arrays.npz")["target_cosine_QK"]
    want = np.histogram(np.clip(qn.T @ kn, -1, 1).ravel(), S_EDGES)[0]
    # Same float64 numbers up to summation order: only values within ~1e-12 of a bin edge could move.
    assert np.abs(hist - want).sum() <= 2
    assert hist.sum() == q.shape[1] * k.shape[1]


def test_qkv_similarity_user_sentences_and_errors(tiny_models, tmp_path, cache_dir):
    model = tiny_models["gpt2"]
    good = tmp_path / "s.txt"
    good.write_text("\n".join(f"The {w} saw the cat near the door." for w in
                              ("girl", "man", "boy", "dog", "teacher", "farmer")))
    folder = run_study("qkv-similarity", model=model, out=tmp_path / "q", text_file=good,
                       overrides={"target": "cat"}, reports_root=tmp_path)
    assert json.loads((folder / "results.json").read_text())["results"]["n_sentences"] == 6
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(["Her cat sleeps."] + ["We saw her today."] * 5))
    with pytest.raises(LaminaError, match="no token before it"):
        run_study("qkv-similarity", model=model, out=tmp_path / "b", text_file=bad, reports_root=tmp_path)
    with pytest.raises(LaminaError, match="not found in sentence"):
        run_study("qkv-similarity", model=model, out=tmp_path / "c", text_file=good, reports_root=tmp_path)


def test_default_text_is_cut_to_the_context_user_text_is_not(tiny_models, tmp_path, cache_dir):
    from lamina.studies.texts import PHILOSOPHER_PARAGRAPH

    model = tiny_models["gpt2"]  # 512 positions; the built-in paragraph is ~850 tokens for its tiny vocabulary
    folder = run_study("path-length", model=model, out=tmp_path / "p", reports_root=tmp_path)
    res = json.loads((folder / "results.json").read_text())["results"]
    assert "cut to the model's 512-token context" in res["text_source"]
    assert 500 <= res["n_tokens"] <= 512
    long = tmp_path / "long.txt"
    long.write_text(PHILOSOPHER_PARAGRAPH)
    with pytest.raises(LaminaError, match="takes at most 512"):
        run_study("path-length", model=model, out=tmp_path / "q", text_file=long, reports_root=tmp_path)
