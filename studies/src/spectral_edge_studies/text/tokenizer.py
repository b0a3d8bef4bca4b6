"""Tokenizers trained locally on the study's corpus: byte-level BPE or characters, cached on disk.

Two kinds, behind one :class:`Tokenizer`:

* ``"bpe"``: byte-level BPE from Hugging Face ``tokenizers`` (GPT-2's recipe: ``ByteLevel`` pre-tokenizer
  without an added prefix space, ``ByteLevel`` decoder, the 256 byte symbols as initial alphabet, merges
  of pairs seen at least twice). Any string round-trips exactly, ``decode(encode(s)) == s``, and training
  is deterministic: the same text gives the same merges and ids (tested). ``tokenizers`` is imported only
  when a BPE tokenizer is trained or loaded; install it with ``pip install -e 'studies[lm]'``.
* ``"char"``: no dependency. The vocabulary is the sorted set of characters of the training text, then
  one unknown id (the last) for characters never seen; it decodes to U+FFFD.

:func:`cached_tokenizer` trains once per (corpus, kind, vocabulary size, text) and keeps the result as
JSON under ``cache_dir()/tokenizers/``.

>>> tok = train_tokenizer("to be or not to be", kind="char")
>>> tok.vocab_size                      # the 7 characters " beonrt", then the unknown id
8
>>> tok.encode("not to be")
[3, 4, 6, 0, 6, 4, 0, 1, 2]
>>> tok.decode(tok.encode("to bee!"))
'to bee\ufffd'
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from spectral_edge_studies._imports import require
from spectral_edge_studies.atomic import write_text
from spectral_edge_studies.fetch import cache_dir

#: The tokenizer kinds :func:`train_tokenizer` knows.
TOKENIZER_KINDS = ("bpe", "char")
#: What the char tokenizer's unknown id decodes to.
UNKNOWN_CHAR = "\ufffd"
#: BPE merges a pair only if it occurs at least this often, so a small training text does not spend
#: vocabulary on one-off strings (the trained vocabulary may then be smaller than asked for).
BPE_MIN_FREQUENCY = 2

# Written into every saved file; bump when the training recipe changes so cached files are retrained.
_FORMAT = "spectral-edge-tokenizer"
_FORMAT_VERSION = 1
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Tokenizer:
    """Text ↔ token ids. Build one with :func:`train_tokenizer` or :meth:`Tokenizer.load`.

    Attributes:
        kind: ``"bpe"`` or ``"char"``.
        vocab_size: number of ids; every id is in ``range(vocab_size)``. For BPE it is the trained size,
            at most the size asked for.
    """

    def __init__(self, kind: str, state: dict[str, Any]) -> None:
        if kind == "char":
            self._codec: _CharCodec | _BpeCodec = _CharCodec(state["chars"])
        elif kind == "bpe":
            self._codec = _BpeCodec(state["model"])
        else:
            raise ValueError(f"kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
        self.kind = kind

    @property
    def vocab_size(self) -> int:
        return self._codec.vocab_size

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` (no special tokens are added)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._codec.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, in parallel for BPE."""
        return self._codec.encode_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (a list, a 1-D NumPy array or a 1-D tensor of ints).

        Raises:
            ValueError: an id outside ``range(vocab_size)``.
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        if not isinstance(ids, list):
            raise TypeError(f"ids must be a sequence of ints or a 1-D array, got the scalar {ids!r}")
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(
                f"token id {bad} is outside range({self.vocab_size}) of this {self.kind} tokenizer"
            )
        return self._codec.decode(ids)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description from which :meth:`from_dict` rebuilds the same tokenizer."""
        return {"format": _FORMAT, "version": _FORMAT_VERSION, "kind": self.kind, **self._codec.state()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        """The tokenizer :meth:`to_dict` described.

        Raises:
            ValueError: ``data`` is not a tokenizer of this format version.
        """
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        if found != _FORMAT:
            raise ValueError(f"not a {_FORMAT} description: format is {found!r}, expected {_FORMAT!r}")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"tokenizer file version {data.get('version')!r}, this code reads version {_FORMAT_VERSION}; "
                f"retrain it (delete the file)"
            )
        return cls(data["kind"], data)

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON, atomically: another process that loads the cache meanwhile finds
        either no file or the complete one."""
        return write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """The tokenizer :meth:`save` wrote to ``path``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a tokenizer of this format (corrupt, or another version).
        """
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it to retrain") from exc
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def train_tokenizer(
    text_or_texts: str | Sequence[str], *, kind: str = "bpe", vocab_size: int = 2048
) -> Tokenizer:
    """A tokenizer trained on ``text_or_texts`` (one string, or several documents).

    Args:
        text_or_texts: the training text. Several documents train the same BPE as their concatenation
            up to the pre-tokens that would straddle a boundary.
        kind: ``"bpe"`` (byte-level BPE, needs ``tokenizers``) or ``"char"``.
        vocab_size: BPE: the vocabulary size to train to, >= 256 (the byte alphabet). Char: an upper
            bound, >= 2; the text must have fewer distinct characters than this.

    Raises:
        ValueError: bad ``kind`` or ``vocab_size``, empty text, or too many characters for ``vocab_size``.
        MissingExtraError: ``kind="bpe"`` and ``tokenizers`` is not installed.

    >>> train_tokenizer(["ab", "ba"], kind="char").decode([0, 1, 2])
    'ab\ufffd'
    """
    texts = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("text_or_texts must be a str or a sequence of str")
    if not any(texts):
        raise ValueError("the training text is empty; pass the corpus text (a str or a list of documents)")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    if kind == "char":
        chars = sorted(set().union(*map(set, texts)))
        if vocab_size < len(chars) + 1:
            raise ValueError(
                f"the text has {len(chars)} distinct characters, so a char tokenizer needs vocab_size >= "
                f"{len(chars) + 1} (one more for the unknown id), got {vocab_size}"
            )
        return Tokenizer("char", {"chars": "".join(chars)})
    if vocab_size < 256:
        raise ValueError(f"a byte-level BPE needs vocab_size >= 256 (one id per byte), got {vocab_size}")
    return Tokenizer("bpe", {"model": _train_bpe(texts, vocab_size)})


