"""Checkpoints of a training run: the layout on disk, writing them durably, finding them.

A run folder OUT (`train.out_dir`) holds

    OUT/config.yaml                  the resolved config of the run
    OUT/metrics.jsonl                one JSON object per logged step or evaluation
    OUT/tensorboard/                 the same scalars for TensorBoard (train.report_to)
    OUT/wandb/, OUT/wandb_run_id     the Weights & Biases run and its id (train.report_to)
    OUT/checkpoints/step-000200/     one folder per checkpoint, every `save_every` steps and at the end

and a checkpoint folder is a Hugging Face `save_pretrained` folder plus the training state:

    full fine-tuning   config.json, model.safetensors (or shards and their index),
                       generation_config.json
    LoRA               adapter_config.json and adapter_model.safetensors (peft; the adapters
                       only), the base being adapter_config's `base_model_name_or_path`, or the
                       subfolder mcckd_base/ (a full model folder) when the base was randomly
                       initialised and so has no name
    always             the tokenizer's files (tokenizer.json, tokenizer_config.json, ...)
                       training_state.pt   {"step", "world_size", "scheduler"}
                       optimizer.pt        the optimizer state keyed by parameter name, full
                                           (not sharded; the adapters' only under LoRA)
                       process_state_<rank>.pt  each process's {"rng": its RNG states,
                                           "meter": its running sums since the last log line}
                       manifest.json       every other file's size, written last (`manifest.py`)

To load a checkpoint for evaluation or inference (`mcckd.models.loading.load_checkpoint` does this):

    full:  AutoModelForCausalLM.from_pretrained(DIR) (AutoModelForSeq2SeqLM when the config says
           is_encoder_decoder), AutoTokenizer.from_pretrained(DIR)
    LoRA:  base = DIR/mcckd_base if that folder exists, else adapter_config["base_model_name_or_path"];
           PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), DIR)

A checkpoint is written to `OUT/checkpoints/.tmp-step-000200`, every file and folder fsynced,
the manifest written and fsynced last, then renamed to `step-000200` and the rename fsynced: a
run killed (or a machine losing power) at any moment leaves only whole `step-*` folders, and
perhaps a `.tmp-*` or `.trash-*` folder that the next successful save removes. Old checkpoints
beyond `keep_last` are renamed to `.trash-*` and then deleted. A checkpoint that fails its
manifest is skipped on resume (`resume.py`) and never deleted: when the resumed run reaches its
step again, the damaged folder is renamed `step-000200.damaged`.
"""
import pickle
import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from mcckd.data.resumable import fsync_path
from mcckd.errors import InputError
from mcckd.models.loading import BASE_SUBFOLDER
from mcckd.training.manifest import damage, seal

CHECKPOINTS = "checkpoints"
TRAINING_STATE = "training_state.pt"
OPTIMIZER_STATE = "optimizer.pt"
STEP_FOLDER = re.compile(r"step-(\d+)")


def process_state_name(rank):
    """The file of process `rank`'s state in a checkpoint folder."""
    return f"process_state_{rank}.pt"


def checkpoint_path(out_dir, step):
    """OUT/checkpoints/step-NNNNNN."""
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def checkpoint_step(folder):
    """The step of a checkpoint folder `step-NNNNNN`."""
    return int(STEP_FOLDER.fullmatch(Path(folder).name).group(1))


def list_checkpoints(out_dir):
    """The `step-*` folders of a run, oldest first (`.tmp-*`, `.trash-*`, `*.damaged` left out),
    whole or not."""
    folder = Path(out_dir) / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in folder.glob("step-*")
             if p.is_dir() and (m := STEP_FOLDER.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir):
    """The newest checkpoint of a run whose manifest verifies (`manifest.damage`), or None."""
    return next((folder for folder in reversed(list_checkpoints(out_dir)) if damage(folder) is None), None)


def _rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _remove(folder):
    """Delete a folder, renaming it first so that a kill midway leaves no half `step-*`."""
    trash = folder.with_name(f".trash-{folder.name}")
    if trash.exists():
        shutil.rmtree(trash)
    folder.rename(trash)
    shutil.rmtree(trash)


def _set_aside(folder):
    """Rename a damaged checkpoint out of the way (`step-N.damaged`, `step-N.damaged-2`, ...)."""
    target, n = folder.with_name(f"{folder.name}.damaged"), 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.damaged-{n}")
    folder.rename(target)


def _clean_leftovers(out_dir):
    """Remove the `.tmp-*` and `.trash-*` folders that killed saves and deletions left."""
    for pattern in (".tmp-*", ".trash-*"):
        for leftover in (Path(out_dir) / CHECKPOINTS).glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


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
                    base_folder=None, keep_last=0, process_state=None):
    """Write checkpoint `step` of a run durably; call it on every process.

    state_dict and optimizer_state: full, gathered on rank 0 (the other ranks' are not read);
    training_state: {"step", "world_size", "scheduler"}. Each process writes its RNG states and
    `process_state` (a dict, e.g. {"meter": ...}). Only the `keep_last` newest checkpoints up
    to `step` are kept (0: all). Returns the checkpoint folder.
    """
    rank = _rank()
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
    torch.save({"rng": rng_state(), **(process_state or {})}, temporary / process_state_name(rank))
    _barrier()
    if rank == 0:
        seal(temporary)
        if final.exists():  # a damaged checkpoint that resuming skipped: kept, never deleted
            _set_aside(final)
        temporary.rename(final)
        fsync_path(final.parent)
        kept = [c for c in list_checkpoints(out_dir) if checkpoint_step(c) <= step]
        for old in kept[:-keep_last] if keep_last else []:
            _remove(old)
        _clean_leftovers(out_dir)
    _barrier()
    return final


def load_state(folder, name):
    """A torch file of a checkpoint folder, on the CPU; InputError naming it if it cannot be read."""
    path = Path(folder) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise InputError(f"{path}: cannot read this checkpoint file: {error}") from None


def load_training_state(folder):
    """The {"step", "world_size", "scheduler"} of a checkpoint folder."""
    return load_state(folder, TRAINING_STATE)


def load_optimizer_state(folder):
    """The full optimizer state of a checkpoint folder, on the CPU."""
    return load_state(folder, OPTIMIZER_STATE)


def load_process_state(folder, rank):
    """What process `rank` saved in a checkpoint folder; its RNG states are restored."""
    state = load_state(folder, process_state_name(rank))
    restore_rng_state(state["rng"])
    return state


def save_run_checkpoint(out_dir, step, objective, optimizer, scheduler, student, state_options, *,
                        meter, world_size, base_folder=None, keep_last=0):
    """Checkpoint `step` of a training run: the model's and the optimizer's full states gathered
    on rank 0 (`state_options`), the scheduler, each process's RNG and meter. Call it on every
    process."""
    model_state = get_model_state_dict(objective, options=state_options)
    return save_checkpoint(
        out_dir,
        step,
        model=student.model,
        tokenizer=student.tokenizer,
        state_dict={k.removeprefix("model."): v for k, v in model_state.items()},
        training_state={"step": step, "world_size": world_size, "scheduler": scheduler.state_dict()},
        optimizer_state=get_optimizer_state_dict(objective, optimizer, options=state_options),
        base_folder=base_folder,
        keep_last=keep_last,
        process_state={"meter": meter.state_dict()},
    )
