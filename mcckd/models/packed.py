"""Packed streams: the boundaries and masks of S sequences in one token stream, and the
student's forward over such a stream (the attention backends are in attention.py).
"""
from dataclasses import dataclass, field

import torch

from mcckd.models.attention import ATTENTION_BACKENDS, attention_backend
from mcckd.models.wrappers import causal_lm


@dataclass
class PackedSequences:
    """Boundaries of a packed stream, and the masks its layers need, built once per forward."""

    cu_seqlens: torch.Tensor  # [S+1] int32
    max_seqlen: int
    _masks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens, max_seqlen=None):
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        return cls(cu_seqlens.to(torch.int32), max_seqlen)

    def document_ids(self):
        """doc [N]: the index of the sequence each token belongs to."""
        lengths = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)

    def spans(self):
        """[(start, end)] of each non-empty sequence of the stream, on the host (one copy per
        forward)."""
        if "spans" not in self._masks:
            bounds = self.cu_seqlens.tolist()
            self._masks["spans"] = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        return self._masks["spans"]

    def dense_mask(self, window):
        """[N, N] bool, True where query q may attend key k (see the module docstring)."""
        if ("dense", window) not in self._masks:
            doc = self.document_ids()
            position = torch.arange(len(doc), device=doc.device)
            allowed = (doc[:, None] == doc[None, :]) & (position[None, :] <= position[:, None])
            if window is not None:
                allowed &= position[:, None] - position[None, :] < window
            self._masks["dense", window] = allowed
        return self._masks["dense", window]

    def block_mask(self, window):
        """The same mask as a FlexAttention BlockMask, never materialised as [N, N]."""
        if ("block", window) not in self._masks:
            from torch.nn.attention.flex_attention import create_block_mask

            doc = self.document_ids()

            def allowed(batch, head, q, k):
                keep = (doc[q] == doc[k]) & (k <= q)
                return keep if window is None else keep & (q - k < window)

            n = len(doc)
            # compiled on CUDA, so that no [N, N] intermediate is built
            self._masks["block", window] = create_block_mask(allowed, None, None, n, n, device=doc.device,
                                                             _compile=doc.is_cuda)
        return self._masks["block", window]


def positions_from_cu_seqlens(cu_seqlens):
    """position_ids [N]: 0, 1, ... restarting at every sequence start."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths)
    return torch.arange(len(starts), device=cu_seqlens.device) - starts


def forward_packed(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Final normalised hidden states (before the lm_head) of a packed stream of S sequences.

    Each sequence attends only to itself, causally. The model must run one of
    ATTENTION_BACKENDS (`load_student` or `set_attention_backend` sets it).

    Args:
        model: a decoder-only student (peft-wrapped or not).
        input_ids: the tokens of all sequences, one after another.
        cu_seqlens: sequence s is input_ids[cu_seqlens[s]:cu_seqlens[s+1]].
        position_ids: default: restarting at 0 in each sequence.
        max_seqlen: the longest sequence (computed when None, at the cost of a device sync).

    Shapes:
        input_ids [N] long; cu_seqlens [S+1] int32; position_ids [N] long.

    Returns:
        hidden [N, d].
    """
    if input_ids.dim() != 1 or cu_seqlens.dim() != 1:
        raise ValueError(f"input_ids must be [N] and cu_seqlens [S+1], got {tuple(input_ids.shape)} "
                         f"and {tuple(cu_seqlens.shape)}")
    if attention_backend(model) is None:
        raise ValueError(
            f"forward_packed needs one of the packed attention backends {ATTENTION_BACKENDS}, the model runs "
            f"{causal_lm(model).config._attn_implementation!r}: use set_attention_backend"
        )
    if position_ids is None:
        position_ids = positions_from_cu_seqlens(cu_seqlens)
    packed = PackedSequences.from_cu_seqlens(cu_seqlens, max_seqlen)
    decoder = causal_lm(model).base_model
    output = decoder(input_ids=input_ids[None], position_ids=position_ids[None], use_cache=False,
                     packed_sequences=packed)
    return output.last_hidden_state[0]
