"""The backends of the ops: their names, where each one runs, and what "auto" chooses.

    triton  the fused Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1
            (set before triton is first imported); float32, bfloat16, float16; K <= 16
    torch   PyTorch ops (`pairwise_kl_torch.py`, `cross_entropy_torch.py`): any device and dtype
    native  the compiled CPU kernels of kernels/cpu/ (`mcckd.ops.native`): CPU tensors, float32,
            bfloat16, float16, float64, any K

"auto" is Triton for CUDA tensors it can take, native for CPU tensors when it is built (else
torch, after one logged line), and torch everywhere else. Both ops
(`pairwise_sym_kl`, `fused_linear_mcc_loss`) resolve their `backend` argument here.
"""
from collections.abc import Callable

import torch

from mcckd.ops.native import log_fallback, native_available, unavailable_reason
from mcckd.ops.validation import check_choice

OP_BACKENDS = ("auto", "triton", "torch", "native")
# Rows per group that the Triton kernels keep in registers (one thread holds a column of K).
MAX_TRITON_K = 16


def resolve_backend(backend: str, tensor: torch.Tensor, load_kernel: Callable[[], object], *, name: str,
                    k: int | None = None) -> str:
    """The backend that runs an op on `tensor` (the argument `name`) with `k` rows per group.

    `load_kernel()` imports and returns one of the op's Triton kernels (it tells whether Triton
    runs interpreted); it is called only for backend 'triton', so the CPU path never imports triton.
    ValueError, naming the argument, when the chosen backend cannot take the input.
    """
    check_choice("backend", backend, OP_BACKENDS)
    if backend == "auto":
        from mcckd.ops.launch import triton_importable

        fits = tensor.dtype != torch.float64 and (k is None or k <= MAX_TRITON_K)
        if tensor.is_cuda:
            return "triton" if fits and triton_importable() else "torch"
        if tensor.device.type == "cpu":
            if native_available():
                return "native"
            log_fallback()
        return "torch"
    if backend == "native":
        check_native_can_run(name, tensor)
    if backend == "triton":
        if tensor.dtype == torch.float64:
            raise ValueError(f"{name} must be float32, bfloat16 or float16 for backend='triton' "
                             "(float64: use backend='torch')")
        if k is not None and k > MAX_TRITON_K:
            raise ValueError(f"{name} must have K <= {MAX_TRITON_K} for backend='triton', got K={k} "
                             "(use backend='torch')")
        check_triton_can_run(name, tensor, load_kernel)
    return backend


def check_triton_can_run(name: str, tensor: torch.Tensor, load_kernel: Callable[[], object]) -> None:
    """ValueError unless triton is installed and `tensor` is on CUDA or the kernel runs under
    Triton's interpreter."""
    from mcckd.ops.launch import is_interpreted, triton_importable

    if not triton_importable():
        raise ValueError(f"{name}: backend='triton' needs the triton package (installed on Linux only); "
                         "use backend='torch'")
    if not tensor.is_cuda and not is_interpreted(load_kernel()):
        raise ValueError(
            f"{name} is on {tensor.device}: backend='triton' needs CUDA tensors, "
            "or TRITON_INTERPRET=1 set before mcckd is imported"
        )


def check_native_can_run(name: str, tensor: torch.Tensor) -> None:
    """ValueError unless `tensor` is on the CPU and the native library is loaded."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} is on {tensor.device}: backend='native' runs CPU tensors only")
    if not native_available():
        raise ValueError(f"{name}: backend='native' needs the native CPU ops, which are "
                         f"{unavailable_reason()}; use backend='torch'")
