"""The MCC-KD training loop, and the `mcckd train` command.

    mcckd train --config configs/tiny_cpu.yaml [--set train.lr=1e-4] [--resume]
    torchrun --nproc_per_node 8 -m mcckd train --config configs/gpu.yaml

One optimizer step (`train_step`) runs A = train.grad_accum micro-batches on each of the W
processes. A micro-batch is whole questions (all K of their rationales) under a token budget,
packed into one stream (decoder-only) or padded (encoder-decoder); its loss is

    L = CE + alpha * mean_g L_g          (DESIGN.md; alpha = 0 is plain CE, Std-CoT)

from the fused lm_head loss on the student's final hidden states. Each micro-batch loss is
backpropagated with weight 1/A and DDP or FSDP average over processes, so a step's gradient is
the mean over its A * W micro-batches however they are split among processes. Then gradient
clipping, AdamW (no weight decay on vectors: norms, biases), and the schedule: linear warmup
over `warmup_steps`, then cosine decay from lr towards lr * min_lr_ratio (`warmup_cosine`).

Data order: the token-budget sampler packs the questions into micro-batches once and draws
their order per epoch from (seed, epoch); the epochs make one stream, and step s of process r
takes micro-batches s*A*W + r*A .. s*A*W + r*A + A-1 of it. A step's data is a function of its
number, which is what lets `--resume` continue exactly. Precision: bf16 autocast on CUDA, fp32
on a CPU. What a run writes, and the checkpoint format: `mcckd.checkpoint`.
"""
import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import resource
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as transformers_logging

from mcckd import checkpoint as ckpt
from mcckd.config import load_config
from mcckd.data import TokenBudgetBatchSampler, pack_questions, read_records, tokenize_records
from mcckd.errors import InputError
from mcckd.evaluate import encode_prompt, evaluate_model
from mcckd.modeling import (
    apply_lora,
    causal_lm,
    forward_packed,
    is_encoder_decoder,
    load_student,
    output_layer,
    transformers_attention,
)
from mcckd.ops import fused_linear_mcc_loss
from mcckd.seq2seq import Seq2SeqBatch, forward_seq2seq, pad_seq2seq
from mcckd.word_tokenizer import train_word_tokenizer


def add_arguments(parser):
    """Arguments of `mcckd train`."""
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=1e-5 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in train.out_dir")


def run(args):
    """`mcckd train`: train, print the final checkpoint's folder."""
    transformers_logging.disable_progress_bar()  # our bar owns the terminal
    result = train(load_config(args.config, args.set), resume=args.resume)
    if result["rank"] == 0:
        print(f"final checkpoint: {result['checkpoint']}")
    return 0


class MCCKDObjective(torch.nn.Module):
    """The student and its fused MCC-KD loss in one forward, so that DDP and FSDP see it whole."""

    def __init__(self, model, *, alpha, temperature, chunk_size, dtype):
        super().__init__()
        self.model = model
        self.alpha, self.temperature, self.chunk_size, self.dtype = alpha, temperature, chunk_size, dtype

    def forward(self, batch):
        """(loss, ce, kl) of a PackedBatch or Seq2SeqBatch; hidden [N, d] -> never [N, V] logits."""
        if isinstance(batch, Seq2SeqBatch):
            hidden = forward_seq2seq(self.model, batch)
        else:
            hidden = forward_packed(self.model, batch.input_ids, batch.cu_seqlens, batch.position_ids,
                                    batch.max_seqlen)
        head = output_layer(self.model)
        bias = None if head.bias is None else head.bias.to(self.dtype)
        # The fused loss sets its own precision (self.dtype operands, float32 accumulation):
        # autocast would recast its matmuls.
        with torch.autocast(hidden.device.type, enabled=False):
            return fused_linear_mcc_loss(hidden.to(self.dtype), head.weight.to(self.dtype), batch.labels,
                                         batch.answer_index, answer_valid=batch.answer_index >= 0, bias=bias,
                                         alpha=self.alpha, temperature=self.temperature,
                                         chunk_size=self.chunk_size)


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


def train(config, *, resume=False, evaluate=None):
    """Train the student of `config` (a mcckd.config.Config); run under torchrun for DDP/FSDP.

    evaluate: None (use config.eval), or a callable (model, tokenizer, step) -> dict of metrics
    called on rank 0 every eval.every steps. Returns {"step", "checkpoint", "metrics", "rank"}:
    the final checkpoint folder and the last logged metrics.
    """
    runtime = init_distributed(config.train.device)
    try:
        return run_training(config, runtime, resume, evaluate)
    finally:
        if runtime.world_size > 1:
            dist.destroy_process_group()


