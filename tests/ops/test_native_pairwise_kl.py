"""pairwise_sym_kl with backend="native" (kernels/cpu/) against the float64 definition: K from
2 to 16, vocabularies over several tiles, masks, real strided views, -inf columns, NaN,
near-identical rows, half precision, G = 0. (test_pairwise_kl.py runs its cases on native too.)"""
import math

import pytest
import torch
from helpers import loss_and_grad, pairwise_definition, random_logits, relative_error

from mcckd.ops import pairwise_sym_kl

TILE = 1024  # columns per tile in kernels/cpu/tile.h: V above it crosses tiles


def native(valid=None, **kwargs):
    return lambda x: pairwise_sym_kl(x, valid, backend="native", **kwargs)


def definition(valid=None, temperature=1.0, reduction="mean"):
    return lambda x: pairwise_definition(x, valid, temperature, reduction)


def group_weights(G, seed=0):
    """A gradient for reduction 'none' that is not 1 and differs per group."""
    return torch.randn(G, generator=torch.Generator().manual_seed(seed))


def check(logits, valid, temperature, reduction, grad_output, tol):
    fn = native(valid, temperature=temperature, reduction=reduction)
    loss, grad = loss_and_grad(fn, logits, grad_output)
    want_loss, want_grad = loss_and_grad(definition(valid, temperature, reduction), logits.double(),
                                         grad_output.double())
    assert relative_error(loss, want_loss) < tol
    assert relative_error(grad, want_grad) < tol
    return loss, grad


@pytest.mark.parametrize("K", (2, 3, 4, 7, 8, 16))
@pytest.mark.parametrize("V", (1, 5, TILE, 2 * TILE + 37))
def test_float32_matches_definition(K, V):
    G = 5
    logits, valid = random_logits(G, K, V, seed=K * V, scale=3.0)
    temperature = (0.7, 1.0, 1.9)[K % 3]
    check(logits, valid, temperature, "none", group_weights(G, K), tol=1e-4)


@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_reductions_with_a_gradient_that_is_not_one(reduction):
    logits, valid = random_logits(6, 4, 3000, seed=1)
    check(logits, valid, 1.3, reduction, torch.tensor(-2.5), tol=1e-4)


def test_float64_is_exact():
    logits, valid = random_logits(4, 5, 2500, seed=2, dtype=torch.float64)
    loss, grad = loss_and_grad(native(valid, reduction="none"), logits, group_weights(4).double())
    want_loss, want_grad = loss_and_grad(definition(valid, 1.0, "none"), logits, group_weights(4).double())
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64
    assert relative_error(loss, want_loss) < 1e-12
    assert relative_error(grad, want_grad) < 1e-12


def strided_views(G, K, V, seed):
    """Views of one buffer, none contiguous: the vocabulary at stride 3 from an offset, and the
    rows interleaved with the vocabulary (stride(-1) = K + 2)."""
    generator = torch.Generator().manual_seed(seed)
    every_third = (3 * torch.randn(G, K, 3 * V + 4, generator=generator))[:, :, 4::3]
    transposed = (3 * torch.randn(G, V, K + 2, generator=generator)).transpose(1, 2)[:, 1:K + 1, :]
    return every_third, transposed


@pytest.mark.parametrize("which", (0, 1), ids=("vocabulary_stride_3", "rows_interleaved"))
def test_strided_views(which):
    logits = strided_views(3, 4, TILE + 300, seed=which)[which]
    assert not logits.is_contiguous() and logits.stride(-1) != 1
    valid = torch.tensor([[True, True, False, True], [True, True, True, True], [False, True, True, False]])
    check(logits, valid, 1.0, "none", group_weights(3, which), tol=1e-4)


def test_invalid_rows_are_never_read():
    logits, _ = random_logits(3, 4, 700, seed=3, masked=False)
    valid = torch.tensor([[True, False, True, True], [False, False, True, False], [True, True, True, False]])
    poisoned = logits.clone()
    poisoned[~valid] = math.nan
    grad_output = group_weights(3)
    loss, grad = loss_and_grad(native(valid, reduction="none"), poisoned, grad_output)
    want_loss, want_grad = loss_and_grad(native(valid, reduction="none"), logits, grad_output)
    assert torch.equal(loss, want_loss) and torch.equal(grad, want_grad)
    assert loss[1] == 0 and not grad[1].any() and not grad[~valid].any()


