"""Online reducers (lamina.capture.reduce) against the all-in-RAM computation, through the real hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina import LaminaError, select
from lamina.capture.reduce import Covariance, Gram, Histogram, KeepRows, Moments, TopK
from lamina.capture.reduced import capture_reduced
from lamina.stats import (correlate_columns, correlation_matrix, cosine_similarity_matrix, fixed_histogram,
                          partial_from_correlations, pca_spectrum)
from lamina.testing import offline_text

# Float64 sums of float32 activations over a few hundred rows: each addition rounds at ~1e-16 relative, so
# statistics agree with numpy's float64 to ~1e-13; 1e-10 leaves room for cancellation in variances.
RTOL = 1e-10
ATOL = 1e-12


def _texts(n: int = 9, words: int = 30) -> list[str]:
    w = offline_text(40_000).split()
    return [" ".join(w[i * words:(i + 1) * words]) for i in range(n)]


def _reduce_once(reducer, x: np.ndarray, sizes) -> object:
    """Feed rows of ``x`` to ``reducer`` in batches of the given sizes (global row numbers kept)."""
    start = 0
    reducer.bind(x.shape[0], torch.device("cpu"))
    for size in sizes:
        reducer.update(torch.as_tensor(x[start:start + size]), slice(start, start + size))
        start += size
    assert start == x.shape[0]
    return reducer


def test_every_reducer_matches_the_in_ram_capture(tiny):
    """One capture_reduced pass vs lamina.capture + numpy/scipy on the same rows, every architecture."""
    texts = _texts()
    site = "blocks.*.mlp.hook_post"
    acts = lamina.capture(tiny, texts, site, batch_size=3)
    n = len(acts)
    rng = np.random.default_rng(0)
    covariates = np.stack([rng.normal(size=n), rng.integers(1, 9, size=n)], axis=1)  # (n, 2)
    groups = rng.integers(-1, 3, size=n)
    edges = np.linspace(-0.5, 0.5, 21)
    keep = rng.random(n) < 0.3
    red = capture_reduced(tiny, texts, {site: [Moments(covariates), Covariance(), Histogram(edges, groups=groups),
                                                TopK(4), KeepRows(where=keep), Gram(),
                                                Histogram(edges, per_feature=True)]}, batch_size=3)
    assert red.layers("mlp.hook_post") == acts.layers("mlp.hook_post")
    assert np.array_equal(red.rows.token_id, acts.rows.token_id)
    for layer in acts.layers("mlp.hook_post"):
        name = f"blocks.{layer}.mlp.hook_post"
        A = acts[name].double().numpy()
        mom, cov, hist, top, kept, gram, per_feature = red[name]
        np.testing.assert_allclose(mom.mean().numpy(), A.mean(0), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(mom.variance().numpy(), A.var(0, ddof=1), rtol=RTOL, atol=ATOL)
        mean, std = mom.pooled()
        np.testing.assert_allclose([mean, std], [A.mean(), A.std()], rtol=RTOL, atol=ATOL)
        r = correlate_columns(covariates.T, A)  # (2, width)
        np.testing.assert_allclose(mom.correlations().numpy(), r, rtol=1e-9, atol=1e-11)
        r_cc = np.corrcoef(covariates.T)[0, 1]
        np.testing.assert_allclose(mom.partial_correlations().numpy()[0],
                                   partial_from_correlations(r[0], r[1], r_cc), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(cov.covariance().numpy(), np.cov(A, rowvar=False), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(cov.spectrum().numpy(), pca_spectrum(A)[:min(A.shape)], rtol=1e-8,
                                   atol=1e-12)  # eigvalsh vs SVD: both backward-stable, ~1e-13 apart
        for g in range(3):
            assert np.array_equal(hist.counts()[g].numpy(), fixed_histogram(A[groups == g].ravel(), edges))
        assert np.array_equal(per_feature.counts().numpy(), fixed_histogram(A.T, edges))
        assert int(per_feature.below.sum() + per_feature.above.sum() + per_feature.counts().sum()) == A.size
        order = np.lexsort((np.arange(n)[:, None].repeat(A.shape[1], 1), -A), axis=0)[:4]  # value desc, row asc
        assert np.array_equal(top.index.numpy(), order)
        assert np.array_equal(top.values.numpy(), np.take_along_axis(A, order, 0))
        assert torch.equal(kept.rows(), acts[name][torch.as_tensor(keep)])
        np.testing.assert_allclose(gram.cosine().numpy(), cosine_similarity_matrix(A), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gram.correlation().numpy(), correlation_matrix(A), rtol=1e-12, atol=1e-12)


def test_chunked_updates_match_numpy(monkeypatch):
    """On the CPU, updates run over cache-sized row chunks; force many tiny chunks and compare."""
    from lamina.capture import reduce as reduce_module

    monkeypatch.setattr(reduce_module, "CPU_CHUNK_VALUES", 64)  # 64 values: a few rows per chunk
    rng = np.random.default_rng(5)
    X = (rng.normal(size=(700, 16)) * rng.uniform(0.1, 10, size=16) + 3).astype(np.float32)
    C = rng.normal(size=(700, 2))
    mom = _reduce_once(Moments(C), X, [300, 400])
    cov = _reduce_once(Covariance(), X, [300, 400])  # chunks of >= 256 rows: 300 = 256 + 44
    A = X.astype(np.float64)
    np.testing.assert_allclose(mom.variance().numpy(), A.var(0, ddof=1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(mom.correlations().numpy(), correlate_columns(C.T, A), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(cov.covariance().numpy(), np.cov(A, rowvar=False), rtol=RTOL, atol=ATOL)
    wide = rng.normal(size=(300, 600)).astype(np.float32)  # > 256 features: the matrix is rebuilt in blocks
    got = _reduce_once(Covariance(), wide, [300]).correlation().numpy()
    np.testing.assert_allclose(got, np.corrcoef(wide.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


def test_grouped_moments_give_resampled_correlations():
    """Moments per group (runs of rows): weighted group sums = r over the rows repeated by their group's weight
    (what a block bootstrap needs), and the unweighted total = the ungrouped reducer."""
    rng = np.random.default_rng(6)
    n, w, G = 230, 5, 10
    X = (rng.normal(size=(n, w)) + rng.normal(size=(n, 1))).astype(np.float32)
    C = np.stack([rng.normal(size=n), X[:, 0] + rng.normal(size=n)], axis=1)
    groups = np.minimum(np.arange(n) // 23, G - 1)
    groups[5:9] = -1  # left out
    grouped = _reduce_once(Moments(C, groups=groups), X, [64, 64, 102])
    kept = groups >= 0
    plain = _reduce_once(Moments(C[kept]), X[kept], [int(kept.sum())])
    np.testing.assert_allclose(grouped.correlations().numpy(), plain.correlations().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grouped.variance().numpy(), plain.variance().numpy(), rtol=1e-12, atol=1e-14)
    weights = rng.multinomial(G, np.full(G, 1 / G), size=4)  # (B, G) bootstrap counts of the groups
    got = grouped.correlations(weights).numpy()  # (B, 2, w)
    A = X.astype(np.float64)
    for b in range(4):
        reps = np.where(kept, weights[b][np.maximum(groups, 0)], 0)
        want = correlate_columns(np.repeat(C, reps, axis=0).T, np.repeat(A, reps, axis=0))
        np.testing.assert_allclose(got[b], want, rtol=1e-9, atol=1e-12)  # float64 sums, two routes
    a, b = Moments(C, groups=groups), Moments(C, groups=groups)  # merging keeps the groups apart
    for r, (i, j) in ((a, (0, 100)), (b, (100, n))):
        r.bind(n, torch.device("cpu"))
        r.update(torch.as_tensor(X[i:j]), slice(i, j))
    np.testing.assert_allclose(a.merge(b).correlations(weights).numpy(), got, rtol=1e-12, atol=1e-12)


def test_partial_correlation_with_three_covariates_matches_regression():
    """k > 2 covariates: partial r from the precision matrix = r between regression residuals."""
    rng = np.random.default_rng(1)
    n, w = 400, 6
    C = rng.normal(size=(n, 3))
    X = C @ rng.normal(size=(3, w)) + rng.normal(size=(n, w))
    mom = _reduce_once(Moments(C), X, [100, 150, 150])
    got = mom.partial_correlations().numpy()
    for i in range(3):
        others = np.column_stack([np.ones(n), np.delete(C, i, axis=1)])
        res_c = C[:, i] - others @ np.linalg.lstsq(others, C[:, i], rcond=None)[0]
        res_x = X - others @ np.linalg.lstsq(others, X, rcond=None)[0]
        want = correlate_columns(res_c, res_x)
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-12)  # two float64 routes to one value


def test_compensated_float32_keeps_the_variance_of_an_offset_feature():
    """float32c (for GPUs): a feature with mean 1e3 and std 1, 20000 rows in 40 batches."""
    rng = np.random.default_rng(2)
    X = (1000.0 + rng.normal(size=(20000, 3))).astype(np.float32)
    want = X.astype(np.float64).var(0, ddof=1)
    got = _reduce_once(Moments(precision="float32c"), X, [500] * 40).variance().numpy()
    # The naive float32 route (sum x^2 - n mean^2) loses the variance entirely at this offset ...
    s1, s2 = X.sum(0, dtype=np.float32), (X * X).sum(0, dtype=np.float32)
    naive = (s2 - s1 * s1 / np.float32(len(X))) / np.float32(len(X) - 1)
    assert np.max(np.abs(naive - want) / want) > 0.1
    # ... the shifted, compensated sums keep it to float32 resolution of the shifted values (~1e-7 relative).
    np.testing.assert_allclose(got, want, rtol=1e-5)
    cov = _reduce_once(Covariance(precision="float32c"), X, [500] * 40).covariance().numpy()
    np.testing.assert_allclose(np.diag(cov), want, rtol=1e-5)  # the same bound, on the co-moment


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# Tolerances of merge vs one pass: None = bit for bit (counts, selections, copies); float64 sums added in another
# order: ~1e-16 per addition, 1e-12 leaves room; float32c: each chunk's increment is rounded to float32 and the
# shards chunk the rows differently, so ~1e-7 relative, 1e-6 leaves room.
@pytest.mark.parametrize("make, tol", [
    (lambda n: Moments(np.arange(n) % 7), 1e-12),
    (lambda n: Moments(np.arange(n) % 7, groups=np.arange(n) // 50, precision="float32c"), 1e-6),
    (lambda n: Covariance(), 1e-12),
    (lambda n: Histogram(np.linspace(-2, 2, 9), groups=np.arange(n) % 3, per_feature=True), None),
    (lambda n: TopK(5, largest=False), None),
    (lambda n: KeepRows(where=np.arange(n) % 4 == 1), None),
])
def test_merge_of_shards_equals_one_pass(make, tol):
    rng = np.random.default_rng(3)
    X = np.round(rng.normal(size=(300, 5)), 1).astype(np.float32)  # rounded: many ties for TopK
    one = _reduce_once(make(300), X, [40] * 7 + [20])
    a, b = make(300), make(300)
    a.bind(300, torch.device("cpu"))
    b.bind(300, torch.device("cpu"))
    for start, stop in ((0, 70), (70, 130)):
        a.update(torch.as_tensor(X[start:stop]), slice(start, stop))
    for start, stop in ((130, 200), (200, 300)):
        b.update(torch.as_tensor(X[start:stop]), slice(start, stop))
    if isinstance(one, (Moments, Covariance)):
        # b's shift (its first batch's mean) differs from a's: merge re-expresses it about a's shift.
        assert not torch.equal(a.state_dict().get("shift_x", a.state_dict().get("shift")),
                               b.state_dict().get("shift_x", b.state_dict().get("shift")))
        merged = a.merge(b)
        if isinstance(one, Moments):
            torch.testing.assert_close(merged.variance(), one.variance(), rtol=tol, atol=tol)
            torch.testing.assert_close(merged.correlations(), one.correlations(), rtol=tol, atol=tol)
        else:
            torch.testing.assert_close(merged.covariance(), one.covariance(), rtol=tol, atol=tol)
        return
    _states_equal(a.merge(b).state_dict(), one.state_dict())


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 4)).astype(np.float32)
    for make in (lambda: Moments(rng.normal(size=(120, 2))), Covariance, lambda: Histogram([-1, 0, 1]),
                 lambda: TopK(3), lambda: KeepRows(dtype=torch.float16)):
        r = make()
        r.bind(120, torch.device("cpu"))
        r.update(torch.as_tensor(X[:60]), slice(0, 60))
        save_file({k: v.contiguous() for k, v in r.state_dict().items()}, str(tmp_path / "s.safetensors"))
        back = r.fresh()
        back.bind(120, torch.device("cpu"))
        back.load_state_dict(load_file(str(tmp_path / "s.safetensors")))
        _states_equal(back.state_dict(), r.state_dict())
        for red in (r, back):  # the reloaded state goes on exactly like the original
            red.update(torch.as_tensor(X[60:]), slice(60, 120))
        _states_equal(back.state_dict(), r.state_dict())


def _row_dot(a, b):
    """Per-row dot product of two sites' vectors (a module-level transform)."""
    return (a.double() * b.double()).sum(-1, keepdim=True)


