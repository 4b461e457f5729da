"""The engine: the hook coverage (which parameters the hooks handle), hooks against torch.func, layer rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from art_fisher.metrics._basis import make_basis
from art_fisher.metrics._engine import _chunking as chunking
from art_fisher.metrics._engine._grams import directional, func_grams, tensor_grams
from art_fisher.metrics._engine._layers import RULES, Conv2dRule, LinearRule
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import find_coverage, recording
from tests.art_fisher.metrics_cases import EXACT_CASES, make_case


def _net(model):
    return FunctionalNet(model, [n for n, _ in model.named_parameters()], "logits")


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", EXACT_CASES)
def test_hook_engine_matches_func_engine(name):
    model, x = make_case(name)
    net = _net(model)
    coverage = find_coverage(net, x)
    z1, k1, _w = tensor_grams(net, coverage, x, chunk_size=3)
    z2, k2, _w = tensor_grams(net, coverage.without_hooks(), x)
    assert torch.allclose(z1, z2, rtol=0, atol=1e-13)
    assert rel(k1, k2) < 1e-12
    basis = make_basis("all")
    _z, d, _w = tensor_grams(net, coverage, x, basis=basis, diagonal=True)
    _z, full, _w = tensor_grams(net, coverage.without_hooks(), x, basis=basis)
    assert rel(d, full.diagonal(dim1=-2, dim2=-1)) < 1e-12
    torch.manual_seed(0)
    v = {n: torch.randn_like(p) for n, p in net.base.items()}
    for kwargs in ({"coefficients": lambda z, _y: torch.softmax(z, -1) - 0.25}, {"v": v}):
        t1 = directional(net, coverage, x, basis=basis, **kwargs)[1]
        t2 = directional(net, coverage.without_hooks(), x, basis=basis, **kwargs)[1]
        assert rel(t1, t2) < 1e-12


def test_plan_sends_tied_reused_and_unknown_parameters_to_func():
    expected_rest = {
        "shared": {"shared.weight", "shared.bias"},  # one module called twice
        "unknown_module": {"3.scale"},  # no rule for the module type
        "tied_head": {"mid.weight"},  # used by its module and again by F.linear
        "transposed_tie": {"enc.weight", "bias"},  # used transposed as the head; a bare parameter
        "weight_in_function": {"inp.weight"},  # read again inside a custom function
        "cnn": set(),
        "inplace_cnn": set(),
    }
    for name, rest in expected_rest.items():
        model, x = make_case(name)
        coverage = find_coverage(_net(model), x)
        assert set(coverage.rest) == rest, name
        assert set(coverage.covered) == {n for n, _ in model.named_parameters()} - rest, name
    tied = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    tied[2].weight = tied[0].weight  # one Parameter in two modules
    coverage = find_coverage(_net(tied), torch.randn(2, 3, dtype=torch.float64))
    assert "0.weight" in coverage.rest and "2.bias" in coverage.covered


def test_plan_skips_modules_with_user_hooks():
    model, x = make_case("mlp")
    model[0].register_forward_hook(lambda _m, _i, o: 2 * o)
    coverage = find_coverage(_net(model), x)
    assert set(coverage.rest) == {"0.weight", "0.bias"}


def test_recorder_keeps_the_output_edge_before_in_place_operations():
    model, x = make_case("inplace_cnn")
    with recording({"1": model[1]}) as records:
        z = model(x.clone().requires_grad_(True))
    _a, out, edge = records["1"][0]
    (at_edge,) = torch.autograd.grad(z[:, 0].sum(), edge, retain_graph=True)
    (at_tensor,) = torch.autograd.grad(z[:, 0].sum(), out)  # the tensor the in-place ReLU rewrote
    # the same network without in-place ReLUs: the gradient at the BatchNorm's own output
    for m in model:
        if isinstance(m, nn.ReLU):
            m.inplace = False
    with recording({"1": model[1]}) as records:
        z = model(x.clone().requires_grad_(True))
    (want,) = torch.autograd.grad(z[:, 0].sum(), records["1"][0][1])
    assert rel(at_edge, want) < 1e-12
    assert rel(at_tensor, want) > 1e-3


def test_chunk_policy():
    assert chunking.by_budget(10, 100) == 10
    assert chunking.by_budget(10**9, 100) == 1
    assert chunking.by_budget(1, 10**9) == chunking.MAX_CHUNK
    assert chunking.by_budget(1, 10**9, chunk_size=7) == 7
    assert [(s.start, s.stop) for s in chunking.chunks(5, 2)] == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.parametrize("route", ["materialised", "ghost"])
def test_conv_and_sequence_linear_rules(route):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1).double()
    lin = nn.Linear(4, 5).double()
    x4 = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    x3 = torch.randn(3, 6, 4, dtype=torch.float64)
    for module, x, rule_cls in ((conv, x4, Conv2dRule), (lin, x3, LinearRule)):
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
        rule = rule_cls(module, records["a"].detach())
        for j, role in enumerate(("weight", "bias")):
            for diagonal in (False, True):
                got = getattr(rule, f"{route}_gram")(b, role, diagonal)
                want = ref[:, j].diagonal(dim1=-2, dim2=-1) if diagonal else ref[:, j]
                assert rel(got, want) < 1e-12
            # the flattened per-column gradients, where the rule chooses them, give the same per-sample gradients
            flat_grad = rule.flat_grad_fn(role, 4)
            if flat_grad is not None:
                g = torch.stack([flat_grad(b[:, c]) for c in range(4)], dim=1)
                assert rel(g @ g.transpose(1, 2), ref[:, j]) < 1e-12


@pytest.mark.parametrize(("tokens", "width_in", "width_out", "ghost"), [(2, 16, 16, True), (20, 3, 4, False)])
def test_sequence_linear_squared_norms_on_either_route(tokens, width_in, width_out, ghost):
    """``sq_norm`` of a Linear over tokens: ghost form (token Gram) or per-sample gradients, by multiply-adds."""
    torch.manual_seed(tokens)
    lin = nn.Linear(width_in, width_out).double()
    a = torch.randn(3, tokens, width_in, dtype=torch.float64)
    b = torch.randn(3, tokens, width_out, dtype=torch.float64)
    rule = LinearRule(lin, a)
    assert rule.materialise_cheaper(9, width_out, diagonal=True) is not ghost
    for role in ("weight", "bias"):
        want = rule.grad(b, role).flatten(1).pow(2).sum(1)
        assert rel(rule.sq_norm(b, role, 9), want) < 1e-12


def test_every_rule_gives_output_changes_that_match_a_jvp():
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    layers = [
        (nn.Linear(4, 3).double(), torch.randn(5, 4, dtype=torch.float64)),
        (nn.Linear(4, 3).double(), torch.randn(5, 2, 4, dtype=torch.float64)),
        (nn.Conv2d(2, 3, 3, padding=1, stride=2).double(), torch.randn(5, 2, 6, 6, dtype=torch.float64)),
        (bn, torch.randn(5, 3, 4, 4, dtype=torch.float64)),
    ]
    for module, a in layers:
        rule_cls = next(r for r in RULES if r.supports(module, a, module(a)))
        rule = rule_cls(module, a)
        for role in rule.roles:
            p = getattr(module, role)
            d = torch.randn_like(p)

            def f(w, role=role):
                return torch.func.functional_call(module, {role: w}, (a,))

            _o, want = torch.func.jvp(f, (p.detach(),), (d,))
            assert rel(rule.change(role, d, shared=True).expand_as(want), want) < 1e-12
            per_sample = d.expand(a.shape[0], *d.shape)
            assert rel(rule.change(role, per_sample, shared=False).expand_as(want), want) < 1e-12
            # per-sample gradient of <b, o> against torch.func
            b = torch.randn_like(want)
            ref = torch.func.vmap(
                torch.func.grad(
                    lambda w, ai, bi, role=role: (
                        torch.func.functional_call(module, {role: w}, (ai[None],))[0] * bi
                    ).sum()
                ),
                in_dims=(None, 0, 0),
            )(p.detach(), a, b)
            assert rel(rule.grad(b, role), ref) < 1e-12


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "kernel", "size"),
    [
        (1, 0, 1, 3, (9, 8)),
        (2, 1, 1, 3, (9, 8)),
        (1, (2, 1), 2, (3, 2), (9, 8)),
        (3, 0, 1, 2, (9, 8)),
        (1, 3, 1, 7, (2, 2)),  # a map narrower than the kernel: the positions-first copy
        (2, 1, 1, 3, (3, 4)),
    ],
)
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_patches_equal_unfold(stride, padding, dilation, kernel, size, groups):
    conv = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups).double()
    a = torch.randn(3, 4, size[1], size[0], dtype=torch.float64).transpose(2, 3)  # a non-contiguous input
    want = torch.nn.functional.unfold(a, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    rule = Conv2dRule(conv, a)
    assert torch.equal(rule.unfolded, want)
    assert torch.equal(rule.group_unfolded, want.reshape(3 * groups, 4 // groups * want.shape[1] // 4, -1))


@pytest.mark.parametrize(
    ("conv", "grouped"),
    [
        (nn.Conv2d(1, 8, 5), False),  # a grayscale image's first layer: one wide matrix product per sample
        (nn.Conv2d(3, 8, 3), False),
        (nn.Conv2d(6, 6, 3, groups=6), True),  # depthwise: per-group products too narrow
        (nn.Conv2d(6, 12, 3, groups=6), True),
        (nn.Conv2d(6, 6, 3, groups=3), False),
    ],
)
def test_grouped_convolution_route_only_for_depthwise_layers(conv: nn.Conv2d, grouped: bool) -> None:
    a = torch.randn(2, conv.in_channels, 12, 12)
    assert Conv2dRule(conv, a).by_convolution is grouped
