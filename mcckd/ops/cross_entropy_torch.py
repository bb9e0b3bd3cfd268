"""The cross-entropy rows of `cross_entropy.py` in PyTorch ops: the CPU path, free of triton.

    loss_r = lse(z_r) - z_r[y_r],   grad_r = softmax(z_r) - onehot(y_r)   (0 on ignored rows)
"""
import torch


def cross_entropy_rows_torch(logits, bias, labels, ignore_index, loss_out, grad_out):
    """cross_entropy_rows_triton in PyTorch ops, in place on logits (the CPU path)."""
    if bias is not None:
        logits += bias
    ignored = labels == ignore_index
    targets = torch.where(ignored, 0, labels).long().unsqueeze(1)
    z_target = logits.gather(1, targets).squeeze(1)
    m = logits.amax(dim=1, keepdim=True)
    e = logits.sub_(m).exp_()
    total = e.sum(dim=1, keepdim=True)
    loss_out.copy_((m + total.log()).squeeze(1) - z_target).masked_fill_(ignored, 0.0)
    if grad_out is not None:
        p = e.div_(total)
        p.scatter_add_(1, targets, torch.full_like(z_target, -1.0).unsqueeze(1))
        p.masked_fill_(ignored.unsqueeze(1), 0.0)
        if grad_out.data_ptr() != p.data_ptr():
            grad_out.copy_(p)
