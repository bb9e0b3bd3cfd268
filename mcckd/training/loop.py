"""The MCC-KD training loop: `train` sets a run up, `run_training` runs it, `train_step` is
one optimizer step.

One optimizer step runs A = train.grad_accum micro-batches on each of the W processes. A
micro-batch is whole questions (all K of their rationales) under a token budget, packed into
one stream (decoder-only) or padded (encoder-decoder); the step's loss is

    L = CE + alpha * KL          (alpha = 0 is plain CE, Std-CoT)

from the fused lm_head loss on the student's final hidden states (`objective.py`), with CE the
mean over the step's target tokens and KL the mean over its answer groups with pairs, across
all its micro-batches and processes (`normalization.py`; train.loss_normalization:
micro_batch averages each micro-batch's own means instead). Each micro-batch's backward
carries its share of the step; DDP and FSDP average gradients over processes, so each
backward is scaled by W. Then gradient clipping, AdamW (fused where it can be; no weight decay
on vectors: norms, biases), and the schedule: linear warmup over `warmup_steps`, then cosine
decay from lr towards lr * min_lr_ratio (`optim.py`).

A step's data is a function of its number (`mcckd.data.stream`), which is what lets a resumed
run continue exactly (`resume.py`). Precision: bf16 autocast on CUDA, fp32 on a CPU. What a
run writes, and the checkpoint format: `checkpoint.py`; its logs: `run_log.py`, `trackers.py`.
"""
import dataclasses
import functools
import random
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from mcckd.data import read_records
from mcckd.data.input_options import input_fields
from mcckd.data.stream import MicroBatches
from mcckd.models.build import build_student
from mcckd.models.wrappers import decoder_start_id
from mcckd.training.checkpoint import save_run_checkpoint
from mcckd.training.config import Config
from mcckd.training.distributed import Runtime, distribute, gradient_sync, init_distributed
from mcckd.training.normalization import loss_shares
from mcckd.training.objective import MCCKDObjective
from mcckd.training.optim import build_optimizer, warmup_cosine
from mcckd.training.periodic_eval import evaluation_hook, run_evaluation
from mcckd.training.resume import restore, resume_checkpoint
from mcckd.training.run_log import Meter, RunLog, peak_memory
from mcckd.training.validation import validate


