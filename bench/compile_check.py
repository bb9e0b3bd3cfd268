"""Compile every Triton kernel configuration for a Hopper GPU (sm_90a) without a GPU.

Catches what the interpreter does not (non-constexpr globals, type errors in compiled code)
and prints registers and stack (spills) per configuration from cuobjdump.
Run: `python bench/compile_check.py`.
"""
import itertools
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mcckd.ops import cross_entropy
from mcckd.ops import pairwise_kl_triton as pairwise_kl

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
DTYPES = ("fp32", "bf16", "fp16")


def resource_usage(cubin):
    """'registers N, stack S' of a cubin, from cuobjdump --dump-resource-usage."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        Path(path).write_bytes(cubin)
        out = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", path],
                             capture_output=True, text=True, check=True).stdout
    registers = re.search(r"REG:(\d+)", out).group(1)
    stack = re.search(r"STACK:(\d+)", out).group(1)
    return f"registers {registers:>3}, stack bytes {stack}"


def compile_one(kernel, signature, constexprs, num_warps):
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=TARGET, options={"num_warps": num_warps})
    return resource_usage(compiled.asm["cubin"])


def pairwise_kl_configurations():
    """(kernel name, constexprs, signature, num_warps) for every launch pairwise_kl can make."""
    for dtype, k_pad, has_valid in itertools.product(DTYPES, (2, 4, 8, 16), (True, False)):
        size = 4 if dtype == "fp32" else 2
        block_v = pairwise_kl.FORWARD_CONFIG.block_v(k_pad, 1 << 20, size)
        num_warps = pairwise_kl.FORWARD_CONFIG.num_warps(block_v, size)
        common = {"x_ptr": f"*{dtype}", "valid_ptr": "*i1", "stats_ptr": "*fp32"}
        for split in (True, False):
            yield (pairwise_kl._pairwise_kl_fwd_kernel, num_warps,
                   {**common, "loss_ptr": "*fp32", "part_ptr": "*fp32", "K": "i32", "V": "i32",
                    "stride_g": "i64", "stride_k": "i32", "stride_v": "i32", "stride_valid_g": "i32",
                    "stride_valid_k": "i32", "cols_per_split": "i32", "stride_stats": "i32", "inv_t": "fp32"},
                   {"K_PAD": k_pad, "BLOCK_V": block_v, "HAS_VALID": has_valid, "SPLIT": split})
        block_v = pairwise_kl.BACKWARD_CONFIG.block_v(k_pad, 1 << 20, size)
        yield (
            pairwise_kl._pairwise_kl_bwd_kernel,
            pairwise_kl.BACKWARD_CONFIG.num_warps(block_v, size),
            {
                **common,
                "grad_out_ptr": "*fp32",
                "grad_ptr": f"*{dtype}",
                "K": "i32",
                "V": "i32",
                "stride_g": "i64",
                "stride_k": "i32",
                "stride_v": "i32",
                "stride_valid_g": "i32",
                "stride_valid_k": "i32",
                "stride_grad_out": "i32",
                "stride_grad_g": "i64",
                "stride_grad_k": "i32",
                "stride_stats": "i32",
                "inv_t": "fp32",
            },
            {"K_PAD": k_pad, "BLOCK_V": block_v, "HAS_VALID": has_valid},
        )
    for k_pad, has_valid in itertools.product((2, 4, 8, 16), (True, False)):
        yield (pairwise_kl._pairwise_kl_merge_kernel, 4,
               {"part_ptr": "*fp32", "valid_ptr": "*i1", "stats_ptr": "*fp32", "loss_ptr": "*fp32",
                "K": "i32", "num_splits": "i32", "stride_valid_g": "i32", "stride_valid_k": "i32",
                "stride_stats": "i32", "inv_t": "fp32"},
               {"K_PAD": k_pad, "SPLITS_PAD": 64, "HAS_VALID": has_valid})


def linear_mcc_configurations():
    """The cross-entropy kernel of linear_mcc for every logits dtype, bias and gradient flag."""
    for dtype, has_bias, has_grad, block_v in itertools.product(
        DTYPES, (True, False), (True, False), (2048, 4096)
    ):
        yield (cross_entropy._cross_entropy_kernel, 8,
               {"logits_ptr": "*fp32", "bias_ptr": f"*{dtype}", "labels_ptr": "*i64", "loss_ptr": "*fp32",
                "grad_ptr": f"*{dtype}", "V": "i32", "stride_logits": "i64", "stride_col": "i32",
                "stride_bias": "i32", "stride_grad": "i64", "stride_grad_col": "i32", "ignore_index": "i64"},
               {"BLOCK_V": block_v, "HAS_BIAS": has_bias, "HAS_GRAD": has_grad})


def main():
    configurations = itertools.chain(pairwise_kl_configurations(), linear_mcc_configurations())
    for kernel, num_warps, signature, constexprs in configurations:
        name = kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__
        args = " ".join(f"{k}={v}" for k, v in constexprs.items())
        sig = signature.get("x_ptr", signature.get("grad_ptr", ""))
        compiled = compile_one(kernel, signature, constexprs, num_warps)
        print(f"{name:32s} {sig:6s} {args:55s} warps {num_warps}: {compiled}")


if __name__ == "__main__":
    main()
