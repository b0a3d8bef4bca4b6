"""Synthetic tasks for the experiments."""

from spectral_edge.experiments.tasks.modular import OPERATIONS, ModularData, modular_dataset

__all__ = ["OPERATIONS", "ModularData", "modular_dataset"]
