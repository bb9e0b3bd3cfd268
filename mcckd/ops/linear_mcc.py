"""Fused lm_head + cross-entropy + consistency loss that never materialises the [N, V] logits.

Math (`reference.py` holds the materialised specification). Token t has hidden
state h_t [d], target y_t and logits z_t = W h_t + b [V]; n counts the targets that are not
ignore_index (at least 1):

    CE   = (1/n) sum_t lse(z_t) - z_t[y_t],        dCE/dz_t = (softmax(z_t) - onehot(y_t)) / n
    KL   = pairwise_sym_kl(Z, valid, T),           Z [G, K, V] = logits of the rows answer_index
    loss = CE + alpha * KL

and through z = W h + b, with D = dLoss/dz: dh_t = D_t W, dW = sum_t D_t^T h_t, db = sum_t D_t.

Forward, over chunks of C tokens: the logits tile [C, V] by cuBLAS with a float32 output
(low-precision operands, float32 accumulation; rounding logits of magnitude 30 to bf16 moves
them by up to 0.06: github.com/linkedin/Liger-Kernel/issues/1432); a Triton kernel with an online
log-sum-exp stores each row's loss, then overwrites the tile with softmax - onehot in the operand
dtype (0 for ignored rows); then dh = D W and dW += D^T h, both accumulated in float32. The G*K
answer rows are projected the same way and pairwise_sym_kl gives the KL and its gradient. All gradients are
computed in the forward, as Liger-Kernel and cut-cross-entropy do, and held unscaled in
float32: backward multiplies them by dLoss/dCE / n, adds the answer rows' part scaled by
dLoss/dKL (so ce and kl can be differentiated apart) and rounds once to the input dtypes.
Extra memory: C V (4 + operand bytes) + 4 V d (float32 dW) + 4 N d + ~16 G K V bytes, plus
float32 copies of hidden and weight where low-precision products cannot be written in float32.
The chunk policy and both passes are in `linear_mcc_kernels.py`; each backend's pass is one
torch.library op (`registration.py`), so the loss compiles with torch.compile(fullgraph=True).
"""
import math
import numbers
from typing import NamedTuple

import torch

from mcckd.ops.backends import OP_BACKENDS, resolve_backend
from mcckd.ops.registration import fused_linear_mcc_op
from mcckd.ops.validation import FLOAT_DTYPES, check_choice, check_positive_finite, check_shape, check_tensor

INDEX_DTYPES = (torch.int64, torch.int32)


def _cross_entropy_kernel():
    from mcckd.ops.cross_entropy import _cross_entropy_kernel

    return _cross_entropy_kernel


