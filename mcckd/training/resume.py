"""Resuming a run: which checkpoint it continues from, and restoring that checkpoint's states.

    resume=False    a fresh run; an out_dir that already holds checkpoints is refused
    resume=True     (`--resume`) the newest checkpoint that verifies; an error when there is none
    resume="auto"   (`--auto-resume`) the same when the run has checkpoints, a fresh run when it
                    has none yet (a requeue script passes it every time)

Rank 0 checks the checkpoints newest first against their manifests (`manifest.py`) and prints
one line for each one it skips, naming the file and what is wrong with it; the folder is kept
(`checkpoint.py` sets it aside when the run saves that step again). The other processes receive
rank 0's choice.
"""
import dataclasses
import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
from tqdm import tqdm

from mcckd.errors import InputError
from mcckd.training.checkpoint import (
    CHECKPOINTS,
    list_checkpoints,
    load_optimizer_state,
    load_process_state,
    load_training_state,
)
from mcckd.training.manifest import damage


def verified_checkpoint(out_dir, resume):
    """The newest checkpoint of `out_dir` whose manifest verifies, or None for a fresh run.

    Prints a line naming each newer checkpoint it skips; InputError when `resume` asks for a
    checkpoint and none verifies, or when a fresh run would overwrite one.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"config key 'train.out_dir': {out_dir} is a file, not a folder")
    folders = list_checkpoints(out_dir)
    if not resume:
        if folders:
            raise InputError(f"{out_dir} already holds checkpoints: pass --resume (or --auto-resume) to "
                             "continue, or set train.out_dir to a new folder")
        return None
    if not folders:
        if resume == "auto":
            return None
        raise InputError(f"--resume: no checkpoint in {out_dir / CHECKPOINTS} "
                         "(--auto-resume starts a fresh run when there is none)")
    reasons = []
    for folder in reversed(folders):
        reason = damage(folder)
        if reason is None:
            return folder
        tqdm.write(f"mcckd: warning: skipping checkpoint {folder}: {reason} (the folder is kept)",
                   file=sys.stderr)
        reasons.append(f"{folder.name}: {reason}")
    raise InputError(f"no checkpoint in {out_dir / CHECKPOINTS} is whole: {'; '.join(reasons)}")


def resume_checkpoint(out_dir, resume, rt):
    """`verified_checkpoint` chosen on rank 0 and shared with every process (errors too)."""
    choice, error = None, None
    if rt.rank == 0:
        try:
            choice = verified_checkpoint(out_dir, resume)
        except InputError as failure:
            error = str(failure)
    if rt.world_size > 1:
        shared = [choice, error]
        dist.broadcast_object_list(shared, src=0)
        choice, error = shared
    if error is not None:
        raise InputError(error)
    return choice


def restore(folder, objective, optimizer, scheduler, meter, state_options, rt):
    """Load a checkpoint's optimizer, scheduler, RNG and meter states; returns its step.

    With several processes only rank 0 reads the optimizer state (twice the model in float32)
    and broadcasts it: one copy in host memory, not one per process."""
    state = load_training_state(folder)
    if state["world_size"] != rt.world_size:
        raise InputError(f"{folder} was written by a run of {state['world_size']} processes: resume it "
                         f"with as many (each step's data depends on it), not {rt.world_size}")
    if rt.world_size == 1:
        set_optimizer_state_dict(objective, optimizer, load_optimizer_state(folder), options=state_options)
    else:
        optimizer_state = load_optimizer_state(folder) if rt.rank == 0 else {}
        set_optimizer_state_dict(objective, optimizer, optimizer_state,
                                 options=dataclasses.replace(state_options, broadcast_from_rank0=True))
    scheduler.load_state_dict(state["scheduler"])
    meter.load_state_dict(load_process_state(folder, rt.rank)["meter"])
    return state["step"]
