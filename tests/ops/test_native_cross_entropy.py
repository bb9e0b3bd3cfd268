"""The native cross-entropy rows (kernels/cpu/cross_entropy.cpp) against float64 log-softmax:
vocabularies over several tiles, bias in another dtype, ignored rows, int32 labels, strided
views written in place, -inf and NaN. (test_linear_mcc.py runs the fused op on native too.)"""
import math

import pytest
import torch

from mcckd.ops.cross_entropy_native import cross_entropy_rows_native

TILE = 1024


def expected(logits, bias, labels, ignore_index):
    """(loss [C], softmax - onehot [C, V]) in float64, 0 on ignored rows."""
    z = logits.double() + (bias.double() if bias is not None else 0.0)
    ignored = labels == ignore_index
    targets = torch.where(ignored, 0, labels).long()
    log_p = torch.log_softmax(z, dim=1)
    loss = torch.where(ignored, 0.0, -log_p.gather(1, targets[:, None]).squeeze(1))
    grad = log_p.exp() - torch.nn.functional.one_hot(targets, z.shape[1]).double()
    return loss, torch.where(ignored[:, None], 0.0, grad)


def case(C, V, seed, dtype=torch.float32, ignore_index=-100):
    generator = torch.Generator().manual_seed(seed)
    logits = (4.0 * torch.randn(C, V, generator=generator)).to(dtype)
    labels = torch.randint(0, V, (C,), generator=generator)
    labels[torch.rand(C, generator=generator) < 0.3] = ignore_index
    return logits, labels


def run(logits, bias, labels, ignore_index=-100, grad=True):
    loss = torch.empty(logits.shape[0], dtype=logits.dtype)
    cross_entropy_rows_native(logits, bias, labels, ignore_index, loss, logits if grad else None)
    return loss


@pytest.mark.parametrize("V", (1, 7, TILE, 2 * TILE + 300))
@pytest.mark.parametrize("bias_dtype", (None, torch.float32, torch.bfloat16), ids=("no_bias", "fp32", "bf16"))
def test_rows_match_float64(V, bias_dtype):
    logits, labels = case(9, V, seed=V)
    bias = None if bias_dtype is None else torch.randn(V).to(bias_dtype)
    want_loss, want_grad = expected(logits, bias, labels, -100)
    loss = run(logits, bias, labels.to(torch.int32))
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.double(), want_grad, rtol=1e-5, atol=1e-7)


def test_float64_is_exact_and_ignore_index_may_be_a_token():
    logits, labels = case(6, 3000, seed=1, dtype=torch.float64, ignore_index=0)
    bias = torch.randn(3000, dtype=torch.float64)
    want_loss, want_grad = expected(logits, bias, labels, 0)
    loss = run(logits, bias, labels, ignore_index=0)
    torch.testing.assert_close(loss, want_loss, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(logits, want_grad, rtol=1e-12, atol=1e-14)
    assert (labels == 0).any() and not logits[labels == 0].any()


def test_strided_view_is_written_in_place_and_nothing_else():
    buffer = torch.randn(5, 2 * 1500 + 1)
    logits = buffer[:, 1::2]
    assert logits.stride(1) == 2
    labels = torch.tensor([3, -100, 1499, 0, 700])
    untouched = buffer[:, 0::2].clone()
    want_loss, want_grad = expected(logits, None, labels, -100)
    loss = run(logits, None, labels)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(buffer[:, 1::2].double(), want_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(buffer[:, 0::2], untouched)


def test_loss_only_leaves_the_logits():
    logits, labels = case(4, 2000, seed=2)
    before = logits.clone()
    loss = run(logits, None, labels, grad=False)
    torch.testing.assert_close(loss.double(), expected(before, None, labels, -100)[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(logits, before)


def test_minus_inf_and_nan():
    logits, _ = case(4, 1500, seed=3)
    labels = torch.tensor([10, 20, 30, 40])
    logits[0, 1200:] = -math.inf  # a padded vocabulary: probability 0
    logits[1, 20] = -math.inf  # the target is impossible: infinite loss
    logits[2, 5] = math.nan
    logits[3, :] = -math.inf  # no distribution at all
    want_loss, want_grad = expected(logits[:1], None, labels[:1], -100)
    loss = run(logits, None, labels)
    torch.testing.assert_close(loss[:1].double(), want_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits[0].double(), want_grad[0], rtol=1e-5, atol=1e-7)
    assert not logits[0, 1200:].any()
    assert loss[1] == math.inf and logits[1, 20] == -1.0 and torch.isfinite(logits[1]).all()
    assert loss[2:].isnan().all() and logits[2:].isnan().all()


def test_label_out_of_range_is_refused():
    logits, _ = case(2, 10, seed=4)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 10\)"):
        run(logits, None, torch.tensor([3, 10]))
