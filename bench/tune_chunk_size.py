"""Sweep the fused loss's chunk size per vocabulary size on a CUDA GPU.

`python bench/tune_chunk_size.py [OUT.json]`: fwd+bwd of `fused_linear_mcc_loss` (bf16, G=64,
K=4, 25% of targets ignored) at each chunk size against the default policy (chunk_size=None),
time (CUDA events, median) and peak memory above the inputs. Shapes: the train-step students'
micro-batches (N = 4096 tokens at d = 896 and 1536, V = 151936), then the kernel benchmark's
(d = 4096, N = 16384 and 4096) at V = 32000, 128256, 151936; the JSON is written after each.
The best chunk per shape decides the policy; its gain over the default is the lever's outcome
(bench/NOTES.md).
"""
import json
import sys

import torch
from common import linear_inputs, median_ms, peak_extra_mb
from providers import ALPHA

from mcckd.ops import fused_linear_mcc_loss

# the students' micro-batches first, then the kernel benchmark's shapes
SHAPES = [(4096, 896, 151936), (4096, 1536, 151936)] + [
    (N, 4096, V) for N in (16384, 4096) for V in (32000, 128256, 151936)]
CHUNKS = (None, 512, 1024, 2048, 4096, 8192)
G, K = 64, 4


def sweep(N, d, V):
    hidden, weight, labels, answer_index = linear_inputs(N, d, V, torch.bfloat16, G, K)
    rows = []
    for chunk in CHUNKS:
        if chunk is not None and chunk > N:
            continue

        def forward_backward(chunk=chunk):
            out = fused_linear_mcc_loss(hidden, weight, labels, answer_index, alpha=ALPHA, chunk_size=chunk)
            return torch.autograd.grad(out.loss, (hidden, weight))

        peak = peak_extra_mb(forward_backward)
        rows.append({"N": N, "d": d, "V": V, "chunk_size": chunk, "ms_fwd_bwd": median_ms(forward_backward),
                     "peak_mb": peak})
    return rows


def main():
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for shape in SHAPES:
        rows = sweep(*shape)
        results["rows"] += rows
        default = next(r for r in rows if r["chunk_size"] is None)
        best = min(rows, key=lambda r: r["ms_fwd_bwd"])
        print(f"N={shape[0]} d={shape[1]} V={shape[2]}: default {default['ms_fwd_bwd']:.2f} ms "
              f"{default['peak_mb']:.0f} MB; best chunk {best['chunk_size']} {best['ms_fwd_bwd']:.2f} ms "
              f"{best['peak_mb']:.0f} MB ({default['ms_fwd_bwd'] / best['ms_fwd_bwd']:.3f}x)", flush=True)
        if len(sys.argv) > 1:
            with open(sys.argv[1], "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