def test_multi_site_reducers_get_the_rows_of_every_site(tiny_models):
    model = tiny_models["llama"]  # GQA: q and k have different widths
    texts = _texts(5)
    q, k = "blocks.1.attn.hook_q", "blocks.1.attn.hook_k"
    attn, mlp = "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"
    acts = lamina.capture(model, texts, [q, k, attn, mlp], batch_size=2)
    red = capture_reduced(model, texts, {(q, k): Covariance(), (attn, mlp): KeepRows(transform=_row_dot)},
                          batch_size=2)
    both = np.concatenate([acts[q].double().numpy(), acts[k].double().numpy()], axis=1)
    np.testing.assert_allclose(red[(q, k)].covariance().numpy(), np.cov(both, rowvar=False), rtol=RTOL, atol=ATOL)
    want = (acts[attn].double() * acts[mlp].double()).sum(-1, keepdim=True)
    torch.testing.assert_close(red[(attn, mlp)].rows(), want, rtol=0, atol=0)  # same float64 ops on same rows


def test_unpadded_batches_reduce_the_module_output_itself(tiny_models):
    """Equal-length windows with every position selected: no gather copy, the hook's tensor goes to the
    reducers directly (and multi-site reducers copy what they must keep until their last site)."""
    model = tiny_models["gpt-neo"]
    ids = model.tokenizer(offline_text(20_000), add_special_tokens=False)["input_ids"]
    windows = [ids[i * 24:(i + 1) * 24] for i in range(6)]
    sites = ["blocks.0.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.mlp.hook_post"]
    acts = lamina.capture(model, windows, sites, batch_size=3)
    red = capture_reduced(model, windows, {"blocks.1.mlp.hook_post": [Moments(), KeepRows()],
                                           (sites[0], sites[1]): KeepRows(transform=_row_dot)}, batch_size=3)
    assert torch.equal(red["blocks.1.mlp.hook_post"][1].rows(), acts["blocks.1.mlp.hook_post"])
    np.testing.assert_allclose(red["blocks.1.mlp.hook_post"][0].variance().numpy(),
                               acts["blocks.1.mlp.hook_post"].double().numpy().var(0, ddof=1), rtol=RTOL, atol=ATOL)
    want = (acts[sites[0]].double() * acts[sites[1]].double()).sum(-1, keepdim=True)
    torch.testing.assert_close(red[(sites[0], sites[1])].rows(), want, rtol=0, atol=0)  # same ops, same rows


