"""Tests of :mod:`art_fisher.detection`: detection logits as ART classifiers (Fisher's and ART's
detectors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from art_fisher.detection._logit import DetectionLogitClassifier, art_detector_logit
from tests.art_fisher.adaptive_cases import central_difference_check, fitted_detector, smooth_classifier


def _two_class(net: nn.Module, shape: tuple[int, ...]):
    from art.estimators.classification import PyTorchClassifier

    net = net.double()
    return PyTorchClassifier(
        net, nn.CrossEntropyLoss(), shape, 2, optimizer=torch.optim.Adam(net.parameters(), lr=1e-2), device_type="cpu"
    )


@pytest.mark.parametrize("on_activations", [False, True])
def test_art_binary_detectors_logit_and_gradient(on_activations):
    from art.defences.detector.evasion import BinaryActivationDetector, BinaryInputDetector

    clf, x = smooth_classifier("mlp")
    torch.manual_seed(1)
    y = np.eye(2)[np.r_[np.zeros(20, int), np.ones(20, int)]]
    if on_activations:  # layer 2 of the MLP: its tanh, 6 features
        detector = BinaryActivationDetector(
            clf, _two_class(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)), (6,)), 2
        )
    else:
        detector = BinaryInputDetector(_two_class(nn.Sequential(nn.Flatten(), nn.Linear(9, 2)), (1, 3, 3)))
    detector.fit(x, y, nb_epochs=2, batch_size=20)
    art = art_detector_logit(detector)
    report, flagged = detector.detect(x[:6])
    logit = art.predict(x[:6])[:, 0]
    np.testing.assert_allclose(logit, report["predictions"][:, 1] - report["predictions"][:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logit > 0, flagged)
    g = art.class_gradient(x[:6], label=0)
    central_difference_check(lambda xx: art.predict(xx)[:, 0], g[:, 0], x[:6])


def test_shapes_losses_and_refusals():
    clf, x = smooth_classifier("cnn")
    art = fitted_detector(clf, x, "logistic").as_art_classifier()
    assert art.nb_classes == 1 and art.input_shape == (1, 6, 6)
    assert art.predict(x[:3]).shape == (3, 1)
    y = np.array([0, 1, 1])
    g = art.loss_gradient(x[:3], y)
    central_difference_check(lambda xx: art.compute_loss(xx, y), g, x[:3])
    np.testing.assert_allclose(art.loss_gradient(x[:3], np.eye(2)[y]), g)
    with pytest.raises(ValueError, match="label must be None or 0"):
        art.class_gradient(x[:3], label=1)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 6, 6\)"):
        art.predict(x[:3, 0])
    with pytest.raises(ValueError, match="detection labels"):
        art.loss_gradient(x[:3], np.array([0, 2, 1]))
    with pytest.raises(NotImplementedError, match="fit the detector itself"):
        art.fit(x, y)
    with pytest.raises(TypeError, match="BinaryInputDetector or BinaryActivationDetector"):
        art_detector_logit(object())
    with pytest.raises(TypeError, match="logit_function must be callable"):
        DetectionLogitClassifier(3, input_shape=(2,))
