"""Training-framework integrations; each imports its framework only when first used.

* :class:`SpectralEdgeCallback`: Hugging Face ``transformers.Trainer`` (extra ``spectral-edge[hf]``).
* :class:`SpectralEdgeLightningCallback`: Lightning ``lightning.pytorch.Trainer`` (extra
  ``spectral-edge[lightning]``).
* Plain PyTorch needs no integration: ``SpectralMonitor(model, lr=opt).attach(opt)`` records after every
  ``opt.step()`` through ``Optimizer.register_step_post_hook``.

``import spectral_edge.integrations`` imports neither framework; naming a callback imports its module
(and its framework, or raises :class:`~spectral_edge.MissingExtraError` naming the extra to install).

Example:
    >>> import spectral_edge.integrations as integrations
    >>> sorted(integrations.__all__)
    ['SpectralEdgeCallback', 'SpectralEdgeLightningCallback']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spectral_edge.integrations.huggingface import SpectralEdgeCallback
    from spectral_edge.integrations.lightning import SpectralEdgeLightningCallback

_MODULE_OF = {
    "SpectralEdgeCallback": "spectral_edge.integrations.huggingface",
    "SpectralEdgeLightningCallback": "spectral_edge.integrations.lightning",
}

__all__ = ["SpectralEdgeCallback", "SpectralEdgeLightningCallback"]


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
