"""Liger-Kernel's fused layer kernels in a student (`model.liger: true`).

Liger-Kernel (an optional extra: `pip install -e ".[liger]"`) replaces a Hugging Face model's
RMSNorm, SwiGLU MLP and rotary embedding with Triton kernels, one patch function per model type.
mcckd applies those three and never Liger's cross-entropy or fused linear cross-entropy: the
lm_head and its loss are mcckd's fused loss. Liger patches the model's instance and also the
module of its model type in transformers, so models of that type built later in the same
process get the kernels too. The kernels run on CUDA only.
"""
import inspect

from mcckd.errors import InputError
from mcckd.models.wrappers import causal_lm

# The patch functions' switches: the layer kernels on, Liger's losses off.
LAYER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}


def liger_patch_function(model_type):
    """Liger's patch function for `model_type` (a transformers config's model_type)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        raise InputError("config key 'model.liger' needs liger-kernel: pip install -e \".[liger]\"") from None
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise InputError(
            f"config key 'model.liger': liger-kernel has no kernels for model type {model_type!r}"
        )
    return MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]


def apply_liger_kernels(model) -> None:
    """Patch `model` (peft-wrapped or not) in place with Liger's RMSNorm, SwiGLU and RoPE
    kernels, as far as its model type has them; InputError when liger-kernel is missing or has
    no kernels for the model type."""
    lm = causal_lm(model)
    patch = liger_patch_function(lm.config.model_type)
    accepted = inspect.signature(patch).parameters
    patch(model=lm, **{name: on for name, on in LAYER_KERNELS.items() if name in accepted})