def run_training(config, rt, resume, evaluate):
    """The loop: set-up, steps, logging, evaluation, checkpoints."""
    cfg, out_dir = config.train, Path(config.train.out_dir)
    resume_from = resume_checkpoint(out_dir, resume)
    torch.manual_seed(cfg.seed)  # the same random initialisation on every process (FSDP needs it)
    random.seed(cfg.seed)
    records = read_records(config.data.train, config.data.task)
    student, base_folder = build_student(config, records, rt.device, resume_from, out_dir, rt.rank)
    micro_batches = MicroBatches(config, records, student, rt)
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
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False),
                                             encoding="utf-8")
        tqdm.write(f"{len(micro_batches.questions)} questions, {len(micro_batches.sampler)} micro-batches an epoch, "
                   f"{total_steps} steps of {micro_batches.per_step}; dropped: {micro_batches.dropped}")
    log = RunLog(out_dir, step, cfg.tensorboard, enabled=rt.rank == 0)
    evaluate = evaluate or evaluation_hook(config)
    autocast = functools.partial(torch.autocast, rt.device.type, dtype=torch.bfloat16, enabled=bf16)
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step",
               disable=rt.rank != 0 or not cfg.progress_bar)
    meter, metrics, saved = Meter(rt.device), {}, resume_from

    def save(at):
        model_state = get_model_state_dict(objective, options=state_options)
        return ckpt.save_checkpoint(out_dir, at, model=student.model, tokenizer=student.tokenizer,
                                    state_dict={k.removeprefix("model."): v for k, v in model_state.items()},
                                    training_state={"step": at, "scheduler": scheduler.state_dict()},
                                    optimizer_state=get_optimizer_state_dict(objective, optimizer,
                                                                             options=state_options),
                                    base_folder=base_folder, keep_last=cfg.keep_last)

    objective.train()
    while step < total_steps:
        batches = [batch.to(rt.device) for batch in micro_batches.for_step(step)]
        lr = scheduler.get_last_lr()[0]
        sums, grad_norm = train_step(objective, optimizer, scheduler, batches, max_grad_norm=cfg.max_grad_norm,
                                     autocast=autocast, sync=gradient_sync(objective))
        step += 1
        meter.add(sums, len(batches), micro_batches.tokens_for_step(step - 1))
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            metrics = {"step": step, **meter.read(rt), "lr": lr, **peak_memory(rt.device)}
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm)
            log.write(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
        if evaluate is not None and config.eval.every and step % config.eval.every == 0:
            run_evaluation(evaluate, student, step, rt, log)
        if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps:
            saved = save(step)
    bar.close()
    log.close()
    return {"step": step, "checkpoint": saved, "metrics": metrics, "rank": rt.rank}


class Runtime(NamedTuple):
    """This process's place in the run."""

    rank: int
    world_size: int
    device: torch.device


def init_distributed(device_choice):
    """Runtime from torchrun's environment; joins the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'train.device' is cuda but no CUDA device is available")
    cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size == 1:
        return Runtime(0, 1, device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Runtime(dist.get_rank(), world_size, device)


def resume_checkpoint(out_dir, resume):
    """The checkpoint to continue from (None for a fresh run); refuses to overwrite a run."""
    latest = ckpt.latest_checkpoint(out_dir)
    if resume and latest is None:
        raise InputError(f"--resume: no checkpoint in {out_dir / ckpt.CHECKPOINTS}")
    if not resume and latest is not None:
        raise InputError(f"{out_dir} already holds checkpoints: pass --resume to continue, "
                         "or set train.out_dir to a new folder")
    return latest


def restore(folder, objective, optimizer, scheduler, state_options, rt):
    """Load a checkpoint's optimizer, scheduler and RNG states; returns its step.

    With several processes only rank 0 reads the optimizer state (twice the model in float32)
    and broadcasts it: one copy in host memory, not one per process."""
    state = ckpt.load_training_state(folder)
    if rt.world_size == 1:
        set_optimizer_state_dict(objective, optimizer, ckpt.load_optimizer_state(folder), options=state_options)
    else:
        optimizer_state = ckpt.load_optimizer_state(folder) if rt.rank == 0 else {}
        set_optimizer_state_dict(objective, optimizer, optimizer_state,
                                 options=dataclasses.replace(state_options, broadcast_from_rank0=True))
    scheduler.load_state_dict(state["scheduler"])
    ckpt.load_rng_state(folder, rt.rank)
    return state["step"]


def build_student(config, records, device, resume_from, out_dir, rank):
    """(Student, base_folder): the model and tokenizer to train, weights from `resume_from` if set.

    A pretrained student loads from model.name_or_path; a random one is built from model.config
    with a tokenizer trained on the records (or model.tokenizer). Resuming, full weights and the
    tokenizer come from the checkpoint; LoRA adapters are loaded onto the base. base_folder:
    where the base of a random student under LoRA is saved (checkpoints copy it), else None.
    """
    m = config.model
    lora = None if m.lora is None else {"r": m.lora.r, "lora_alpha": m.lora.alpha, "lora_dropout": m.lora.dropout,
                                        "target_modules": list(m.lora.target_modules)}
    options = {"dtype": m.dtype, "attn_backend": m.attn_backend, "device": device}
    base_folder = out_dir / ckpt.BASE_SUBFOLDER if m.config is not None and lora is not None else None
    if resume_from is not None and lora is None:
        student = load_student(str(resume_from), **options)
    elif resume_from is not None:
        student = load_student(str(base_folder or m.name_or_path), tokenizer=str(resume_from), lora=lora, **options)
        load_adapters(student.model, resume_from)
    elif m.config is not None:
        tokenizer = (AutoTokenizer.from_pretrained(m.tokenizer) if m.tokenizer
                     else train_word_tokenizer(training_texts(records), m.tokenizer_vocab_size))
        student = load_student(random_config(m.config, tokenizer), tokenizer=tokenizer, **options)
        if lora is not None:
            if rank == 0:
                student.model.save_pretrained(base_folder)
            student = student._replace(model=apply_lora(student.model, lora))
    else:
        try:
            student = load_student(m.name_or_path, tokenizer=m.tokenizer, lora=lora, **options)
        except (OSError, ValueError) as error:
            raise InputError(f"config key 'model.name_or_path': cannot load {m.name_or_path!r}: {error}") from None
    if student.tokenizer is None:
        raise InputError("config key 'model.tokenizer' is needed: the student has no tokenizer beside it")
    if m.gradient_checkpointing:
        enable_activation_checkpointing(causal_lm(student.model))
    return student, base_folder


def enable_activation_checkpointing(model):
    """Recompute each block's activations in the backward (non-reentrant: kwargs pass through).

    transformers 5.24 renamed gradient_checkpointing_enable; older versions have only that."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_adapters(model, folder):
    """Load the LoRA adapter weights of a checkpoint folder into a peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(Path(folder) / "adapter_model.safetensors"))


def training_texts(records):
    """All the text of the records: what the on-the-fly tokenizer is fitted to."""
    for record in records:
        yield record.question
        yield record.answer
        yield from record.rationales


def random_config(fields, tokenizer):
    """A transformers config from `model.config`, its vocabulary and special ids the tokenizer's."""
    fields = dict(fields)
    fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model_type = fields.pop("model_type")
    if model_type in ("t5", "mt5"):
        fields.setdefault("decoder_start_token_id", tokenizer.pad_token_id)
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError) as error:
        raise InputError(f"config key 'model.config': {error}") from None


