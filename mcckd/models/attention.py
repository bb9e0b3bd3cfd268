"""Student models (Hugging Face transformers) and packed variable-length attention.

A packed batch is one token stream of S sequences, sequence s at input_ids[cu[s]:cu[s+1]]
(cu = cu_seqlens [S+1] int32, cu[0] = 0, cu[S] = N), positions restarting at 0 in each. Token
q of the stream may attend to token k only when both lie in the same sequence and k <= q:

    allowed(q, k) = doc(q) == doc(k)  and  k <= q  [and  q - k < window, sliding-window layers]

Position ids alone do not give that: transformers (5.24, CPU, sdpa/eager/flex) lets a packed
sequence attend to the one before it. So the backends below are registered in transformers'
`AttentionInterface` under their own names (`register_attention_backends`, called by
`set_attention_backend`); transformers then builds no mask at all for them,
and `forward_packed` (packed.py) hands every layer a `PackedSequences` with the boundaries and a mask built
once per forward. Backends, best first ("auto" takes the first available):

    flash_attn  flash-attn's `flash_attn_varlen_func` (CUDA, fp16/bf16, when installed)
    varlen      `torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16, torch >= 2.10)
    flex        FlexAttention with a document mask (compiled on CUDA; on a CPU eager and
                forward only: torch has no CPU backward for it)
    sdpa        scaled_dot_product_attention: on a CPU one causal call per sequence, else with
                an explicit [N, N] block-diagonal mask

"auto" picks flex only on CUDA: on a CPU its eager fallback is no cheaper than the sdpa mask.
The backends serve training only; `transformers_attention` switches back to transformers'
own attention for generation: `with transformers_attention(model): model.generate(...)`.
"""
import functools
import importlib.util
import inspect
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from mcckd.models.wrappers import causal_lm

ATTENTION_BACKENDS = ("flash_attn", "varlen", "flex", "sdpa")
# The names under which transformers knows our backends; none may contain "flash", which
# transformers would take for its own flash-attention integration.
REGISTERED_NAMES = {
    backend: f"mcckd_{backend.replace('flash_attn', 'fa2')}" for backend in ATTENTION_BACKENDS
}


def _packed(kwargs):
    packed = kwargs.get("packed_sequences")
    if packed is None:
        raise ValueError(
            "the mcckd attention backends run packed training batches only: call "
            "mcckd.models.forward_packed, or generate inside `with transformers_attention(model):`"
        )
    return packed


def _half_precision(query, key, value, backend):
    """q, k, v in fp16/bf16 for the kernels that take nothing else. Under autocast, rotary
    embeddings computed in float32 promote q and k to float32: cast them to autocast's dtype,
    as transformers does for flash-attn."""
    if query.dtype in (torch.float16, torch.bfloat16):
        return query, key, value
    device_type = query.device.type
    if not torch.is_autocast_enabled(device_type):
        raise ValueError(f"attention backend {backend!r} needs fp16 or bf16 activations (got {query.dtype}): "
                         "train under bf16 autocast, or choose 'flex' or 'sdpa'")
    dtype = torch.get_autocast_dtype(device_type)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def _require_no_dropout(dropout, backend):
    if dropout:
        raise ValueError(f"attention backend {backend!r} has no attention dropout: set the model's "
                         "attention_dropout to 0 or choose 'sdpa'")


def _repeat_kv(key, value, num_heads):
    """k/v [1, Hkv, N, D] -> [1, H, N, D]: query head h reads key/value head h // (H / Hkv)."""
    groups = num_heads // key.shape[1]
    return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)


def sdpa_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          sliding_window=None, **kwargs):
    """q [1, H, N, D], k/v [1, Hkv, N, D] -> out [1, N, H, D] under the block-diagonal mask.

    On a CPU, eager and without a sliding window, one causal call per sequence: the scores cost
    sum_s n_s^2 instead of N^2. Elsewhere one call under the dense [N, N] mask (no host sync,
    one kernel, traceable)."""
    packed = _packed(kwargs)
    # SDPA's fused CUDA kernels take GQA only without a mask (transformers repeats the heads too)
    key, value = _repeat_kv(key, value, query.shape[1])
    if query.device.type == "cpu" and sliding_window is None and not torch.compiler.is_compiling():
        out = torch.cat([
            F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                           dropout_p=dropout, scale=scaling)
            for a, b in packed.spans()
        ], dim=2)
    else:
        mask = packed.dense_mask(sliding_window)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                             scale=scaling)
    return out.transpose(1, 2).contiguous(), None


_compiled_flex = None