def train_step(objective, optimizer, scheduler, micro_batches, shares, *, world_size=1, max_grad_norm,
               autocast, sync):
    """One optimizer step over this process's micro-batches.

    shares [A, 2]: each micro-batch's share of the step's CE and KL means (`loss_shares`).
    `sync(last)` is the gradient-synchronisation context (DDP's no_sync but on the last
    micro-batch); `autocast()` the forward's precision. Returns this process's part of the
    step's [loss, ce, kl] ([3] tensor on the device; summed over the processes, the step's
    values) and the gradient norm before clipping (None without clipping).
    """
    sums = 0
    for i, batch in enumerate(micro_batches):
        with sync(i == len(micro_batches) - 1):
            with autocast():
                out = objective(batch, shares[i])
            # DDP and FSDP average the processes' gradients: the step's gradient is their sum
            (out.loss * world_size).backward()
        sums = sums + torch.stack([out.loss, out.ce, out.kl]).detach().float()
    params = [p for p in objective.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, grad_norm


def train(config: Config, *, resume: bool | str = False, evaluate=None) -> dict:
    """Train the student of `config`; run under torchrun for DDP/FSDP.

    Args:
        config: a `mcckd.training.config.Config` (`load_config` reads one from YAML); checked
            by `validate` before anything else.
        resume: False (a fresh run: an out_dir with checkpoints is refused), True (continue
            from the newest checkpoint that verifies; an error when there is none) or "auto"
            (continue when train.out_dir has checkpoints, else start fresh).
        evaluate: None (use config.eval), or a callable (model, tokenizer, step) -> dict of
            metrics, called on rank 0 every eval.every steps.

    Returns:
        {"step", "checkpoint", "metrics", "rank"}: the final checkpoint folder and the last
        logged metrics.
    """
    validate(config)
    runtime = init_distributed(config.train.device)
    try:
        return run_training(config, runtime, resume, evaluate)
    finally:
        if runtime.world_size > 1:
            dist.destroy_process_group()


def run_training(config: Config, rt: Runtime, resume: bool | str, evaluate) -> dict:
    """The loop: set-up, steps, logging, evaluation, checkpoints."""
    cfg, out_dir = config.train, Path(config.train.out_dir)
    resume_from = resume_checkpoint(out_dir, resume, rt)
    torch.manual_seed(cfg.seed)  # the same random initialisation on every process (FSDP needs it)
    random.seed(cfg.seed)
    records = read_records(config.data.train, config.data.task, fields=input_fields(config.data),
                           split=config.data.split)
    student, base_folder = build_student(config, records, rt.device, resume_from, out_dir, rt.rank)
    micro_batches = MicroBatches(config, records, student.tokenizer, rank=rt.rank, world_size=rt.world_size,
                                 decoder_start_id=decoder_start_id(student.model))
    total_steps = micro_batches.total_steps(cfg)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and rt.device.type == "cuda")
    objective = distribute(MCCKDObjective(student.model, alpha=cfg.alpha, temperature=cfg.temperature,
                                          chunk_size=cfg.chunk_size,
                                          dtype=torch.bfloat16 if bf16 else torch.float32), cfg, rt, bf16)
    optimizer = build_optimizer(objective, cfg)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    # full (unsharded) states gathered on rank 0; under LoRA the adapters only
    state_options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                                     ignore_frozen_params=config.model.lora is not None)
    meter, step = Meter(rt.device), 0
    if resume_from is not None:
        step = restore(resume_from, objective, optimizer, scheduler, meter, state_options, rt)
    else:
        torch.manual_seed(cfg.seed + rt.rank)  # dropout masks differ between processes
    if rt.rank == 0:
        write_run_config(out_dir, config)
        tqdm.write(
            f"{len(micro_batches.questions)} questions, {len(micro_batches.sampler)} micro-batches an epoch, "
            f"{total_steps} steps of {micro_batches.per_step}; dropped: {micro_batches.dropped}"
        )
    log = RunLog(out_dir, step, config, enabled=rt.rank == 0)
    evaluate = evaluate or evaluation_hook(config)
    autocast = functools.partial(torch.autocast, rt.device.type, dtype=torch.bfloat16, enabled=bf16)
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step",
               disable=rt.rank != 0 or not cfg.progress_bar)
    metrics, saved = {}, resume_from
    objective.train()
    while step < total_steps:
        cpu_batches = micro_batches.for_step(step)
        shares = loss_shares(cpu_batches, cfg.loss_normalization, rt)  # counted before they move
        batches = [batch.to(rt.device) for batch in cpu_batches]
        lr = scheduler.get_last_lr()[0]
        sums, grad_norm = train_step(
            objective,
            optimizer,
            scheduler,
            batches,
            shares,
            world_size=rt.world_size,
            max_grad_norm=cfg.max_grad_norm,
            autocast=autocast,
            sync=gradient_sync(objective),
        )
        step += 1
        meter.add(sums, micro_batches.tokens_for_step(step - 1))
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            metrics = {"step": step, **meter.read(rt), "lr": lr, **peak_memory(rt.device)}
            if grad_norm is not None:
                metrics["grad_norm"] = float(
                    grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
                )
            log.write(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
        if evaluate is not None and config.eval.every and (step % config.eval.every == 0
                                                            or step == total_steps):
            run_evaluation(evaluate, student, step, rt, log)
        if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps:
            saved = save_run_checkpoint(
                out_dir,
                step,
                objective,
                optimizer,
                scheduler,
                student,
                state_options,
                meter=meter,
                world_size=rt.world_size,
                base_folder=base_folder,
                keep_last=cfg.keep_last,
            )
    bar.close()
    log.close()
    return {"step": step, "checkpoint": saved, "metrics": metrics, "rank": rt.rank}


def write_run_config(out_dir, config):
    """OUT/config.yaml: the resolved config of the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), encoding="utf-8"
    )
