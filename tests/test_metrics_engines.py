"""The hook-based Gram engine against the torch.func engine, branch by branch."""

from __future__ import annotations

import pytest
import torch
from tests.metrics_cases import EXACT_CASES, make_case
from torch import nn

from art_fisher import _layer_grams
from art_fisher._functional import FunctionalNet
from art_fisher._gram import block_grams, func_grams


def _net(model):
    return FunctionalNet(model, [n for n, _ in model.named_parameters()], "logits")


@pytest.mark.parametrize("name", EXACT_CASES)
def test_auto_engine_matches_func_engine(name):
    model, x = make_case(name)
    net = _net(model)
    z1, k1 = block_grams(net, x, 4, engine="auto")
    z2, k2 = block_grams(net, x, 4, engine="func")
    assert torch.allclose(z1, z2, rtol=0, atol=1e-13)
    assert float((k1 - k2).abs().max() / k2.abs().max()) < 1e-12


def test_plan_sends_shared_and_unknown_parameters_to_func():
    shared, _ = make_case("shared")
    covered, rest = _layer_grams.plan(_net(shared))
    assert "shared.weight" in covered  # registered once, but called twice: found out at run time
    _z, blocks, uncovered = _layer_grams.hook_grams(_net(shared), make_case("shared")[1], covered)
    assert set(uncovered) == {"shared.weight", "shared.bias"} and "inp.weight" in blocks
    unknown, _ = make_case("unknown_module")
    covered, rest = _layer_grams.plan(_net(unknown))
    assert rest == ["3.scale"]
    tied = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    tied[2].weight = tied[0].weight
    covered, rest = _layer_grams.plan(_net(tied))
    assert "0.weight" in rest


@pytest.mark.parametrize("mode", ["materialise", "ghost"])
def test_conv_and_sequence_linear_branches(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1).double()
    lin = nn.Linear(4, 5).double()
    x4 = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    x3 = torch.randn(3, 6, 4, dtype=torch.float64)
    for module, x in ((conv, x4), (lin, x3)):
        model = nn.Sequential(module, nn.Flatten(), nn.LazyLinear(4)).double()
        model(x)  # materialise the lazy layer
        model.eval()
        net = FunctionalNet(model, ["0.weight", "0.bias"], "logits")
        _z, ref = func_grams(net, x, net.names)
        records = {}
        handle = module.register_forward_hook(lambda _m, i, o: records.update(a=i[0], o=o))
        xr = x.clone().requires_grad_(True)
        z = model(xr)
        handle.remove()
        b = torch.stack(
            [torch.autograd.grad(z[:, c].sum(), records["o"], retain_graph=True)[0] for c in range(4)], dim=1
        )
        want = {"weight", "bias"}
        if module is conv:
            got = _layer_grams._conv_blocks(conv, records["a"].detach(), b, want, mode)
        else:
            got = _layer_grams._linear_blocks(records["a"].detach(), b, want, mode)
        for j, kind in enumerate(("weight", "bias")):
            assert float((got[kind] - ref[:, j]).abs().max() / ref[:, j].abs().max()) < 1e-12
