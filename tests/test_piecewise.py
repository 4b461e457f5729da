"""Piecewise-linearity of a model in its input, as read off the autograd graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.metrics_cases import make_case
from torch import nn

from art_fisher._functional import FunctionalNet
from art_fisher._piecewise import is_piecewise_linear
from art_fisher.models import CifarCNN, SmallCNN


def _judge(model: nn.Module, x: torch.Tensor, output: str = "logits") -> bool:
    return is_piecewise_linear(FunctionalNet(model, [n for n, _ in model.named_parameters()], output), x)


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
    for name, expected in [("mlp", True), ("cnn", True), ("tanh", False), ("residual", False), ("shared", False)]:
        model, x = make_case(name)
        assert _judge(model, x) is expected, name


def test_outputs_other_than_logits_are_not_piecewise_linear():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.Softmax(-1)).eval()
    assert not _judge(model, torch.randn(2, 4), output="probs")
