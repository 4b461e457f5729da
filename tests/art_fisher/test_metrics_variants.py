"""Variants: the two-class reduction, the top eigenvector, raw (unnormalised) directions."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from art_fisher import fisher_max_eigenvalue, fisher_quadratic_form, fisher_sensitivity, fisher_trace
from tests.art_fisher.metrics_cases import Dense, make_case

TOL = 1e-8


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def plain_two_class(z: torch.Tensor, y: int) -> torch.Tensor:
    """(log p_y, log(1 − p_y)) written the plain way (no log-sum-exp of the others)."""
    p = torch.softmax(z, -1)
    return torch.stack([torch.log(p[y]), torch.log(1 - p[y])])


def two_class_reference(model, x, *, blockwise):
    """One sample at a time: dense two-class Fisher, quadratic form and sensitivity."""
    d = Dense(model)
    quads, fis = [], []
    for xi in x:
        y = int(d.probs(xi).argmax())
        g = d.predicted_gradient(xi)
        v = g / g.norm()  # the direction stays ∇θ log p_ŷ (all classes)
        g2 = jacrev(lambda f: torch.log_softmax(plain_two_class(d._logits_flat(f, xi), y), -1))(d.flat())
        p2 = torch.softmax(plain_two_class(d._logits_flat(d.flat(), xi), y), -1)
        f2 = torch.einsum("c,cp,cq->pq", p2, g2, g2)
        masks = d.block_masks() if blockwise else [torch.ones_like(v, dtype=torch.bool)]
        quads.append(sum((v * m) @ f2 @ (v * m) for m in masks))
        fis.append(d.sensitivity(xi, v, blockwise, reduce=lambda z, y=y: plain_two_class(z, y)))
    return torch.stack(quads), torch.stack(fis)


@pytest.mark.parametrize("name", ["tanh", "cnn", "unknown_module"])
@pytest.mark.parametrize("blockwise", [False, True])
def test_predicted_vs_rest_matches_plain_reference(name, blockwise):
    model, x = make_case(name)
    x = x[:2]
    ref_q, ref_s = two_class_reference(model, x, blockwise=blockwise)
    q = fisher_quadratic_form(model, x, classes="predicted_vs_rest", blockwise=blockwise)
    s = fisher_sensitivity(model, x, classes="predicted_vs_rest", blockwise=blockwise)
    assert rel_err(q, ref_q) < TOL
    assert rel_err(s, ref_s) < TOL
    assert rel_err(s, fisher_sensitivity(model, x, blockwise=blockwise)) > 1e-3  # really a different sum


def test_predicted_vs_rest_finite_difference_converges():
    model, x = make_case("tanh")
    exact = fisher_sensitivity(model, x, classes="predicted_vs_rest")
    fd = fisher_sensitivity(model, x, classes="predicted_vs_rest", method="finite_difference", fd_step=1e-4)
    assert rel_err(fd, exact) < 1e-6


@pytest.mark.parametrize("name", ["mlp", "cnn", "shared"])
def test_max_eigenvalue_bounds_every_unit_direction(name):
    model, x = make_case(name)
    lam = fisher_max_eigenvalue(model, x)
    trace = fisher_trace(model, x)
    assert bool((lam <= trace * (1 + 1e-12)).all())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
        q = fisher_quadratic_form(model, x, direction=direction)
        assert bool((q <= lam * (1 + 1e-10)).all())
    assert bool(
        (fisher_quadratic_form(model, x, direction="label", y=torch.tensor([0, 1, 2, 3])) <= lam * (1 + 1e-10)).all()
    )
    top = fisher_quadratic_form(model, x, direction="top_eigenvector")
    assert rel_err(top, lam) < TOL
    # normalize does not apply: the top eigenvector is a unit vector by definition
    assert rel_err(fisher_quadratic_form(model, x, direction="top_eigenvector", normalize=False), lam) < TOL


def test_unnormalised_user_direction_scales_quadratically():
    model, x = make_case("shared")  # the torch.func JVP fallback for shared weights
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    sq = sum(float(d.pow(2).sum()) for d in direction)
    for blockwise in (False, True):
        unit = fisher_quadratic_form(model, x, direction=direction, blockwise=blockwise)
        raw = fisher_quadratic_form(model, x, direction=direction, blockwise=blockwise, normalize=False)
        assert rel_err(raw, sq * unit) < 1e-12
        d = Dense(model)
        v = torch.cat([t.flatten() for t in direction])
        ref = torch.stack([d.quad(xi, v, blockwise) for xi in x])
        assert rel_err(raw, ref) < TOL
