"""fused_linear_mcc_loss against the materialised float64 reference, both backends (Triton
through the interpreter), its input validation, and its memory on the CPU path."""
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import rounded_to
from helpers import run_fused as run

from mcckd.ops import MCCKDLoss, fused_linear_mcc_loss, fused_linear_mcc_reference
from mcckd.ops.linear_mcc_kernels import _auto_chunk_size

BACKENDS = ("torch", "triton")


def make_inputs(N=37, d=16, V=301, G=4, K=3, *, bias=True, ignored=0.3, ignore_index=-100, seed=0):
    """float64 inputs with logits of std ~3, ignored targets, missing and masked answer rows.

    Group 1 misses one row, group 2 keeps a single valid row (excluded from the KL mean),
    group 0 has one row masked by answer_valid; positions may repeat across groups.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[torch.rand(N, generator=gen) < ignored] = ignore_index
    answer_index = torch.randint(0, N, (G, K), generator=gen)
    answer_index[1, -1] = -1
    answer_index[2, 1:] = -1
    answer_valid = torch.ones(G, K, dtype=torch.bool)
    answer_valid[0, 0] = False
    return dict(
        hidden=torch.randn(N, d, generator=gen, dtype=torch.float64),
        weight=torch.randn(V, d, generator=gen, dtype=torch.float64) * (3 / d**0.5),
        bias=torch.randn(V, generator=gen, dtype=torch.float64) if bias else None,
        labels=labels, answer_index=answer_index, answer_valid=answer_valid,
    )


def truth(inputs, dtype, **kwargs):
    """The float64 reference on the inputs as rounded to dtype."""
    return run(fused_linear_mcc_reference, rounded_to(inputs, dtype), torch.float64, **kwargs)


SCENARIOS = {
    "chunks_bias_temperature": (dict(), dict(alpha=0.3, temperature=1.5, chunk_size=8)),
    "auto_chunk_no_bias": (dict(bias=False), dict()),
    "all_labels_ignored": (dict(ignored=1.0), dict(chunk_size=16)),
    "alpha_zero": (dict(), dict(alpha=0.0, chunk_size=10)),
    "pad_id_as_ignore_index": (dict(ignore_index=0), dict(ignore_index=0, chunk_size=12)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_matches_float64_reference(scenario, backend):
    input_args, loss_args = SCENARIOS[scenario]
    inputs = make_inputs(**input_args)
    got = run(fused_linear_mcc_loss, inputs, torch.float32, backend=backend, **loss_args)
    expected = truth(inputs, torch.float32, **{k: v for k, v in loss_args.items() if k != "chunk_size"})
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_all_labels_ignored_gives_zero_ce_and_finite_gradients():
    inputs = make_inputs(ignored=1.0)
    _, ce, kl, *grads = run(fused_linear_mcc_loss, inputs, torch.float32, chunk_size=16, backend="triton")
    assert ce.item() == 0.0 and kl.item() > 0.0
    assert all(torch.isfinite(g).all() for g in grads)
    # Only the answer rows carry a gradient to hidden: the KL's.
    rows = inputs["answer_index"].clamp(min=0).unique()
    others = torch.ones(len(inputs["labels"]), dtype=torch.bool)
    others[rows] = False
    assert grads[0][others].abs().max() == 0.0 and grads[0][rows].abs().max() > 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_answer_groups_gives_zero_kl_and_the_ce_gradients(backend):
    """answer_index [0, K]: kl = 0 and loss, ce and every gradient those of the CE alone."""
    inputs = make_inputs()
    inputs["answer_index"] = torch.zeros(0, 3, dtype=torch.long)
    inputs["answer_valid"] = None
    got = run(fused_linear_mcc_loss, inputs, torch.float32, alpha=0.5, chunk_size=8, backend=backend)
    expected = truth(inputs | {"answer_index": torch.tensor([[0, -1, -1]])}, torch.float32, alpha=0.5)
    assert got[2].item() == 0.0
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def loss_and_hidden_grad(fn, inputs, dtype, **kwargs):
    """(output, d loss / d hidden) with weight and bias frozen, in float64."""
    hidden = inputs["hidden"].to(dtype).requires_grad_()
    cast = {k: inputs[k].to(dtype) for k in ("weight", "bias")}
    out = fn(
        hidden,
        cast["weight"],
        inputs["labels"],
        inputs["answer_index"],
        answer_valid=inputs["answer_valid"],
        bias=cast["bias"],
        **kwargs,
    )
    return [o.detach().double() for o in out], torch.autograd.grad(out[0], hidden)[0].double()


def test_alpha_zero_loss_is_ce_and_kl_is_still_reported():
    inputs = make_inputs()
    (loss, ce, kl), grad = loss_and_hidden_grad(
        fused_linear_mcc_loss, inputs, torch.float64, alpha=0.0, backend="torch"
    )
    assert loss == ce and kl > 0
    _, ref_ce_grad = loss_and_hidden_grad(fused_linear_mcc_reference, inputs, torch.float64, alpha=0.0)
    torch.testing.assert_close(grad, ref_ce_grad, rtol=1e-10, atol=1e-13)


def test_float64_torch_backend_is_exact():
    inputs = make_inputs()
    got = run(fused_linear_mcc_loss, inputs, torch.float64, alpha=0.2, chunk_size=5, backend="torch")
    expected = truth(inputs, torch.float64, alpha=0.2)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bf16", "fp16"))
def test_low_precision_no_worse_than_reference_in_same_dtype(dtype, backend):
    """Error against float64 truth <= the materialised reference's own error in dtype + 1e-4 max|truth|."""
    inputs = make_inputs(N=45, d=32, V=509)
    got = run(fused_linear_mcc_loss, inputs, dtype, chunk_size=16, backend=backend)
    baseline = run(fused_linear_mcc_reference, inputs, dtype)
    exact = truth(inputs, dtype)
    for name, g, b, e in zip(("loss", "ce", "kl", "hidden", "weight", "bias"), got, baseline, exact):
        ours, reference = (g - e).abs().max().item(), (b - e).abs().max().item()
        assert ours <= reference + 1e-4 * e.abs().max().item(), (
            f"{name}: error {ours:.3g} vs reference {reference:.3g}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_weight_and_no_grad(backend):
    inputs = make_inputs()
    _, grad = loss_and_hidden_grad(
        fused_linear_mcc_loss, inputs, torch.float32, chunk_size=8, backend=backend
    )
    rounded = rounded_to(inputs, torch.float32)
    (_, ref_ce, _), ref_grad = loss_and_hidden_grad(fused_linear_mcc_reference, rounded, torch.float64)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        values = fused_linear_mcc_loss(inputs["hidden"].float(), inputs["weight"].float(), inputs["labels"],
                                       inputs["answer_index"], answer_valid=inputs["answer_valid"],
                                       bias=inputs["bias"].float(), backend=backend)
    assert not values.loss.requires_grad
    torch.testing.assert_close(values.ce.double(), ref_ce, rtol=1e-5, atol=0)


def test_second_backward_through_same_graph_raises():
    inputs = make_inputs()
    hidden = inputs["hidden"].float().requires_grad_()
    out = fused_linear_mcc_loss(
        hidden, inputs["weight"].float(), inputs["labels"], inputs["answer_index"], backend="torch"
    )
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        out.loss.backward()


def test_module_flattens_leading_dimensions():
    inputs = make_inputs(N=36)
    hidden, weight = inputs["hidden"].float(), inputs["weight"].float()
    module = MCCKDLoss(alpha=0.2, temperature=2.0, chunk_size=7, backend="torch")
    got = module(hidden.view(4, 9, -1), weight, inputs["labels"].view(4, 9), inputs["answer_index"])
    expected = fused_linear_mcc_loss(hidden, weight, inputs["labels"], inputs["answer_index"], alpha=0.2,
                                     temperature=2.0, backend="torch")
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    with pytest.raises(ValueError, match="^labels"):
        module(hidden.view(4, 9, -1), weight, inputs["labels"], inputs["answer_index"])
    with pytest.raises(ValueError, match="^alpha"):
        MCCKDLoss(alpha=-0.1)


@pytest.mark.parametrize("N, V, dtype, device", [
    (16384, 128256, torch.bfloat16, "cuda"), (16384, 1 << 20, torch.bfloat16, "cuda"),
    (300, 128256, torch.bfloat16, "cuda"), (4096, 32000, torch.float32, "cpu"),
    (5, 32000, torch.float32, "cpu"),
])
def test_auto_chunk_size_fills_budget_but_keeps_gemms_large(N, V, dtype, device):
    """Equal chunks that cover N, each within the memory budget of its float32 tile and gradient,
    and no smaller than the floor that keeps the GEMMs efficient (unless N itself is)."""
    from mcckd.ops import linear_mcc_kernels as linear_mcc

    chunk = _auto_chunk_size(N, V, dtype, torch.device(device))
    chunks = -(-N // chunk)
    assert (chunk - 1) * chunks < N <= chunk * chunks  # equal chunks: none trails far behind
    budget, floor = ((linear_mcc._CUDA_CHUNK_BUDGET, linear_mcc._CUDA_MIN_CHUNK) if device == "cuda"
                     else (linear_mcc._CPU_CHUNK_BUDGET, linear_mcc._CPU_MIN_CHUNK))
    row_bytes = V * (4 + (dtype.itemsize if dtype != torch.float32 else 0))
    assert chunk >= min(N, floor)
    assert chunk * row_bytes <= budget or chunk <= floor


def _bad_input_cases():
    """(id, change to the arguments, argument named by the error)."""
    yield "hidden_not_tensor", lambda a: a.update(hidden=[[0.0]]), "hidden"
    yield "hidden_rank", lambda a: a.update(hidden=a["hidden"][None]), "hidden"
    yield "hidden_dtype", lambda a: a.update(hidden=a["hidden"].long()), "hidden"
    yield "hidden_empty", lambda a: a.update(hidden=a["hidden"][:0]), "hidden"
    yield "weight_d", lambda a: a.update(weight=a["weight"][:, :-1]), "weight"
    yield "weight_dtype", lambda a: a.update(weight=a["weight"].double()), "weight"
    yield "labels_length", lambda a: a.update(labels=a["labels"][:-1]), "labels"
    yield "labels_dtype", lambda a: a.update(labels=a["labels"].float()), "labels"
    yield "labels_device", lambda a: a.update(labels=a["labels"].to("meta")), "labels"
    yield "labels_too_large", lambda a: a["labels"].__setitem__(3, a["weight"].shape[0]), "labels"
    yield "labels_negative", lambda a: a["labels"].__setitem__(3, -1), "labels"
    yield "answer_index_rank", lambda a: a.update(answer_index=a["answer_index"][0]), "answer_index"
    yield "answer_index_k1", lambda a: a.update(answer_index=a["answer_index"][:, :1]), "answer_index"
    yield "answer_index_dtype", lambda a: a.update(answer_index=a["answer_index"].float()), "answer_index"
    yield (
        "answer_index_too_large",
        lambda a: a["answer_index"].__setitem__((0, 1), a["hidden"].shape[0]),
        "answer_index",
    )
    yield "answer_index_below_minus_one", lambda a: a["answer_index"].__setitem__((0, 1), -2), "answer_index"
    yield "answer_index_k_triton", lambda a: a.update(answer_index=torch.zeros(2, 17, dtype=torch.long),
                                                      answer_valid=None, backend="triton"), "answer_index"
    yield "answer_valid_shape", lambda a: a.update(answer_valid=a["answer_valid"][:, :2]), "answer_valid"
    yield "answer_valid_dtype", lambda a: a.update(answer_valid=a["answer_valid"].long()), "answer_valid"
    yield "bias_shape", lambda a: a.update(bias=a["bias"][:-1]), "bias"
    yield "bias_dtype", lambda a: a.update(bias=a["bias"].double()), "bias"
    yield "alpha_negative", lambda a: a.update(alpha=-0.1), "alpha"
    yield "alpha_nan", lambda a: a.update(alpha=float("nan")), "alpha"
    yield "temperature_zero", lambda a: a.update(temperature=0.0), "temperature"
    yield "temperature_inf", lambda a: a.update(temperature=float("inf")), "temperature"
    yield "ignore_index_float", lambda a: a.update(ignore_index=-100.0), "ignore_index"
    yield "chunk_size_zero", lambda a: a.update(chunk_size=0), "chunk_size"
    yield "backend_unknown", lambda a: a.update(backend="cuda"), "backend"
    yield "triton_float64", lambda a: a.update(hidden=a["hidden"].double(), weight=a["weight"].double(),
                                               bias=None, backend="triton"), "hidden"


BAD_INPUTS = list(_bad_input_cases())


@pytest.mark.parametrize("change, argument", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_value_error_naming_it(change, argument):
    inputs = make_inputs()
    args = dict(
        hidden=inputs["hidden"].float(),
        weight=inputs["weight"].float(),
        labels=inputs["labels"].clone(),
        answer_index=inputs["answer_index"].clone(),
        answer_valid=inputs["answer_valid"],
        bias=inputs["bias"].float(),
        backend="torch",
    )
    change(args)
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        fused_linear_mcc_loss(
            args.pop("hidden"), args.pop("weight"), args.pop("labels"), args.pop("answer_index"), **args
        )


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from mcckd.ops import fused_linear_mcc_loss

    def inputs(N, d, V, G=16, K=4):
        gen = torch.Generator().manual_seed(0)
        return (torch.randn(N, d, generator=gen).requires_grad_(),
                torch.randn(V, d, generator=gen).mul_(0.05).requires_grad_(),
                torch.randint(0, V, (N,), generator=gen), torch.randint(0, N, (G, K), generator=gen))

    def step(hidden, weight, labels, answer_index):
        fused_linear_mcc_loss(hidden, weight, labels, answer_index, backend="torch").loss.backward()

    step(*inputs(64, 8, 128))  # imports and first-call set-up, at a negligible size
    args = inputs(int(sys.argv[1]), 256, 32000)
    with open("/proc/self/statm") as f:
        rss_before_kib = int(f.read().split()[1]) * resource.getpagesize() // 1024
    step(*args)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib)
""")


def peak_extra_mib(N):
    """Peak resident memory of one fwd+bwd (d=256, V=32000, fp32) above that before it, in MiB."""
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(N)], capture_output=True, text=True, check=True
    )
    return int(result.stdout.split()[-1]) / 1024


def test_memory_does_not_grow_with_n_times_v():
    small, large = peak_extra_mib(4096), peak_extra_mib(16384)
    logits_growth = (16384 - 4096) * 32000 * 4 / 2**20  # one [N, V] float32 tensor: 1500 MiB
    assert large - small < logits_growth / 10, f"peak extra {small:.0f} -> {large:.0f} MiB"
