"""pairwise_sym_kl: the Triton kernel (interpreter) and the reference against the pairwise
definition in float64, gradients included."""
import functools
import itertools
import math

import pytest
import torch
from helpers import loss_and_grad, pairwise_definition, random_logits, relative_error

import mcckd
from mcckd.ops import PairwiseSymKL, pairwise_sym_kl, pairwise_sym_kl_reference
from mcckd.ops.pairwise_kl_triton import PairwiseSymKLFunction

BACKENDS = ("triton", "torch", "native")


def random_case(G, K, V, seed, masked=True, dtype=torch.float32, scale=3.0):
    return random_logits(G, K, V, seed, masked=masked, dtype=dtype, scale=scale)


def grad_output_for(reduction, G, seed):
    generator = torch.Generator().manual_seed(seed + 1)
    if reduction == "none":
        return torch.randn(G, generator=generator)
    return torch.tensor(0.37)


def check_against_definition(logits, valid, temperature, reduction, backend, tol):
    grad_output = grad_output_for(reduction, logits.shape[0], 0)
    kwargs = dict(temperature=temperature, reduction=reduction)
    loss, grad = loss_and_grad(
        lambda x: pairwise_sym_kl(x, valid, backend=backend, **kwargs), logits, grad_output
    )
    want_loss, want_grad = loss_and_grad(
        lambda x: pairwise_definition(x, valid, temperature, reduction), logits.double(), grad_output.double()
    )
    assert loss.dtype == torch.float32
    assert grad.dtype == logits.dtype
    assert relative_error(loss, want_loss) < tol
    assert relative_error(grad, want_grad) < tol


