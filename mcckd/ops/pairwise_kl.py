"""Fused log-softmax + all-pairs symmetric KL over K rows of vocabulary-sized logits.

Math (`docs/design.md` derives it; `reference.py` is the specification). For group g with k valid rows of
scaled logits y_i = x_i / T, log-probabilities l_i and p_i = exp(l_i):

    S   = sum_{i<j} KL(p_i||p_j) + KL(p_j||p_i) = k * sum_i c_i,   c_i = <p_i, l_i - lbar>
    L_g = S / (k (k - 1))                         (0 for k < 2, left out of the mean)
    dS/dy_i = k p_i (1 + (l_i - lbar) - c_i) - P,  P = sum_j p_j,  dS/dx_i = dS/dy_i / T

The Triton kernels are in `pairwise_kl_triton.py`; `reference.py` holds the PyTorch backend.
"""
import torch

from mcckd.ops.backends import OP_BACKENDS, resolve_backend
from mcckd.ops.reference import REDUCTIONS, pairwise_sym_kl_reference
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
        A float32 scalar, or [G] float32 for reduction "none". The gradient flows to logits
        in logits' dtype.
    """
    _check_inputs(logits, valid, temperature, reduction, backend)
    backend = resolve_backend(backend, logits, _forward_kernel, name="logits", k=logits.shape[1])
    if backend == "torch":
        return pairwise_sym_kl_reference(logits, valid, temperature, reduction)
    if backend == "native":
        from mcckd.ops.pairwise_kl_native import pairwise_sym_kl_native

        return pairwise_sym_kl_native(logits, valid, float(temperature), reduction)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    valid = valid.contiguous() if valid is not None else None
    from mcckd.ops.pairwise_kl_triton import PairwiseSymKLFunction

    return PairwiseSymKLFunction.apply(logits, valid, float(temperature), reduction)


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
