"""The native CPU ops: the library that `pip install -e .` builds from kernels/cpu/
(CMakeLists.txt, native_build.py) as mcckd/_native<suffix>.so, loaded into torch.ops.mcckd.

    MCCKD_DISABLE_NATIVE=1   never load it: "auto" runs the torch backend on the CPU

When the library is missing or disabled, the first op that would have used it logs one line
saying so (`log_fallback`).
"""
import functools
import importlib.machinery
import logging
import os
from pathlib import Path

import torch

LIBRARY = Path(__file__).resolve().parents[1] / ("_native" + importlib.machinery.EXTENSION_SUFFIXES[0])
logger = logging.getLogger(__name__)


@functools.cache
def unavailable_reason() -> str | None:
    """None once the library is loaded, else why it is not."""
    if os.environ.get("MCCKD_DISABLE_NATIVE", "0") not in ("", "0"):
        return "disabled by MCCKD_DISABLE_NATIVE"
    if not LIBRARY.exists():
        return f"not built ({LIBRARY.name} missing: `pip install -e .` builds it unless MCCKD_BUILD_NATIVE=0)"
    try:
        torch.ops.load_library(str(LIBRARY))
    except (OSError, RuntimeError) as error:
        return f"not loadable ({error})"
    return None


@torch.compiler.assume_constant_result
def native_available() -> bool:
    """True when the compiled CPU ops are loaded (torch.ops.mcckd.native_*); a constant to
    torch.compile, which would otherwise trace into the file check."""
    return unavailable_reason() is None


def require_native() -> None:
    """Load the library; RuntimeError saying why when it cannot be (the wrappers' import)."""
    if not native_available():
        raise RuntimeError(f"mcckd: native CPU ops {unavailable_reason()}")


@functools.cache
def log_fallback() -> None:
    """Log, once per process, that the CPU runs the torch backend instead of the native one."""
    logger.warning("mcckd: native CPU ops %s; the CPU runs the torch backend", unavailable_reason())
