"""Installing mcckd with the native build disabled (MCCKD_BUILD_NATIVE=0), or with no cmake,
still succeeds, says so in one line, and the CPU then runs the torch backend after one logged
line; MCCKD_DISABLE_NATIVE=1 does the same at run time."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "native_build.py", "CMakeLists.txt", "README.md", "MANIFEST.in")

# Runs both ops on the CPU with "auto" (twice) and prints what they chose and gave.
FALLBACK = """
import torch, mcckd.ops
from mcckd.ops import fused_linear_mcc_loss, pairwise_sym_kl
torch.manual_seed(0)
x = torch.randn(3, 4, 50)
print(mcckd.ops.native_available())
print(pairwise_sym_kl(x).item() == pairwise_sym_kl(x, backend="torch").item())
h, w = torch.randn(12, 8), torch.randn(40, 8)
labels, index = torch.randint(0, 40, (12,)), torch.tensor([[0, 3], [5, 7]])
print(fused_linear_mcc_loss(h, w, labels, index).loss.item()
      == fused_linear_mcc_loss(h, w, labels, index, backend="torch").loss.item())
try:
    pairwise_sym_kl(x, backend="native")
except ValueError as error:
    print(error)
"""


def run(args, env=None, cwd=ROOT):
    environ = {**os.environ, **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=environ, cwd=cwd, timeout=600)


def check_fallback(result, reason):
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["False", "True", "True"]
    assert lines[3] == (f"logits: backend='native' needs the native CPU ops, which are {reason}; "
                        "use backend='torch'")
    logged = [line for line in result.stderr.splitlines() if "native CPU ops" in line]
    assert logged == [f"mcckd: native CPU ops {reason}; the CPU runs the torch backend"]


def test_install_with_the_native_build_disabled_falls_back_to_torch(tmp_path):
    """A real (non-editable) pip install of a copy of the project, then its import."""
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        shutil.copy(ROOT / name, source / name)
    for folder in ("mcckd", "kernels"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "--no-index"]
    install = run([*pip, "--target", str(site), str(source)], env={"MCCKD_BUILD_NATIVE": "0"}, cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    log = (install.stdout + install.stderr).splitlines()
    assert [line.strip() for line in log if "mcckd: native" in line] == [
        "mcckd: native CPU ops not built (MCCKD_BUILD_NATIVE=0); mcckd will use its torch backend on the CPU"]
    assert not list((site / "mcckd").glob("_native*.so"))
    result = run([sys.executable, "-c", FALLBACK], env={"PYTHONPATH": str(site)}, cwd=tmp_path)
    library = "_native" + sysconfig.get_config_var("EXT_SUFFIX")
    check_fallback(result, f"not built ({library} missing: `pip install -e .` builds it unless "
                           "MCCKD_BUILD_NATIVE=0)")


def test_build_without_cmake_says_why_and_succeeds(tmp_path):
    code = ("import sys; sys.path.insert(0, '.'); from pathlib import Path; "
            "from native_build import build_native; "
            f"print(build_native(Path({str(tmp_path / 'lib.so')!r}), Path({str(tmp_path / 'build')!r})))")
    result = run([sys.executable, "-c", code], env={"PATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "False" and not (tmp_path / "lib.so").exists()
    assert lines[-2] == ("mcckd: native CPU ops not built (cmake not found); "
                         "mcckd will use its torch backend on the CPU")


def test_disabled_at_run_time():
    from mcckd.ops import native_available

    if not native_available():
        pytest.fail("the native CPU ops are not built in this checkout: run `pip install -e .`")
    result = run([sys.executable, "-c", FALLBACK], env={"MCCKD_DISABLE_NATIVE": "1", "PYTHONPATH": str(ROOT)})
    check_fallback(result, "disabled by MCCKD_DISABLE_NATIVE")


def test_auto_runs_native_on_the_cpu_when_built():
    from mcckd.ops.backends import resolve_backend

    chosen = {resolve_backend("auto", torch.zeros(1, dtype=dtype), lambda: None, name="x", k=k)
              for dtype in (torch.float32, torch.bfloat16, torch.float64) for k in (None, 2, 40)}
    assert chosen == {"native"}
