"""Where Triton kernels run, and how many programs fill the device."""
import functools

import torch


def is_interpreted(kernel) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


@functools.cache
def triton_importable() -> bool:
    """True when the triton package can be imported (it is installed on Linux only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _multiprocessor_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def target_programs(device: torch.device, per_multiprocessor: int = 4) -> int:
    """Programs that fill a GPU a few times over; a small fixed count under the interpreter."""
    if device.type != "cuda":
        return per_multiprocessor
    index = device.index if device.index is not None else torch.cuda.current_device()
    return per_multiprocessor * _multiprocessor_count(index)


def valid_mask_args(valid, fallback):
    """(tensor, stride over groups, stride over rows, present) to pass a kernel an optional
    [G, K] mask; `fallback` stands in for the pointer when the mask is None."""
    if valid is None:
        return fallback, 0, 0, False
    return valid, valid.stride(0), valid.stride(1), True
