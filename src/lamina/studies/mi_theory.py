"""mi-theory: what the histogram MI estimator measures, on synthetic data with known answers (no model).

The chapter's MI lesson: entropy and joint entropy; MI of y = x + noise vs independent data; sensitivity to the
bin count (15 vs 25, and a sweep); the manual histogram estimator vs scikit-learn's kNN estimator over many
pairs (they correlate ~0.99, the histogram one is offset up); and the bias: independent data still give MI > 0.
Added here: the bias against the analytic Gaussian MI as the sample grows, with and without Miller-Madow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LaminaError
from ..stats import correlate, entropy, gaussian_mutual_information, joint_entropy, mutual_information
from .base import Claim, StudyOutput, register


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
        sample_sizes, repeats, rho: the bias-vs-sample-size experiment.
        seed: seed of every random draw.
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

    def __post_init__(self):
        if self.n_samples < 50 or self.pair_samples < 50 or self.n_pairs < 5 or self.repeats < 2:
            raise LaminaError("n_samples and pair_samples must be >= 50, n_pairs >= 5 and repeats >= 2")
        if not 0 <= self.rho < 1 or self.noise <= 0:
            raise LaminaError("rho must be in [0, 1) and noise > 0")
        if min(self.bin_sweep, default=0) < 2 or min(self.sample_sizes, default=0) < 20:
            raise LaminaError("bin_sweep needs bin counts >= 2 and sample_sizes values >= 20")


def _gaussian_pair(rng, n: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal(n)
    return x, rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n)


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
        "MI_xy_knn": mutual_information(x, y, estimator="ksg"), "MI_xz_knn": mutual_information(x, z, estimator="ksg"),
    }
    sweep = {"bins": list(config.bin_sweep),
             "dependent": [mutual_information(x, y, bins=k) for k in config.bin_sweep],
             "independent": [mutual_information(x, z, bins=k) for k in config.bin_sweep]}

    rhos = rng.uniform(0, 0.95, config.n_pairs)
    pairs = [_gaussian_pair(rng, config.pair_samples, r) for r in rhos]
    hist = np.array([mutual_information(p, q, bins=b) for p, q in pairs])
    knn = np.array([mutual_information(p, q, estimator="ksg") for p, q in pairs])
    analytic = gaussian_mutual_information(rhos)
    agreement = {"pearson_r": correlate(hist, knn).r, "spearman_rho": correlate(hist, knn, "spearman").r,
                 "mean_hist_minus_knn": float(np.mean(hist - knn)),
                 "mean_abs_error_hist": float(np.mean(np.abs(hist - analytic))),
                 "mean_abs_error_knn": float(np.mean(np.abs(knn - analytic)))}

    true_mi = float(gaussian_mutual_information(config.rho))
    bias = {"n": list(config.sample_sizes), "analytic": true_mi, "rho": config.rho}
    for name, kwargs in (("plain", {}), ("miller_madow", {"correction": "miller-madow"})):
        indep, dep = [], []
        for size in config.sample_sizes:
            indep.append([mutual_information(*_gaussian_pair(rng, size, 0.0), bins=b, **kwargs)
                          for _ in range(config.repeats)])
            dep.append([mutual_information(*_gaussian_pair(rng, size, config.rho), bins=b, **kwargs) - true_mi
                        for _ in range(config.repeats)])
        bias[name] = {"independent_mean": np.mean(indep, axis=1).tolist(),
                      "independent_std": np.std(indep, axis=1).tolist(),
                      "dependent_error_mean": np.mean(dep, axis=1).tolist(),
                      "dependent_error_std": np.std(dep, axis=1).tolist()}
    results = {"basics": basics, "bin_sweep": sweep, "estimators": agreement, "bias": bias,
               "units": "bits", "rho_xy": float(rho_xy)}
    arrays = {"x": x[:2000], "y": y[:2000], "z": z[:2000], "pair_rho": rhos, "pair_hist": hist, "pair_knn": knn}
    return StudyOutput(results, _claims(results), arrays=arrays)


def _claims(r: dict) -> list[dict]:
    b, e, bias = r["basics"], r["estimators"], r["bias"]
    plain = bias["plain"]["independent_mean"]
    sizes = bias["n"]
    ref = sizes.index(min(sizes, key=lambda s: abs(s - 1000)))
    return [
        Claim("H(x, y) < H(x) + H(y) for dependent data; ~equal for independent data",
              "joint entropy shows dependence", {"H_x+H_y-H_xy": b["H_x"] + b["H_y"] - b["H_xy"],
                                                 "H_x+H_z-H_xz": b["H_x"] + b["H_z"] - b["H_xz"]},
              b["H_x"] + b["H_y"] - b["H_xy"] > 5 * (b["H_x"] + b["H_z"] - b["H_xz"]), source="lamina"),
        Claim("y = x + noise has much more MI with x than independent data", "MI_xy >> MI_xz",
              {"MI_xy": b["MI_xy"], "MI_xz": b["MI_xz"], "MI_xy_analytic": b["MI_xy_analytic"]},
              b["MI_xy"] > 5 * b["MI_xz"]),
        Claim("The estimate depends on the bin count: 25 bins give more MI than 15",
              "MI(25 bins) > MI(15 bins)", {"MI_xy": [b["MI_xy"], b["MI_xy_alt_bins"]],
                                            "MI_xz": [b["MI_xz"], b["MI_xz_alt_bins"]]},
              b["MI_xy_alt_bins"] > b["MI_xy"] and b["MI_xz_alt_bins"] > b["MI_xz"]),
        Claim("Histogram MI and scikit-learn's kNN MI correlate ~0.99 over many pairs", "r ~ 0.99",
              {"pearson_r": e["pearson_r"]}, e["pearson_r"] > 0.95),
        Claim("The histogram estimate is offset upward from kNN", "hist > kNN on average",
              {"mean_hist_minus_knn_bits": e["mean_hist_minus_knn"]}, e["mean_hist_minus_knn"] > 0),
        Claim("Independent data still give histogram MI > 0 (the estimator's bias)", "MI > 0 for independent",
              {"MI_xz": b["MI_xz"], "MI_xz_knn": b["MI_xz_knn"]}, b["MI_xz"] > 0),
        Claim("The bias shrinks as the sample grows", "independent MI falls with n",
              {"n": sizes, "independent_mi": plain}, correlate(sizes, plain, "spearman").r < -0.9
              if len(sizes) >= 3 else None, source="lamina"),
        Claim("Miller-Madow removes most of the bias (added; not in the write-up)", "|bias| smaller",
              {"n": sizes[ref], "plain": plain[ref], "miller_madow": bias["miller_madow"]["independent_mean"][ref]},
              abs(bias["miller_madow"]["independent_mean"][ref]) < 0.5 * abs(plain[ref]), source="lamina"),
    ]


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
    axes[0, 1].set(title=f"independent: MI = {b['MI_xz']:.3f} bits", xlabel="x", ylabel="z")
    files.append((save(fig, folder, "data"), "Dependent and independent data (first 2000 samples)"))

    fig, axes = new_figure(1, 3, size=(15, 4))
    s = r["bin_sweep"]
    axes[0, 0].plot(s["bins"], s["dependent"], marker="o", label="y = x + noise")
    axes[0, 0].plot(s["bins"], s["independent"], marker="o", label="independent")
    axes[0, 0].axhline(b["MI_xy_analytic"], color="k", ls=":", label="analytic (dependent)")
    axes[0, 0].set(title="MI vs bin count", xlabel="bins", ylabel="MI (bits)", xscale="log")
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
    axes[0, 2].axhline(0, color="k", lw=0.6)
    axes[0, 2].set(title="bias vs sample size", xlabel="samples", ylabel="bits", xscale="log")
    axes[0, 2].legend(fontsize=6)
    files.append((save(fig, folder, "estimator"), "Bin-count sweep, histogram vs kNN, and bias vs sample size"))
    return files
