"""The factors of S = diag(p) - p pᵀ: exact, float32-accurate when confident; the two-class reduction."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev

from art_fisher import fisher_quadratic_form, fisher_sensitivity, metrics
from art_fisher.metrics._basis import centered, complement, covariance
from tests.art_fisher.metrics_cases import TOL, Dense, make_case, rel_err

#: float32 rounding through a few layers and backward passes reached 1.2e-4 (the sensitivity) and 2.2e-5 (the
#: others) here; the error these tests guard against is ~1e-2.
RTOL = 2e-3


def _confident_cnn(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A small CNN with logits scaled so that 1 − p_max is mostly below 1e-4, some below float32 resolution."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.Tanh(), nn.Linear(16, 10)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model[-1].weight.mul_(20.0)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    return model.eval(), x


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    model32, x = _confident_cnn(seed)
    model64 = copy.deepcopy(model32).double()
    return model32, model64, x


def test_the_case_is_confident():
    _model32, model64, x = _pair()
    p = torch.softmax(model64(x.double()), -1).max(-1).values
    rest = 1 - p
    assert rest.min() < 1e-6 and (rest < 1e-4).float().mean() > 0.5, rest


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("trace", metrics.fisher_trace),
        ("trace, create_graph", lambda m, x: metrics.fisher_trace(m, x, create_graph=True)),
        ("block_traces", lambda m, x: metrics.fisher_block_traces(m, x).values),
        ("quadratic_form", metrics.fisher_quadratic_form),
        ("max_eigenvalue", metrics.fisher_max_eigenvalue),
        ("trace, tau", lambda m, x: metrics.fisher_trace(m, x, tau=1e-2)),
        ("sensitivity", metrics.fisher_sensitivity),
    ],
)
def test_float32_metrics_of_confident_inputs_match_float64(name, call):
    model32, model64, x = _pair()
    got = call(model32, x).detach().double()
    want = call(model64, x.double()).detach()
    assert want.abs().min() > 0
    scale = want.abs().amax(dim=tuple(range(1, want.ndim)), keepdim=True) if want.ndim > 2 else want.abs()
    err = ((got - want).abs() / scale).max().item()
    assert err < RTOL, f"{name}: largest relative error {err:.2e}"


def test_complement_centered_and_covariance_are_exact_in_float64():
    p = torch.softmax(torch.randn(5, 7, dtype=torch.float64) * 4, -1)
    torch.testing.assert_close(complement(p), 1 - p, rtol=1e-12, atol=1e-15)
    x = torch.randn(5, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(centered(x, p.unsqueeze(1)), x - (x * p.unsqueeze(1)).sum(-1, keepdim=True))
    torch.testing.assert_close(covariance(p), torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2))


def test_complement_of_a_rounded_one_is_the_mass_of_the_other_classes():
    z = torch.tensor([[20.0, 0.0, 1.0, -3.0]])
    p = torch.softmax(z, -1)
    assert p[0, 0] == 1.0  # float32 rounds it to 1: 1 - p is 0, the true value about 4e-9
    rest = complement(p)[0, 0].item()
    want = float(1 - torch.softmax(z.double(), -1)[0, 0])
    assert rest == pytest.approx(want, rel=1e-6)
    assert np.isfinite(rest) and rest > 0


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
        fis.append(d.sensitivity(xi, v, blockwise, reduce_classes=lambda z, y=y: plain_two_class(z, y)))
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