class LinearMCCOutput(NamedTuple):
    """loss = ce + alpha * kl: scalars, float32 (float64 for float64 input)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_scalars(alpha, ignore_index, chunk_size, temperature, backend):
    """ValueError naming the first bad argument among the non-tensor ones."""
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(f"alpha must be a finite real number >= 0, got {alpha!r}")
    if not _is_int(ignore_index):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if chunk_size is not None and not (_is_int(chunk_size) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    check_positive_finite("temperature", temperature)
    check_choice("backend", backend, OP_BACKENDS)


def _check_tensors(hidden, weight, labels, answer_index, answer_valid, bias):
    check_tensor("hidden", hidden, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    N, d = hidden.shape
    if N < 1 or d < 1:
        raise ValueError(f"hidden must have shape [N, d] with N >= 1 and d >= 1, got {tuple(hidden.shape)}")
    device = hidden.device
    check_tensor("weight", weight, ndim=2, dtypes=(hidden.dtype,), device=device)
    V = weight.shape[0]
    if V < 1 or weight.shape[1] != d:
        raise ValueError(
            f"weight must have shape [V, {d}] with V >= 1 (d from hidden), got {tuple(weight.shape)}"
        )
    check_tensor("labels", labels, ndim=1, dtypes=INDEX_DTYPES, device=device)
    check_shape("labels", labels, (N,))
    check_tensor("answer_index", answer_index, ndim=2, dtypes=INDEX_DTYPES, device=device)
    G, K = answer_index.shape
    if K < 2:
        raise ValueError(f"answer_index must have shape [G, K] with K >= 2, got {tuple(answer_index.shape)}")
    if answer_valid is not None:
        check_tensor("answer_valid", answer_valid, ndim=2, dtypes=(torch.bool,), device=device)
        check_shape("answer_valid", answer_valid, (G, K))
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=(weight.dtype,), device=device)
        check_shape("bias", bias, (V,))


def _check_index_values(labels, answer_index, V, N, ignore_index):
    """Labels in [0, V) or ignore_index, answer_index in [-1, N). On CUDA this reads one pair
    of flags back: the only host sync, needed to raise ValueError before any kernel reads.
    Under torch.compile the checks are asserts on the device (RuntimeError), not a graph break."""
    bad_labels = ((labels < 0) | (labels >= V)) & (labels != ignore_index)
    bad_index = (answer_index < -1) | (answer_index >= N)
    if torch.compiler.is_compiling():
        torch._assert_async(~bad_labels.any(), f"labels must lie in [0, {V}) or equal ignore_index")
        torch._assert_async(~bad_index.any(), f"answer_index must lie in [-1, {N})")
        return
    labels_bad, index_bad = torch.stack([bad_labels.any(), bad_index.any()]).tolist()
    if labels_bad:
        raise ValueError(f"labels must lie in [0, {V}) (V from weight) or equal ignore_index={ignore_index}")
    if index_bad:
        raise ValueError(f"answer_index must lie in [-1, {N}) (-1 = missing, N from hidden)")


def fused_linear_mcc_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    answer_index: torch.Tensor,
    *,
    answer_valid: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    alpha: float = 0.1,
    temperature: float = 1.0,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> LinearMCCOutput:
    """MCC-KD loss of packed tokens without their [N, V] logits: CE + alpha * consistency KL.

    Args:
        hidden: the final hidden states of N packed tokens (before the lm_head).
        weight, bias: the lm_head, in hidden's dtype; bias may be None.
        labels: the target of each position; ignore_index where there is none.
        answer_index: for each of G answer tokens, the positions whose logits predict it under
            each of K rationales; -1 where a rationale is missing.
        answer_valid: which rows of answer_index take part (None: those >= 0).
        alpha: the weight of the consistency term (0: plain CE).
        temperature: of the consistency term's distributions.
        chunk_size: tokens per logits tile (None: chosen for the device and V).
        backend: "auto", "triton" or "torch" (`mcckd.ops.backends`).

    Shapes:
        hidden [N, d] float32, bfloat16 or float16 (float64 with backend "torch");
        weight [V, d]; bias [V]; labels [N] int64/int32; answer_index [G, K] int64/int32;
        answer_valid [G, K] bool.

    Returns:
        LinearMCCOutput(loss, ce, kl) of float32 scalars: ce the mean over targets (0 when
        there are none), kl the mean over groups with >= 2 valid rows of `pairwise_sym_kl`
        (0 when there are none, G = 0 included).
        Gradients flow to hidden, weight and bias.
    """
    _check_scalars(alpha, ignore_index, chunk_size, temperature, backend)
    _check_tensors(hidden, weight, labels, answer_index, answer_valid, bias)
    ce_backend = resolve_backend(backend, hidden, _cross_entropy_kernel, name="hidden")
    kl_backend = resolve_backend(
        backend, hidden, _cross_entropy_kernel, name="answer_index", k=answer_index.shape[1]
    )
    _check_index_values(labels, answer_index, weight.shape[0], hidden.shape[0], ignore_index)
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and t is not None and t.requires_grad for t in (hidden, weight, bias)]
    ce, kl, *_ = fused_linear_mcc_op(ce_backend)(
        hidden, weight, bias, labels.contiguous(), answer_index,
        answer_valid.contiguous() if answer_valid is not None else None,
        float(temperature), int(ignore_index), chunk_size, kl_backend, *needs,
    )
    return LinearMCCOutput(ce + alpha * kl, ce, kl)


class MCCKDLoss(torch.nn.Module):
    """MCC-KD loss from a model's final hidden states and its lm_head: `fused_linear_mcc_loss`
    with fixed alpha, temperature, ignore_index, chunk_size and backend.

    forward(hidden [..., d], weight [V, d], labels [...], answer_index [G, K], answer_valid=None,
    bias=None): leading dimensions are flattened to N tokens, which answer_index indexes.
    """

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, ignore_index: int = -100,
                 chunk_size: int | None = None, backend: str = "auto"):
        super().__init__()
        _check_scalars(alpha, ignore_index, chunk_size, temperature, backend)
        self.alpha, self.temperature, self.ignore_index = alpha, temperature, ignore_index
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                answer_index: torch.Tensor, answer_valid: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> LinearMCCOutput:
        if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
            raise ValueError(
                f"hidden must be a tensor [..., d], got {getattr(hidden, 'shape', type(hidden).__name__)}"
            )
        if not isinstance(labels, torch.Tensor) or labels.shape != hidden.shape[:-1]:
            raise ValueError(f"labels must have shape {tuple(hidden.shape[:-1])} (hidden without d), "
                             f"got {tuple(getattr(labels, 'shape', ()))}")
        return fused_linear_mcc_loss(
            hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), answer_index,
            answer_valid=answer_valid, bias=bias, alpha=self.alpha, temperature=self.temperature,
            ignore_index=self.ignore_index, chunk_size=self.chunk_size, backend=self.backend,
        )

    def extra_repr(self):
        return (f"alpha={self.alpha}, temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"chunk_size={self.chunk_size}, backend={self.backend!r}")
