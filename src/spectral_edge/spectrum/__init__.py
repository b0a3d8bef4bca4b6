"""Pure spectral maths of the Spectral Edge Thesis on NumPy/torch arrays, float64 throughout."""

from spectral_edge.spectrum.null import (
    KrylovCheck,
    adam_noise_level,
    bbp_ratio,
    bbp_threshold,
    krylov_bound,
    noise_level_from_spectrum,
    null_max_ratio_quantile,
    null_max_ratio_samples,
    null_p_value,
)
from spectral_edge.spectrum.perturbation import (
    covariance_rank_two_update,
    delta_c_frobenius,
    first_order_increments,
    mode_coupling_terms,
    perturbation_in_eigenbasis,
    project_on_directions,
    second_order_increments,
)
from spectral_edge.spectrum.stability import (
    AdiabaticRegimes,
    adiabatic_parameter,
    alignment_from_half_eigen,
    davis_kahan_bound,
    eigenvalue_change_norm,
    half_window_alignment,
    half_window_eigen,
    nearest_eigenvalue_gaps,
    stability_coefficients,
    stability_coefficients_from_eigenvalue_change,
)
from spectral_edge.spectrum.window import (
    WindowSpectrum,
    analyze_gram,
    analyze_gram_with_parts,
    analyze_window,
    cumulative_variance_rank,
    gap_positions,
    gap_statistics,
    gram_singular_values,
    spectrum_from_eigen,
)

__all__ = [
    # window spectrum (Parts I, III)
    "WindowSpectrum",
    "analyze_window",
    "analyze_gram",
    "analyze_gram_with_parts",
    "gap_statistics",
    "gap_positions",
    "gram_singular_values",
    "spectrum_from_eigen",
    "cumulative_variance_rank",
    # stability (Parts IV, VI) and the adiabatic parameter
    "stability_coefficients",
    "stability_coefficients_from_eigenvalue_change",
    "eigenvalue_change_norm",
    "nearest_eigenvalue_gaps",
    "half_window_alignment",
    "half_window_eigen",
    "alignment_from_half_eigen",
    "davis_kahan_bound",
    "adiabatic_parameter",
    "AdiabaticRegimes",
    # noise, nulls and bounds (Part II)
    "bbp_threshold",
    "bbp_ratio",
    "noise_level_from_spectrum",
    "adam_noise_level",
    "null_max_ratio_samples",
    "null_max_ratio_quantile",
    "null_p_value",
    "krylov_bound",
    "KrylovCheck",
    # perturbation identities (Part V)
    "covariance_rank_two_update",
    "delta_c_frobenius",
    "project_on_directions",
    "first_order_increments",
    "perturbation_in_eigenbasis",
    "second_order_increments",
    "mode_coupling_terms",
]
