"""Tiny smooth float64 classifiers and fitted Fisher detectors on them, for gradient checks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def smooth_classifier(kind: str):
    """An ART PyTorchClassifier of a float64 tanh MLP (``"mlp"``) or softplus CNN (``"cnn"``) and inputs in [0, 1]."""
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    if kind == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(9, 6), nn.Tanh(), nn.Linear(6, 4))
        shape = (1, 3, 3)
    else:
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 4)
        )
        shape = (1, 6, 6)
    model = model.double().eval()
    clf = PyTorchClassifier(model, nn.CrossEntropyLoss(), shape, 4, clip_values=(0.0, 1.0), device_type="cpu")
    x = np.random.default_rng(1).uniform(0.1, 0.9, size=(40, *shape))
    return clf, x


def fitted_detector(clf, x: np.ndarray, estimator: str):
    """A FisherInformationDetector fitted with ``"threshold"``, ``"logistic"`` or ``"quantile"`` (clean-only)."""
    from art_fisher.detection._detector import FisherInformationDetector

    if estimator == "threshold":
        det = FisherInformationDetector(clf, metrics=("trace",))
    elif estimator == "logistic":
        det = FisherInformationDetector(clf, metrics=("trace", "quadratic_form", "max_eigenvalue"))
    else:
        det = FisherInformationDetector(clf, metrics=("trace", "quadratic_form"), target_fpr=0.2)
        det.fit(x)
        return det
    y = np.r_[np.zeros(len(x) // 2, int), np.ones(len(x) - len(x) // 2, int)]
    det.fit(x, y)
    return det


def central_difference_check(f, g: np.ndarray, x: np.ndarray, *, eps: float = 1e-5, tol: float = 1e-6) -> None:
    """``<g, u>`` against ``(f(x + eps u) - f(x - eps u)) / 2 eps`` (f summed over samples) along random ``u``."""
    rng = np.random.default_rng(2)
    for _ in range(3):
        u = rng.normal(size=x.shape)
        want = (np.sum(f(x + eps * u)) - np.sum(f(x - eps * u))) / (2 * eps)
        got = float(np.sum(g * u))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 1e-3)
