"""The cross-entropy rows of `cross_entropy.py` on the native CPU kernel
(kernels/cpu/cross_entropy.cpp): one read for each row's log-sum-exp, one for its gradient.

    loss_r = lse(z_r) - z_r[y_r],   grad_r = softmax(z_r) - onehot(y_r)   (0 on ignored rows)
"""
import torch

from mcckd.ops.native import require_native

require_native()


def cross_entropy_rows_native(logits, bias, labels, ignore_index, loss_out, grad_out):
    """cross_entropy_rows_triton on the CPU: logits [C, V] float32 (float64) are overwritten by
    their gradient when grad_out is given (copied on to grad_out unless it is logits itself)."""
    write_grad = grad_out is not None
    torch.ops.mcckd.native_cross_entropy_rows(logits, bias, labels, ignore_index, loss_out, write_grad)
    if write_grad and grad_out.data_ptr() != logits.data_ptr():
        grad_out.copy_(logits)
