"""Small models for the experiments: decoder-only classifiers, an encoder–decoder for SCAN, and a GPT."""

from spectral_edge.experiments.models.causal import CausalTransformer
from spectral_edge.experiments.models.gpt import GPT, GPT_PRESETS, GPTConfig
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
    "GPT",
    "GPTConfig",
    "GPT_PRESETS",
]
