"""Optional-dependency checks in one place; every error names the extra that provides the package."""

from __future__ import annotations

import importlib
from types import ModuleType

from spectral_edge.errors import MissingExtraError

# package to import -> extra of spectral-edge that installs it
_EXTRA_FOR = {
    "safetensors": "safetensors",
    "pyarrow": "parquet",
    "matplotlib": "demo",
    "transformers": "hf",
    "accelerate": "hf",
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "plotly": "report",
}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` that says how to install it.

    Args:
        module: importable name, e.g. ``"pyarrow"`` or ``"matplotlib.pyplot"``.
        feature: what needs it, for the message, e.g. ``"Parquet export"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA_FOR.get(top, top)
        raise MissingExtraError(
            f"{feature} requires {top}, which is not installed: pip install 'spectral-edge[{extra}]'"
        ) from exc
