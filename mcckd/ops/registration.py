"""The ops in torch.library (namespace "mcckd"): under torch.compile(fullgraph=True) each call is
one node of the graph, traced through its fake (meta) implementation, differentiated through
an explicit backward op.

Per backend b ("torch"; "triton" where triton can be imported):

    mcckd::pairwise_kl_b_forward(logits, valid?, temperature) -> (group_loss [G], stats)
    mcckd::pairwise_kl_b_backward(grad_group [G], logits, valid?, group_loss, stats, temperature)
        -> grad [G, K, V]  (grad_group = dLoss/dL_g)
    mcckd::fused_linear_mcc_b(hidden, weight, bias?, labels, answer_index, answer_valid?,
        temperature, ignore_index, chunk_size?, kl_backend, need_hidden, need_weight, need_bias)
        -> (ce, kl, dh, dW, db, dZ)       (linear_mcc_kernels.fused_forward)

The torch ops are torch.library.custom_op with register_fake: opaque to the compiler. The triton
ops are torch.library.triton_op around the launchers of pairwise_kl_triton.py and
cross_entropy.py (their kernels launch through torch.library.wrap_triton), so Inductor sees the
kernels, and the launchers run on fake tensors are the fakes: `stats` is opaque here, with
whatever shape the launcher gives it. Everything is registered when this module is imported
(first by `pairwise_kl.py`); `import mcckd` alone registers nothing.

A backend whose ops are defined elsewhere with these signatures (C++ ops with meta kernels,
say) joins with one call per op family: add_pairwise_backend("native",
"mcckd::native_pairwise_kl_forward", "mcckd::native_pairwise_kl_backward") (fused_linear_mcc_loss
then takes it as its kl_backend too), and add_fused_backend("native", lambda: rows) for a
cross-entropy rows function `rows` of cross_entropy.py's contract.
"""
import torch

from mcckd.ops.cross_entropy_torch import cross_entropy_rows_torch
from mcckd.ops.launch import triton_importable
from mcckd.ops.linear_mcc_kernels import fused_backward, fused_forward
from mcckd.ops.matmul import accumulator_dtype
from mcckd.ops.pairwise_kl_torch import STATS, pairwise_kl_backward_torch, pairwise_kl_forward_torch

Tensor = torch.Tensor
_PAIRWISE = {}  # backend -> (forward op, backward op)


def pairwise_kl_ops(backend: str):
    """(forward, backward) ops of `pairwise_sym_kl` for a registered backend."""
    return _PAIRWISE[backend]


def fused_linear_mcc_op(backend: str):
    """The fused lm_head + CE + consistency op whose cross-entropy runs on `backend`."""
    return getattr(torch.ops.mcckd, f"fused_linear_mcc_{backend}")


def add_pairwise_backend(backend: str, forward: str, backward: str) -> None:
    """Use the ops named `forward` and `backward` (signatures above) for `backend`, the first
    differentiated through the second."""
    backward_op = _op(backward)

    def setup_context(ctx, inputs, output):
        logits, valid, temperature = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(logits, valid, *output)
        ctx.temperature = temperature

    def backward_fn(ctx, grad_loss, _grad_stats):
        logits, valid, group_loss, stats = ctx.saved_tensors
        return backward_op(grad_loss, logits, valid, group_loss, stats, ctx.temperature), None, None

    torch.library.register_autograd(forward, backward_fn, setup_context=setup_context)
    _PAIRWISE[backend] = (_op(forward), backward_op)


def _op(name):
    namespace, op = name.split("::")
    return getattr(getattr(torch.ops, namespace), op)


@torch.library.custom_op("mcckd::pairwise_kl_torch_forward", mutates_args=())
def _pairwise_kl_torch(logits: Tensor, valid: Tensor | None, temperature: float) -> tuple[Tensor, Tensor]:
    return pairwise_kl_forward_torch(logits, valid, 1.0 / temperature)


@_pairwise_kl_torch.register_fake
def _(logits, valid, temperature):
    G, K, _ = logits.shape
    dtype = accumulator_dtype(logits.dtype)
    return logits.new_empty(G, dtype=dtype), logits.new_empty(STATS, G, K, dtype=dtype)


@torch.library.custom_op("mcckd::pairwise_kl_torch_backward", mutates_args=())
def _pairwise_kl_torch_backward(grad_group: Tensor, logits: Tensor, valid: Tensor | None, group_loss: Tensor,
                                stats: Tensor, temperature: float) -> Tensor:
    return pairwise_kl_backward_torch(logits, valid, 1.0 / temperature, group_loss, stats,
                                      grad_group).contiguous()


