"""The precision table of `mcckd/ops/pairwise_kl.py`'s docstring: per backend and distance eps,
the worst relative error of the loss and of the gradient (grad_output not 1) against the float64
definition on the same float32 inputs, over logit scales 1 and 30 and temperatures 1 and 1.7;
G = 4 groups of K = 4 rows, each a shared row plus eps * noise, V = 4099.

    TRITON_INTERPRET=1 PYTHONPATH=.:tests:tests/ops python bench/precision_table.py [BACKEND ...]
"""
import sys

import torch
from helpers import near_identical_rows
from test_pairwise_kl_precision import errors

G, K, V = 4, 4, 4099
DISTANCES = (1e-3, 1e-4, 1e-5)
SCALES = (1.0, 30.0)
TEMPERATURES = (1.0, 1.7)


def worst_errors(backend: str, eps: float) -> tuple[float, float]:
    """(loss error, gradient error), the largest over SCALES and TEMPERATURES."""
    weights = torch.randn(G, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    valid = torch.ones(G, K, dtype=torch.bool)
    measured = [
        errors(near_identical_rows(G, K, V, eps, scale, seed=int(scale) + 3), valid, t, backend, weights)
        for scale in SCALES
        for t in TEMPERATURES
    ]
    return max(m[0] for m in measured), max(m[1] for m in measured)


def main(backends: list[str]) -> None:
    print("    eps     " + "".join(f"{b + ' (loss / grad)':22s}" for b in backends))
    for eps in DISTANCES:
        cells = (worst_errors(backend, eps) for backend in backends)
        print(f"    {eps:<8g}" + "".join(f"{f'{loss:.1e} / {grad:.1e}':22s}" for loss, grad in cells))


if __name__ == "__main__":
    main(sys.argv[1:] or ["torch", "native", "triton"])
