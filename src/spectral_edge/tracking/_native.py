"""The monitor's C++ extension: found, or built once, without ever blocking a training process.

The extension holds the fused push of float32 CPU windows (``csrc/fused_push.cpp``), the record's
eigen stage (``csrc/window_spectra.cpp``) and the CountSketch of a sketched window
(``csrc/count_sketch.cpp``, a torch operator: :func:`native_op`). It is compiled with torch's extension
builder the first time a machine needs it (30–90 s; it needs a C++ compiler and ninja, the ``fast``
extra) into a folder of torch's extension root named after a hash of the sources, torch's version and
the flags, so a changed source is a new folder and never a stale module.

Why not ``torch.utils.cpp_extension.load`` on every start: it takes a lock *file* in the build folder
(created with O_EXCL, removed at the end) at every process start, and a process killed while holding it
(SIGKILL, or SIGTERM in the ~0.1 s it is held) leaves the file behind, after which every later
``load`` on the machine waits for it forever. So:

* a normal start imports the built module directly (``importlib``), once a build has marked itself
  complete, and takes no lock at all;
* a build is serialised by ``fcntl.flock`` on a separate file, a lock the kernel releases when its holder
  dies however it dies. Holding it, a builder knows no other build is running, so a torch lock file it
  finds is stale and is removed before building;
* a process waits at most ``SPECTRAL_EDGE_BUILD_TIMEOUT`` seconds (default 600) for another's build,
  and then, like any failure to build, warns and uses the torch path, which gives the same Gram up to
  float64 rounding.

``SPECTRAL_EDGE_KERNEL=torch`` switches the extension off; ``SPECTRAL_EDGE_EIGEN=numpy`` keeps the fused
push but gives the record's eigen stage to NumPy (``tracking/_spectra.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("spectral_edge")

SOURCES = ("fused_push.cpp", "window_spectra.cpp", "count_sketch.cpp")
CFLAGS = ("-O3", "-fopenmp", "-fopenmp-simd")
LDFLAGS = ("-fopenmp",)
#: Written into the build folder after a build has loaded: a folder without it is not trusted.
READY = "spectral_edge_ready"

_lock = threading.Lock()
_module: Any = None
_failed: str | None = None


def native_kernel() -> Any:
    """The compiled module (``fused_push`` and ``window_spectra``), or None where it cannot be had (no
    compiler or ninja, switched off, or another process's build did not finish in time)."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    with _lock:
        if _module is not None or _failed is not None:
            return _module
        if os.environ.get("SPECTRAL_EDGE_KERNEL", "auto") == "torch":
            _failed = "SPECTRAL_EDGE_KERNEL=torch"
            return None
        try:
            _module = _load_or_build()
        except Exception as exc:  # no compiler, no ninja, no headers, a timeout: the torch path serves
            _failed = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "spectral-edge: the C++ kernel is not available (%s); using the torch path, which is "
                "slower for models of many small tensors. Install a C++ compiler and ninja "
                "(pip install 'spectral-edge[fast]') to build it.",
                _failed.splitlines()[0][:300],
            )
        return _module


def native_op(name: str) -> Any:
    """A torch operator of the compiled module (``count_sketch``), or None where the module cannot be had.

    Such operators are registered with torch (``TORCH_LIBRARY``) in a namespace named after the module,
    rather than bound with pybind11, so that each source file registers its own."""
    module = native_kernel()
    if module is None:
        return None
    import torch

    return getattr(getattr(torch.ops, module.__name__), name)


def build_name() -> str:
    """The extension's module name: a hash of what goes into the build, so a change is a new build."""
    import torch

    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode())
        digest.update((source_dir() / name).read_bytes())
    digest.update(" ".join((*CFLAGS, *LDFLAGS, torch.__version__, sys.version)).encode())
    return f"spectral_edge_native_{digest.hexdigest()[:16]}"


def source_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "csrc"


def build_dir(name: str) -> Path:
    """The build folder, where torch's builder puts extensions: ``TORCH_EXTENSIONS_DIR`` or torch's
    cache folder. Found without importing ``torch.utils.cpp_extension``, which alone costs 0.25 s of a
    process start."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        try:
            from torch import _appdirs  # what get_default_build_root() uses

            root = os.path.realpath(_appdirs.user_cache_dir(appname="torch_extensions"))
        except (ImportError, AttributeError):
            from torch.utils.cpp_extension import get_default_build_root

            root = get_default_build_root()
    return Path(root) / name


def _load_or_build() -> Any:
    name = build_name()
    folder = build_dir(name)
    if (folder / READY).exists():
        try:
            return _import(name, folder)
        except ImportError:  # marked complete, but its library is gone or unreadable: build it again
            (folder / READY).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("SPECTRAL_EDGE_BUILD_TIMEOUT", "600"))
    with _build_lock(folder.with_name(name + ".flock"), timeout):
        if (folder / READY).exists():  # another process built it while this one waited
            return _import(name, folder)
        # Holding the lock, no other build of this folder runs: a torch lock file here is a dead one's.
        (folder / "lock").unlink(missing_ok=True)
        return _build(name, folder)


def _build(name: str, folder: Path) -> Any:
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    logger.info("spectral-edge: compiling the C++ kernel for this machine (once; about a minute)")
    started = time.perf_counter()
    module = load(
        name,
        sources=[str(source_dir() / s) for s in SOURCES],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        build_directory=str(folder),
        verbose=False,
    )
    (folder / READY).write_text(f"built in {time.perf_counter() - started:.1f} s\n")
    return module


def _import(name: str, folder: Path) -> Any:
    """Import the built module straight from its shared library: no lock, no compiler, no ninja."""
    import torch  # noqa: F401  (the module links against torch's libraries, loaded with it)

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.so")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the built kernel from {folder}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


class _build_lock:
    """An exclusive ``flock`` on ``path``, waited for at most ``timeout`` seconds (TimeoutError then).
    Where ``fcntl`` does not exist (Windows), no lock is taken and torch's own lock file serves."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                self._close()
                raise TimeoutError(
                    f"another process has been building the kernel for {self.timeout:.0f} s "
                    f"(lock {self.path}); set SPECTRAL_EDGE_BUILD_TIMEOUT to wait longer"
                ) from None
            except OSError:  # a filesystem without flock (NFS, Lustre): torch's own lock file serves
                self._close()
                return
            except BaseException:
                self._close()
                raise

    def __exit__(self, *exc: object) -> None:
        self._close()  # closing the descriptor releases the flock

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _put_ninja_on_path() -> None:
    """Put the pip package's ``ninja`` on PATH, where torch's builder looks for it.

    The binary sits beside the venv's Python, which is not on PATH when the venv is used without
    activating it (``.venv/bin/python train.py``)."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return  # the build then fails with torch's own message, logged by native_kernel
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
