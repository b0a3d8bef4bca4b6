"""Small models for the studies: decoder-only classifiers, an encoder–decoder for SCAN, and a GPT."""

from spectral_edge_studies.models.causal import CausalTransformer
from spectral_edge_studies.models.gpt import GPT, GPT_PRESETS, GPTConfig
from spectral_edge_studies.models.seq2seq import Seq2SeqTransformer, greedy_decode, sequence_accuracy
from spectral_edge_studies.models.transformer import Transformer, TransformerTrunk, query_weight

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
