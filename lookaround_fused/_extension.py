"""The compiled extension ``lookaround_fused._C``: how it is built, and loading it.

``setup.py`` builds it at install time from this module's description (it loads this
file by path, so the module imports nothing from the package). When it was not
built, :func:`load` compiles it just in time with ``torch.utils.cpp_extension.load``
into torch's extension cache (``TORCH_EXTENSIONS_DIR``), once per process.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CPU_SOURCES = ("lookaround.cpp", "cpu/lookaround_cpu.cpp")
CUDA_SOURCES = ("cuda/lookaround_cuda.cu",)
# -fopenmp: ATen's at::parallel_for is inlined from headers and runs serially unless the
# extension itself is compiled with OpenMP. -ffp-contract=off: the kernels fuse exactly the
# multiply-adds that PyTorch fuses (csrc/sgd_math.h), no others. No -march=native: the CPU
# kernel picks its AVX2 copy at run time, so a built wheel runs on any x86-64 machine.
CXX_FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off")
NVCC_FLAGS = ("-O3", "--fmad=false")
LINK_FLAGS = ("-fopenmp",)

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def cuda_toolchain_problem() -> str | None:
    """Why CUDA sources cannot be compiled against this torch, or ``None`` when they can."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME)"
    for needed in ("bin/nvcc", "include/cuda_runtime.h"):
        if not os.path.exists(os.path.join(CUDA_HOME, needed)):
            return f"CUDA_HOME={CUDA_HOME} has no {needed} (set CUDA_HOME to the CUDA toolkit)"
    return None


def sources(with_cuda: bool) -> list[Path]:
    """The source files of the extension, with or without its CUDA kernels."""
    return [CSRC / name for name in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]


def load() -> ModuleType:
    """The extension module, importing the prebuilt one or building it just in time.

    Raises:
        RuntimeError: saying why neither works; the first failure is remembered and
            raised again on later calls rather than rebuilding.
    """
    global _module, _failure
    with _lock:
        if _module is None and _failure is None:
            try:
                _module = _import_or_build()
            except (ImportError, OSError, RuntimeError) as error:
                _failure = str(error)
    if _failure is not None:
        raise RuntimeError(_failure)
    return _module


def _import_or_build() -> ModuleType:
    try:
        return importlib.import_module("lookaround_fused._C")
    except ModuleNotFoundError as error:
        if error.name != "lookaround_fused._C":
            raise
    except ImportError as error:  # built against another torch, say
        warnings.warn(f"ignoring the prebuilt lookaround_fused._C ({error}); building it just in time",
                      RuntimeWarning, stacklevel=4)
    return _build_just_in_time()


def _build_just_in_time() -> ModuleType:
    from torch.utils.cpp_extension import is_ninja_available
    from torch.utils.cpp_extension import load as load_extension

    missing = [str(path) for path in sources(with_cuda=False) if not path.exists()]
    if missing:
        raise RuntimeError(f"lookaround_fused._C was not built at install time and its sources are missing "
                           f"({', '.join(missing)})")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"lookaround_fused._C was not built at install time and there is no C++ compiler "
                           f"({compiler!r}) to build it just in time")
    if not is_ninja_available():
        raise RuntimeError("lookaround_fused._C was not built at install time and building it just in time needs "
                           "ninja (pip install ninja)")
    # CUDA kernels cost minutes of nvcc: only worth it when there is a GPU to run them.
    with_cuda = torch.cuda.is_available() and cuda_toolchain_problem() is None
    _log.info("building the lookaround extension just in time (%s)", "CPU and CUDA" if with_cuda else "CPU")
    defines = ["-DWITH_CUDA"] if with_cuda else []
    return load_extension(
        name="lookaround_fused_cuda" if with_cuda else "lookaround_fused_cpu",
        sources=[str(path) for path in sources(with_cuda)],
        extra_cflags=[*CXX_FLAGS, *defines],
        extra_cuda_cflags=[*NVCC_FLAGS, *defines],
        extra_ldflags=list(LINK_FLAGS),
    )
