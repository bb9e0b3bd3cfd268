"""Matrix products written in float32 (float64) whatever the operands' dtype.

cuBLAS accumulates bf16/fp16 products in float32; torch >= 2.8 can write them out in float32
(`out_dtype`) on CUDA, and newer versions accumulate them into a float32 tensor in place.
Where torch cannot, the operands are promoted to float32 (`operand_dtype`).
"""
import functools

import torch

# Rows of dW per float32 temporary where addmm cannot accumulate into float32 (128 MiB at d=4096).
_ACCUMULATE_ROWS = 8192


@functools.cache
def float32_output_matmuls(device, dtype):
    """(mm, addmm): whether torch.mm writes float32 products of `dtype` operands here (out_dtype,
    CUDA, torch >= 2.8), and whether torch.addmm accumulates them into a float32 tensor in place
    (a float32 `self` with low-precision operands: newer torch, pytorch#167931)."""
    a = torch.zeros(16, 16, dtype=dtype, device=device)
    acc = torch.zeros(16, 16, dtype=torch.float32, device=device)

    def works(matmul):
        try:
            matmul()
        except (RuntimeError, TypeError):
            return False
        return True

    return (works(lambda: torch.mm(a, a, out_dtype=torch.float32, out=acc)),
            works(lambda: torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)))


def accumulator_dtype(dtype):
    """float64 for float64 operands, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def operand_dtype(hidden):
    """Matmul operand dtype: the input's, or float32 copies where low-precision products
    cannot be written in float32 (CPU, torch < 2.8), at a cost of O((N + V) d) memory."""
    if hidden.dtype in (torch.float32, torch.float64):
        return hidden.dtype
    if hidden.is_cuda and float32_output_matmuls(hidden.device, hidden.dtype)[0]:
        return hidden.dtype
    return torch.float32


def mm_into(out, a, b):
    """out = a @ b in out's (float32 or float64) dtype whatever a's; cuBLAS accumulates in float32."""
    if a.dtype == out.dtype:
        return torch.mm(a, b, out=out)
    return torch.mm(a, b, out_dtype=out.dtype, out=out)


def addmm_into(acc, a, b):
    """acc += a @ b: one GEMM with beta = 1 where torch can accumulate low-precision products
    into float32, else block by block of rows through a float32 temporary."""
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b)
    if float32_output_matmuls(acc.device, a.dtype)[1]:
        return torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    for start in range(0, acc.shape[0], _ACCUMULATE_ROWS):
        block = acc[start:start + _ACCUMULATE_ROWS]
        block += mm_into(torch.empty_like(block), a[start:start + _ACCUMULATE_ROWS], b)
    return acc
