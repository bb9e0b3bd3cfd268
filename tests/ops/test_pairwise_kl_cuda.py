"""pairwise_sym_kl on a CUDA GPU at real shapes (run by bench/gpu_check.sh: `pytest -m cuda`)."""
import pytest
import torch
from helpers import loss_and_grad, random_logits, relative_error

from mcckd.ops import pairwise_sym_kl, pairwise_sym_kl_reference
from mcckd.ops.pairwise_kl_triton import PairwiseSymKLFunction

pytestmark = pytest.mark.cuda


def random_case(G, K, V, dtype, seed=0):
    return random_logits(G, K, V, seed, dtype=dtype, device="cuda")


@pytest.mark.parametrize("G, K, V, dtype", [
    (512, 4, 128256, torch.bfloat16),  # the headline shape
    (8, 4, 128256, torch.bfloat16),  # few groups: the vocabulary is split over programs
    (64, 16, 151936, torch.float16),
    (96, 3, 32000, torch.float32),
])
def test_matches_float64_reference(G, K, V, dtype):
    logits, valid = random_case(G, K, V, dtype)
    grad_output = torch.tensor(0.83, device="cuda")
    want, want_grad = loss_and_grad(
        lambda x: pairwise_sym_kl_reference(x, valid), logits.double(), grad_output.double()
    )
    loss, grad = loss_and_grad(lambda x: pairwise_sym_kl(x, valid), logits, grad_output)
    ref, ref_grad = loss_and_grad(lambda x: pairwise_sym_kl_reference(x, valid), logits, grad_output)
    assert grad.dtype == dtype
    assert relative_error(loss, want) < 1e-4
    assert relative_error(grad, want_grad) <= relative_error(ref_grad, want_grad) + (
        1e-4 if dtype == torch.float32 else 1e-2
    )


@pytest.mark.parametrize("K", (2, 3, 4, 5, 8, 16))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("masked", (False, True))
@pytest.mark.parametrize("num_splits", (1, 5))
def test_every_kernel_configuration_compiles_and_agrees(K, dtype, masked, num_splits):
    logits, valid = random_case(6, K, 4099, dtype, seed=K)
    valid = valid if masked else None
    grad_output = torch.rand(6, device="cuda")
    got, grad = loss_and_grad(
        lambda x: PairwiseSymKLFunction.apply(x, valid, 1.5, num_splits), logits, grad_output
    )
    want, want_grad = loss_and_grad(
        lambda x: pairwise_sym_kl_reference(x, valid, 1.5, "none"), logits.double(), grad_output.double()
    )
    assert relative_error(got, want) < 1e-4
    assert relative_error(grad, want_grad) < (1e-4 if dtype == torch.float32 else 1e-2)


def test_int64_offsets_past_two_to_the_31():
    """G * K * V > 2**31: the last groups, whose offsets overflow int32, are still right."""
    G, K, V = 4097, 4, 131072
    assert G * K * V > 2**31
    logits = torch.empty(G, K, V, device="cuda", dtype=torch.bfloat16).normal_(0, 3)
    grad_output = torch.zeros(G, device="cuda")
    grad_output[-2:] = torch.tensor([0.5, -1.25], device="cuda")
    loss, grad = loss_and_grad(lambda x: pairwise_sym_kl(x, reduction="none"), logits, grad_output)
    tail = logits[-2:].double()
    want, want_grad = loss_and_grad(
        lambda x: pairwise_sym_kl_reference(x, reduction="none"), tail, grad_output[-2:].double()
    )
    assert relative_error(loss[-2:], want) < 1e-4
    assert relative_error(grad[-2:], want_grad) < 1e-2
    assert torch.count_nonzero(grad[:-2]) == 0
