"""The distributed runtime: this process's place in a torchrun job, and the wrapping of the
objective in DDP or FSDP2."""
import contextlib
import os
from typing import NamedTuple

import torch
import torch.distributed as dist

from mcckd.errors import InputError
from mcckd.models.wrappers import causal_lm


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


def distribute(objective, cfg, rt, bf16):
    """The objective as this run trains it: alone, under DDP, or sharded by FSDP2."""
    if rt.world_size == 1:
        return objective
    if cfg.distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            objective, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
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
