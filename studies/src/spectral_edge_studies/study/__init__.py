"""The grokking study of thesis §27: task families that share one run contract (:mod:`.common`).

Each family module (``modular``, ``multitask``, and the Dyck and SCAN families) exposes ``FAMILY``,
``Config``, ``PRESETS``, ``variants(suite)`` and ``run(config, run_dir, *, progress=None)``; every run
records through :class:`StudyRecorder` and ends with a :class:`RunOutcome` in ``outcome.json``.
"""

from spectral_edge_studies.study.common import (
    CHECKPOINT_DIR,
    CONFIG_FIELDS,
    GROK_ACC,
    MEMORIZE_ACC,
    OUTCOME_FILE,
    PARAMETERS,
    SEEDS,
    SUITES,
    WEIGHT_DECAYS,
    WINDOW,
    RunOutcome,
    StudyRecorder,
    check_family,
    is_complete,
    load_outcome,
    parameter_group,
    run_name,
    write_outcome,
)

__all__ = [
    # the run contract
    "RunOutcome",
    "StudyRecorder",
    "check_family",
    "run_name",
    # what the spectral numbers are read from
    "PARAMETERS",
    "parameter_group",
    # run directories
    "OUTCOME_FILE",
    "CHECKPOINT_DIR",
    "is_complete",
    "load_outcome",
    "write_outcome",
    # the paper's settings
    "SUITES",
    "SEEDS",
    "WEIGHT_DECAYS",
    "WINDOW",
    "CONFIG_FIELDS",
    "GROK_ACC",
    "MEMORIZE_ACC",
]
