"""The studies' optional dependencies, checked in one place; each error names the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from spectral_edge import MissingExtraError

# package to import -> extra of spectral-edge-studies that installs it
_EXTRA_FOR = {
    "weightwatcher": "weightwatcher",
    "tokenizers": "lm",
    "gguf": "lm",
    "transformers": "lm",
    "accelerate": "lm",
}


def install_command(extra: str) -> str:
    """How to install an extra of the studies, which are installed from a clone of the repository.

    Example:
        >>> install_command("lm")
        "pip install -e 'studies[lm]'"
    """
    return f"pip install -e 'studies[{extra}]'"


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`~spectral_edge.MissingExtraError` that says how to install it.

    Args:
        module: importable name, e.g. ``"tokenizers"``.
        feature: what needs it, for the message, e.g. ``"the WeightWatcher alarms"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{feature} requires {top}, which is not installed: {install_command(_EXTRA_FOR.get(top, top))} "
            "(from the repository root)"
        ) from exc
