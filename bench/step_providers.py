"""The training steps bench/train_step.py compares, on the same data and the same weights.

    mcckd         mcckd's step: the packed stream through `forward_packed` (varlen attention on
                  CUDA), the fused lm_head + CE + consistency loss (`MCCKDObjective`), `train_step`.
                  Levers: liger (`model.liger`), compile (`train.compile`), head_weight_cache.
    hf_padded     Hugging Face on right-padded rows, SDPA, full logits; F.cross_entropy in float32
                  and the reference pairwise KL (torch ops) on the answer rows.
    liger_padded  Hugging Face + Liger-Kernel: `apply_liger_kernel_to_qwen2` (RoPE, RMSNorm,
                  SwiGLU, fused linear cross-entropy). The decoder's hidden states go to
                  LigerFusedLinearCrossEntropyLoss and the answer rows' logits to mcckd's pairwise
                  kernel, as a user combines them: the patched forward's loss has no KL term.
    liger_packed  The same padding-free: the packed stream as one row, position_ids restarting
                  in every sequence, use_cache=False. Transformers isolates the sequences itself
                  when it sees such position_ids (checked on the model before timing); where it
                  does not, an explicit block-causal mask goes to SDPA.

Every provider: float32 master weights, bf16 autocast on CUDA (float32 on a CPU), fused AdamW
(lr 1e-5), gradient clipping at 1.0, loss = CE + 0.1 KL averaged over the step's micro-batches.
On a CPU (the tiny shape of the tests) Liger's layer kernels are left out, since they need CUDA,
and its fused linear cross-entropy, where it cannot run (not installed, or no Triton
interpreter), becomes torch's on full logits.
"""
import contextlib
import importlib.util
import os

import torch
import torch.nn.functional as F
from providers import ALPHA, liger_linear_cross_entropy, with_answer_kl
from step_data import block_causal_mask, padded
from transformers import AutoModelForCausalLM

from mcckd.data import IGNORE_INDEX
from mcckd.models.attention import resolve_attention_backend, set_attention_backend
from mcckd.models.compile import compile_decoder_layers
from mcckd.models.liger import apply_liger_kernels
from mcckd.ops.reference import pairwise_sym_kl_reference
from mcckd.training.distributed import Runtime
from mcckd.training.loop import train_step
from mcckd.training.normalization import loss_shares
from mcckd.training.objective import MCCKDObjective

LR, MAX_GRAD_NORM = 1e-5, 1.0


