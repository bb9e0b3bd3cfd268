"""The cross-entropy rows (`cross_entropy.py`, `cross_entropy_torch.py`) over vocabularies of
several tiles (the Triton kernel reads 4096 columns a tile), against the float64 definition:
maxima in late tiles (the online log-sum-exp must rescale), NaN, -inf and ignored rows,
strided inputs and gradients, the gradient written over the logits."""
import math

import pytest
import torch
from helpers import cross_entropy_definition, relative_error

from mcckd.ops.cross_entropy_torch import cross_entropy_rows_torch

BACKENDS = ("torch", "triton")
V = 3 * 4096 + 37
IGNORE = -100


def rows_function(backend):
    if backend == "torch":
        return cross_entropy_rows_torch
    from mcckd.ops.cross_entropy import cross_entropy_rows_triton

    return cross_entropy_rows_triton


def tile_logits(seed, width=V):
    """Six rows: max in the last tile (a rising ramp), max in the first tile, large logits
    (1e4) rising tile by tile, the first tile all -inf, and two plain random rows."""
    generator = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(6, width, generator=generator)
    z[0] += torch.linspace(0, 40, width)
    z[1] -= torch.linspace(0, 40, width)
    z[2] = 1e4 * torch.linspace(-1, 1, width) + z[2]
    z[3, :4096] = -math.inf
    return z


def labels_for(width=V):
    return torch.tensor([width - 1, 3, 9000, 4100, 5, 12000]) % width


def check_rows(loss, grad, logits, want_loss, want_grad, rows):
    """Each row to float32 rounding of its log-sum-exp: 1e-6 plus 2e-7 of its largest |logit|
    (softmax(z) = exp(z - lse) carries lse's absolute error)."""
    for row in rows:
        finite = logits[row][torch.isfinite(logits[row])]
        tol = 1e-6 + 2e-7 * finite.abs().max().item()
        want = want_loss[row].item()
        assert abs(loss[row].item() - want) <= tol * max(1.0, abs(want)), row
        assert relative_error(grad[row], want_grad[row]) <= tol, row


def run(backend, logits, bias, labels, grad=None, in_place=False):
    loss = torch.empty(logits.shape[0])
    if in_place:
        grad = logits
    rows_function(backend)(logits, bias, labels, IGNORE, loss, grad)
    return loss, grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", (False, True))
def test_rows_over_several_tiles(with_bias, backend):
    logits = tile_logits(1)
    bias = 0.5 * torch.randn(V, generator=torch.Generator().manual_seed(2)) if with_bias else None
    labels = labels_for()
    want_loss, want_grad = cross_entropy_definition(logits, bias, labels, IGNORE)
    loss, grad = run(backend, logits.clone(), bias, labels, torch.empty(6, V))
    check_rows(loss, grad, logits, want_loss, want_grad, range(6))
    assert torch.equal(grad[3, :4096], torch.zeros(4096))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_over_the_logits_and_in_low_precision(backend):
    logits = tile_logits(3)
    labels = labels_for()
    want_loss, want_grad = cross_entropy_definition(logits, None, labels, IGNORE)
    loss, grad = run(backend, logits.clone(), None, labels, in_place=True)
    check_rows(loss, grad, logits, want_loss, want_grad, range(6))
    loss, grad = run(backend, logits.clone(), None, labels, torch.empty(6, V, dtype=torch.bfloat16))
    check_rows(loss, torch.zeros(6, V), logits, want_loss, torch.zeros(6, V), range(6))
    assert relative_error(grad, want_grad) <= 2.0**-8 + 2e-3  # bf16 rounding, row 2's lse at 1e4


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_nan_and_minus_inf_rows(backend):
    logits = tile_logits(4)
    labels = labels_for()
    labels[4] = IGNORE
    logits[4, 7000] = math.nan  # ignored: never read
    logits[5, 8200] = math.nan  # a NaN loss and NaN gradients
    logits[1, 3] = -math.inf  # the target at -inf: infinite loss
    loss, grad = run(backend, logits.clone(), None, labels, torch.full((6, V), 7.0))
    want_loss, want_grad = cross_entropy_definition(logits, None, labels, IGNORE)
    assert loss[4].item() == 0.0 and torch.equal(grad[4], torch.zeros(V))
    assert math.isnan(loss[5]) and torch.isnan(grad[5]).all()
    assert loss[1].item() == math.inf
    assert relative_error(grad[1], want_grad[1]) < 1e-6
    check_rows(loss, grad, logits, want_loss, want_grad, (0, 2, 3))


STRIDED = {
    "rows of a wider buffer": lambda b: b[:, 5:5 + V],
    "every other column": lambda b: b[:, : 2 * V : 2],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("view", STRIDED)
def test_strided_logits_and_gradient(view, backend):
    """Views as given, not copies; nothing outside the gradient's view is written."""
    base = torch.zeros(6, 2 * V + 10)
    logits = STRIDED[view](base)
    logits.copy_(tile_logits(5))
    labels = labels_for()
    want_loss, want_grad = cross_entropy_definition(logits, None, labels, IGNORE)
    grad_buffer = torch.full((6, 2 * V + 10), 7.0)
    grad = STRIDED[view](grad_buffer)
    saved = logits.clone()
    loss, _ = run(backend, logits, None, labels, grad)
    check_rows(loss, grad, saved, want_loss, want_grad, range(6))
    outside = torch.ones_like(grad_buffer, dtype=torch.bool)
    STRIDED[view](outside).fill_(False)
    assert torch.equal(grad_buffer[outside], torch.full_like(grad_buffer[outside], 7.0))