class MicroBatches:
    """The run's stream of micro-batches: epoch e in the order drawn from (seed, e)."""

    def __init__(self, config, records, student, rt):
        data, cfg = config.data, config.train
        questions, dropped = tokenize_records(records, student.tokenizer, max_length=data.max_length)
        if not questions:
            raise InputError(f"{data.train}: no question keeps a rationale of at most "
                             f"data.max_length={data.max_length} tokens ({dropped})")
        for question in questions:
            del question.rationales[data.num_rationales:]
        self.questions, self.dropped, self.k = questions, dropped, data.num_rationales
        self.per_step = cfg.grad_accum * rt.world_size
        self.offset = rt.rank * cfg.grad_accum
        self.grad_accum = cfg.grad_accum
        self.sampler = TokenBudgetBatchSampler([q.num_tokens for q in questions], data.max_tokens, seed=cfg.seed)
        self.epoch, self.order = None, None
        self.collate = self.packed
        if is_encoder_decoder(student.model):
            self.collate = self.padded
            self.prompts = seq2seq_prompts(records, questions, student)
            lm = causal_lm(student.model)
            self.pad_id, self.start_id = student.tokenizer.pad_token_id, lm.config.decoder_start_token_id

    def total_steps(self, cfg):
        """train.max_steps, or the whole steps in train.epochs passes over the data."""
        steps = cfg.max_steps or int(cfg.epochs * len(self.sampler)) // self.per_step
        if steps < 1:
            raise InputError(f"train.epochs={cfg.epochs} gives {int(cfg.epochs * len(self.sampler))} micro-batches, "
                             f"fewer than the {self.per_step} of one step (train.grad_accum x processes)")
        return steps

    def question_indices(self, m):
        """The question indices of micro-batch m of the stream."""
        epoch, i = divmod(m, len(self.sampler))
        if epoch != self.epoch:
            self.sampler.set_epoch(epoch)
            self.epoch, self.order = epoch, list(self.sampler)
        return self.order[i]

    def indices_for_step(self, step):
        """Question indices of this process's micro-batches of step `step`."""
        start = step * self.per_step + self.offset
        return [self.question_indices(m) for m in range(start, start + self.grad_accum)]

    def for_step(self, step):
        """This process's micro-batches of optimizer step `step` (CPU tensors)."""
        return [self.collate([self.questions[i] for i in indices]) for indices in self.indices_for_step(step)]

    def tokens_for_step(self, step):
        """Tokens (all K rationales, prompts included) in this process's micro-batches of `step`."""
        return sum(self.questions[i].num_tokens for indices in self.indices_for_step(step) for i in indices)

    def packed(self, questions):
        """A decoder-only micro-batch: one packed stream."""
        return pack_questions(questions, self.k)

    def padded(self, questions):
        """An encoder-decoder micro-batch: padded rows."""
        return pad_seq2seq(questions, [self.prompts[q.id] for q in questions], self.k,
                           pad_id=self.pad_id, decoder_start_id=self.start_id)


