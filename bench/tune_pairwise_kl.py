"""Sweep pairwise_kl launch configurations on a CUDA GPU; print each pass's bandwidth.

`python bench/tune_pairwise_kl.py [OUT.json]`. Forward reads the logits once (2 bytes per bf16
logit), backward reads and writes them (4 bytes); each is compared with a device-to-device copy
measured in the same run. The winners become FORWARD_CONFIG and BACKWARD_CONFIG.
"""
import itertools
import json
import sys

import torch
import triton.testing
from common import copy_gbps

from mcckd.ops import pairwise_kl_triton as pairwise_kl
from mcckd.ops.pairwise_kl_triton import LaunchConfig, pairwise_kl_backward, pairwise_kl_forward

SHAPES = [(512, 4, 128256), (64, 4, 128256)]


def gbps(nbytes, ms):
    return nbytes / (ms * 1e-3) / 1e9


def sweep(G, K, V, copy):
    logits = (3.0 * torch.randn(G, K, V, device="cuda")).to(torch.bfloat16)
    valid = torch.rand(G, K, device="cuda") > 0.1
    grad_output = torch.rand(G, device="cuda")
    _, stats = pairwise_kl_forward(logits, valid, 1.0)
    rows = []
    for tile, per_thread, warps, per_sm in itertools.product((4096, 8192), (32, 64), (4, 8), (1, 4)):
        config = LaunchConfig(tile, per_thread, warps, per_sm)
        ms = triton.testing.do_bench(
            lambda config=config: pairwise_kl_forward(logits, valid, 1.0, config=config), return_mode="median"
        )
        rows.append({"pass": "fwd", "G": G, "K": K, "V": V, "config": config.__dict__, "ms": ms,
                     "of_copy": gbps(2 * logits.numel(), ms) / copy})
        if per_sm == 1:
            def backward(config=config):
                return pairwise_kl_backward(logits, valid, 1.0, stats, grad_output, config=config)

            ms = triton.testing.do_bench(backward, return_mode="median")
            rows.append({"pass": "bwd", "G": G, "K": K, "V": V, "config": config.__dict__, "ms": ms,
                         "of_copy": gbps(4 * logits.numel(), ms) / copy})
    return rows


def main():
    copy = copy_gbps()
    print(
        f"copy {copy:.0f} GB/s; defaults fwd {pairwise_kl.FORWARD_CONFIG}, bwd {pairwise_kl.BACKWARD_CONFIG}"
    )
    results = {"copy_gbps": copy, "gpu": torch.cuda.get_device_name(), "rows": []}
    for shape in SHAPES:
        rows = sweep(*shape, copy)
        results["rows"] += rows
        if len(sys.argv) > 1:  # after every shape: a run stopped at its time limit keeps what it swept
            with open(sys.argv[1], "w") as f:
                json.dump(results, f, indent=1)
        for pass_name in ("fwd", "bwd"):
            best = sorted((r for r in rows if r["pass"] == pass_name), key=lambda r: r["ms"])[:3]
            for r in best:
                print(f"{pass_name} G={shape[0]} K={shape[1]} V={shape[2]} {r['config']} {r['ms']:.3f} ms "
                      f"{100 * r['of_copy']:.0f}% of copy")


if __name__ == "__main__":
    main()
