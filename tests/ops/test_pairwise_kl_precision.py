"""pairwise_sym_kl's precision on every backend (docs/design.md, "Precision: differences to a
pivot row"): rows 1e-3 to 1e-5 apart around a shared row, at logit scales 1 and 30, loss and
gradient against float64 on the same rounded inputs; rows shifted by large constants; bf16
and fp16 inputs, extreme ones included, against the plain computation in their own dtype."""
import pytest
import torch
from helpers import groupwise_relative_error, near_identical_rows, pairwise_definition, pairwise_plain

from mcckd.ops import pairwise_sym_kl

BACKENDS = ("torch", "triton", "native")
G, K, V = 3, 4, 2 * 4096 + 77  # G = 3 splits the vocabulary in two under the interpreter
# Largest relative error allowed, by the distance eps between the rows.
TOLERANCE = {1e-3: 1e-4, 1e-4: 1e-4, 1e-5: 1e-3}


def weights(seed):
    return torch.randn(G, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def valid_rows():
    valid = torch.ones(G, K, dtype=torch.bool)
    valid[2, 1] = False
    return valid


def errors(logits, valid, temperature, backend, grad_output, reference=pairwise_definition):
    """(loss error, gradient error), largest over groups, against the float64 definition of
    the same inputs; `reference` the computation to measure instead of the backend."""
    leaf = logits.detach().clone().requires_grad_()
    if backend is None:
        loss = reference(leaf, valid, temperature, "none")
    else:
        loss = pairwise_sym_kl(leaf, valid, temperature=temperature, reduction="none", backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf, grad_output.to(loss.dtype))
    loss = loss.detach()
    want_leaf = logits.detach().double().requires_grad_()
    want = pairwise_definition(want_leaf, valid, temperature, "none")
    (want_grad,) = torch.autograd.grad(want, want_leaf, grad_output)
    assert want.min() > 0
    loss_error = max(abs(float(a) - float(e)) / float(e) for a, e in zip(loss, want.detach()))
    return loss_error, groupwise_relative_error(torch.where(valid[..., None], grad, 0), want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", (1.0, 0.7))
@pytest.mark.parametrize("scale", (1.0, 30.0))
@pytest.mark.parametrize("eps", TOLERANCE)
def test_near_identical_rows(eps, scale, temperature, backend):
    logits = near_identical_rows(G, K, V, eps, scale, seed=int(scale) + 3)
    loss_error, grad_error = errors(logits, valid_rows(), temperature, backend, weights(1))
    assert loss_error <= TOLERANCE[eps]
    assert grad_error <= TOLERANCE[eps]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eps", (1e-3, 1e-4))
def test_rows_shifted_by_large_constants(eps, backend):
    """Each row moved by its own constant (which changes no distribution): the differences to
    the pivot are no longer exact in float32, and must still be kept."""
    generator = torch.Generator().manual_seed(21)
    shift = 30.0 * torch.randn(G, K, 1, generator=generator, dtype=torch.float64)
    logits = (near_identical_rows(G, K, V, eps, 8.0, seed=22).double() + shift).float()
    loss_error, grad_error = errors(logits, valid_rows(), 1.0, backend, weights(2))
    assert loss_error <= 1e-4
    assert grad_error <= 1e-4


LOW_PRECISION = (torch.bfloat16, torch.float16)


def low_precision_case(kind, dtype):
    """Logits rounded to dtype: random, near-identical rows, or extreme (|x| up to 1e3 for
    float16, where the plain float16 computation still stays finite, 1e4 for bfloat16)."""
    generator = torch.Generator().manual_seed(31)
    if kind == "random":
        logits = 3.0 * torch.randn(G, K, V, generator=generator)
    elif kind == "near-identical":
        logits = near_identical_rows(G, K, V, 2e-2, 4.0, seed=32)
    else:
        big = 1e3 if dtype == torch.float16 else 1e4
        magnitude = big * torch.rand(G, K, V, generator=generator) ** 4
        logits = magnitude * torch.randn(G, K, V, generator=generator)
    return logits.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ("random", "near-identical", "extreme"))
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_no_worse_than_plain(dtype, kind, backend):
    """Error at most the plain computation's in the input's dtype, plus 1e-4. (Far-apart rows
    at T != 1 cost the Triton gradient a few float32 ulps of |x| / T: T = 1 here.)"""
    logits = low_precision_case(kind, dtype)
    temperature = 1.0 if kind != "random" else 1.3
    loss_error, grad_error = errors(logits, valid_rows(), temperature, backend, weights(3))
    plain_loss, plain_grad = errors(logits, valid_rows(), temperature, None, weights(3), pairwise_plain)
    assert plain_loss < float("inf") and plain_grad < float("inf")
    assert loss_error <= plain_loss + 1e-4
    assert grad_error <= plain_grad + 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ("random", "near-identical"))
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_inputs_computed_exactly(dtype, kind, backend):
    """bf16 and fp16 inputs are computed in float32: the loss to 1e-4, the gradient to one
    unit in the last place of the input's dtype plus 1e-4."""
    logits = low_precision_case(kind, dtype)
    loss_error, grad_error = errors(logits, valid_rows(), 1.0, backend, weights(4))
    assert loss_error <= 1e-4
    assert grad_error <= torch.finfo(dtype).eps + 1e-4
