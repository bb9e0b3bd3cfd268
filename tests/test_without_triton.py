"""The package, its CPU ops and its command line work in a process where triton cannot be imported."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import pairwise_definition

from mcckd.ops import fused_linear_mcc_reference

ROOT = Path(__file__).resolve().parents[1]
NO_TRITON = "import sys; sys.modules['triton'] = None\n"
OPS = NO_TRITON + """
import torch

from mcckd.ops import fused_linear_mcc_reference
import mcckd
from mcckd.ops import fused_linear_mcc_loss, pairwise_sym_kl
torch.manual_seed(0)
x = torch.randn(2, 3, 7, dtype=torch.float32, requires_grad=True)
kl = pairwise_sym_kl(x, backend="auto")
kl.backward()
h = torch.randn(6, 4, requires_grad=True)
w = torch.randn(5, 4, requires_grad=True)
labels = torch.tensor([0, 1, 2, 3, 4, -100])
out = fused_linear_mcc_loss(h, w, labels, torch.tensor([[1, 2], [3, 4]]), backend="auto")
out.loss.backward()
torch.save({"x": x.detach(), "kl": kl.detach(), "gx": x.grad, "h": h.detach(), "w": w.detach(),
            "loss": out.loss.detach(), "gh": h.grad, "gw": w.grad}, sys.argv[1])
assert "triton" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None], "triton imported"
"""


def _run(code, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cpu_ops_run_and_match_without_triton(tmp_path):
    result = _run(OPS, str(tmp_path / "out.pt"))
    assert result.returncode == 0, result.stderr
    got = torch.load(tmp_path / "out.pt")
    x = got["x"].double().requires_grad_(True)
    expected = pairwise_definition(x, None, 1.0, "mean")
    expected.backward()
    torch.testing.assert_close(got["kl"].double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["gx"].double(), x.grad, rtol=1e-4, atol=1e-6)
    h, w = got["h"].double().requires_grad_(True), got["w"].double().requires_grad_(True)
    labels, answers = torch.tensor([0, 1, 2, 3, 4, -100]), torch.tensor([[1, 2], [3, 4]])
    loss = fused_linear_mcc_reference(h, w, labels, answers)[0]
    loss.backward()
    torch.testing.assert_close(got["loss"].double(), loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["gh"].double(), h.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["gw"].double(), w.grad, rtol=1e-4, atol=1e-5)


def test_command_line_help_without_triton():
    code = "import runpy; sys.argv = ['mcckd', '--help']; runpy.run_module('mcckd', run_name='__main__')"
    result = _run(NO_TRITON + code)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_auto_is_native_on_the_cpu_without_triton():
    code = NO_TRITON + ("import torch; from mcckd.ops.backends import resolve_backend; "
                        "print(resolve_backend('auto', torch.zeros(1), lambda: None, name='x'))")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "native"
