"""pairwise_sym_kl on every backend at the edges (docs/design.md, "Edge cases"): strided,
sliced, transposed and expanded logits; NaN and +-inf; G = 0; K from 2 to 16 over vocabularies
of several tiles, with masks and gradients that are not 1. Everything against the float64
definition."""
import math

import pytest
import torch
from helpers import groupwise_relative_error, pairwise_definition, random_logits, relative_error

from mcckd.ops import pairwise_sym_kl
from mcckd.ops.pairwise_kl_triton import PairwiseSymKLFunction

BACKENDS = ("torch", "triton", "native")
pytestmark = pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
# More than one tile of the Triton kernels for every K (4096 values a tile in the forward).
V_TILES = 2 * 4096 + 77


def weights(G, seed):
    """dLoss/dL_g for reduction "none": random, of both signs, none equal to 1."""
    return torch.randn(G, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def loss_and_grad_of_base(make_logits, base, valid, temperature, reduction, grad_output, backend):
    """The loss of make_logits(base) (a view of the leaf `base`) and its gradient to base;
    backend None: the float64 definition on base.double()."""
    leaf = (base.double() if backend is None else base).detach().clone().requires_grad_()
    logits = make_logits(leaf)
    if backend is None:
        loss = pairwise_definition(logits, valid, temperature, reduction)
    else:
        loss = pairwise_sym_kl(logits, valid, temperature=temperature, reduction=reduction, backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output.to(loss.dtype))
    return loss.detach(), grad


def check_view(make_logits, base, valid, backend, reduction="none", temperature=1.3, tol=1e-5):
    G = make_logits(base).shape[0]
    grad_output = weights(G, 3) if reduction == "none" else torch.tensor(0.37, dtype=torch.float64)
    args = (make_logits, base, valid, temperature, reduction, grad_output)
    loss, grad = loss_and_grad_of_base(*args, backend)
    want, want_grad = loss_and_grad_of_base(*args, None)
    assert relative_error(loss, want) < tol
    assert relative_error(grad, want_grad) < tol


VIEWS = {
    "transposed": ((5, 3, 700), lambda b: b.transpose(0, 1)),  # [K, G, V] -> [G, K, V]
    "expanded over groups": ((1, 4, 900), lambda b: b.expand(3, 4, 900)),  # stride 0 over G
    "sliced vocabulary": ((3, 4, 913), lambda b: b[..., :900]),  # rows 913 apart
    "sliced rows and offset": ((3, 7, 600), lambda b: b[:, 2:6, 10:]),
    "every other column": ((3, 4, 1400), lambda b: b[..., ::2]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("view", VIEWS)
def test_strided_views_get_gradients_in_place(view, backend):
    shape, make_logits = VIEWS[view]
    base = 2.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    G, K = make_logits(base).shape[:2]
    valid = torch.ones(G, K, dtype=torch.bool)
    valid[-1, 1] = False
    check_view(make_logits, base, valid, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_view_over_several_tiles_reduced(backend):
    base = 3.0 * torch.randn(4, 2, V_TILES + 5, generator=torch.Generator().manual_seed(2))
    check_view(lambda b: b.transpose(0, 1)[..., 5:], base, None, backend, reduction="mean")


@pytest.mark.parametrize("num_splits", (1, 3))
def test_launch_takes_column_strides_and_a_strided_mask(num_splits):
    """The Triton launches themselves (not only the dispatch) take any strides: logits with a
    column stride of 2, valid a strided view; the gradient comes back contiguous."""
    base = 2.0 * torch.randn(3, 4, 2 * 2500, generator=torch.Generator().manual_seed(4))
    logits = base[..., ::2]
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 2] = mask[2, 0] = False
    valid = mask[:, ::2]
    grad_output = weights(3, 5)
    leaf = logits.detach().requires_grad_()
    loss = PairwiseSymKLFunction.apply(leaf, valid, 1.1, num_splits)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output.float())
    want = logits.double().requires_grad_()
    want_loss = pairwise_definition(want, valid, 1.1, "none")
    (want_grad,) = torch.autograd.grad(want_loss, want, grad_output)
    assert relative_error(loss, want_loss) < 1e-5
    assert relative_error(grad, want_grad) < 1e-5


def nan_case(value, row, column, G=3, K=4, V=2500):
    """Random logits with `value` at [1, row, column], row valid; group 1's row 3 invalid."""
    logits, _ = random_logits(G, K, V, seed=7, masked=False)
    valid = torch.ones(G, K, dtype=torch.bool)
    valid[1, 3] = False
    logits[1, row, column] = value
    return logits, valid


def check_poisoned_group(logits, valid, backend, reduction, group_value):
    """Group 1 holds the bad value: its loss is group_value (NaN or +inf) and its valid rows'
    gradients are NaN; its invalid row's gradient is 0; the other groups are exact."""
    G = logits.shape[0]
    grad_output = weights(G, 9) if reduction == "none" else torch.tensor(0.8, dtype=torch.float64)
    clean = [g for g in range(G) if g != 1]
    leaf = logits.clone().requires_grad_()
    loss = pairwise_sym_kl(leaf, valid, temperature=0.9, reduction=reduction, backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output.float())
    loss = loss.detach()
    if reduction == "none":
        assert math.isnan(loss[1]) if math.isnan(group_value) else loss[1].item() == group_value
        want = pairwise_definition(logits[clean], valid[clean], 0.9, "none")
        assert relative_error(loss[clean], want) < 1e-5
    else:
        assert math.isnan(loss) if math.isnan(group_value) else loss.item() == group_value
    assert torch.isnan(grad[1, valid[1]]).all()
    assert torch.equal(grad[1, ~valid[1]], torch.zeros_like(grad[1, ~valid[1]]))
    scale = grad_output[clean] if reduction == "none" else grad_output * 1.0
    want_leaf = logits[clean].double().requires_grad_()
    per_group = pairwise_definition(want_leaf, valid[clean], 0.9, "none")
    if reduction == "mean":
        scale = scale / G
    (want_grad,) = torch.autograd.grad(per_group, want_leaf, scale.expand(len(clean)).double())
    assert relative_error(grad[clean], want_grad) < 1e-5


POSITIONS = {"first column, pivot row": (0, 0), "middle, other row": (2, 1300), "last column": (1, 2499)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", (math.nan, math.inf), ids=("nan", "+inf"))
@pytest.mark.parametrize("position", POSITIONS)
def test_nan_or_plus_inf_in_a_valid_row_gives_nan(position, value, backend):
    logits, valid = nan_case(value, *POSITIONS[position])
    check_poisoned_group(logits, valid, backend, "none", math.nan)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_nan_reaches_the_reduced_loss(reduction, backend):
    logits, valid = nan_case(math.nan, 2, 700)
    check_poisoned_group(logits, valid, backend, reduction, math.nan)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("position", POSITIONS)
def test_minus_inf_in_some_valid_rows_gives_plus_inf(position, backend):
    """A column at -inf in one valid row but finite in the others: KL(p_j||p_i) is infinite."""
    logits, valid = nan_case(-math.inf, *POSITIONS[position])
    check_poisoned_group(logits, valid, backend, "none", math.inf)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_row_in_all_valid_rows_but_not_the_invalid_one(backend):
    """-inf in every valid row of group 1 at one column is padding, even where the invalid row
    is finite; at another column -inf in two of three valid rows gives +inf."""
    logits, valid = nan_case(0.0, 0, 0)
    logits[1, :3, 40] = -math.inf
    loss = pairwise_sym_kl(logits, valid, reduction="none", backend=backend)
    kept = torch.cat([logits[:, :, :40], logits[:, :, 41:]], dim=-1)
    assert relative_error(loss, pairwise_definition(kept, valid, 1.0, "none")) < 1e-5
    logits[1, :2, 900] = -math.inf
    assert pairwise_sym_kl(logits, valid, reduction="none", backend=backend)[1].item() == math.inf


PADDING = {
    "first tile": lambda V: slice(0, 1024 + 3),
    "inside": lambda V: slice(1500, 1700),
    "a whole split": lambda V: slice(3000, 6200),  # G = 1: the second of three splits
    "last columns": lambda V: slice(V - 300, V),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding", PADDING)
@pytest.mark.parametrize("G", (1, 3))  # G = 1 splits the vocabulary over programs
def test_columns_at_minus_inf_in_every_valid_row_contribute_nothing(G, padding, backend):
    V = V_TILES
    logits, valid = random_logits(G, 4, V, seed=11)
    columns = PADDING[padding](V)
    logits[:, :, columns] = -math.inf
    logits[~valid] = math.nan  # invalid rows are never read
    keep = torch.ones(V, dtype=torch.bool)
    keep[columns] = False
    grad_output = weights(G, 12)
    leaf = logits.clone().requires_grad_()
    loss = pairwise_sym_kl(leaf, valid, reduction="none", backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output.float())
    want_leaf = logits[:, :, keep].nan_to_num().double().requires_grad_()
    want = pairwise_definition(want_leaf, valid, 1.0, "none")
    (want_grad,) = torch.autograd.grad(want, want_leaf, grad_output)
    assert torch.isfinite(loss).all()
    assert relative_error(loss, want) < 1e-5
    assert torch.equal(grad[:, :, ~keep], torch.zeros_like(grad[:, :, ~keep]))
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))
    assert groupwise_relative_error(torch.where(valid[..., None], grad, 0)[:, :, keep], want_grad) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("masked", (False, True))
def test_no_groups(reduction, masked, backend):
    logits = torch.randn(0, 3, 50, requires_grad=True)
    valid = torch.ones(0, 3, dtype=torch.bool) if masked else None
    loss = pairwise_sym_kl(logits, valid, reduction=reduction, backend=backend)
    assert loss.dtype == torch.float32
    if reduction == "none":
        assert loss.shape == (0,)
        (grad,) = torch.autograd.grad(loss, logits, torch.ones(0))
    else:
        assert loss.shape == () and loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, logits)
    assert grad.shape == (0, 3, 50)


ROWS = (2, 3, 5, 8, 11, 16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", ROWS)
def test_two_to_sixteen_rows_over_several_tiles(K, backend):
    G = 2
    logits, valid = random_logits(G, K, V_TILES, seed=K, scale=4.0)
    valid[1, ::3] = False
    temperature = (0.7, 1.0, 1.6)[K % 3]
    grad_output = weights(G, K)
    leaf = logits.clone().requires_grad_()
    loss = pairwise_sym_kl(leaf, valid, temperature=temperature, reduction="none", backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output.float())
    want_leaf = logits.double().requires_grad_()
    want = pairwise_definition(want_leaf, valid, temperature, "none")
    (want_grad,) = torch.autograd.grad(want, want_leaf, grad_output)
    assert relative_error(loss, want) < 1e-5
    assert groupwise_relative_error(grad, want_grad) < 1e-5
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))
