"""mi-theory: what the histogram MI estimator measures, on synthetic data with known answers (no model).

The chapter's MI lesson: entropy and joint entropy; MI of y = x + noise vs independent data; sensitivity to the
bin count (15 vs 25, and a sweep); the manual histogram estimator vs scikit-learn's kNN estimator over many
pairs (they correlate ~0.99, the histogram one is offset up); and the bias: independent data still give MI > 0.
Added here: the bias against the analytic Gaussian MI as the sample grows, with and without Miller-Madow.

Every claim is checked against a null or an analytic reference: the permutation null of MI (y shuffled), the
analytic Gaussian MI -log2(1 - rho^2) / 2, and the first-order bias of the plug-in estimator for independent
data, (B - 1)^2 / (2 n ln 2) bits for B x B bins (Miller 1955; Panzeri & Treves 1996). Repeated seeded draws are
independent, so their tests (t, Wilcoxon, Kendall) need no permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ..errors import LaminaError
from ..stats import (correlate, empirical_null, entropy, gaussian_mutual_information, joint_entropy,
                     mutual_information, mutual_information_null, pairwise_mutual_information)
from ._pair_resampling import percentile_ci
from .base import StudyOutput, register
from .claims import Claim, decide

#: "correlate ~0.99": "~0.99" read to two decimals, i.e. at least 0.98.
ABOUT_099 = 0.98

#: "Miller-Madow removes most of the bias": "most" = more than half.
MOST = 0.5


@dataclass(frozen=True)
class MITheoryConfig:
    """Settings of mi-theory.

    Attributes:
        n_samples: samples per variable in the first experiments.
        noise: y = x + noise * e (x, e standard normal); analytic rho = 1 / sqrt(1 + noise^2).
        bins, bins_alt: the lesson's 15 bins and the 25 bins that show the sensitivity.
        bin_sweep: bin counts of the sweep.
        n_pairs, pair_samples: pairs (with rho drawn uniformly in [0, 0.95]) for histogram vs kNN, and their
            sample size.
        sample_sizes, repeats, rho: the bias-vs-sample-size experiment (also the repeats of the 15-vs-25 test).
        seed: seed of every random draw.
        alpha: significance level of the claims' tests.
        n_permutations: shuffles of y for the permutation null of MI.
        n_bootstrap: resamples of the bootstrap CIs (over pairs, over repeats).
    """

    n_samples: int = 10000
    noise: float = 1.0
    bins: int = 15
    bins_alt: int = 25
    bin_sweep: tuple[int, ...] = (3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200)
    n_pairs: int = 200
    pair_samples: int = 2000
    sample_sizes: tuple[int, ...] = (100, 300, 1000, 3000, 10000, 30000, 100000)
    repeats: int = 20
    rho: float = 0.6
    seed: int = 0
    alpha: float = 0.05
    n_permutations: int = 99
    n_bootstrap: int = 1000

    def __post_init__(self):
        from . import _checks as check

        check.at_least("n_samples", self.n_samples, 50)
        check.finite("noise", self.noise)  # inf gives infinite y and NaN statistics, not "no correlation"
        if self.noise <= 0:
            raise LaminaError(f"noise must be > 0 (got {self.noise!r})")
        check.bins("bins", self.bins)
        check.bins("bins_alt", self.bins_alt)
        if not self.bin_sweep:
            raise LaminaError("bin_sweep is empty; give bin counts, e.g. --set bin_sweep=5,15,25")
        for b in self.bin_sweep:
            check.bins("bin_sweep values", b)
        check.at_least("n_pairs", self.n_pairs, 5)
        check.at_least("pair_samples", self.pair_samples, 50)
        if not self.sample_sizes:
            raise LaminaError("sample_sizes is empty; give sizes, e.g. --set sample_sizes=100,1000,10000")
        for n in self.sample_sizes:
            check.at_least("sample_sizes values", n, 20)
        check.at_least("repeats", self.repeats, 2)
        check.between("rho", self.rho, 0, 1, low_open=False)
        check.seed("seed", self.seed)
        check.between("alpha", self.alpha, 0, 1)
        check.at_least("n_permutations", self.n_permutations, 20)  # p >= 1/(N+1): fewer never reach p < 0.05
        check.at_least("n_bootstrap", self.n_bootstrap, 100)  # a 95% percentile CI needs ~100 resamples


def first_order_bias(bins: int, n: int) -> float:
    """Expected plug-in MI of independent data, in bits, to first order: (B - 1)^2 / (2 n ln 2)."""
    return (bins - 1) ** 2 / (2 * n * np.log(2))


def _gaussian_pairs(rng, repeats: int, n: int, rho: float) -> np.ndarray:
    """(repeats, 2, n): x and rho x + sqrt(1 - rho^2) e, standard normal."""
    x = rng.standard_normal((repeats, n))
    return np.stack([x, rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((repeats, n))], axis=1)


def _mi(pairs: np.ndarray, **kwargs) -> np.ndarray:
    """MI of every (2, n) pair of a (repeats, 2, n) batch: shape (repeats,)."""
    return pairwise_mutual_information(pairs, **kwargs)[:, 0, 1]


@register("mi-theory", "The histogram MI estimator on synthetic data: entropy, bins, kNN agreement, bias",
          MITheoryConfig, needs="none")
def compute(model, config: MITheoryConfig, inputs) -> StudyOutput:
    rng = np.random.default_rng(config.seed)
    n, b, b2 = config.n_samples, config.bins, config.bins_alt
    x = rng.standard_normal(n)
    y = x + config.noise * rng.standard_normal(n)
    z = rng.standard_normal(n)
    rho_xy = 1 / np.sqrt(1 + config.noise**2)
    basics = {
        "H_x": entropy(x, bins=b), "H_y": entropy(y, bins=b), "H_z": entropy(z, bins=b),
        "H_xy": joint_entropy(x, y, bins=b), "H_xz": joint_entropy(x, z, bins=b),
        "MI_xy": mutual_information(x, y, bins=b), "MI_xz": mutual_information(x, z, bins=b),
        "MI_xy_alt_bins": mutual_information(x, y, bins=b2), "MI_xz_alt_bins": mutual_information(x, z, bins=b2),
        "MI_xy_analytic": float(gaussian_mutual_information(rho_xy)),
        "MI_xz_first_order_bias": first_order_bias(b, n),
        "MI_xy_knn": mutual_information(x, y, estimator="ksg"),
        "MI_xz_knn": mutual_information(x, z, estimator="ksg"),
    }
    kw = {"n_permutations": config.n_permutations, "seed": config.seed, "bins": b}
    permutation = {"xy": mutual_information_null(x, y, **kw).tolist(),
                   "xz": mutual_information_null(x, z, **kw).tolist()}
    sweep = {"bins": list(config.bin_sweep),
             "dependent": [mutual_information(x, y, bins=k) for k in config.bin_sweep],
             "independent": [mutual_information(x, z, bins=k) for k in config.bin_sweep]}

    dep = _gaussian_pairs(rng, config.repeats, n, rho_xy)  # y = x + noise e up to a scale, which MI ignores
    ind = _gaussian_pairs(rng, config.repeats, n, 0.0)
    bins_test = {"dependent_diff": (_mi(dep, bins=b2) - _mi(dep, bins=b)).tolist(),
                 "independent_diff": (_mi(ind, bins=b2) - _mi(ind, bins=b)).tolist(),
                 "independent_expected_diff": first_order_bias(b2, n) - first_order_bias(b, n)}

    rhos = rng.uniform(0, 0.95, config.n_pairs)
    pairs = np.stack([_gaussian_pairs(rng, 1, config.pair_samples, r)[0] for r in rhos])
    hist = _mi(pairs, bins=b)
    knn = _mi(pairs, estimator="ksg")
    analytic = gaussian_mutual_information(rhos)
    wilcoxon = sps.wilcoxon(hist, knn, alternative="greater")
    boot_r = sps.bootstrap((hist, knn), lambda h, k: correlate(h, k).r, paired=True, vectorized=False,
                           n_resamples=config.n_bootstrap, method="percentile",
                           rng=np.random.default_rng(config.seed))
    agreement = {"pearson_r": correlate(hist, knn).r, "pearson_r_ci": list(boot_r.confidence_interval),
                 "spearman_rho": correlate(hist, knn, "spearman").r,
                 "r_hist_vs_analytic": correlate(hist, analytic).r, "r_knn_vs_analytic": correlate(knn, analytic).r,
                 "mean_hist_minus_knn": float(np.mean(hist - knn)), "wilcoxon_p": float(wilcoxon.pvalue),
                 "hist_first_order_bias": first_order_bias(b, config.pair_samples),
                 "mean_abs_error_hist": float(np.mean(np.abs(hist - analytic))),
                 "mean_abs_error_knn": float(np.mean(np.abs(knn - analytic)))}

    true_mi = float(gaussian_mutual_information(config.rho))
    bias = {"n": list(config.sample_sizes), "analytic": true_mi, "rho": config.rho,
            "first_order": [first_order_bias(b, s) for s in config.sample_sizes]}
    draws = {}
    for name, kwargs in (("plain", {}), ("miller_madow", {"correction": "miller-madow"})):
        indep = np.array([_mi(_gaussian_pairs(rng, config.repeats, s, 0.0), bins=b, **kwargs)
                          for s in config.sample_sizes])  # (sizes, repeats)
        err = np.array([_mi(_gaussian_pairs(rng, config.repeats, s, config.rho), bins=b, **kwargs) - true_mi
                        for s in config.sample_sizes])
        draws[name] = indep
        bias[name] = {"independent_mean": indep.mean(axis=1).tolist(),
                      "independent_std": indep.std(axis=1).tolist(),
                      "dependent_error_mean": err.mean(axis=1).tolist(),
                      "dependent_error_std": err.std(axis=1).tolist()}
    results = {"n_samples": n, "basics": basics, "permutation_null": permutation, "bins_test": bins_test,
               "bin_sweep": sweep, "estimators": agreement, "bias": bias, "units": "bits", "rho_xy": float(rho_xy)}
    arrays = {"x": x[:2000], "y": y[:2000], "z": z[:2000], "pair_rho": rhos, "pair_hist": hist, "pair_knn": knn,
              "bias_plain": draws["plain"], "bias_miller_madow": draws["miller_madow"]}
    return StudyOutput(results, [], arrays=arrays)


def claims(output: StudyOutput, config: MITheoryConfig, baseline: StudyOutput | None) -> list[dict]:
    r, a, alpha = output.results, output.arrays, config.alpha
    b, e, perm = r["basics"], r["estimators"], r["permutation_null"]
    dep = empirical_null(b["MI_xy"], perm["xy"], alternative="greater", method="MI of x with shuffled y")
    ind = empirical_null(b["MI_xz"], perm["xz"], alternative="greater", method="MI of x with shuffled z")
    gap_dep, gap_ind = b["H_x"] + b["H_y"] - b["H_xy"], b["H_x"] + b["H_z"] - b["H_xz"]
    null_dep = {"what": "H(x) + H(y) - H(x, y) with y shuffled (permutation null)", "mean": dep.null_mean,
                "sd": dep.null_sd, "n": dep.n_permutations}
    out = [
        Claim("H(x, y) < H(x) + H(y) for dependent data; ~equal for independent data", source="lamina",
              expected="joint entropy shows dependence",
              criterion=f"H(x) + H(y) - H(x, y) above its permutation null (p < {alpha}) for y = x + noise, and "
                        f"not above it (p >= {alpha}) for independent z",
              measured={"H_x+H_y-H_xy": gap_dep, "H_x+H_z-H_xz": gap_ind, "p_dependent": dep.p,
                        "p_independent": ind.p},
              null=null_dep, test="permutation test", p=dep.p,
              verdict=decide(gap_dep > dep.null_mean and ind.p >= alpha, dep.p < alpha)),
        Claim("y = x + noise has much more MI with x than independent data", source="write-up",
              expected="MI_xy >> MI_xz",
              criterion=f"MI_xy > MI_xz and MI_xy above the permutation null of x vs shuffled y (p < {alpha}); the "
                        "analytic Gaussian MI is the reference",
              measured={"MI_xy": b["MI_xy"], "MI_xz": b["MI_xz"], "MI_xy_analytic": b["MI_xy_analytic"],
                        "null_z": dep.z},
              null={**null_dep, "what": "MI of x with shuffled y (permutation null)"}, test="permutation test",
              p=dep.p, verdict=decide(b["MI_xy"] > b["MI_xz"], dep.p < alpha)),
        _bins_claim(r, config),
        _agreement_claim(e),
        Claim("The histogram estimate is offset upward from kNN", source="write-up", expected="hist > kNN on average",
              criterion=f"mean(histogram - kNN) > 0 over the {config.n_pairs} independent pairs, one-sided Wilcoxon "
                        f"signed-rank p < {alpha}",
              measured={"mean_hist_minus_knn_bits": e["mean_hist_minus_knn"],
                        "first_order_hist_bias_bits": e["hist_first_order_bias"]},
              null={"what": "no offset (paired differences centred on 0)", "value": 0.0},
              test="Wilcoxon signed-rank (pairs drawn independently)", p=e["wilcoxon_p"],
              verdict=decide(e["mean_hist_minus_knn"] > 0, e["wilcoxon_p"] < alpha)),
        _bias_claim(r, a, config, ind),
        _shrink_claim(r, a, alpha),
        _miller_madow_claim(r, a, config),
    ]
    return out


def _bins_claim(r: dict, config: MITheoryConfig) -> dict:
    t = r["bins_test"]
    tests = {k: sps.ttest_1samp(t[k], 0.0, alternative="greater") for k in ("dependent_diff", "independent_diff")}
    means = {k: float(np.mean(t[k])) for k in tests}
    p = max(float(v.pvalue) for v in tests.values())
    return Claim("The estimate depends on the bin count: 25 bins give more MI than 15", source="write-up",
                 expected="MI(25 bins) > MI(15 bins)",
                 criterion=f"MI({config.bins_alt} bins) - MI({config.bins} bins) > 0 on average over {config.repeats} "
                           f"fresh draws, for dependent and for independent data, one-sided t p < {config.alpha} "
                           "for both",
                 measured={"mean_diff_dependent": means["dependent_diff"],
                           "mean_diff_independent": means["independent_diff"]},
                 null={"what": "no bin effect (difference 0); first-order bias difference for independent data",
                       "value": 0.0, "first_order_independent_diff": t["independent_expected_diff"]},
                 test="one-sample t over independent draws (larger p of the two)", p=p,
                 verdict=decide(all(v > 0 for v in means.values()), p < config.alpha))


def _agreement_claim(e: dict) -> dict:
    lo, hi = e["pearson_r_ci"]
    return Claim("Histogram MI and scikit-learn's kNN MI correlate ~0.99 over many pairs", source="write-up",
                 expected="r ~ 0.99",
                 criterion=f"Pearson r >= {ABOUT_099} and its pair-bootstrap 95% CI above {ABOUT_099}",
                 measured={"pearson_r": e["pearson_r"], "r_hist_vs_analytic": e["r_hist_vs_analytic"],
                           "r_knn_vs_analytic": e["r_knn_vs_analytic"]},
                 null={"what": "estimators sharing nothing", "value": 0.0},
                 test="pair bootstrap", ci=(lo, hi), verdict=decide(e["pearson_r"] >= ABOUT_099, lo > ABOUT_099))


def _bias_claim(r: dict, a: dict, config: MITheoryConfig, ind) -> dict:
    b = r["basics"]
    return Claim("Independent data still give histogram MI > 0 (the estimator's bias)", source="write-up",
                 expected="MI > 0 for independent",
                 criterion=f"MI_xz > 0, and not above its permutation null (p >= {config.alpha}): the value is "
                           "estimator bias, of the size the first-order formula (B - 1)^2 / (2 n ln 2) predicts",
                 measured={"MI_xz": b["MI_xz"], "MI_xz_knn": b["MI_xz_knn"],
                           "first_order_bias": b["MI_xz_first_order_bias"], "p_vs_permutation": ind.p},
                 null={"what": "MI of x with shuffled z (permutation null)", "mean": ind.null_mean, "sd": ind.null_sd,
                       "n": ind.n_permutations},
                 test="permutation test", p=ind.p,
                 by_construction="the plug-in MI is a KL divergence between the joint histogram and the product of "
                                 "its marginals: never negative, and 0 only if a finite sample's histogram factorises "
                                 "exactly",
                 verdict=decide(b["MI_xz"] > 0, ind.p >= config.alpha))


def _shrink_claim(r: dict, a: dict, alpha: float) -> dict:
    sizes = np.array(r["bias"]["n"], dtype=float)
    draws = a["bias_plain"]  # (sizes, repeats), every draw independent
    claim = "The bias shrinks as the sample grows"
    criterion = (f"Kendall tau between n and the independent-data MI over all draws < 0, one-sided p < {alpha}; "
                 "the first-order theory predicts a log-log slope of -1")
    if len(sizes) < 2:
        return Claim(claim, source="lamina", criterion=criterion, measured={"n": sizes.tolist()},
                     null_reason="one sample size: no trend", verdict=decide(None))
    res = sps.kendalltau(np.repeat(sizes, draws.shape[1]), draws.ravel(), alternative="less")
    slope = float(np.polyfit(np.log(sizes), np.log(np.maximum(draws.mean(axis=1), 1e-300)), 1)[0])
    return Claim(claim, source="lamina", expected="independent MI falls with n", criterion=criterion,
                 measured={"kendall_tau": float(res.statistic), "log_log_slope": slope,
                           "independent_mi": r["bias"]["plain"]["independent_mean"], "n": sizes.tolist()},
                 null={"what": "no trend (Kendall tau 0)", "value": 0.0, "first_order_slope": -1.0},
                 test="Kendall tau over independent draws", p=float(res.pvalue),
                 verdict=decide(res.statistic < 0, res.pvalue < alpha))


def _miller_madow_claim(r: dict, a: dict, config: MITheoryConfig) -> dict:
    sizes = r["bias"]["n"]
    ref = sizes.index(min(sizes, key=lambda s: abs(s - 1000)))
    plain, mm = a["bias_plain"][ref], a["bias_miller_madow"][ref]  # independent draws at n ~ 1000
    reduction = float(1 - abs(mm.mean()) / abs(plain.mean()))
    idx = np.random.default_rng(config.seed).integers(0, plain.size, (config.n_bootstrap, plain.size))
    ci = percentile_ci(1 - np.abs(mm[idx].mean(axis=1)) / np.abs(plain[idx].mean(axis=1)))
    return Claim("Miller-Madow removes most of the bias (added; not in the write-up)", source="lamina",
                 expected="|bias| smaller",
                 criterion=f"1 - |mean Miller-Madow MI| / |mean plain MI| of independent data at n = {sizes[ref]} > "
                           f"{MOST} ('most'), with the bootstrap 95% CI over the {config.repeats} draws above {MOST}",
                 measured={"n": sizes[ref], "plain": float(plain.mean()), "miller_madow": float(mm.mean()),
                           "reduction": reduction, "first_order_bias": r["bias"]["first_order"][ref]},
                 null={"what": "no correction (reduction 0)", "value": 0.0}, test="bootstrap over draws", ci=ci,
                 verdict=decide(reduction > MOST, ci[0] > MOST))


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    b = r["basics"]
    files = []
    fig, axes = new_figure(1, 2, size=(10, 4))
    axes[0, 0].scatter(a["x"], a["y"], s=2, alpha=0.4)
    axes[0, 0].set(title=f"y = x + noise: MI = {b['MI_xy']:.3f} bits (analytic {b['MI_xy_analytic']:.3f})",
                   xlabel="x", ylabel="y")
    axes[0, 1].scatter(a["x"], a["z"], s=2, alpha=0.4, color="tab:orange")
    axes[0, 1].set(title=f"independent: MI = {b['MI_xz']:.3f} bits (first-order bias "
                         f"{b['MI_xz_first_order_bias']:.3f})", xlabel="x", ylabel="z")
    files.append((save(fig, folder, "data"), "Dependent and independent data (first 2000 samples)"))

    fig, axes = new_figure(1, 3, size=(15, 4))
    s = r["bin_sweep"]
    axes[0, 0].plot(s["bins"], s["dependent"], marker="o", label="y = x + noise")
    axes[0, 0].plot(s["bins"], s["independent"], marker="o", label="independent")
    sweep = np.array(s["bins"], dtype=float)
    axes[0, 0].plot(sweep, first_order_bias(sweep, r["n_samples"]), color="grey", ls="--",
                    label="first-order bias (independent)")
    axes[0, 0].axhline(b["MI_xy_analytic"], color="k", ls=":", label="analytic (dependent)")
    axes[0, 0].set(title="MI vs bin count", xlabel="bins", ylabel="MI (bits)", xscale="log", yscale="log")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].scatter(a["pair_knn"], a["pair_hist"], s=6)
    lim = [0, max(a["pair_hist"].max(), a["pair_knn"].max())]
    axes[0, 1].plot(lim, lim, color="k", lw=0.6)
    axes[0, 1].set(title=f"histogram vs kNN: r = {r['estimators']['pearson_r']:.3f}", xlabel="kNN MI (bits)",
                   ylabel="histogram MI (bits)")
    bias = r["bias"]
    for name, style in (("plain", "-"), ("miller_madow", "--")):
        axes[0, 2].errorbar(bias["n"], bias[name]["independent_mean"], bias[name]["independent_std"], ls=style,
                            marker="o", label=f"independent ({name})")
        axes[0, 2].errorbar(bias["n"], bias[name]["dependent_error_mean"], bias[name]["dependent_error_std"],
                            ls=style, marker="s", label=f"rho={bias['rho']}: minus analytic ({name})")
    axes[0, 2].plot(bias["n"], bias["first_order"], color="grey", ls=":", label="(B-1)^2 / (2 n ln 2)")
    axes[0, 2].axhline(0, color="k", lw=0.6)
    axes[0, 2].set(title="bias vs sample size", xlabel="samples", ylabel="bits", xscale="log")
    axes[0, 2].legend(fontsize=6)
    files.append((save(fig, folder, "estimator"), "Bin-count sweep with the first-order bias, histogram vs kNN, "
                  "and bias vs sample size beside the analytic first-order bias"))
    return files