def _flex_attention(device):
    """flex_attention, compiled on CUDA (its fused kernel), eager elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def flex_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          sliding_window=None, **kwargs):
    """q [1, H, N, D], k/v [1, Hkv, N, D] -> out [1, N, H, D] with the document BlockMask."""
    _require_no_dropout(dropout, "flex")
    block_mask = _packed(kwargs).block_mask(sliding_window)
    out = _flex_attention(query.device)(query, key, value, block_mask=block_mask, scale=scaling,
                                        enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _tokens_major(query, key, value):
    """[1, H, N, D] -> [N, H, D], the layout of the varlen kernels (a view of the projections)."""
    return tuple(t[0].transpose(0, 1).contiguous() for t in (query, key, value))


def flash_attn_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                sliding_window=None, **kwargs):
    """flash-attn's varlen kernel over the packed stream: out [1, N, H, D]."""
    from flash_attn import flash_attn_varlen_func

    query, key, value = _half_precision(query, key, value, "flash_attn")
    packed = _packed(kwargs)
    q, k, v = _tokens_major(query, key, value)
    cu, max_len = packed.cu_seqlens, packed.max_seqlen
    # flash-attn counts the window without the query itself; transformers counts it in.
    window = (-1, -1) if sliding_window is None else (sliding_window - 1, 0)
    out = flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=scaling,
                                 causal=True, window_size=window)
    return out[None], None


def _torch_varlen_options(num_heads, num_kv_heads, sliding_window):
    """Keyword arguments for varlen_attn, whose signature changed between torch 2.10 and 2.11."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    options = {}
    if "window_size" in params:
        options["window_size"] = (-1, 0) if sliding_window is None else (sliding_window - 1, 0)
    elif sliding_window is None:
        options["is_causal"] = True
    else:
        raise ValueError("attention backend 'varlen' needs torch >= 2.11 for sliding-window layers")
    if num_heads != num_kv_heads and "enable_gqa" in params:
        options["enable_gqa"] = True
    return options


def torch_varlen_packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                  sliding_window=None, **kwargs):
    """torch's varlen_attn over the packed stream: out [1, N, H, D]."""
    from torch.nn.attention.varlen import varlen_attn

    query, key, value = _half_precision(query, key, value, "varlen")
    _require_no_dropout(dropout, "varlen")
    packed = _packed(kwargs)
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    options = _torch_varlen_options(num_heads, num_kv_heads, sliding_window)
    if num_heads != num_kv_heads and "enable_gqa" not in options:
        key, value = _repeat_kv(key, value, num_heads)
    q, k, v = _tokens_major(query, key, value)
    cu, max_len = packed.cu_seqlens, packed.max_seqlen
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling, **options)
    return out[None], None


_ATTENTION_FUNCTIONS = {
    "flash_attn": flash_attn_packed_attention,
    "varlen": torch_varlen_packed_attention,
    "flex": flex_packed_attention,
    "sdpa": sdpa_packed_attention,
}


@functools.cache
def register_attention_backends() -> None:
    """Register the packed backends in transformers' AttentionInterface (once; idempotent)."""
    from transformers import AttentionInterface

    for backend, function in _ATTENTION_FUNCTIONS.items():
        AttentionInterface.register(REGISTERED_NAMES[backend], function)


def backend_available(backend, device):
    """Whether `backend` can run on `device` (a torch.device)."""
    cuda = device.type == "cuda"
    if backend == "flash_attn":
        return cuda and importlib.util.find_spec("flash_attn") is not None
    if backend == "varlen":
        return (cuda and importlib.util.find_spec("torch.nn.attention.varlen") is not None
                and torch.cuda.get_device_capability(device)[0] >= 8)
    return backend in ("flex", "sdpa")


def resolve_attention_backend(backend, device):
    """The backend name to use on `device`: "auto" -> the first available of ATTENTION_BACKENDS."""
    device = torch.device(device)
    if backend == "auto":
        return next(
            b
            for b in ATTENTION_BACKENDS
            if backend_available(b, device) and (b != "flex" or device.type == "cuda")
        )
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attn_backend must be 'auto' or one of {ATTENTION_BACKENDS}, got {backend!r}")
    if not backend_available(backend, device):
        raise ValueError(f"attention backend {backend!r} is not available on {device}")
    return backend


def set_attention_backend(model, backend):
    """Switch a loaded decoder-only student to the packed attention backend (one of
    ATTENTION_BACKENDS), registering the backends with transformers first."""
    register_attention_backends()
    causal_lm(model).set_attn_implementation(REGISTERED_NAMES[backend])


@contextmanager
def transformers_attention(model, implementation="sdpa"):
    """Inside the block `model` runs transformers' own attention (for generation); after, as before."""
    lm = causal_lm(model)
    previous = lm.config._attn_implementation
    lm.set_attn_implementation(implementation)
    try:
        yield model
    finally:
        lm.set_attn_implementation(previous)


def attention_backend(model):
    """The packed backend `model` runs, or None when it runs a transformers attention."""
    implementation = causal_lm(model).config._attn_implementation
    return next((b for b, name in REGISTERED_NAMES.items() if name == implementation), None)
