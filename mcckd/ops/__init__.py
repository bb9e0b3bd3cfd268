"""The fused ops, their PyTorch references, and the registry of their backends.

    pairwise_kl.py         pairwise_sym_kl: all-pairs symmetric KL over K rows (public)
    pairwise_kl_triton.py  its Triton kernels and autograd Function
    pairwise_kl_pivot.py   the kernels' pivot-difference terms (exact differences, rescaling)
    pairwise_kl_torch.py   its torch backend: the pivot-difference formulation in torch ops
    linear_mcc.py          fused_linear_mcc_loss: lm_head + CE + consistency, no [N, V] logits
    linear_mcc_kernels.py  its forward and backward passes
    registration.py        both ops in torch.library: fakes, autograd, one op per backend
    cross_entropy.py       the cross-entropy rows of a logits tile (Triton and PyTorch)
    cross_entropy_torch.py the same rows in PyTorch ops (the CPU path, no triton)
    native.py              the compiled CPU ops (kernels/cpu/): loading, availability
    cross_entropy_native.py the cross-entropy rows on the native kernel
    matmul.py              products written in float32 whatever the operands
    reference.py           the PyTorch specification of every op (direct formulas)
    backends.py            backend names, resolution, availability
    validation.py          argument checks that name the argument
"""
from mcckd.ops.backends import OP_BACKENDS
from mcckd.ops.linear_mcc import LinearMCCOutput, MCCKDLoss, fused_linear_mcc_loss
from mcckd.ops.native import native_available
from mcckd.ops.pairwise_kl import PairwiseSymKL, pairwise_sym_kl
from mcckd.ops.reference import fused_linear_mcc_reference, pairwise_sym_kl_reference

__all__ = [
    "OP_BACKENDS",
    "native_available",
    "LinearMCCOutput",
    "MCCKDLoss",
    "PairwiseSymKL",
    "fused_linear_mcc_loss",
    "fused_linear_mcc_reference",
    "pairwise_sym_kl",
    "pairwise_sym_kl_reference",
]
