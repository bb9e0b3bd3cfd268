"""The optimizer and the learning-rate schedule."""
import math

import torch

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs


def build_optimizer(objective, cfg):
    """AdamW over the trainable parameters; matrices decay, vectors (norms, biases) do not.

    The fused kernel (one pass over each tensor) where every parameter allows it: on a CPU it
    steps a 0.5M-parameter student 4x faster than the default loop over tensors (bench/NOTES.md).
    """
    trainable = [p for p in objective.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas),
                             fused=fusable(trainable) or None)


def fusable(parameters):
    """Whether torch's fused AdamW can step all of `parameters`: floating point, on a CPU or a
    CUDA device."""
    return bool(parameters) and all(p.dtype.is_floating_point and p.device.type in FUSED_DEVICES
                                    for p in parameters)


def warmup_cosine(optimizer, warmup_steps, total_steps, min_ratio):
    """lr of step s (from 0) = lr * f(s): f = (s+1)/warmup for s < warmup, then
    min + (1-min)(1 + cos(pi t))/2 with t = (s - warmup) / (total - warmup), so the last step
    still learns and lr * min_ratio is where the curve would go next."""
    def factor(s):
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        t = (s - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
