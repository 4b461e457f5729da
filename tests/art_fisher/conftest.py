"""Fixtures of the art_fisher tests: a small CNN trained on digits and ART attacks on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass(frozen=True)
class DigitsCNN:
    """A SmallCNN trained on 1000 digits, wrapped as an ART PyTorchClassifier, and held-out data."""

    classifier: object
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits_cnn() -> DigitsCNN:
    import torch
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.data._loaders import load_digits
    from art_fisher.models._architectures import SmallCNN, train_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_digits()
    perm = np.random.default_rng(0).permutation(len(data.x))
    train, test = perm[:1000], perm[1000:]
    torch.manual_seed(0)
    model = train_model(SmallCNN(), data.x[train], data.y[train], epochs=8, seed=0)
    classifier = PyTorchClassifier(
        model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0), device_type="cpu"
    )
    return DigitsCNN(classifier, data.x[train], data.y[train], data.x[test], data.y[test])


@pytest.fixture(scope="session")
def digits_attacks(digits_cnn) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Attack name -> (clean, adversarial) pairs on 160 held-out digits; successful attacks only.

    Only correctly classified clean inputs are attacked, and a pair is kept only when the attack
    changed the prediction, so row i of both arrays is the same digit.
    """
    from art.attacks.evasion import DeepFool, FastGradientMethod, ProjectedGradientDescent

    clf = digits_cnn.classifier
    x, y = digits_cnn.x_test[:160], digits_cnn.y_test[:160]
    correct = clf.predict(x).argmax(1) == y
    x, y = x[correct], y[correct]
    attacks = {
        "fgsm": FastGradientMethod(clf, eps=0.15),
        "pgd": ProjectedGradientDescent(clf, eps=0.15, eps_step=0.03, max_iter=10, verbose=False),
        "deepfool": DeepFool(clf, max_iter=50, batch_size=128, verbose=False),
    }
    out = {}
    for name, attack in attacks.items():
        x_adv = attack.generate(x).astype(np.float32)
        ok = clf.predict(x_adv).argmax(1) != y
        out[name] = (x[ok], x_adv[ok])
    return out


@pytest.fixture(scope="module")
def smooth_cnn():
    """A smooth CNN as an ART classifier, its inputs and a logistic Fisher detector fitted on them."""
    from tests.art_fisher.adaptive_cases import fitted_detector, smooth_classifier

    clf, x = smooth_classifier("cnn")
    return clf, x, fitted_detector(clf, x, "logistic")
