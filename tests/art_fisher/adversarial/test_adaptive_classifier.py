"""Tests of :mod:`art_fisher.adversarial`: classifier + Fisher detector as one ART model under ART's attacks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from art_fisher.adversarial._adaptive_classifier import AdaptiveDetectorClassifier
from art_fisher.detection._detector import FisherInformationDetector
from tests.art_fisher.adaptive_cases import central_difference_check, fitted_detector, smooth_classifier


def _torch_logits(combo, x):
    with torch.enable_grad():
        return combo.combined_logits(torch.as_tensor(x)).detach().numpy()


@pytest.mark.parametrize(
    ("kind", "estimator", "loss"),
    [("mlp", "threshold", "margin"), ("cnn", "logistic", "cross_entropy"), ("cnn", "quantile", "margin")],
)
def test_gradients_of_the_combined_model_match_central_differences(kind, estimator, loss):
    clf, x = smooth_classifier(kind)
    combo = AdaptiveDetectorClassifier(clf, fitted_detector(clf, x, estimator), classifier_loss=loss)
    xs = np.random.default_rng(4).uniform(0.1, 0.9, size=(4, *x.shape[1:]))
    np.testing.assert_allclose(combo.predict(xs), _torch_logits(combo, xs), rtol=1e-5, atol=1e-7)  # ART's predict
    y = clf.predict(xs).argmax(1)
    y[:2] = (y[:2] + 1) % 4  # misclassified: the detector term is on (the gate)
    g = combo.loss_gradient(xs, y)
    central_difference_check(lambda xx: combo.compute_loss(xx, y), g, xs)
    every = combo.class_gradient(xs)
    assert every.shape == (4, 5, *x.shape[1:])
    for c in range(5):
        central_difference_check(lambda xx, c=c: _torch_logits(combo, xx)[:, c], every[:, c], xs)
    labels = np.array([4, 4, 1, 4])  # the detector's class for several samples (ART 1.20 mixes these up)
    np.testing.assert_allclose(combo.class_gradient(xs, label=labels)[:, 0], every[np.arange(4), labels], rtol=1e-10)
    np.testing.assert_allclose(combo.class_gradient(xs, label=4)[:, 0], every[:, 4], rtol=1e-10)


def test_attacker_loss_terms_and_label_handling():
    clf, x = smooth_classifier("mlp")
    detector = fitted_detector(clf, x, "logistic")
    xs, y = x[:6], clf.predict(x[:6]).argmax(1)
    y[:3] = (y[:3] + 1) % 4  # misclassified: the detector term is on
    z = clf.predict(xs).astype(np.float64)
    ce = -(z[np.arange(6), y] - np.log(np.exp(z).sum(1)))
    others = np.where(np.eye(4)[y] == 1, -np.inf, z).max(1)
    margin = others - z[np.arange(6), y]
    d = detector.as_art_classifier().predict(xs)[:, 0]
    untargeted = AdaptiveDetectorClassifier(clf, detector, confidence=0.05).compute_loss(xs, y)
    assert np.all(margin[:3] > 0) and np.all(margin[3:] < 0)
    gate = margin > 0
    # The detector reads its input as float32 (5e-7 relative differences in d were measured): rtol 1e-5.
    np.testing.assert_allclose(untargeted, np.minimum(margin, 0.05) - gate * np.logaddexp(0, d), rtol=1e-5)
    targeted = AdaptiveDetectorClassifier(clf, detector, targeted=True, detector_weight=2.0).compute_loss(xs, y)
    np.testing.assert_allclose(targeted, np.maximum(margin, -5.0) + 2 * ~gate * np.logaddexp(0, d), rtol=1e-5)
    with_ce = AdaptiveDetectorClassifier(clf, detector, classifier_loss="cross_entropy").compute_loss(xs, y)
    np.testing.assert_allclose(with_ce, ce - gate * np.logaddexp(0, d), rtol=1e-5)
    combo = AdaptiveDetectorClassifier(clf, detector)
    np.testing.assert_allclose(combo.loss_gradient(xs, np.eye(5)[y]), combo.loss_gradient(xs, y))
    predicted = clf.predict(xs).argmax(1)  # the detector's class stands for the prediction
    np.testing.assert_allclose(combo.compute_loss(xs, np.full(6, 4)), combo.compute_loss(xs, predicted))
    with pytest.raises(ValueError, match=r"y must be labels in \[0, 4\]"):
        combo.loss_gradient(xs, np.full(6, 5))
    with pytest.raises(ValueError, match="detector_weight must be a finite number >= 0"):
        AdaptiveDetectorClassifier(clf, detector, detector_weight=-1)
    with pytest.raises(ValueError, match="classifier_loss must be"):
        AdaptiveDetectorClassifier(clf, detector, classifier_loss="hinge")
    with pytest.raises(TypeError, match="detector must be a DetectionLogitClassifier"):
        AdaptiveDetectorClassifier(clf, object())


def test_art_attacks_run_on_the_combined_model(digits_cnn, digits_attacks):
    """ART's PGD, AutoPGD and (targeted) C&W run unchanged on classifier + Fisher detector."""
    from art.attacks.evasion import AutoProjectedGradientDescent, CarliniL2Method, ProjectedGradientDescent
    from art.estimators.classification import DetectorClassifier

    clf = digits_cnn.classifier
    clean, adv = digits_attacks["fgsm"]
    detector = FisherInformationDetector(clf, metrics=("trace", "quadratic_form"))
    detector.fit(np.concatenate([clean[:20], adv[:20]]), np.repeat([0, 1], 20))
    combo = AdaptiveDetectorClassifier(clf, detector)
    assert isinstance(combo, DetectorClassifier)
    x = clean[20:24]
    y = clf.predict(x).argmax(1)
    pgd = ProjectedGradientDescent(combo, eps=0.2, eps_step=0.05, max_iter=4, verbose=False).generate(x, y=y)
    assert np.abs(pgd - x).max() <= 0.2 + 1e-6
    assert np.all(combo.compute_loss(pgd, y) > combo.compute_loss(x, y))  # PGD ascends the attacker's loss
    # AutoPGD and C&W judge success by the argmax of the C + 1 logits: run them targeted at a classifier class
    target = np.argsort(clf.predict(x), axis=1)[:, -2]  # the runner-up class, never the detector's
    targeted = AdaptiveDetectorClassifier(clf, detector, targeted=True)
    apgd = AutoProjectedGradientDescent(
        targeted, eps=0.2, eps_step=0.05, max_iter=4, nb_random_init=1, targeted=True, verbose=False
    )
    np.random.seed(0)  # noqa: NPY002 - AutoPGD draws from numpy's global generator
    x_apgd = apgd.generate(x, y=target)
    assert x_apgd.shape == x.shape and np.abs(x_apgd - x).max() <= 0.2 + 1e-6
    # (a 4-step AutoPGD need not succeed; where it does, the target tops the C + 1 logits: target and not flagged)
    cw = CarliniL2Method(targeted, targeted=True, max_iter=2, binary_search_steps=1, verbose=False)
    assert cw.generate(x[:2], y=target[:2]).shape == (2, *x.shape[1:])


