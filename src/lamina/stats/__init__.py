"""Pure statistics: arrays in, arrays out; no model and no I/O. Each function documents its shapes."""

from .correlation import (
    CorrelationResult,
    correct_pvalues,
    correlate,
    correlate_columns,
    fisher_z_compare,
    independent_ttest,
    partial_correlate_columns,
    partial_from_correlations,
)
from .distributions import bimodality_bic, fixed_histogram, zscore_outliers
from .geometry import adjustment_cosine, components_for_variance, participation_ratio, path_lengths, pca_spectrum
from .mi import (
    BIN_RULES,
    entropy,
    gaussian_mutual_information,
    mutual_information,
    mutual_information_null,
    naive_mutual_information,
    pairwise_mutual_information,
    resolve_bins,
    trim_mask,
)
from .rsa import category_selectivity, compare_rdms, kendall_tau_a, label_blocks, label_product_mask, rdm, upper_triangle
from .similarity import (
    column_correlation,
    column_cosine_similarity,
    correlation_matrix,
    cosine_similarity_matrix,
    covariance_matrix,
)

__all__ = [
    "BIN_RULES",
    "CorrelationResult",
    "adjustment_cosine",
    "bimodality_bic",
    "category_selectivity",
    "column_correlation",
    "column_cosine_similarity",
    "compare_rdms",
    "components_for_variance",
    "correct_pvalues",
    "correlate",
    "correlate_columns",
    "correlation_matrix",
    "cosine_similarity_matrix",
    "covariance_matrix",
    "entropy",
    "fisher_z_compare",
    "fixed_histogram",
    "gaussian_mutual_information",
    "independent_ttest",
    "kendall_tau_a",
    "label_blocks",
    "label_product_mask",
    "mutual_information",
    "mutual_information_null",
    "naive_mutual_information",
    "pairwise_mutual_information",
    "partial_correlate_columns",
    "partial_from_correlations",
    "participation_ratio",
    "path_lengths",
    "pca_spectrum",
    "rdm",
    "resolve_bins",
    "trim_mask",
    "upper_triangle",
    "zscore_outliers",
]
