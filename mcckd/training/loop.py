"""The MCC-KD training loop: `train` sets a run up, `run_training` runs it, `train_step` is
one optimizer step.

One optimizer step runs A = train.grad_accum micro-batches on each of the W processes. A
micro-batch is whole questions (all K of their rationales) under a token budget, packed into
one stream (decoder-only) or padded (encoder-decoder); its loss is

    L = CE + alpha * mean_g L_g          (alpha = 0 is plain CE, Std-CoT)

from the fused lm_head loss on the student's final hidden states (`objective.py`). Each
micro-batch loss is backpropagated with weight 1/A and DDP or FSDP average over processes, so
a step's gradient is the mean over its A * W micro-batches however they are split among
processes. Then gradient clipping, AdamW (no weight decay on vectors: norms, biases), and the
schedule: linear warmup over `warmup_steps`, then cosine decay from lr towards
lr * min_lr_ratio (`optim.py`).

A step's data is a function of its number (`mcckd.data.stream`), which is what lets `--resume`
continue exactly. Precision: bf16 autocast on CUDA, fp32 on a CPU. What a run writes, and the
checkpoint format: `checkpoint.py`.
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
from mcckd.training.checkpoint import restore, resume_checkpoint, save_run_checkpoint
from mcckd.training.config import Config
from mcckd.training.distributed import Runtime, distribute, gradient_sync, init_distributed
from mcckd.training.objective import MCCKDObjective
from mcckd.training.optim import build_optimizer, warmup_cosine
from mcckd.training.periodic_eval import evaluation_hook, run_evaluation
from mcckd.training.run_log import Meter, RunLog, peak_memory


def train_step(objective, optimizer, scheduler, micro_batches, *, max_grad_norm, autocast, sync):
    """One optimizer step over this process's micro-batches.

    Returns the sums over them of [loss, ce, kl] ([3] tensor, on the device) and the gradient
    norm before clipping (None without clipping). `sync(last)` is the gradient-synchronisation
    context (DDP's no_sync but on the last micro-batch); `autocast()` the forward's precision.
    """
    sums = 0
    for i, batch in enumerate(micro_batches):
        with sync(i == len(micro_batches) - 1):
            with autocast():
                out = objective(batch)
            (out.loss / len(micro_batches)).backward()
        sums = sums + torch.stack([out.loss, out.ce, out.kl]).detach().float()
    params = [p for p in objective.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, grad_norm


def train(config: Config, *, resume: bool = False, evaluate=None) -> dict:
    """Train the student of `config`; run under torchrun for DDP/FSDP.

    Args:
        config: a `mcckd.training.config.Config` (`load_config` reads one from YAML).
        resume: continue from the newest checkpoint in train.out_dir.
        evaluate: None (use config.eval), or a callable (model, tokenizer, step) -> dict of
            metrics, called on rank 0 every eval.every steps.

    Returns:
        {"step", "checkpoint", "metrics", "rank"}: the final checkpoint folder and the last
        logged metrics.
    """
    runtime = init_distributed(config.train.device)
    try:
        return run_training(config, runtime, resume, evaluate)
    finally:
        if runtime.world_size > 1:
            dist.destroy_process_group()


def run_training(config: Config, rt: Runtime, resume: bool, evaluate) -> dict:
    """The loop: set-up, steps, logging, evaluation, checkpoints."""
    cfg, out_dir = config.train, Path(config.train.out_dir)
    resume_from = resume_checkpoint(out_dir, resume)
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
    step = 0
    if resume_from is not None:
        step = restore(resume_from, objective, optimizer, scheduler, state_options, rt)
    else:
        torch.manual_seed(cfg.seed + rt.rank)  # dropout masks differ between processes
    if rt.rank == 0:
        write_run_config(out_dir, config)
        tqdm.write(
            f"{len(micro_batches.questions)} questions, {len(micro_batches.sampler)} micro-batches an epoch, "
            f"{total_steps} steps of {micro_batches.per_step}; dropped: {micro_batches.dropped}"
        )
    log = RunLog(out_dir, step, cfg.tensorboard, enabled=rt.rank == 0)
    evaluate = evaluate or evaluation_hook(config)
    autocast = functools.partial(torch.autocast, rt.device.type, dtype=torch.bfloat16, enabled=bf16)
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step",
               disable=rt.rank != 0 or not cfg.progress_bar)
    meter, metrics, saved = Meter(rt.device), {}, resume_from
    objective.train()
    while step < total_steps:
        batches = [batch.to(rt.device) for batch in micro_batches.for_step(step)]
        lr = scheduler.get_last_lr()[0]
        sums, grad_norm = train_step(
            objective,
            optimizer,
            scheduler,
            batches,
            max_grad_norm=cfg.max_grad_norm,
            autocast=autocast,
            sync=gradient_sync(objective),
        )
        step += 1
        meter.add(sums, len(batches), micro_batches.tokens_for_step(step - 1))
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            metrics = {"step": step, **meter.read(rt), "lr": lr, **peak_memory(rt.device)}
            if grad_norm is not None:
                metrics["grad_norm"] = float(
                    grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
                )
            log.write(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
        if evaluate is not None and config.eval.every and step % config.eval.every == 0:
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
