"""Fused log-softmax + all-pairs symmetric KL over K rows of vocabulary-sized logits.

Math (`docs/design.md` derives it; `reference.py` is the specification). For group g with k valid rows of
scaled logits y_i = x_i / T, log-probabilities l_i and p_i = exp(l_i):

    S   = sum_{i<j} KL(p_i||p_j) + KL(p_j||p_i) = k * sum_i c_i,   c_i = <p_i, l_i - lbar>
    L_g = S / (k (k - 1))                         (0 for k < 2, left out of the mean)
    dS/dy_i = k p_i (1 + (l_i - lbar) - c_i) - P,  P = sum_j p_j,  dS/dx_i = dS/dy_i / T

Backends: "triton" (`pairwise_kl_triton.py`), "torch" (`pairwise_kl_torch.py`) and "native"
(`kernels/cpu/`), all forming every term from differences to a pivot row (docs/design.md,
"Precision: differences to a pivot row"); `reference.py` keeps the direct formulas as the plain
specification. Each backend is a torch.library op (`registration.py`), so the function compiles
with torch.compile(fullgraph=True).

Measured precision (`bench/precision_table.py`), worst relative error of the loss and of the
gradient (grad_output not 1) against the float64 definition on the same float32 inputs: G=4,
K=4, V=4099, rows = a shared row + eps * noise, logit scales 1 and 30, T = 1 and 1.7:

    eps     torch (loss / grad)   native             triton (interpreter)
    1e-3    8.3e-7 / 8.2e-7       9.0e-7 / 9.2e-7    7.1e-7 / 8.2e-7
    1e-4    6.1e-7 / 5.8e-7       7.1e-7 / 6.5e-7    5.1e-7 / 5.1e-7
    1e-5    2.8e-7 / 3.2e-7       4.1e-7 / 3.1e-7    4.1e-7 / 6.7e-7

The direct formulas of `reference.py` give a gradient error of 1.3e-2 (eps = 1e-3) to 1.4
(eps = 1e-5) at logit scale 1. tests/ops/test_pairwise_kl_precision.py holds every backend to
1e-4 (eps 1e-3, 1e-4) and 1e-3 (eps 1e-5), and bf16/fp16 inputs to the error of the same
computation done plainly in that dtype plus 1e-4.
"""
import torch

from mcckd.ops.backends import OP_BACKENDS, resolve_backend
from mcckd.ops.reference import REDUCTIONS, reduce_group_losses
from mcckd.ops.registration import pairwise_kl_ops
from mcckd.ops.validation import FLOAT_DTYPES, check_choice, check_positive_finite, check_shape, check_tensor


def _check_inputs(logits, valid, temperature, reduction, backend):
    check_tensor("logits", logits, ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    G, K, V = logits.shape
    if K < 2:
        raise ValueError(f"logits must have K >= 2 rationales per group (shape [G, K, V]), got K={K}")
    if V < 1:
        raise ValueError(f"logits must have a vocabulary of at least 1 (shape [G, K, V]), got V={V}")
    if valid is not None:
        check_tensor("valid", valid, ndim=2, dtypes=(torch.bool,), device=logits.device)
        check_shape("valid", valid, (G, K))
    check_positive_finite("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, OP_BACKENDS)


def _forward_kernel():
    from mcckd.ops.pairwise_kl_triton import _pairwise_kl_fwd_kernel

    return _pairwise_kl_fwd_kernel


def pairwise_sym_kl(
    logits: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Mean over pairs of half the symmetric KL between the K rows of each group.

    Args:
        logits: the K rows of logits of each of G groups.
        valid: which rows take part (None: all); groups with fewer than two valid rows give 0.
        temperature: T > 0; the distributions are softmax(logits / T).
        reduction: "mean" (over groups with >= 2 valid rows, 0.0 when there are none), "sum",
            or "none" (one loss per group).
        backend: "auto", "triton", "torch" or "native" (`mcckd.ops.backends`).

    Shapes:
        logits [G, K, V] float32, bfloat16 or float16 (float64 with backends "torch", "native");
        valid [G, K] bool.

    Returns:
        A float32 scalar (float64 for float64 logits), or [G] for reduction "none". The
        gradient flows to logits in logits' dtype. NaN or +inf in a valid row gives that group
        NaN, a column at -inf in some valid rows but not all +inf (gradients NaN); G = 0 gives
        0.0 ("mean", "sum") or an empty [0] ("none").
    """
    _check_inputs(logits, valid, temperature, reduction, backend)
    backend = resolve_backend(backend, logits, _forward_kernel, name="logits", k=logits.shape[1])
    G = logits.shape[0]
    forward, _ = pairwise_kl_ops(backend)
    group_loss, _ = forward(logits, valid, float(temperature))
    if valid is None:
        has_pairs = torch.ones(G, dtype=torch.bool, device=logits.device)
    else:
        has_pairs = valid.sum(dim=1) >= 2
    return reduce_group_losses(group_loss, has_pairs, reduction)


class PairwiseSymKL(torch.nn.Module):
    """Module form of `pairwise_sym_kl` with fixed temperature, reduction and backend."""

    def __init__(self, temperature: float = 1.0, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        check_positive_finite("temperature", temperature)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("backend", backend, OP_BACKENDS)
        self.temperature, self.reduction, self.backend = temperature, reduction, backend

    def forward(self, logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return pairwise_sym_kl(logits, valid, temperature=self.temperature, reduction=self.reduction,
                               backend=self.backend)

    def extra_repr(self):
        return f"temperature={self.temperature}, reduction={self.reduction!r}, backend={self.backend!r}"