@_pairwise_kl_torch_backward.register_fake
def _(grad_group, logits, valid, group_loss, stats, temperature):
    return logits.new_empty(logits.shape)


def add_fused_backend(backend: str, cross_entropy_rows, *, triton: bool = False) -> None:
    """Register mcckd::fused_linear_mcc_<backend>, whose cross-entropy rows are those of
    `cross_entropy_rows()` (the contract of `cross_entropy.py`): a triton_op when `triton`,
    else a custom_op with a fake of the output shapes."""

    def fused(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, answer_index: Tensor,
              answer_valid: Tensor | None, temperature: float, ignore_index: int, chunk_size: int | None,
              kl_backend: str, need_hidden: bool, need_weight: bool, need_bias: bool
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return fused_forward(hidden, weight, bias, labels, answer_index, answer_valid, temperature,
                             ignore_index, chunk_size, cross_entropy_rows(), pairwise_kl_ops(kl_backend),
                             (need_hidden, need_weight, need_bias))

    define = torch.library.triton_op if triton else torch.library.custom_op
    op = define(f"mcckd::fused_linear_mcc_{backend}", fused, mutates_args=())
    op.register_autograd(_fused_backward, setup_context=_save_fused)
    if not triton:
        op.register_fake(_fused_fake)


def _save_fused(ctx, inputs, output):
    hidden, weight, bias, labels, answer_index, _, _, ignore_index, _, _, *needs = inputs
    ctx.mark_non_differentiable(*output[2:])
    ctx.save_for_backward(*output[2:], hidden, weight, bias, labels, answer_index)
    ctx.ignore_index, ctx.needs = ignore_index, needs


def _fused_backward(ctx, grad_ce, grad_kl, *_grad_of_gradients):
    grad_h, grad_w, grad_b, grad_z, hidden, weight, bias, labels, answer_index = ctx.saved_tensors
    grads = fused_backward(grad_ce, grad_kl, (grad_h, grad_w, grad_b, grad_z), hidden, weight, bias, labels,
                           answer_index, ctx.ignore_index, ctx.needs)
    return (*grads, *[None] * 10)


def _fused_fake(hidden, weight, bias, labels, answer_index, answer_valid, temperature, ignore_index,
                      chunk_size, kl_backend, need_hidden, need_weight, need_bias):
    (N, d), V = hidden.shape, weight.shape[0]
    rows = answer_index.numel()
    f = dict(dtype=accumulator_dtype(hidden.dtype), device=hidden.device)
    wanted = need_hidden or need_weight or need_bias
    shapes = [(), (), (N, d) if need_hidden else (0,), (V, d) if need_weight else (0,),
              (V,) if need_bias else (0,), (rows, V) if wanted else (0,)]
    return tuple(torch.empty(shape, **f) for shape in shapes)


add_pairwise_backend("torch", "mcckd::pairwise_kl_torch_forward", "mcckd::pairwise_kl_torch_backward")
add_fused_backend("torch", lambda: cross_entropy_rows_torch)


def _register_triton_ops():
    """The triton ops: triton_op around the launchers (imported when first run)."""

    @torch.library.triton_op("mcckd::pairwise_kl_triton_forward", mutates_args=())
    def _pairwise_kl_triton(logits: Tensor, valid: Tensor | None,
                            temperature: float) -> tuple[Tensor, Tensor]:
        from mcckd.ops.pairwise_kl_triton import pairwise_kl_forward

        return pairwise_kl_forward(logits, valid, 1.0 / temperature)

    @torch.library.triton_op("mcckd::pairwise_kl_triton_backward", mutates_args=())
    def _pairwise_kl_triton_backward(grad_group: Tensor, logits: Tensor, valid: Tensor | None,
                                     group_loss: Tensor, stats: Tensor, temperature: float) -> Tensor:
        from mcckd.ops.pairwise_kl_triton import pairwise_kl_backward

        return pairwise_kl_backward(logits, valid, 1.0 / temperature, stats, grad_group)

    def cross_entropy_rows_triton():
        from mcckd.ops.cross_entropy import cross_entropy_rows_triton

        return cross_entropy_rows_triton

    add_pairwise_backend("triton", "mcckd::pairwise_kl_triton_forward", "mcckd::pairwise_kl_triton_backward")
    add_fused_backend("triton", cross_entropy_rows_triton, triton=True)


if triton_importable():
    _register_triton_ops()
