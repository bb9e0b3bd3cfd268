"""How a step's micro-batches weigh in its loss (`train.loss_normalization`).

A step runs A micro-batches on each of W processes. Micro-batch i has n_i target tokens and
g_i groups with pairs (answer positions with at least 2 valid rationales); the fused loss
returns its token mean ce_i and its group mean kl_i. With N = sum n_i and P = sum g_i over
all A * W micro-batches of the step:

    "step"         CE = sum_i n_i ce_i / N,   KL = sum_i g_i kl_i / P
                   the means over the step's tokens and groups, however they are split into
                   micro-batches and processes (what one micro-batch holding them all gives)
    "micro_batch"  CE = sum_i ce_i / (A W),   KL = sum_i kl_i / (A W)
                   each micro-batch's own means, averaged: a token of a short micro-batch
                   weighs more

and the step's loss is CE + alpha KL. The shares [A, 2] (n_i / N, g_i / P, or 1 / (A W)) are
counted from the CPU batches before they move to the device; N and P take one all-reduce of
two numbers per step, queued on the device without waiting for it.
"""
import torch
import torch.distributed as dist

from mcckd.data.packing import IGNORE_INDEX

NORMALIZATIONS = ("step", "micro_batch")


def micro_batch_counts(batch):
    """[targets, groups with pairs] of a PackedBatch or Seq2SeqBatch (float64 [2], CPU)."""
    targets = (batch.labels != IGNORE_INDEX).sum()
    groups = ((batch.answer_index >= 0).sum(dim=1) >= 2).sum()
    return torch.stack([targets, groups]).double()


def loss_shares(batches, normalization, rt):
    """[A, 2] float32 on rt.device: each of this process's micro-batches' share of the step's
    CE and KL means (see the module docstring); summed over the step's micro-batches on all
    processes each column is 1 (0 for the KL of a step without pairs)."""
    if normalization == "micro_batch":
        return torch.full((len(batches), 2), 1 / (len(batches) * rt.world_size), device=rt.device)
    counts = torch.stack([micro_batch_counts(batch) for batch in batches]).to(rt.device)
    totals = counts.sum(dim=0)
    if rt.world_size > 1:
        dist.all_reduce(totals)
    return (counts / totals.clamp(min=1)).float()