class Provider:
    """A model, its fused AdamW and its loss. `layout(batch)` turns a CPU PackedBatch into what
    `loss` takes; `step(micro_batches)` is one optimizer step over them."""

    name = ""

    def __init__(self, config, device, *, compile_backend="inductor"):
        self.device = torch.device(device)
        self.bf16 = self.device.type == "cuda"
        self.compile_backend = compile_backend
        torch.manual_seed(0)  # the same weights in every provider
        with torch.device(self.device):
            self.model = AutoModelForCausalLM.from_config(config, attn_implementation=self.implementation())
        self.info = {}

    def implementation(self):
        return "sdpa"

    def make_optimizer(self, parameters):
        self.optimizer = torch.optim.AdamW(parameters, lr=LR, fused=True)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def layout(self, batch):
        return batch

    def loss(self, micro_batch):
        raise NotImplementedError

    def step(self, micro_batches):
        for micro_batch in micro_batches:
            with self.autocast():
                loss = self.loss(micro_batch)
            (loss / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class Mcckd(Provider):
    name = "mcckd"

    def __init__(self, config, device, *, liger=False, compile=False, head_weight_cache=True, **options):
        super().__init__(config, device, **options)
        backend = resolve_attention_backend("auto", self.device)
        set_attention_backend(self.model, backend)
        if liger:
            if self.device.type != "cuda":
                raise RuntimeError("Liger's layer kernels need CUDA")
            apply_liger_kernels(self.model)
        if compile:
            compile_decoder_layers(self.model, backend=self.compile_backend)
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.objective = MCCKDObjective(self.model, alpha=ALPHA, temperature=1.0, chunk_size=None,
                                        dtype=dtype, cache_head_weight=head_weight_cache)
        self.make_optimizer(self.model.parameters())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.info = {"attention": backend, "loss": "fused_linear_mcc_loss",
                     "levers": {"liger": liger, "compile": compile, "head_weight_cache": head_weight_cache}}

    def loss(self, batch):
        return self.objective(batch).loss

    def step(self, micro_batches):
        # the loss over the step's tokens and groups, counted as the training loop counts them
        shares = loss_shares(micro_batches, "step", Runtime(0, 1, self.device))
        train_step(self.objective, self.optimizer, self.scheduler, micro_batches, shares,
                   max_grad_norm=MAX_GRAD_NORM, autocast=self.autocast,
                   sync=lambda last: contextlib.nullcontext())


class HFPadded(Provider):
    name = "hf_padded"

    def __init__(self, config, device, **options):
        super().__init__(config, device, **options)
        self.make_optimizer(self.model.parameters())
        self.info = {"attention": "sdpa, padding mask", "loss": "F.cross_entropy + pairwise_sym_kl_reference"}

    def layout(self, batch):
        return padded(batch)

    def loss(self, batch):
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        flat = out.logits.view(-1, out.logits.shape[-1])
        ce = F.cross_entropy(flat.float(), batch.labels, ignore_index=IGNORE_INDEX)
        kl = pairwise_sym_kl_reference(flat[batch.answer_index.clamp(min=0)], batch.answer_index >= 0)
        return ce + ALPHA * kl


def torch_linear_cross_entropy(hidden, weight, labels):
    """Cross-entropy over full float32 logits: the stand-in for Liger's fused one where it is absent."""
    return F.cross_entropy((hidden @ weight.T).float(), labels, ignore_index=IGNORE_INDEX)


class LigerPadded(Provider):
    name = "liger_padded"

    def __init__(self, config, device, **options):
        super().__init__(config, device, **options)
        layers = self.device.type == "cuda"
        if layers:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen2

            apply_liger_kernel_to_qwen2(model=self.model)
        # Liger's Triton kernels run on CUDA, or on CPU tensors under the Triton interpreter
        runnable = layers or os.environ.get("TRITON_INTERPRET") == "1"
        linear_cross_entropy = liger_linear_cross_entropy() if runnable else None
        if linear_cross_entropy is None:
            if layers:
                raise RuntimeError("liger-kernel is not importable: bash bench/fetch_wheels.sh, carry .whl")
            linear_cross_entropy = torch_linear_cross_entropy
        self.loss_fn = with_answer_kl(linear_cross_entropy)
        self.make_optimizer(self.model.parameters())
        fused = linear_cross_entropy is not torch_linear_cross_entropy
        self.info = {"attention": "sdpa, padding mask", "liger_layers": layers,
                     "loss": ("Liger fused linear CE" if fused else "torch CE") + " + mcckd pairwise_sym_kl"}

    def layout(self, batch):
        return padded(batch)

    def hidden(self, batch):
        out = self.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               use_cache=False)
        return out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])

    def loss(self, batch):
        return self.loss_fn(self.hidden(batch), self.model.lm_head.weight, batch.labels, batch.answer_index)


def isolates_packed_rows(model, vocab_size, device):
    """Whether the model's forward keeps packed sequences apart given only their position_ids."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(vocab_size, (1, 21), generator=generator).to(device)
    positions = torch.cat([torch.arange(12), torch.arange(9)])[None].to(device)
    with torch.no_grad():
        packed = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0, 12:]
        alone = model.model(input_ids=ids[:, 12:], use_cache=False).last_hidden_state[0]
    return bool((packed - alone).abs().max() <= 1e-3 * alone.abs().max())


class LigerPacked(LigerPadded):
    name = "liger_packed"

    def __init__(self, config, device, *, mask=None, **options):
        super().__init__(config, device, **options)
        if mask is None:
            isolated = isolates_packed_rows(self.model, config.vocab_size, self.device)
            mask = "position_ids" if isolated else "block_mask"
        self.mask = mask
        how = ("transformers' packed-sequence mask from position_ids" if mask == "position_ids"
               else "explicit block-causal mask")
        self.info["attention"] = f"{self.implementation()}, {how}"

    def implementation(self):
        """transformers' varlen path where flash-attn is installed, else SDPA."""
        return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"

    def layout(self, batch):
        return batch

    def hidden(self, batch):
        mask = block_causal_mask(batch) if self.mask == "block_mask" else None
        out = self.model.model(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None],
                               attention_mask=mask, use_cache=False)
        return out.last_hidden_state[0]


PROVIDERS = {provider.name: provider for provider in (Mcckd, HFPadded, LigerPadded, LigerPacked)}
