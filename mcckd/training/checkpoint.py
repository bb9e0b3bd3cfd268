"""Checkpoints of a training run: the layout on disk, writing them atomically, finding them.

A run folder OUT (`train.out_dir`) holds

    OUT/config.yaml                  the resolved config of the run
    OUT/metrics.jsonl                one JSON object per logged step or evaluation
    OUT/tensorboard/                 the same scalars for TensorBoard
    OUT/checkpoints/step-000200/     one folder per checkpoint, every `save_every` steps and at the end

and a checkpoint folder is a Hugging Face `save_pretrained` folder plus the training state:

    full fine-tuning   config.json, model.safetensors (or shards and their index),
                       generation_config.json
    LoRA               adapter_config.json and adapter_model.safetensors (peft; the adapters
                       only), the base being adapter_config's `base_model_name_or_path`, or the
                       subfolder mcckd_base/ (a full model folder) when the base was randomly
                       initialised and so has no name
    always             the tokenizer's files (tokenizer.json, tokenizer_config.json, ...)
                       training_state.pt   {"step", "scheduler"}
                       optimizer.pt        the optimizer state keyed by parameter name, full
                                           (not sharded; the adapters' only under LoRA)
                       rng_state_<rank>.pt the RNG states of each process

To load a checkpoint for evaluation or inference (`mcckd.models.loading.load_checkpoint` does this):

    full:  AutoModelForCausalLM.from_pretrained(DIR) (AutoModelForSeq2SeqLM when the config says
           is_encoder_decoder), AutoTokenizer.from_pretrained(DIR)
    LoRA:  base = DIR/mcckd_base if that folder exists, else adapter_config["base_model_name_or_path"];
           PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), DIR)

`latest_checkpoint(OUT)` is the newest complete checkpoint. A checkpoint is written to
`OUT/checkpoints/.tmp-step-000200` and renamed once complete, so a run killed at any moment
leaves only complete `step-*` folders (and perhaps a stale `.tmp-*`, removed at the next save).
"""
import dataclasses
import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from mcckd.errors import InputError
from mcckd.models.loading import BASE_SUBFOLDER

CHECKPOINTS = "checkpoints"
TRAINING_STATE = "training_state.pt"
OPTIMIZER_STATE = "optimizer.pt"
STEP_FOLDER = re.compile(r"step-(\d+)")


def checkpoint_path(out_dir, step):
    """OUT/checkpoints/step-NNNNNN."""
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(out_dir):
    """The complete checkpoint folders of a run, oldest first."""
    folder = Path(out_dir) / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in folder.glob("step-*") if (m := STEP_FOLDER.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir):
    """The newest complete checkpoint folder of a run, or None."""
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _remove(folder):
    """Delete a folder, renaming it first so that a kill midway leaves no half `step-*`."""
    trash = folder.with_name(f".trash-{folder.name}")
    folder.rename(trash)
    shutil.rmtree(trash)


def rng_state():
    """The RNG states of this process (python, torch CPU, and CUDA when in use)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Set the RNG states saved by `rng_state`."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def write_model(model, state_dict, folder, base_folder=None):
    """`model.save_pretrained(folder)` with the given (gathered) state dict.

    Under peft only the adapters are written; `base_folder`, the saved randomly initialised
    base, is copied beside them as mcckd_base/.
    """
    model.save_pretrained(folder, state_dict=state_dict)
    if base_folder is not None:
        shutil.copytree(base_folder, folder / BASE_SUBFOLDER)


def save_checkpoint(out_dir, step, *, model, state_dict, tokenizer, training_state, optimizer_state,
                    base_folder=None, keep_last=0):
    """Write checkpoint `step` of a run atomically; call it on every process.

    state_dict and optimizer_state: full, gathered on rank 0 (the other ranks' are not read);
    training_state: {"step", "scheduler"}. Each process adds its RNG state. Only the
    `keep_last` newest checkpoints are kept (0: all). Returns the checkpoint folder.
    """
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    final = checkpoint_path(out_dir, step)
    temporary = final.with_name(f".tmp-{final.name}")
    if rank == 0:
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir(parents=True)
        write_model(model, state_dict, temporary, base_folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary)
        torch.save(training_state, temporary / TRAINING_STATE)
        torch.save(optimizer_state, temporary / OPTIMIZER_STATE)
    _barrier()
    torch.save(rng_state(), temporary / f"rng_state_{rank}.pt")
    _barrier()
    if rank == 0:
        if final.exists():
            _remove(final)
        temporary.rename(final)
        checkpoints = list_checkpoints(out_dir)
        for old in checkpoints[:-keep_last] if keep_last else []:
            _remove(old)
    _barrier()
    return final


def load_training_state(folder):
    """The {"step", "scheduler"} of a checkpoint folder."""
    return torch.load(Path(folder) / TRAINING_STATE, map_location="cpu", weights_only=True)


def load_optimizer_state(folder):
    """The full optimizer state of a checkpoint folder, on the CPU."""
    return torch.load(Path(folder) / OPTIMIZER_STATE, map_location="cpu", weights_only=True)


def load_rng_state(folder, rank):
    """Restore the RNG states that process `rank` saved in a checkpoint folder."""
    restore_rng_state(torch.load(Path(folder) / f"rng_state_{rank}.pt", weights_only=True))


def save_run_checkpoint(out_dir, step, objective, optimizer, scheduler, student, state_options, *,
                        base_folder=None, keep_last=0):
    """Checkpoint `step` of a training run: the model's and the optimizer's full states gathered
    on rank 0 (`state_options`), the scheduler, each process's RNG. Call it on every process."""
    model_state = get_model_state_dict(objective, options=state_options)
    return save_checkpoint(
        out_dir,
        step,
        model=student.model,
        tokenizer=student.tokenizer,
        state_dict={k.removeprefix("model."): v for k, v in model_state.items()},
        training_state={"step": step, "scheduler": scheduler.state_dict()},
        optimizer_state=get_optimizer_state_dict(objective, optimizer, options=state_options),
        base_folder=base_folder,
        keep_last=keep_last,
    )


def resume_checkpoint(out_dir, resume):
    """The checkpoint to continue from (None for a fresh run); refuses to overwrite a run."""
    latest = latest_checkpoint(out_dir)
    if resume and latest is None:
        raise InputError(f"--resume: no checkpoint in {out_dir / CHECKPOINTS}")
    if not resume and latest is not None:
        raise InputError(f"{out_dir} already holds checkpoints: pass --resume to continue, "
                         "or set train.out_dir to a new folder")
    return latest


def restore(folder, objective, optimizer, scheduler, state_options, rt):
    """Load a checkpoint's optimizer, scheduler and RNG states; returns its step.

    With several processes only rank 0 reads the optimizer state (twice the model in float32)
    and broadcasts it: one copy in host memory, not one per process."""
    state = load_training_state(folder)
    if rt.world_size == 1:
        set_optimizer_state_dict(objective, optimizer, load_optimizer_state(folder), options=state_options)
    else:
        optimizer_state = load_optimizer_state(folder) if rt.rank == 0 else {}
        set_optimizer_state_dict(objective, optimizer, optimizer_state,
                                 options=dataclasses.replace(state_options, broadcast_from_rank0=True))
    scheduler.load_state_dict(state["scheduler"])
    load_rng_state(folder, rt.rank)
    return state["step"]