CASES = list(itertools.product((2, 3, 5, 8), (1, 7, 1000, 4099)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, V", CASES)
def test_float32_matches_definition(K, V, backend):
    index = CASES.index((K, V))
    G = (1, 3, 6)[index % 3]  # G = 1 splits the vocabulary over programs
    reduction = ("mean", "sum", "none")[index % 3]
    temperature = (1.0, 0.5, 2.0, 1.7)[index % 4]
    logits, valid = random_case(G, K, V, seed=index, masked=index % 2 == 0)
    check_against_definition(logits, valid, temperature, reduction, backend, tol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("K, V", [(3, 1000), (8, 4099)])
def test_half_precision_no_worse_than_reference(K, V, dtype, backend):
    """Error against float64 of the same rounded inputs: at most the reference's + 1e-2."""
    logits, valid = random_case(4, K, V, seed=K, dtype=dtype)
    grad_output = torch.tensor(1.9)
    want_loss, want_grad = loss_and_grad(
        lambda x: pairwise_definition(x, valid, 1.0, "mean"), logits.double(), grad_output.double()
    )
    loss, grad = loss_and_grad(lambda x: pairwise_sym_kl(x, valid, backend=backend), logits, grad_output)
    ref_loss, ref_grad = loss_and_grad(lambda x: pairwise_sym_kl_reference(x, valid), logits, grad_output)
    assert grad.dtype == dtype
    assert relative_error(loss, want_loss) <= relative_error(ref_loss, want_loss) + 1e-2
    assert relative_error(grad, want_grad) <= relative_error(ref_grad, want_grad) + 1e-2


@pytest.mark.parametrize("num_splits", (2, 3, 7))
def test_vocabulary_split_matches_unsplit(num_splits):
    logits, valid = random_case(3, 5, 4099, seed=11)
    want = pairwise_definition(logits, valid, 1.3, "none")
    got = PairwiseSymKLFunction.apply(logits, valid, 1.3, num_splits)
    assert relative_error(got, want) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("perturbation", (1e-2, 1e-3, 1e-4))
def test_near_identical_distributions(perturbation, backend):
    """K rows that differ by `perturbation`, plus a different constant shift per row (which
    cancels): the loss is tiny (down to 1e-10) and keeps its relative precision."""
    generator = torch.Generator().manual_seed(5)
    base = 8.0 * torch.randn(4, 1, 4099, generator=generator)
    shift = 30.0 * torch.randn(4, 4, 1, generator=generator)
    logits = base + shift + perturbation * torch.randn(4, 4, 4099, generator=generator)
    want = pairwise_definition(logits, None, 1.0, "none")
    got = pairwise_sym_kl(logits, backend=backend, reduction="none")
    assert want.min() > 0
    assert relative_error(got, want) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend):
    logits, valid = random_case(3, 4, 1000, seed=3, scale=1.0)
    logits = torch.where(logits > 0, 1e4, -1e4) * logits.abs().clamp(max=1.0)
    check_against_definition(logits, valid, 1.0, "mean", backend, tol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_minus_inf_columns_contribute_nothing(backend):
    """A padded vocabulary: -inf in every row of a group gives a finite loss equal to the loss
    without those columns, and exactly zero gradient there."""
    logits, valid = random_case(3, 4, 1000, seed=8)
    padded = torch.cat([logits, torch.full((3, 4, 37), -math.inf)], dim=-1)
    padded[:, :, 100:140] = -math.inf
    kept = torch.cat([logits[:, :, :100], logits[:, :, 140:]], dim=-1)
    grad_output = torch.tensor(0.7)
    loss, grad = loss_and_grad(lambda x: pairwise_sym_kl(x, valid, backend=backend), padded, grad_output)
    want, want_grad = loss_and_grad(
        lambda x: pairwise_definition(x, valid, 1.0, "mean"), kept.double(), grad_output.double()
    )
    assert torch.isfinite(loss)
    assert relative_error(loss, want) < 1e-4
    assert torch.equal(grad[:, :, 100:140], torch.zeros_like(grad[:, :, 100:140]))
    assert torch.equal(grad[:, :, 1000:], torch.zeros_like(grad[:, :, 1000:]))
    assert relative_error(torch.cat([grad[:, :, :100], grad[:, :, 140:1000]], -1), want_grad) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_with_fewer_than_two_valid_rows(backend):
    logits, _ = random_case(4, 3, 257, seed=2)
    valid = torch.tensor(
        [[True, True, True], [True, False, False], [False, False, False], [False, True, True]]
    )
    logits[~valid] = math.nan  # invalid rows are never read
    per_group = pairwise_sym_kl(logits, valid, reduction="none", backend=backend)
    assert per_group[1] == 0 and per_group[2] == 0
    mean = pairwise_sym_kl(logits, valid, backend=backend)
    assert torch.allclose(mean, (per_group[0] + per_group[3]) / 2, rtol=1e-6)
    check_against_definition(logits.nan_to_num(), valid, 1.0, "mean", backend, tol=1e-4)
    _, grad = loss_and_grad(lambda x: pairwise_sym_kl(x, valid, backend=backend), logits, torch.tensor(1.0))
    assert torch.equal(grad[1:3], torch.zeros_like(grad[1:3]))
    assert torch.equal(grad[3, ~valid[3]], torch.zeros_like(grad[3, ~valid[3]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_group_with_pairs_gives_zero(backend):
    logits, _ = random_case(2, 3, 50, seed=4)
    valid = torch.tensor([[True, False, False], [False, False, False]])
    loss, grad = loss_and_grad(
        lambda x: pairwise_sym_kl(x, valid, backend=backend), logits, torch.tensor(1.0)
    )
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_sixteen_rows_and_strided_input():
    base = 2.0 * torch.randn(3, 20, 300)
    logits = base[:, 2:18, :]  # K = 16, a view with non-default strides
    check_against_definition(logits, None, 1.0, "sum", "triton", tol=1e-4)


def test_reference_gradcheck():
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.autograd.gradcheck(lambda x: pairwise_sym_kl_reference(x, valid, 1.3, "none"), (logits,))


def test_public_names_and_module():
    logits, valid = random_case(3, 4, 100, seed=9)
    module = PairwiseSymKL(temperature=2.0, reduction="sum", backend="torch")
    assert mcckd.pairwise_sym_kl is pairwise_sym_kl and mcckd.PairwiseSymKL is PairwiseSymKL
    assert torch.allclose(
        module(logits, valid), pairwise_sym_kl(logits, valid, temperature=2.0, reduction="sum")
    )
    assert "temperature=2.0" in repr(module)


BAD_INPUTS = [
    (dict(logits=[[1.0]]), "logits must be a torch.Tensor"),
    (dict(logits=torch.randn(4, 8)), "logits must have 3 dimensions"),
    (dict(logits=torch.ones(2, 3, 4, dtype=torch.int64)), "logits must have dtype"),
    (dict(logits=torch.randn(2, 1, 4)), "K >= 2"),
    (dict(logits=torch.randn(2, 3, 0)), "vocabulary"),
    (dict(valid=torch.ones(2, 4, dtype=torch.bool)), r"valid must have shape \(2, 3\)"),
    (dict(valid=torch.ones(2, 3)), "valid must have dtype"),
    (dict(valid=torch.ones(2, 3, 1, dtype=torch.bool)), "valid must have 2 dimensions"),
    (dict(valid=torch.ones(2, 3, dtype=torch.bool, device="meta")), "valid must be on cpu"),
    (dict(temperature=0.0), "temperature must be finite and > 0"),
    (dict(temperature=-1.0), "temperature must be finite and > 0"),
    (dict(temperature=math.inf), "temperature must be finite and > 0"),
    (dict(temperature=math.nan), "temperature must be finite and > 0"),
    (dict(temperature="1"), "temperature must be a real number"),
    (dict(reduction="avg"), "reduction must be one of"),
    (dict(backend="cuda"), "backend must be one of"),
    (
        dict(logits=torch.randn(2, 3, 4, dtype=torch.float64), backend="triton"),
        "float64: use backend='torch'",
    ),
    (dict(logits=torch.randn(2, 17, 4), backend="triton"), "K <= 16"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_names_the_argument(overrides, message):
    args = dict(logits=torch.randn(2, 3, 4), valid=None, temperature=1.0, reduction="mean", backend="auto")
    args.update(overrides)
    logits, valid = args.pop("logits"), args.pop("valid")
    with pytest.raises(ValueError, match=message):
        pairwise_sym_kl(logits, valid, **args)


@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_many_groups_reduce_on_the_device(reduction):
    """More groups than one block of the reduction kernel, some without pairs."""
    logits, valid = random_case(700, 3, 7, seed=12)
    valid[5:40, 1:] = False
    check_against_definition(logits, valid, 1.0, reduction, "triton", tol=1e-4)


def test_per_group_losses_summed_by_the_caller():
    """reduction="none" followed by .sum(): autograd hands the kernel a stride-0 gradient."""
    logits, valid = random_case(5, 4, 300, seed=13)
    _, grad = loss_and_grad(lambda x: pairwise_sym_kl(x, valid, reduction="none", backend="triton").sum(),
                            logits, torch.tensor(2.0))
    _, want = loss_and_grad(
        lambda x: pairwise_definition(x, valid, 1.0, "sum"), logits.double(), torch.tensor(2.0).double()
    )
    assert relative_error(grad, want) < 1e-4


def one_hot_gradient(logits, valid, temperature, grad_output):
    """The exact gradient when every row's distribution is one-hot at its argmax a_i (logits
    whose top values lie far apart): dS/dy_i = k [v = a_i] - #{j: a_j = v}, times
    dLoss/dL_g / (k (k - 1) T), float64."""
    G, K, V = logits.shape
    grad = torch.zeros(G, K, V, dtype=torch.float64)
    for g in range(G):
        rows = [i for i in range(K) if valid[g, i]]
        k, argmax = len(rows), [int(logits[g, i].float().argmax()) for i in rows]
        for i, a in zip(rows, argmax):
            grad[g, i, a] += k
            for b in argmax:
                grad[g, i, b] -= 1
        grad[g] *= float(grad_output[g]) / (k * (k - 1) * temperature)
    return grad


@pytest.mark.parametrize("dtype, big", [(torch.bfloat16, 1e30), (torch.float32, 1e30), (torch.float16, 1e4)])
def test_torch_backend_gradient_of_one_hot_distributions(dtype, big):
    """Logits up to `big`: each distribution is one-hot, the KL huge, the gradient O(1) from
    terms of size |logit| that cancel; it is exact to the rounding of the output dtype (the
    float64 definition through autograd is not: it loses the gradient entirely here)."""
    gen = torch.Generator().manual_seed(31)
    magnitude = big * torch.rand(3, 4, 8269, generator=gen) ** 4
    logits = (magnitude * torch.randn(3, 4, 8269, generator=gen)).to(dtype)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2, 1] = False
    grad_output = torch.tensor([0.7, -1.3, 2.1])
    kl = functools.partial(pairwise_sym_kl, valid=valid, temperature=1.3, reduction="none", backend="torch")
    _, grad = loss_and_grad(kl, logits, grad_output)
    want = one_hot_gradient(logits, valid, 1.3, grad_output)
    rounding = relative_error(want.to(dtype), want)
    for g in range(3):
        assert relative_error(grad[g], want[g]) <= rounding + 1e-6