def test_shared_minus_inf_columns_across_tiles():
    """-inf in every valid row of a group (one whole tile of them, and a tail) changes nothing;
    -inf in an invalid row does not matter either."""
    logits, valid = random_logits(3, 4, 3 * TILE, seed=4)
    padded = logits.clone()
    padded[:, :, TILE:2 * TILE] = -math.inf
    padded[:, :, -5:] = -math.inf
    padded[~valid] = -math.inf
    kept = torch.cat([logits[:, :, :TILE], logits[:, :, 2 * TILE:-5]], dim=-1)
    loss, grad = loss_and_grad(native(valid, reduction="none"), padded, group_weights(3))
    want_loss, want_grad = loss_and_grad(definition(valid, 1.0, "none"), kept.double(),
                                         group_weights(3).double())
    assert relative_error(loss, want_loss) < 1e-4
    assert not grad[:, :, TILE:2 * TILE].any() and not grad[:, :, -5:].any()
    assert relative_error(torch.cat([grad[:, :, :TILE], grad[:, :, 2 * TILE:-5]], -1), want_grad) < 1e-4


def test_minus_inf_in_some_rows_only_gives_infinite_loss_and_nan_gradient():
    logits, _ = random_logits(3, 4, 2000, seed=5, masked=False)
    logits[1, 2, 1500] = -math.inf
    loss, grad = loss_and_grad(native(reduction="none"), logits, torch.ones(3))
    assert loss[1] == math.inf and torch.isfinite(loss[[0, 2]]).all()
    assert grad[1].isnan().all() and torch.isfinite(grad[[0, 2]]).all()
    assert pairwise_sym_kl(logits, backend="native") == math.inf


@pytest.mark.parametrize("value", (math.nan, math.inf), ids=("nan", "plus_inf"))
def test_nan_or_plus_inf_in_a_valid_row_gives_nan(value):
    logits, _ = random_logits(3, 3, 1500, seed=6, masked=False)
    logits[2, 0, 1100] = value
    loss, grad = loss_and_grad(native(reduction="none"), logits, torch.ones(3))
    assert loss[2].isnan() and torch.isfinite(loss[:2]).all()
    assert grad[2].isnan().all() and torch.isfinite(grad[:2]).all()
    assert pairwise_sym_kl(logits, backend="native").isnan()


@pytest.mark.parametrize("scale", (1.0, 30.0))
@pytest.mark.parametrize("eps, tol", ((1e-3, 1e-4), (1e-4, 1e-4), (1e-5, 1e-3)))
def test_near_identical_rows_keep_loss_and_gradient_precision(scale, eps, tol):
    """Rows eps * scale apart, shifted by different constants (which cancel) and crossing tiles."""
    generator = torch.Generator().manual_seed(7)
    base = scale * torch.randn(3, 1, 2 * TILE + 100, generator=generator)
    shift = 5.0 * torch.randn(3, 4, 1, generator=generator)
    logits = base + shift + eps * scale * torch.randn(3, 4, 2 * TILE + 100, generator=generator)
    loss, _ = check(logits, None, 1.0, "none", group_weights(3, 7), tol=tol)
    assert (loss > 0).all()


@pytest.mark.parametrize("dtype, tol", ((torch.bfloat16, 8e-3), (torch.float16, 1e-3)), ids=("bf16", "fp16"))
def test_half_precision_inputs(dtype, tol):
    """Sums in float32 from the rounded inputs; the gradient is rounded once to dtype."""
    logits, valid = random_logits(4, 4, TILE + 500, seed=8, dtype=dtype)
    loss, grad = loss_and_grad(native(valid, reduction="none"), logits, group_weights(4))
    want_loss, want_grad = loss_and_grad(definition(valid, 1.0, "none"), logits.double(),
                                         group_weights(4).double())
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert relative_error(loss, want_loss) < 1e-5
    assert relative_error(grad, want_grad) < tol


@pytest.mark.parametrize("reduction, expected", (("mean", 0.0), ("sum", 0.0), ("none", None)))
def test_no_groups(reduction, expected):
    logits = torch.randn(0, 3, 10, requires_grad=True)
    loss = pairwise_sym_kl(logits, backend="native", reduction=reduction)
    if expected is None:
        assert loss.shape == (0,)
        loss = loss.sum()
    else:
        assert loss.shape == () and loss.item() == expected
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.shape == (0, 3, 10)
