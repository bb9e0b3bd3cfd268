"""The student and its fused MCC-KD loss as one module, so that DDP and FSDP see it whole."""
import torch

from mcckd.data.seq2seq import Seq2SeqBatch
from mcckd.models.packed import forward_packed
from mcckd.models.seq2seq import forward_seq2seq
from mcckd.models.wrappers import output_layer
from mcckd.ops import fused_linear_mcc_loss


class MCCKDObjective(torch.nn.Module):
    """The student and its fused MCC-KD loss in one forward, so that DDP and FSDP see it whole."""

    def __init__(self, model, *, alpha, temperature, chunk_size, dtype):
        super().__init__()
        self.model = model
        self.alpha, self.temperature, self.chunk_size, self.dtype = alpha, temperature, chunk_size, dtype

    def forward(self, batch):
        """(loss, ce, kl) of a PackedBatch or Seq2SeqBatch; hidden [N, d] -> never [N, V] logits."""
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
            return fused_linear_mcc_loss(hidden.to(self.dtype), head.weight.to(self.dtype), batch.labels,
                                         batch.answer_index, answer_valid=batch.answer_index >= 0, bias=bias,
                                         alpha=self.alpha, temperature=self.temperature,
                                         chunk_size=self.chunk_size)
