"""mcckd: Multi-CoT Consistent Knowledge Distillation (MCC-KD) with fused kernels.

The public API, imported on first use (so that `import mcckd` stays light):

    pairwise_sym_kl, PairwiseSymKL           all-pairs symmetric KL over K rows (mcckd.ops)
    fused_linear_mcc_loss, MCCKDLoss         lm_head + CE + consistency, no [N, V] logits
    load_student, forward_packed             students and their packed forward (mcckd.models)
    pack_questions                           a packed batch of tokenized questions (mcckd.data)
    train, load_config                       the training loop and its config (mcckd.training)
"""
import importlib

__version__ = "0.2.0"

_PUBLIC = {
    "pairwise_sym_kl": "mcckd.ops.pairwise_kl",
    "PairwiseSymKL": "mcckd.ops.pairwise_kl",
    "fused_linear_mcc_loss": "mcckd.ops.linear_mcc",
    "MCCKDLoss": "mcckd.ops.linear_mcc",
    "load_student": "mcckd.models.student",
    "forward_packed": "mcckd.models.packed",
    "pack_questions": "mcckd.data.packing",
    "train": "mcckd.training.loop",
    "load_config": "mcckd.training.config",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mcckd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
