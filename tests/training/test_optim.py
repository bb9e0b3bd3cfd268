"""The optimizer: AdamW with decay on matrices only, fused where the parameters allow it."""
from types import SimpleNamespace

import torch

from mcckd.training.optim import build_optimizer

CFG = SimpleNamespace(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)


def test_matrices_decay_and_vectors_do_not():
    model = torch.nn.Linear(3, 2)
    groups = build_optimizer(model, CFG).param_groups
    assert [(g["weight_decay"], [p.shape for p in g["params"]]) for g in groups] == [
        (0.1, [torch.Size([2, 3])]), (0.0, [torch.Size([2])])]


def test_cpu_parameters_take_the_fused_kernel_and_its_step_is_adamw():
    torch.manual_seed(0)
    fused, plain = torch.nn.Linear(4, 3).double(), torch.nn.Linear(4, 3).double()
    plain.load_state_dict(fused.state_dict())
    start = fused.weight.detach().clone()
    optimizer = build_optimizer(fused, CFG)
    assert optimizer.defaults["fused"] is True
    reference = torch.optim.AdamW([{"params": [plain.weight], "weight_decay": 0.1},
                                   {"params": [plain.bias], "weight_decay": 0.0}],
                                  lr=1e-2, betas=(0.9, 0.95), foreach=False)
    x = torch.randn(5, 4, dtype=torch.float64)
    for _ in range(3):
        for model, opt in ((fused, optimizer), (plain, reference)):
            opt.zero_grad()
            (model(x) ** 2).sum().backward()
            opt.step()
    for ours, theirs in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fused.weight, start)


def test_parameters_the_fused_kernel_cannot_step_take_the_default():
    model = torch.nn.Linear(3, 2, device="meta")
    assert build_optimizer(model, CFG).defaults["fused"] is None
