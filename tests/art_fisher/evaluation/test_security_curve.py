"""The detection-aware security curve (an ART Evaluation): robust accuracy of classifier + detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.evaluations.evaluation import Evaluation

from art_fisher.evaluation._security_curve import DetectionSecurityCurve, robust_accuracy


def test_robust_accuracy_counts_caught_attacks_and_false_alarms():
    correct = np.array([True, True, False, False])
    flagged = np.array([True, False, True, False])
    assert robust_accuracy(correct, flagged, attacked=False) == 0.25  # clean: right and not flagged
    assert robust_accuracy(correct, flagged, attacked=True) == 0.75  # attacked: right or caught


def test_detection_security_curve_is_an_art_evaluation_and_reduces_to_art_without_flags():
    from art.estimators.classification import PyTorchClassifier
    from art.evaluations.security_curve.security_curve import SecurityCurve

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    clf = PyTorchClassifier(model.eval(), torch.nn.CrossEntropyLoss(), (1, 3, 3), 4, clip_values=(0.0, 1.0))
    x = np.random.default_rng(1).uniform(0.1, 0.9, size=(40, 1, 3, 3)).astype(np.float32)
    y = clf.predict(x).argmax(1)
    curve = DetectionSecurityCurve(eps=[0.05, 0.3], target_fpr=0.1)
    assert isinstance(curve, Evaluation)

    def never(xx: np.ndarray) -> np.ndarray:
        return np.zeros(len(xx))

    torch.manual_seed(0)
    eps, acc, clean = curve.evaluate(clf, x, y, score_fn=never, x_calibration=x[:10])
    art_acc = []
    for budget in (0.05, 0.3):  # ART's curve takes one step size for every budget; ours is eps / 8
        _, (acc_b,), art_clean = SecurityCurve(eps=[budget]).evaluate(
            clf, x, np.eye(4)[y], norm=np.inf, eps_step=budget / 8, max_iter=20, num_random_init=0, verbose=False
        )
        art_acc.append(acc_b)
    assert eps == [0.05, 0.3] and clean == pytest.approx(art_clean) == 1.0
    assert acc[0] <= 1.0 and acc[1] <= acc[0]
    assert acc == pytest.approx(art_acc)  # a detector that never flags leaves ART's curve unchanged

    # a score that flags exactly the perturbed inputs: every attacked image is caught, no false alarm
    def moved(xx: np.ndarray) -> np.ndarray:
        return np.abs(xx - x).reshape(len(xx), -1).max(1)

    _, acc_moved, clean_moved = curve.evaluate(clf, x, y, score_fn=moved, x_calibration=x[:40])
    assert clean_moved == 1.0 and acc_moved == [1.0, 1.0]
    with pytest.raises(ValueError, match="target_fpr"):
        DetectionSecurityCurve(eps=[0.1], target_fpr=0.0).evaluate(clf, x, y, score_fn=never, x_calibration=x)
