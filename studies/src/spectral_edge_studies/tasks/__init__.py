"""Synthetic tasks of the grokking study (thesis §27): modular arithmetic, Dyck-1 and SCAN."""

from spectral_edge_studies.tasks.dyck import (
    DYCK_PROTOCOLS,
    DyckData,
    DyckOverlap,
    decode_dyck,
    dyck_dataset,
    dyck_overlap,
    novel_prefix_mask,
    stack_depths,
)
from spectral_edge_studies.tasks.modular import (
    MULTITASK_PRESETS,
    OPERATION_ALIASES,
    OPERATIONS,
    ModularData,
    MultiTaskModularData,
    modular_dataset,
    multitask_modular_dataset,
)
from spectral_edge_studies.tasks.scan import (
    INPUT_VOCAB,
    OUTPUT_VOCAB,
    SCAN_SPLITS,
    ScanSplit,
    ScanTensors,
    decode_actions,
    decode_command,
    encode_scan,
    find_scan_dir,
    interpret,
    load_scan_split,
    read_scan_file,
    scan_commands,
    scan_split,
    scan_subset,
)

__all__ = [
    # modular arithmetic
    "OPERATIONS",
    "OPERATION_ALIASES",
    "MULTITASK_PRESETS",
    "ModularData",
    "MultiTaskModularData",
    "modular_dataset",
    "multitask_modular_dataset",
    # Dyck-1 depth prediction
    "DYCK_PROTOCOLS",
    "DyckData",
    "DyckOverlap",
    "dyck_dataset",
    "dyck_overlap",
    "novel_prefix_mask",
    "stack_depths",
    "decode_dyck",
    # SCAN
    "SCAN_SPLITS",
    "INPUT_VOCAB",
    "OUTPUT_VOCAB",
    "ScanSplit",
    "ScanTensors",
    "interpret",
    "scan_commands",
    "scan_split",
    "load_scan_split",
    "read_scan_file",
    "find_scan_dir",
    "scan_subset",
    "encode_scan",
    "decode_command",
    "decode_actions",
]
