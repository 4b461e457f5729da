"""The sensitivity's paths (first order, second order, torch.func) and the piecewise-linearity test."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_fisher import (
    fisher_quadratic_form,
    fisher_sensitivity,
    fisher_trace,
)
from art_fisher.metrics import _sensitivity as sens
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import find_coverage
from art_fisher.models._architectures import CifarCNN, SmallCNN
from tests.art_fisher.metrics_cases import make_case

TOL = 1e-8


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _judge(model: nn.Module, x: torch.Tensor, output: str = "logits") -> bool:
    net = FunctionalNet(model, [n for n, _ in model.named_parameters()], output)
    return sens.is_piecewise_linear(find_coverage(net, x).probe)


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.lin(x))


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


PIECEWISE = {
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "hardtanh": F.hardtanh,
    "residual_add": lambda h: h + torch.relu(h),
    "scale_by_constant": lambda h: 3.0 * h / 2.0,
    "max_pool": lambda h: F.max_pool1d(h.unsqueeze(1), 2).flatten(1),
    "avg_pool_cat": lambda h: torch.cat([F.avg_pool1d(h.unsqueeze(1), 2).flatten(1), h.abs()], 1),
    "clamp": lambda h: h.clamp(-0.5, 0.5),
}


SMOOTH = {
    "tanh": torch.tanh,
    "product_of_activations": lambda h: h * torch.relu(h),
    "softmax": lambda h: torch.log_softmax(h, -1),
    "division_by_activation": lambda h: h / (1 + h.abs()),
    "layer_norm": lambda h: F.layer_norm(h, (4,)),
    "batch_statistics": lambda h: F.batch_norm(
        h.unsqueeze(-1) * torch.tensor([1.0, -2.0]), None, None, training=True
    ).flatten(1),
    "custom_function": Square.apply,
}


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_piecewise_linear_operations_are_recognised(name):
    assert _judge(Lambda(PIECEWISE[name]).eval(), torch.randn(3, 4))


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_anything_else_is_not(name):
    assert not _judge(Lambda(SMOOTH[name]).eval(), torch.randn(3, 4))


def test_project_models_and_test_cases():
    assert _judge(SmallCNN(1, 10, width=4).eval(), torch.rand(2, 1, 8, 8))
    assert _judge(CifarCNN(3, 10).eval(), torch.rand(2, 3, 16, 16))
    for name, expected in [
        ("mlp", True),
        ("cnn", True),
        ("inplace_cnn", True),
        ("tanh", False),
        ("residual", False),
        ("shared", False),
        ("silu", False),
    ]:
        model, x = make_case(name)
        assert _judge(model, x) is expected, name


HEADS = {
    "F.log_softmax": (lambda z: F.log_softmax(z, dim=1), "log_probs"),
    "torch.log_softmax": (lambda z: torch.log_softmax(z, -1), "log_probs"),
    "Tensor.log_softmax": (lambda z: z.log_softmax(1), "log_probs"),
    "nn.LogSoftmax": (nn.LogSoftmax(dim=1), "log_probs"),
    "F.softmax": (lambda z: F.softmax(z, dim=-1), "probs"),
    "nn.Softmax": (nn.Softmax(dim=1), "probs"),
}


class Headed(nn.Module):
    def __init__(self, body: nn.Module, head) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_declared_terminal_head_keeps_the_first_order_path(name):
    head, output = HEADS[name]
    model, x = make_case("cnn")
    headed = Headed(model, head).eval()
    net = FunctionalNet(headed, [n for n, _ in headed.named_parameters()], output)
    assert sens.is_piecewise_linear(find_coverage(net, x).probe) and net.head_stripped
    assert rel_err(fisher_sensitivity(headed, x, output=output), fisher_sensitivity(model, x)) < 1e-10


def test_a_head_that_is_not_terminal_or_not_declared_is_kept():
    model, x = make_case("cnn")
    assert not _judge(Headed(model, lambda z: F.log_softmax(z, 1) * 1.0).eval(), x, "log_probs")
    assert not _judge(Headed(model, lambda z: F.log_softmax(z, 0)).eval(), x, "log_probs")  # over the batch
    assert not _judge(Headed(model, lambda z: F.softmax(z, 1)).eval(), x, "log_probs")  # declared wrongly
    assert not _judge(Headed(model, lambda z: F.log_softmax(z, 1)).eval(), x, "logits")


def _count_paths(monkeypatch) -> dict[str, int]:
    calls = {"first_order": 0, "second_order": 0, "func": 0}
    real_hook, real_func = sens.hook_sensitivity, sens.func_sensitivity

    def count_hook(*args, **kwargs):
        out = real_hook(*args, **kwargs)
        calls["first_order" if kwargs["first_order"] else "second_order"] += out is not None
        return out

    def count_func(*args, **kwargs):
        calls["func"] += 1
        return real_func(*args, **kwargs)

    monkeypatch.setattr(sens, "hook_sensitivity", count_hook)
    monkeypatch.setattr(sens, "func_sensitivity", count_func)
    return calls


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("cnn", "first_order"),
        ("mlp", "first_order"),
        ("inplace_cnn", "first_order"),
        ("tanh", "second_order"),
        ("silu", "second_order"),
        ("mish", "second_order"),
        ("shared", "func"),
        ("unknown_module", "func"),
        ("tied_head", "func"),
    ],
)
def test_sensitivity_takes_the_fastest_path_that_applies(monkeypatch, name, path):
    model, x = make_case(name)
    calls = _count_paths(monkeypatch)
    fisher_sensitivity(model, x[:2])
    assert {k for k, n in calls.items() if n} == {path}


def test_a_failing_hook_path_falls_back_to_the_next(monkeypatch):
    model, x = make_case("cnn")
    ref = fisher_sensitivity(model, x)
    real_hook = sens.hook_sensitivity
    seen = []

    def failing(*args, first_order, **kwargs):
        seen.append(first_order)
        if first_order:
            raise RuntimeError("Batching rule not implemented for some_op")
        return real_hook(*args, first_order=first_order, **kwargs)

    monkeypatch.setattr(sens, "hook_sensitivity", failing)
    got = fisher_sensitivity(model, x, chunk_size=2)
    assert seen == [True, False, False]  # tried once, then the second-order path for every chunk
    assert rel_err(got, ref) < TOL


def test_without_forward_mode_the_func_path_uses_a_double_vjp(monkeypatch):
    model, x = make_case("tied_head")
    ref = fisher_sensitivity(model, x)
    real = sens.func_sensitivity

    def no_forward_mode(*args, forward_mode=True, **kwargs):
        if forward_mode:
            raise NotImplementedError("Trying to use forward AD with aten::silu_backward that does not support it.")
        return real(*args, forward_mode=False, **kwargs)

    monkeypatch.setattr(sens, "func_sensitivity", no_forward_mode)
    assert rel_err(fisher_sensitivity(model, x), ref) < TOL


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("classes", ["all", "predicted_vs_rest"])
@pytest.mark.parametrize("blockwise", [True, False])
def test_first_order_equals_second_order_on_piecewise_linear_models(monkeypatch, name, classes, blockwise):
    model, x = make_case(name)
    torch.manual_seed(3)
    user = [torch.randn_like(p) for p in model.parameters()]
    for direction, y in (("predicted", None), ("label", torch.tensor([0, 1, 2, 3])), (user, None)):
        kwargs = {"direction": direction, "y": y, "blockwise": blockwise, "classes": classes}
        got = fisher_sensitivity(model, x, **kwargs)
        with monkeypatch.context() as mp:
            mp.setattr(sens, "is_piecewise_linear", lambda *_a: False)
            ref = fisher_sensitivity(model, x, **kwargs)
        assert rel_err(got, ref) < TOL
        assert float(ref.abs().max()) > 0


@pytest.mark.parametrize("blockwise", [False, True])
def test_sensitivity_matches_dense(case, blockwise):
    name, model, x, ref = case
    if name == "residual":  # LayerNorm has a layer rule: plain autograd's second derivatives, no torch.func
        got = fisher_sensitivity(model, x, blockwise=blockwise, method="finite_difference", fd_step=1e-5)
        assert rel_err(got, ref["fis" if blockwise else "fis_full"]) < 1e-6  # the plain-autograd oracle
        return
    got = fisher_sensitivity(model, x, blockwise=blockwise)
    assert got.shape == x.shape
    assert rel_err(got, ref["fis" if blockwise else "fis_full"]) < TOL


# ----------------------------------------------------------------------------- metrics
def _huge_logit_model(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_(scale)
    return model


@pytest.mark.parametrize("scale", [1e21, 1e30])
def test_sensitivity_raises_where_the_other_metrics_do(scale):
    """Before: fisher_sensitivity returned 0.0 for |z| ≈ 1e21..1e38, where trace and quadratic form raise."""
    model, x = _huge_logit_model(scale), torch.rand(3, 4) + 0.5
    assert float(model(x).abs().max()) > 1e20 and bool(torch.isfinite(model(x)).all())
    for metric in (fisher_trace, fisher_quadratic_form, fisher_sensitivity):
        with pytest.raises(ValueError, match=r"logits exceed 8\.39e\+06 in magnitude for samples \[0, 1, 2\]"):
            metric(model, x)
        with pytest.raises(ValueError, match=r"logits exceed 4\.5e\+15 in magnitude"):
            metric(copy.deepcopy(model).double(), x.double())
    # A model of ordinary scale is untouched by the check.
    assert bool(torch.isfinite(fisher_sensitivity(_huge_logit_model(1.0), x)).all())
