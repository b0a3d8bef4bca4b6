"""spectral-edge: watch the spectrum of a network's recent updates and detect phase transitions.

Implements the Spectral Edge Thesis (Xu, 2026): keep the last W updates δ_t as the rows of X, take the
spectrum of G = X Xᵀ, find the gap k* = argmax σ_j/σ_{j+1}, and read the training phase from how that gap
opens and collapses. ``import spectral_edge`` needs only torch and numpy.
"""

from importlib.metadata import PackageNotFoundError, version

from spectral_edge.errors import (
    DistributedMonitorError,
    MissingExtraError,
    NonFiniteUpdateError,
    NotPositiveSemidefiniteError,
    ParameterLayoutError,
    RunStoreError,
    SpectralEdgeError,
    SpectrumWarning,
    StoreWriteError,
)
from spectral_edge.frames import RunFrames, records_to_dataframe
from spectral_edge.spectrum import (
    AdiabaticRegimes,
    KrylovCheck,
    WindowSpectrum,
    adam_noise_level,
    adiabatic_parameter,
    analyze_gram,
    analyze_window,
    bbp_ratio,
    bbp_threshold,
    covariance_rank_two_update,
    cumulative_variance_rank,
    davis_kahan_bound,
    delta_c_frobenius,
    first_order_increments,
    half_window_alignment,
    krylov_bound,
    mode_coupling_terms,
    noise_level_from_spectrum,
    null_max_ratio_quantile,
    null_p_value,
    second_order_increments,
    stability_coefficients,
)
from spectral_edge.store import RunStore, StoreBacklog, export_run
from spectral_edge.tracking import (
    Distributed,
    EventThresholds,
    GroupSpectrum,
    MonitorConfig,
    PushedWindow,
    SpectralEvent,
    SpectralMonitor,
    SpectralRecord,
    SpectralTracker,
    TrackResult,
    UpdateWindow,
    analyze_checkpoints,
    build_record,
)

try:
    __version__ = version("spectral-edge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    # analysis of one window
    "analyze_window",
    "analyze_gram",
    "WindowSpectrum",
    "cumulative_variance_rank",
    # stability, Davis–Kahan, adiabatic parameter
    "stability_coefficients",
    "half_window_alignment",
    "davis_kahan_bound",
    "adiabatic_parameter",
    "AdiabaticRegimes",
    # noise and nulls
    "bbp_threshold",
    "bbp_ratio",
    "noise_level_from_spectrum",
    "adam_noise_level",
    "null_max_ratio_quantile",
    "null_p_value",
    "krylov_bound",
    "KrylovCheck",
    # perturbation identities
    "covariance_rank_two_update",
    "delta_c_frobenius",
    "first_order_increments",
    "second_order_increments",
    "mode_coupling_terms",
    # online and offline monitoring
    "SpectralMonitor",
    "MonitorConfig",
    "Distributed",
    "SpectralTracker",
    "TrackResult",
    "build_record",
    "PushedWindow",
    "SpectralRecord",
    "SpectralEvent",
    "GroupSpectrum",
    "EventThresholds",
    "UpdateWindow",
    "analyze_checkpoints",
    # run store
    "RunStore",
    "StoreBacklog",
    "export_run",
    "RunFrames",
    "records_to_dataframe",
    # errors
    "SpectralEdgeError",
    "SpectrumWarning",
    "NonFiniteUpdateError",
    "DistributedMonitorError",
    "ParameterLayoutError",
    "NotPositiveSemidefiniteError",
    "RunStoreError",
    "StoreWriteError",
    "MissingExtraError",
]
