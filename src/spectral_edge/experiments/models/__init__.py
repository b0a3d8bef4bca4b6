"""Small models for the experiments: decoder-only classifiers and an encoder–decoder for SCAN."""

from spectral_edge.experiments.models.causal import CausalTransformer
from spectral_edge.experiments.models.seq2seq import Seq2SeqTransformer, greedy_decode, sequence_accuracy
from spectral_edge.experiments.models.transformer import Transformer, TransformerTrunk, query_weight

__all__ = [
    "Transformer",
    "CausalTransformer",
    "TransformerTrunk",
    "Seq2SeqTransformer",
    "greedy_decode",
    "sequence_accuracy",
    "query_weight",
]
