"""The backends of the ops: their names, where each one runs, and what "auto" chooses.

    triton  the fused Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1
            (set before triton is first imported); float32, bfloat16, float16; K <= 16
    torch   the plain-PyTorch references of `mcckd.ops.reference`: any device and dtype

"auto" is Triton for CUDA tensors it can take, and the references everywhere else. Both ops
(`pairwise_sym_kl`, `fused_linear_mcc_loss`) resolve their `backend` argument here.
"""
import torch

from mcckd.ops.validation import check_choice

OP_BACKENDS = ("auto", "triton", "torch")
# Rows per group that the Triton kernels keep in registers (one thread holds a column of K).
MAX_TRITON_K = 16


def resolve_backend(backend: str, tensor: torch.Tensor, kernel, *, name: str, k: int | None = None) -> str:
    """The backend that runs an op on `tensor` (the argument `name`) with `k` rows per group.

    `kernel` is one of the op's Triton kernels (it tells whether Triton runs interpreted).
    ValueError, naming the argument, when the chosen backend cannot take the input.
    """
    check_choice("backend", backend, OP_BACKENDS)
    if backend == "auto":
        fits = tensor.dtype != torch.float64 and (k is None or k <= MAX_TRITON_K)
        return "triton" if tensor.is_cuda and fits else "torch"
    if backend == "triton":
        if tensor.dtype == torch.float64:
            raise ValueError(f"{name} must be float32, bfloat16 or float16 for backend='triton' "
                             "(float64: use backend='torch')")
        if k is not None and k > MAX_TRITON_K:
            raise ValueError(f"{name} must have K <= {MAX_TRITON_K} for backend='triton', got K={k} "
                             "(use backend='torch')")
        check_triton_can_run(name, tensor, kernel)
    return backend


def check_triton_can_run(name: str, tensor: torch.Tensor, kernel) -> None:
    """ValueError unless `tensor` is on CUDA or `kernel` runs under Triton's interpreter."""
    from mcckd.ops.launch import is_interpreted

    if not tensor.is_cuda and not is_interpreted(kernel):
        raise ValueError(
            f"{name} is on {tensor.device}: backend='triton' needs CUDA tensors, "
            "or TRITON_INTERPRET=1 set before mcckd is imported"
        )
