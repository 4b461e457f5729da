"""The shared LeaSE step: listener update, validation loss, and the unrolled hypergradient (float64, FD)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.strategy import DARTS
from torch import nn

from nni_lease.core._config import LeaseConfig
from nni_lease.core._explain import pgd_explain
from nni_lease.core._step import LeaseStep


class _TinySpace(ModelSpace):
    """Two smooth choices on 4×4 inputs, three classes (no ReLU kinks: finite differences stay clean)."""

    def __init__(self):
        super().__init__()
        self.a = LayerChoice(
            [
                nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh()),
                nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Softplus()),
            ],
            label="a",
        )
        self.b = LayerChoice([nn.Linear(6, 3), nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))], label="b")

    def forward(self, x):
        return self.b(self.a(x))


def _problem(gamma=1.0):
    torch.manual_seed(0)
    supernet = DARTS().mutate_model(_TinySpace()).double()
    alphas = [p for name, p in supernet.named_parameters() if "_arch_alpha" in name]
    with torch.no_grad():
        for alpha in alphas:
            alpha.normal_(0.0, 0.5)
    listener = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(10, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)
    config = LeaseConfig(
        gamma=gamma,
        hypergradient="unrolled",
        pgd_steps=2,
        listener_optimizer=torch.optim.SGD,
        listener_learning_rate=0.4,
    )
    return supernet, alphas, LeaseStep(config, listener), (x[:5], y[:5]), (x[5:], y[5:])


def _objective(step, supernet, alphas, trn, val, xi):
    return step.unrolled_objective(
        supernet, alphas, trn, val, explainer_step_size=xi, generator=torch.Generator().manual_seed(5)
    ).objective


def test_unrolled_hypergradient_matches_finite_differences_in_float64():
    supernet, alphas, step, trn, val = _problem()
    assert len(alphas) == 2
    xi = 0.5
    grads = torch.autograd.grad(_objective(step, supernet, alphas, trn, val, xi), alphas)
    numeric = []
    h = 1e-6
    for alpha in alphas:
        column = torch.zeros_like(alpha)
        for i in range(alpha.numel()):
            with torch.no_grad():
                alpha.view(-1)[i] += h
            plus = float(_objective(step, supernet, alphas, trn, val, xi))
            with torch.no_grad():
                alpha.view(-1)[i] -= 2 * h
            minus = float(_objective(step, supernet, alphas, trn, val, xi))
            with torch.no_grad():
                alpha.view(-1)[i] += h
            column.view(-1)[i] = (plus - minus) / (2 * h)
        numeric.append(column)
    for g, n in zip(grads, numeric, strict=False):
        assert g.abs().max() > 1e-4
        torch.testing.assert_close(g, n, rtol=1e-6, atol=1e-9)
    # The comparison can fail: cutting the explainer's virtual step out of the chain changes the gradient.
    cut = torch.autograd.grad(_objective(step, supernet, alphas, trn, val, 0.0), alphas)
    assert max(float((c - n).abs().max()) for c, n in zip(cut, numeric, strict=False)) > 1e-4


def test_unrolled_objective_leaves_both_networks_untouched():
    supernet, alphas, step, trn, val = _problem()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (supernet, step.listener)]
    terms = step.unrolled_objective(supernet, alphas, trn, val, explainer_step_size=0.5)
    terms.objective.backward()
    for module, saved in zip((supernet, step.listener), before, strict=False):
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved[key]), key
    torch.testing.assert_close(terms.objective, terms.explainer_val_loss + terms.listener_val_loss)


def test_train_listener_is_one_optimiser_step_on_the_explanation():
    supernet, _, step, (x, y), _ = _problem()
    w_before = [p.detach().clone() for p in step.listener.parameters()]
    step.generator.manual_seed(3)
    result = step.train_listener(supernet, x, y)
    expected_expl = pgd_explain(
        supernet, x, **step.config.explanation_kwargs(), generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(result.explanation.explained, expected_expl.explained)
    # SGD, lr 0.4: W ← W − 0.4 ∇ CE(listener(z), y) at the old weights
    probe = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        for p, w in zip(probe.parameters(), w_before, strict=False):
            p.copy_(w)
    loss = F.cross_entropy(probe(expected_expl.explained), y)
    torch.testing.assert_close(result.loss, loss.detach())
    for p, w, g in zip(
        step.listener.parameters(), w_before, torch.autograd.grad(loss, list(probe.parameters())), strict=False
    ):
        torch.testing.assert_close(p.detach(), w - 0.4 * g)


def test_listener_validation_loss_is_the_cross_entropy_on_explained_inputs():
    supernet, _, step, _, (x, y) = _problem()
    loss, logits, expl = step.listener_validation_loss(supernet, x, y, reduction="sum")
    torch.testing.assert_close(loss, F.cross_entropy(step.listener(expl.explained), y, reduction="sum"))
    assert not loss.requires_grad and logits.shape == (5, 3)
    diff, _, _ = step.listener_validation_loss(supernet, x, y, differentiable="last_step")
    assert diff.requires_grad


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"gamma": -1}, "gamma"),
        ({"hypergradient": "second"}, "hypergradient"),
        ({"pgd_norm": "l1"}, "pgd_norm"),
        ({"pgd_steps": 0}, "pgd_steps"),
        ({"weighting": "mask"}, "weighting"),
        ({"listener_learning_rate": 0}, "listener"),
        ({"unrolled_step_size": -1.0}, "unrolled_step_size"),
        ({"seed": -2}, "seed"),
        ({"colour": 1}, "unknown"),
    ],
)
def test_bad_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=match):
        LeaseConfig.from_settings(**settings)
