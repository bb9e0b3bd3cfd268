"""Builds the native CPU ops (kernels/cpu/, CMakeLists.txt) for setup.py, or in place with
`python native_build.py`.

CMake builds against the torch of the environment being installed into: pip's isolated build
environment holds cmake and ninja but no torch, so the target interpreter is asked for
torch.utils.cmake_prefix_path with pip's isolation variables removed. The build is skipped,
with one printed line and no error, when MCCKD_BUILD_NATIVE=0 or when cmake, a compiler or
torch is missing: mcckd then runs its torch backend on the CPU.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LIBRARY_NAME = "libmcckd_native.so"
# Set by pip's isolated build environment; without them the interpreter sees its own site-packages.
ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PYTHONSAFEPATH")


def say(message: str) -> None:
    print(f"mcckd: {message}", flush=True)


def target_torch() -> tuple[str, str]:
    """(torch version, its cmake prefix path) of the target interpreter, outside build isolation."""
    env = {key: value for key, value in os.environ.items() if key not in ISOLATION_VARIABLES}
    probe = "import torch, torch.utils; print(torch.__version__); print(torch.utils.cmake_prefix_path)"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        raise RuntimeError("torch is not importable by " + sys.executable)
    version, prefix = result.stdout.strip().splitlines()[-2:]
    return version, prefix


def run_cmake(prefix: str, build_dir: Path) -> Path:
    """Configure and build CMakeLists.txt into build_dir; the library's path."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake not found")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    build_dir.mkdir(parents=True, exist_ok=True)
    configure = [cmake, "-S", str(ROOT), "-B", str(build_dir), *generator, f"-DCMAKE_PREFIX_PATH={prefix}",
                 "-DCMAKE_BUILD_TYPE=Release"]
    for command in (configure, [cmake, "--build", str(build_dir), "--parallel"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-20:]
            raise RuntimeError("cmake failed:\n    " + "\n    ".join(tail))
    return build_dir / LIBRARY_NAME


def build_native(output: Path, build_dir: Path) -> bool:
    """Build the library into `output`; False (after saying why) when it is skipped or fails."""
    if os.environ.get("MCCKD_BUILD_NATIVE", "1") == "0":
        say("native CPU ops not built (MCCKD_BUILD_NATIVE=0); mcckd will use its torch backend on the CPU")
        return False
    try:
        version, prefix = target_torch()
        say(f"building the native CPU ops (kernels/cpu/) against torch {version}")
        library = run_cmake(prefix, build_dir)
    except (OSError, RuntimeError) as error:
        say(f"native CPU ops not built ({error}); mcckd will use its torch backend on the CPU")
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(library, output)
    say(f"native CPU ops built: {output.name}")
    return True


def in_place_path() -> Path:
    """Where mcckd/ops/native.py looks for the library: mcckd/_native<extension suffix>."""
    return ROOT / "mcckd" / ("_native" + sysconfig.get_config_var("EXT_SUFFIX"))


if __name__ == "__main__":
    sys.exit(0 if build_native(in_place_path(), ROOT / "build" / "native") else 1)