def test_selected_positions_and_logits(tiny_models):
    model = tiny_models["gpt2"]
    text = "the cat and the dog and the bird. " * 4
    acts = lamina.capture(model, text, ["logits", "blocks.0.hook_resid_post"], positions=select.word("the"))
    red = capture_reduced(model, text, {"logits": KeepRows(), "blocks.0.hook_resid_post": Moments()},
                          positions=select.word("the"))
    assert torch.equal(red["logits"].rows(), acts["logits"])
    np.testing.assert_allclose(red["blocks.0.hook_resid_post"].mean().numpy(),
                               acts["blocks.0.hook_resid_post"].double().numpy().mean(0), rtol=RTOL, atol=ATOL)


def test_user_mistakes_are_one_line_errors(tiny_models):
    model = tiny_models["gpt2"]
    texts = _texts(2)
    cases = [
        lambda: capture_reduced(model, texts, {"blocks.9.mlp.hook_pre": Moments()}),
        lambda: capture_reduced(model, texts, {"blocks.*.mlp.hook_pre": Moments(), "blocks.0.mlp.hook_pre": TopK(2)}),
        lambda: capture_reduced(model, texts, {"blocks.0.mlp.hook_pre": Moments(np.zeros(3))}),
        lambda: capture_reduced(model, texts, {"blocks.0.mlp.hook_pre": "mean"}),
        lambda: capture_reduced(model, texts, {("blocks.*.mlp.hook_pre",): Covariance()}),
        lambda: capture_reduced(model, texts, {("blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre"): Covariance()}),
        lambda: capture_reduced(model, texts, {"blocks.0.mlp.hook_pre": KeepRows(transform=lambda x: x)},
                                store=True),
        lambda: Histogram([0, 0, 1]),
        lambda: TopK(0),
        lambda: Moments(precision="float16").bind(None, torch.device("cpu")),
    ]
    for case in cases:
        with pytest.raises(LaminaError) as info:
            case()
        assert "\n" not in str(info.value) and len(str(info.value)) > 20
