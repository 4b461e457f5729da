"""Explanations: the ascent and its ball, the listener's input, isolation of the caller's model, derivatives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nni_lease.core._explain import Explanation, explanation_loss, listener_input, pgd_explain


def _smooth_model(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).to(dtype)


def _bn_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


@pytest.fixture
def x64():
    return torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(-1)


def test_defaults_need_only_a_model_and_inputs(x64):
    model = _smooth_model()
    out = pgd_explain(model, x64)
    assert isinstance(out, Explanation)
    assert out.delta.shape == x64.shape and out.delta.dtype == x64.dtype
    assert out.delta.flatten(1).norm(dim=1).max() <= 0.5 + 1e-12  # L2 ball of radius 0.5
    # "reweight": x * (1 - delta / max|delta|), every weight in [0, 2]
    scale = out.delta.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(out.explained, x64 * (1 - out.delta / scale))
    weights = 1 - out.delta / scale
    assert weights.min() >= -1e-12 and weights.max() <= 2 + 1e-12
    torch.testing.assert_close(out.importance, -out.delta * x64)
    assert not out.delta.requires_grad and not out.explained.requires_grad


def test_ascent_raises_the_loss_of_the_predicted_label(x64):
    model = _smooth_model()
    target = _predicted(model, x64)
    kwargs = dict(epsilon=0.5, random_start=0.0)
    one = pgd_explain(model, x64, steps=1, **kwargs)
    three = pgd_explain(model, x64, steps=3, step_size=0.2, **kwargs)
    clean = explanation_loss(model, x64, torch.zeros_like(x64), target=target)
    assert torch.all(explanation_loss(model, x64, one.delta, target=target) > clean)
    assert explanation_loss(model, x64, three.delta, target=target).sum() > clean.sum()
    # one normalised step of length 2.5 * eps from 0, projected: the gradient direction at radius eps
    delta = torch.zeros_like(x64, requires_grad=True)
    (grad,) = torch.autograd.grad(explanation_loss(model, x64, delta, target=target).sum(), delta)
    expected = 0.5 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(one.delta, expected)


def test_soft_target_has_zero_gradient_at_zero_but_the_predicted_label_does_not(x64):
    model = _smooth_model()
    delta = torch.zeros_like(x64, requires_grad=True)
    soft = F.softmax(model(x64), -1).detach()
    (grad,) = torch.autograd.grad(explanation_loss(model, x64, delta, target=soft).sum(), delta)
    assert grad.abs().max() < 1e-12
    (grad,) = torch.autograd.grad(explanation_loss(model, x64, delta, target=_predicted(model, x64)).sum(), delta)
    assert grad.flatten(1).norm(dim=1).min() > 1e-6


def test_linf_sign_steps_stay_in_the_box(x64):
    out = pgd_explain(_smooth_model(), x64, norm="linf", epsilon=0.1, steps=3, weighting="product")
    assert out.delta.abs().max() <= 0.1 + 1e-12
    torch.testing.assert_close(out.explained, out.delta * x64)


def test_caller_model_is_left_untouched():
    model = _bn_model().train()
    x = torch.rand(8, 1, 4, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for differentiable in ("none", "last_step", "all_steps"):
        out = pgd_explain(model, x, steps=3, differentiable=differentiable)
        assert model.training
        for key, value in model.state_dict().items():  # BatchNorm running statistics included
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
        assert all(p.grad is None for p in model.parameters())
        assert [p.requires_grad for p in model.parameters()] == flags
        del out
    model.eval()
    pgd_explain(model, x)
    assert not model.training


def test_global_rng_is_not_consumed_and_the_generator_decides(x64):
    model = _smooth_model()
    state = torch.random.get_rng_state()
    a = pgd_explain(model, x64, generator=torch.Generator().manual_seed(9))
    assert torch.equal(state, torch.random.get_rng_state())
    b = pgd_explain(model, x64, generator=torch.Generator().manual_seed(9))
    c = pgd_explain(model, x64, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a.delta, b.delta) and not torch.equal(a.delta, c.delta)
    zero = [pgd_explain(model, x64, random_start=0.0, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert torch.equal(zero[0].delta, zero[1].delta)


def test_random_start_radius_is_a_fraction_of_epsilon(x64):
    model = _smooth_model()
    # zero steps are not allowed: one step with a tiny step size shows the start
    out = pgd_explain(model, x64, epsilon=1.0, random_start=0.25, steps=1, step_size=1e-9)
    norms = out.delta.flatten(1).norm(dim=1)
    assert norms.max() <= 0.25 + 1e-6 and norms.min() > 0.1  # uniform in a 16-dimensional ball: near its surface


@pytest.mark.parametrize("differentiable", ["none", "last_step"])
def test_given_clean_logits_give_the_same_explanation(x64, differentiable):
    model = _smooth_model()
    kwargs = dict(objective="soft_prediction", differentiable=differentiable)
    a = pgd_explain(model, x64, generator=torch.Generator().manual_seed(1), **kwargs)
    b = pgd_explain(model, x64, generator=torch.Generator().manual_seed(1), clean_logits=model(x64), **kwargs)
    torch.testing.assert_close(a.delta, b.delta, rtol=0, atol=0)
    if differentiable != "none":  # the graph through the given logits is kept
        w = model[1].weight
        ga = torch.autograd.grad(a.explained.sum(), w)[0]
        gb = torch.autograd.grad(b.explained.sum(), w)[0]
        torch.testing.assert_close(ga, gb)


def _directional_derivatives(objective, params, seed=0):
    directions = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + i), dtype=p.dtype)
        for i, p in enumerate(params)
    ]
    grads = torch.autograd.grad(objective(), params)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions, strict=False))
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, directions, strict=False):
            p.add_(h * d)
    plus = objective().detach()
    with torch.no_grad():
        for p, d in zip(params, directions, strict=False):
            p.sub_(2 * h * d)
    minus = objective().detach()
    with torch.no_grad():
        for p, d in zip(params, directions, strict=False):
            p.add_(h * d)
    return analytic, (plus - minus) / (2 * h)


@pytest.mark.parametrize(
    ("norm", "differentiable", "exact"),
    [("l2", "all_steps", True), ("linf", "last_step", True), ("l2", "last_step", False)],
)
def test_differentiable_explanation_against_finite_differences(x64, norm, differentiable, exact):
    """d/dθ <r, z(θ)> by autograd vs a central difference in float64 (exact where the docstring says so)."""
    model = _smooth_model()
    probe = torch.randn(x64.shape, generator=torch.Generator().manual_seed(42), dtype=x64.dtype)
    eps = 0.5 if norm == "l2" else 0.2
    kwargs = dict(epsilon=eps, norm=norm, steps=3, step_size=0.4 * eps, differentiable=differentiable)

    def objective() -> torch.Tensor:
        out = pgd_explain(model, x64, generator=torch.Generator().manual_seed(7), **kwargs)
        return (out.explained * probe).sum()

    analytic, numeric = _directional_derivatives(objective, list(model.parameters()))
    assert analytic.abs() > 1e-6  # the explanation really depends on the parameters
    if exact:
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)
    else:  # the documented approximation: the earlier steps' dependence is left out
        assert not torch.allclose(analytic, numeric, rtol=1e-3, atol=1e-6)


def test_listener_input_forms():
    delta = torch.tensor([[[[0.5, -1.0], [0.0, 0.25]]]], dtype=torch.float64)
    x = torch.tensor([[[[1.0, 0.5], [0.2, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(listener_input(delta, x, "product"), delta * x)
    torch.testing.assert_close(
        listener_input(delta, x, "reweight"), torch.tensor([[[[0.5, 1.0], [0.2, 0.0]]]], dtype=torch.float64)
    )
    torch.testing.assert_close(listener_input(torch.zeros_like(x), x), x)  # no perturbation: the image


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        (dict(epsilon=0.0), "epsilon", ValueError),
        (dict(epsilon=-1.0), "epsilon", ValueError),
        (dict(epsilon="1"), "epsilon", TypeError),
        (dict(step_size=0.0), "step_size", ValueError),
        (dict(step_size=float("nan")), "step_size", ValueError),
        (dict(steps=0), "steps", ValueError),
        (dict(steps=1.5), "steps", TypeError),
        (dict(steps=True), "steps", TypeError),
        (dict(random_start=1.5), "random_start", ValueError),
        (dict(norm="l1"), "norm", ValueError),
        (dict(objective="margin"), "objective", ValueError),
        (dict(weighting="mask"), "weighting", ValueError),
        (dict(differentiable="some_steps"), "differentiable", ValueError),
        (dict(differentiable=True), "differentiable", TypeError),
    ],
)
def test_bad_arguments_are_named(kwargs, name, error, x64):
    with pytest.raises(error, match=rf"^{name} must"):
        pgd_explain(_smooth_model(), x64, **kwargs)


def test_integer_or_unbatched_input_is_rejected():
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        pgd_explain(_smooth_model(), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(N, \.\.\.\)"):
        pgd_explain(_smooth_model(), torch.zeros(16, dtype=torch.float64))