def test_arts_own_detector_classifier_accepts_the_detection_logit():
    """ART's unmodified DetectorClassifier predicts and differentiates with ``as_art_classifier()``."""
    from art.estimators.classification import DetectorClassifier

    clf, x = smooth_classifier("cnn")
    detector = fitted_detector(clf, x, "logistic")
    ours, arts = AdaptiveDetectorClassifier(clf, detector), DetectorClassifier(clf, detector.as_art_classifier())
    xs = x[:3]
    np.testing.assert_allclose(arts.predict(xs), ours.predict(xs), rtol=1e-6)
    np.testing.assert_allclose(arts.class_gradient(xs), ours.class_gradient(xs), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(arts.class_gradient(xs, label=4), ours.class_gradient(xs, label=4), rtol=1e-5, atol=1e-8)


def test_every_detector_is_accepted_as_itself():
    """A fitted StackedDetector, like a Fisher detector, stands for its detection logit (its fingerprint checked)."""
    from art_fisher.detection import StackedDetector

    clf, x = smooth_classifier("cnn")
    detector = StackedDetector(clf, parts=("confidence", "mahalanobis"), target_fpr=0.2)
    detector.fit(x[:20], x_reference=x[20:])
    ours, logit = AdaptiveDetectorClassifier(clf, detector), detector.as_art_classifier()
    assert logit.model_fingerprint == detector.model_fingerprint_
    np.testing.assert_array_equal(
        ours.predict(x[:3])[:, -1], AdaptiveDetectorClassifier(clf, logit).predict(x[:3])[:, -1]
    )
    with pytest.raises(TypeError, match="or a fitted art_fisher.detection.Detector; got str"):
        AdaptiveDetectorClassifier(clf, "stacked")


def test_adaptive_classifier_checks_the_detector_was_fitted_on_its_classifier(smooth_cnn):
    clf, x, detector = smooth_cnn
    other = copy.deepcopy(clf)
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="was fitted on a classifier with other weights or preprocessing"):
        AdaptiveDetectorClassifier(other, detector)
    with pytest.raises(ValueError, match="was fitted on a classifier with other weights"):
        AdaptiveDetectorClassifier(other, detector.as_art_classifier())
    AdaptiveDetectorClassifier(other, detector, allow_other_model=True)
    assert AdaptiveDetectorClassifier(clf, detector).predict(x[:2]).shape == (2, 5)


def test_adaptive_classifier_checks_labels(smooth_cnn):
    clf, x, detector = smooth_cnn
    combo = AdaptiveDetectorClassifier(clf, detector)
    assert combo.loss_gradient(x[:2], np.array([1, 2])).shape == x[:2].shape
    for y, match in [
        (np.eye(3)[[0, 1]], r"one-hot \(N, 5\).*got shape \(2, 3\)"),
        (np.full(2, np.nan), "NaN or inf"),
        (np.array([1.5, 0]), "whole numbers"),
        (None, "got None"),
        (np.array([0, 1, 2]), r"got shape \(3,\)"),
        (np.array([0, 7]), "from 0 to 7"),
    ]:
        with pytest.raises(ValueError, match=match):
            combo.loss_gradient(x[:2], y)
    with pytest.raises(ValueError, match="whole-number class"):
        combo.class_gradient(x[:2], label=1.5)