def cached_tokenizer(
    corpus_name: str,
    *,
    kind: str,
    vocab_size: int,
    text_fn: Callable[[], str | Sequence[str]],
) -> Tokenizer:
    """The tokenizer of :func:`train_tokenizer` for a corpus, trained once and then read from the cache.

    The file is ``cache_dir()/tokenizers/<corpus>-<kind>-<vocab_size>-<hash>.json``; the hash is of the
    training text, so an edited corpus gets a new tokenizer rather than a stale one. ``text_fn`` is
    called every time (the hash needs the text); training only on a cache miss.

    Args:
        corpus_name: names the cache file, e.g. ``"shakespeare"``; letters, digits, ``.``, ``_``, ``-``.
        kind, vocab_size: as in :func:`train_tokenizer`.
        text_fn: returns the training text, e.g. ``lambda: corpus_text("shakespeare")``.

    Example::

        tok = cached_tokenizer("shakespeare", kind="bpe", vocab_size=2048,
                               text_fn=lambda: corpus_text("shakespeare"))
    """
    if not isinstance(corpus_name, str) or not _SAFE_NAME.fullmatch(corpus_name):
        raise ValueError(
            f"corpus_name must be letters, digits, '.', '_' or '-' (it names a file), got {corpus_name!r}"
        )
    texts = text_fn()
    key = f"{corpus_name}-{kind}-{vocab_size}-{_text_hash(texts)}"
    path = cache_dir() / "tokenizers" / f"{key}.json"
    if path.is_file():
        try:
            return Tokenizer.load(path)
        except Exception as exc:  # tokenizers reports a bad model as a bare Exception
            # Writes are atomic, so this is a file from another format version or damaged on disk:
            # retraining costs seconds and replaces it.
            warnings.warn(f"retraining the tokenizer: cached {path} is unreadable ({exc})", stacklevel=2)
    tokenizer = train_tokenizer(texts, kind=kind, vocab_size=vocab_size)
    tokenizer.save(path)
    return tokenizer


def _text_hash(texts: str | Sequence[str]) -> str:
    digest = hashlib.sha256(f"v{_FORMAT_VERSION}".encode())
    for text in [texts] if isinstance(texts, str) else texts:
        data = text.encode("utf-8")
        # Length-prefixed, so ["ab", "c"] and ["a", "bc"] hash differently.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


def _hf() -> Any:
    # Imported on first use, so the char tokenizer and the rest of the package work without it.
    return require("tokenizers", "The byte-level BPE tokenizer (kind='bpe')")


def _train_bpe(texts: list[str], vocab_size: int) -> dict[str, Any]:
    hf = _hf()
    tokenizer = hf.Tokenizer(hf.models.BPE())
    # add_prefix_space=False: the first word of a text must not gain a space, or decode(encode(s)) != s.
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=BPE_MIN_FREQUENCY,
        show_progress=False,
        special_tokens=[],
        # All 256 bytes up front, so text with characters absent from training still encodes.
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return json.loads(tokenizer.to_str())


class _CharCodec:
    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.unknown = len(chars)
        self.index = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 1

    def encode(self, text: str) -> list[int]:
        index, unknown = self.index, self.unknown
        return [index.get(c, unknown) for c in text]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        table = self.chars + UNKNOWN_CHAR
        return "".join(table[i] for i in ids)

    def state(self) -> dict[str, Any]:
        return {"chars": self.chars}


class _BpeCodec:
    def __init__(self, model: dict[str, Any]) -> None:
        self.model = model
        self.hf = _hf().Tokenizer.from_str(json.dumps(model))
        self.vocab_size = self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which nothing here uses.
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def state(self) -> dict[str, Any]:
        return {"model": self.model}
