"""Where Triton kernels can run, and how many programs fill the device."""
import functools

import torch
from triton.runtime.interpreter import InterpretedFunction


def is_interpreted(kernel):
    """True when `kernel` was decorated under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return isinstance(kernel, InterpretedFunction)


def check_triton_can_run(name, tensor, kernel):
    """ValueError unless `tensor` is on CUDA or `kernel` runs under Triton's interpreter."""
    if not tensor.is_cuda and not is_interpreted(kernel):
        raise ValueError(
            f"{name} is on {tensor.device}: backend='triton' needs CUDA tensors, "
            "or TRITON_INTERPRET=1 set before mcckd is imported"
        )


@functools.lru_cache(maxsize=None)
def _multiprocessor_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def target_programs(device, per_multiprocessor=4):
    """Programs that fill a GPU a few times over; a small fixed count under the interpreter."""
    if device.type != "cuda":
        return per_multiprocessor
    index = device.index if device.index is not None else torch.cuda.current_device()
    return per_multiprocessor * _multiprocessor_count(index)