def seq2seq_prompts(records, questions, student):
    """{question id: encoder ids}: the prompt as evaluation encodes it."""
    kept = {q.id for q in questions}
    return {r.id: encode_prompt(student.tokenizer, r.question, causal_lm(student.model))
            for r in records if r.id in kept}


def distribute(objective, cfg, rt, bf16):
    """The objective as this run trains it: alone, under DDP, or sharded by FSDP2."""
    if rt.world_size == 1:
        return objective
    if cfg.distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(objective, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(rt.device.type, (rt.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    # one FSDP unit per transformer block: transformers lists their classes in _no_split_modules
    blocks = set(causal_lm(objective.model)._no_split_modules or ())
    for module in objective.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(objective, mesh=mesh, mp_policy=policy)
    return objective


def gradient_sync(objective):
    """sync(last) -> a context in which gradients are all-reduced only when `last`."""
    def sync(last):
        if hasattr(objective, "no_sync"):  # DDP
            return contextlib.nullcontext() if last else objective.no_sync()
        if hasattr(objective, "set_requires_gradient_sync"):  # FSDP2
            objective.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return sync


def build_optimizer(objective, cfg):
    """AdamW over the trainable parameters; matrices decay, vectors (norms, biases) do not."""
    trainable = [p for p in objective.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas))


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


class Meter:
    """Sums of the metrics since the last log line, reduced over processes when read."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.sums, self.micro_batches, self.tokens, self.started = 0, 0, 0, time.perf_counter()

    def add(self, sums, micro_batches, tokens):
        self.sums = self.sums + sums
        self.micro_batches += micro_batches
        self.tokens += tokens

    def read(self, rt):
        """{"loss", "ce", "kl"}: means over all micro-batches since the last read; tokens/s."""
        counts = torch.tensor([self.micro_batches, self.tokens], dtype=torch.float64, device=self.device)
        totals = torch.cat([self.sums.double(), counts])
        if rt.world_size > 1:
            dist.all_reduce(totals)
        loss, ce, kl, micro_batches, tokens = totals.tolist()
        seconds = time.perf_counter() - self.started
        self.reset()
        return {"loss": loss / micro_batches, "ce": ce / micro_batches, "kl": kl / micro_batches,
                "tokens_per_s": tokens / seconds}


def peak_memory(device):
    """{"peak_mem_mb"}: CUDA's peak allocated memory, or the process's peak resident set."""
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class RunLog:
    """OUT/metrics.jsonl and TensorBoard scalars, written by rank 0; resumed runs drop the
    entries after their checkpoint's step, which the resumed run writes again."""

    def __init__(self, out_dir, start_step, tensorboard, *, enabled):
        self.path, self.writer, self.enabled = Path(out_dir) / "metrics.jsonl", None, enabled
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(Path(out_dir) / "tensorboard", purge_step=start_step + 1)

    def write(self, metrics):
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                if name != "step":
                    self.writer.add_scalar(name, value, metrics["step"])

    def close(self):
        if self.writer is not None:
            self.writer.close()


def evaluation_hook(config):
    """(model, tokenizer, step) -> metrics evaluating on config.eval's records; None without."""
    ev = config.eval
    if not ev.every:
        return None
    task = ev.task or config.data.task
    records = read_records(ev.data, task)[:ev.limit]

    def evaluate(model, tokenizer, step):
        return evaluate_model(model, tokenizer, records, task, batch_size=ev.batch_size,
                              max_new_tokens=ev.max_new_tokens)
    return evaluate


def run_evaluation(evaluate, student, step, rt, log):
    """Evaluate on rank 0 with transformers' attention (generation), the others waiting."""
    if rt.rank == 0:
        attention = (contextlib.nullcontext() if is_encoder_decoder(student.model)
                     else transformers_attention(student.model))
        with attention:
            results = evaluate(student.model, student.tokenizer, step)
        log.write({"step": step, **{f"eval_{k}": v for k, v in results.items() if isinstance(v, (int, float))}})
    if rt.world_size > 1:
        dist.barrier()
