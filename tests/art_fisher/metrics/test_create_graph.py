"""``create_graph=True``: the metrics' input gradients against central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from art_fisher import fisher_block_traces, fisher_max_eigenvalue, fisher_quadratic_form, fisher_trace
from tests.art_fisher.metrics_cases import make_case

METRICS = {
    "trace": fisher_trace,
    "block_traces": lambda m, x, **k: fisher_block_traces(m, x, **k).values.log().sum(1),  # the detector's features
    "max_eigenvalue": fisher_max_eigenvalue,
    "quadratic_form": fisher_quadratic_form,
    "quadratic_form_blockwise": lambda m, x, **k: fisher_quadratic_form(m, x, blockwise=True, **k),
    "quadratic_form_two_class": lambda m, x, **k: fisher_quadratic_form(m, x, classes="predicted_vs_rest", **k),
    "quadratic_form_fixed": lambda m, x, **k: fisher_quadratic_form(
        m, x, direction=[torch.ones_like(p) for p in m.parameters()], blockwise=True, **k
    ),
}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "tanh_mlp":
        model, shape = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)), (5,)
    elif name == "softplus_cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 4)
        )
        shape = (1, 6, 6)
    else:
        return make_case(name)
    model = model.double().eval()
    return model, torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def check_against_central_differences(f, x: torch.Tensor, g: torch.Tensor, eps: float, tol: float) -> None:
    """``⟨g, u⟩`` against ``(f(x + εu) − f(x − εu)) / 2ε`` (summed over samples) along random directions ``u``."""
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        u = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        want = float((f(x + eps * u).sum() - f(x - eps * u).sum()) / (2 * eps))
        got = float((g * u).sum())
        np.testing.assert_allclose(got, want, rtol=tol, atol=0)


def input_gradient(f, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xr = x.clone().requires_grad_(True)
    value = f(xr)
    (g,) = torch.autograd.grad(value.sum(), xr)
    return value.detach(), g


@pytest.mark.parametrize("name", ["tanh_mlp", "softplus_cnn", "tied_head"])
@pytest.mark.parametrize("metric", sorted(METRICS))
def test_input_gradients_match_central_differences(name, metric):
    model, x = _model(name)
    fn = METRICS[metric]
    value, g = input_gradient(lambda xx: fn(model, xx, create_graph=True), x)
    torch.testing.assert_close(value, fn(model, x), rtol=1e-12, atol=0)  # the same numbers as without a graph
    check_against_central_differences(lambda xx: fn(model, xx), x, g, eps=1e-5, tol=1e-6)


def test_relu_cnn_and_the_model_untouched():
    model, x = make_case("cnn")  # ReLU, max pooling, eval BatchNorm
    before = [p.detach().clone() for p in model.parameters()]
    for metric in ("trace", "max_eigenvalue", "quadratic_form_blockwise"):
        fn = METRICS[metric]
        _value, g = input_gradient(lambda xx, fn=fn: fn(model, xx, create_graph=True), x)
        # a step this small crosses no kink of these inputs
        check_against_central_differences(lambda xx, fn=fn: fn(model, xx), x, g, eps=1e-6, tol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_without_create_graph_the_result_is_detached():
    model, x = _model("tanh_mlp")
    xr = x.clone().requires_grad_(True)
    assert not fisher_trace(model, xr).requires_grad
    assert fisher_trace(model, xr, create_graph=True).requires_grad
