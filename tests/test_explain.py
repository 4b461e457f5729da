"""PGD explanations: ascent, the ε-ball, isolation of the caller's model, and the differentiable step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nni_lease.explain import Explanation, explanation_loss, pgd_explain


def _smooth_model(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).to(dtype)


def _bn_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )


@pytest.fixture
def x64():
    return torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_pgd_increases_the_loss_against_the_clean_prediction_and_stays_in_the_ball(x64):
    model = _smooth_model()
    eps = 0.3
    start = pgd_explain(model, x64, epsilon=eps, step_size=0.1, steps=1, generator=torch.Generator().manual_seed(5))
    out = pgd_explain(model, x64, epsilon=eps, step_size=0.1, steps=10, generator=torch.Generator().manual_seed(5))
    assert isinstance(out, Explanation)
    assert out.delta.shape == x64.shape and out.delta.dtype == x64.dtype
    assert out.delta.abs().max() <= eps + 1e-12
    torch.testing.assert_close(out.explained, out.delta * x64)
    clean = explanation_loss(model, x64, torch.zeros_like(x64))  # = entropy of the clean prediction
    after_one = explanation_loss(model, x64, start.delta)
    after = explanation_loss(model, x64, out.delta)
    assert torch.all(after > clean)
    assert after.sum() > after_one.sum()
    assert not out.delta.requires_grad and not out.explained.requires_grad


def test_zero_start_has_zero_gradient_so_random_start_is_needed(x64):
    model = _smooth_model()
    delta = torch.zeros_like(x64, requires_grad=True)
    (grad,) = torch.autograd.grad(explanation_loss(model, x64, delta).sum(), delta)
    assert grad.abs().max() < 1e-12


def test_caller_model_is_left_untouched():
    model = _bn_model().train()
    x = torch.rand(8, 1, 4, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for differentiable in (False, True):
        out = pgd_explain(model, x, epsilon=0.1, step_size=0.05, steps=3, differentiable=differentiable)
        assert model.training
        for key, value in model.state_dict().items():  # BatchNorm running statistics included
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
        assert all(p.grad is None for p in model.parameters())
        assert [p.requires_grad for p in model.parameters()] == flags
        del out
    model.eval()
    pgd_explain(model, x, epsilon=0.1, step_size=0.05, steps=2)
    assert not model.training


def test_global_rng_is_not_consumed(x64):
    model = _smooth_model()
    state = torch.random.get_rng_state()
    pgd_explain(model, x64, epsilon=0.1, step_size=0.05, steps=2)
    assert torch.equal(state, torch.random.get_rng_state())


def test_same_generator_seed_same_explanation(x64):
    model = _smooth_model()
    a = pgd_explain(model, x64, epsilon=0.1, step_size=0.03, steps=3, generator=torch.Generator().manual_seed(9))
    b = pgd_explain(model, x64, epsilon=0.1, step_size=0.03, steps=3, generator=torch.Generator().manual_seed(9))
    c = pgd_explain(model, x64, epsilon=0.1, step_size=0.03, steps=3, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a.delta, b.delta)
    assert not torch.equal(a.delta, c.delta)


@pytest.mark.parametrize("differentiable", [False, True])
def test_given_clean_logits_give_the_same_explanation(x64, differentiable):
    model = _smooth_model()
    kwargs = dict(epsilon=0.2, step_size=0.05, steps=3, differentiable=differentiable)
    a = pgd_explain(model, x64, generator=torch.Generator().manual_seed(1), **kwargs)
    b = pgd_explain(model, x64, generator=torch.Generator().manual_seed(1), clean_logits=model(x64), **kwargs)
    torch.testing.assert_close(a.delta, b.delta, rtol=0, atol=0)
    if differentiable:  # the graph through the given logits is kept
        w = model[1].weight
        ga = torch.autograd.grad(a.explained.sum(), w)[0]
        gb = torch.autograd.grad(b.explained.sum(), w)[0]
        torch.testing.assert_close(ga, gb)


def test_differentiable_delta_matches_finite_differences_in_float64(x64):
    """d/dθ of <r, δ(θ)> by autograd equals a central difference along a random parameter direction."""
    model = _smooth_model()
    params = list(model.parameters())
    directions = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype)
                  for i, p in enumerate(params)]
    probe = torch.randn(x64.shape, generator=torch.Generator().manual_seed(42), dtype=x64.dtype)
    kwargs = dict(epsilon=0.5, step_size=0.05, steps=3, differentiable=True)

    def objective() -> torch.Tensor:
        out = pgd_explain(model, x64, generator=torch.Generator().manual_seed(7), **kwargs)
        return (out.explained * probe).sum()

    value = objective()
    grads = torch.autograd.grad(value, params)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions))
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(h * d)
    plus = objective().detach()
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.sub_(2 * h * d)
    minus = objective().detach()
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(h * d)
    numeric = (plus - minus) / (2 * h)
    assert analytic.abs() > 1e-6  # the explanation really depends on the parameters
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(epsilon=0.0, step_size=0.1, steps=1), "epsilon"),
        (dict(epsilon=-1.0, step_size=0.1, steps=1), "epsilon"),
        (dict(epsilon=0.1, step_size=0.0, steps=1), "step_size"),
        (dict(epsilon=0.1, step_size=float("nan"), steps=1), "step_size"),
        (dict(epsilon=0.1, step_size=0.1, steps=0), "steps"),
        (dict(epsilon=0.1, step_size=0.1, steps=1.5), "steps"),
    ],
)
def test_bad_arguments_are_named(kwargs, name, x64):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        pgd_explain(_smooth_model(), x64, **kwargs)


def test_integer_input_is_rejected():
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        pgd_explain(_smooth_model(), torch.zeros(2, 1, 4, 4, dtype=torch.long), epsilon=0.1, step_size=0.1, steps=1)
