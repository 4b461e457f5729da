"""The one-step spectral attack: a step of norm eps along ± the top eigenvector of G(x), inside ART's machinery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_fisher import OneStepSpectralAttack, fisher_input_spectrum
from art_fisher.evaluation import ATTACKS
from art_fisher.evaluation._attacks import run_attack


def _classifier(clip=(-10.0, 10.0), preprocessing=None) -> PyTorchClassifier:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ELU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 4))
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 6, 6), nb_classes=4,
                             clip_values=clip, preprocessing=preprocessing)  # fmt: skip


def _x(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, size=(n, 1, 6, 6)).astype(np.float32)


def test_step_has_norm_eps_along_the_signed_top_eigenvector():
    clf, x = _classifier(), _x()
    attack = OneStepSpectralAttack(clf, eps=0.7, batch_size=2)
    x_adv = attack.generate(x)
    step = (x_adv - x).reshape(len(x), -1)
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), 0.7, rtol=1e-4)  # float32
    v = fisher_input_spectrum(clf.model, torch.as_tensor(x), k=1).vectors[:, 0].flatten(1).numpy()
    cosine = (step * v).sum(1) / 0.7
    np.testing.assert_allclose(np.abs(cosine), 1.0, rtol=1e-4)  # float32
    # the sign increases the loss of the predicted class: its first-order change is positive
    y = clf.predict(x).argmax(1)
    grad = clf.loss_gradient(x, np.eye(4)[y]).reshape(len(x), -1)
    assert bool(((step * grad).sum(1) >= 0).all())


def test_given_labels_set_the_sign_and_clip_values_bound_the_result():
    clf, x = _classifier(), _x()
    attack = OneStepSpectralAttack(clf, eps=0.5)
    y = (clf.predict(x).argmax(1) + 1) % 4
    d_pred, d_other = attack.directions(x), attack.directions(x, y)
    grad = clf.loss_gradient(x, np.eye(4)[y]).reshape(len(x), -1)
    assert bool(((d_other.reshape(len(x), -1) * grad).sum(1) >= 0).all())
    np.testing.assert_allclose(np.abs(d_pred), np.abs(d_other), rtol=1e-6)
    clipped = OneStepSpectralAttack(_classifier(clip=(-0.9, 0.9)), eps=3.0).generate(x)
    assert clipped.min() >= -0.9 and clipped.max() <= 0.9 and clipped.dtype == np.float32


class _Standardised(nn.Module):
    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net((t - self.mean) / self.std)


def test_spectrum_is_taken_through_the_preprocessing():
    mean, std = 0.2, 0.5
    clf, x = _classifier(preprocessing=(mean, std)), _x(3)
    step = OneStepSpectralAttack(clf, eps=1.0).directions(x).reshape(3, -1)
    # G of the raw input: the model of (x - mean) / std
    raw = _Standardised(clf.model, mean, std)
    v = fisher_input_spectrum(raw, torch.as_tensor(x), k=1).vectors[:, 0].flatten(1).numpy()
    np.testing.assert_allclose(np.abs((step * v).sum(1)), 1.0, rtol=1e-4)  # float32


def test_art_conventions_and_parameter_checks():
    clf = _classifier()
    attack = OneStepSpectralAttack(clf, eps=0.3)
    assert {"eps", "norm", "batch_size"} <= set(attack.attack_params)
    attack.set_params(eps=0.4)
    assert attack.eps == 0.4 and attack.targeted is False
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        attack.set_params(eps=-1.0)
    with pytest.raises(ValueError, match="norm must be 2"):
        OneStepSpectralAttack(clf, norm=np.inf)
    with pytest.raises(TypeError, match="batch_size must be an int >= 1"):
        OneStepSpectralAttack(clf, batch_size=2.5)
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        OneStepSpectralAttack(object())
    with pytest.raises(ValueError, match="must have shape"):
        attack.generate(np.zeros((2, 36), np.float32))


def test_registered_attack_runs_in_the_evaluation():
    clf, x = _classifier(clip=(-1.0, 1.0)), _x(6)
    y = clf.predict(x).argmax(1)
    outcome = run_attack("ossa", clf, x, y, eps=0.5, batch_size=4, progress=False)
    assert ATTACKS["ossa"].uses_eps and outcome.x_adv.shape == x.shape
    assert outcome.stats["n_attacked"] == 6 and 0.0 <= outcome.stats["success_rate"] <= 1.0
    assert np.abs(outcome.x_adv).max() <= 1.0
