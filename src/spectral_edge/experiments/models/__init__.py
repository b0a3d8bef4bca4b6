"""Small models for the experiments."""

from spectral_edge.experiments.models.transformer import Transformer, query_weight

__all__ = ["Transformer", "query_weight"]
