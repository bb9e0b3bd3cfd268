"""The student and its fused MCC-KD loss as one module, so that DDP and FSDP see it whole."""
import weakref
from typing import NamedTuple

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from mcckd.data.seq2seq import Seq2SeqBatch
from mcckd.models.packed import forward_packed
from mcckd.models.seq2seq import forward_seq2seq
from mcckd.models.wrappers import output_layer
from mcckd.ops import fused_linear_mcc_loss


class StepTerms(NamedTuple):
    """A micro-batch's part of its step's loss: loss = ce + alpha * kl (scalars)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


class MCCKDObjective(torch.nn.Module):
    """The student and its fused MCC-KD loss in one forward, so that DDP and FSDP see it whole.

    The fused loss takes the lm_head weight in `dtype`. A weight stored in another dtype (float32
    master weights under bf16) is cast once per optimizer step, not once per micro-batch, and
    every micro-batch's gradient flows back through the same cast. The copy is dropped when any
    torch optimizer steps (a global step hook: fused AdamW writes the weights without moving
    their version counter) and when the weight is written in place otherwise (its version
    counter moves: a checkpoint load). `cache_head_weight=False` casts on every forward.
    """

    def __init__(self, model, *, alpha, temperature, chunk_size, dtype, cache_head_weight=True):
        super().__init__()
        self.model = model
        self.alpha, self.temperature, self.chunk_size, self.dtype = alpha, temperature, chunk_size, dtype
        self.cache_head_weight = cache_head_weight
        self._head_cast = None  # (key, weight cast to self.dtype)
        self._step_hook = register_optimizer_step_post_hook(_forget_head_cast(weakref.ref(self)))

    def head_weight(self, weight):
        """`weight` in self.dtype, from the cache while the weight and the grad mode are unchanged."""
        if weight.dtype == self.dtype or not self.cache_head_weight:
            return weight.to(self.dtype)
        key = (weight.data_ptr(), weight._version, torch.is_grad_enabled())
        if self._head_cast is None or self._head_cast[0] != key:
            self._head_cast = (key, weight.to(self.dtype))
        return self._head_cast[1]

    def forward(self, batch, shares=None):
        """StepTerms of a PackedBatch or Seq2SeqBatch; hidden [N, d] -> never [N, V] logits.

        shares: [2] the micro-batch's shares of its step's CE and KL means
        (`normalization.py`), which weigh its token-mean ce and group-mean kl; None: 1 and 1.
        """
        if isinstance(batch, Seq2SeqBatch):
            hidden = forward_seq2seq(self.model, batch)
        else:
            hidden = forward_packed(self.model, batch.input_ids, batch.cu_seqlens, batch.position_ids,
                                    batch.max_seqlen)
        head = output_layer(self.model)
        bias = None if head.bias is None else head.bias.to(self.dtype)
        # The fused loss sets its own precision (self.dtype operands, float32 accumulation):
        # autocast would recast its matmuls.
        with torch.autocast(hidden.device.type, enabled=False):
            out = fused_linear_mcc_loss(hidden.to(self.dtype), self.head_weight(head.weight), batch.labels,
                                        batch.answer_index, answer_valid=batch.answer_index >= 0, bias=bias,
                                        alpha=self.alpha, temperature=self.temperature,
                                        chunk_size=self.chunk_size)
        if shares is None:
            return StepTerms(out.loss, out.ce, out.kl)
        ce, kl = out.ce * shares[0], out.kl * shares[1]
        return StepTerms(ce + self.alpha * kl, ce, kl)


def _forget_head_cast(objective_ref):
    """An optimizer step hook that drops the objective's cached cast (the objective held weakly)."""
    def hook(optimizer, args, kwargs):
        objective = objective_ref()
        if objective is not None:
            objective._head_cast = None
    return hook
