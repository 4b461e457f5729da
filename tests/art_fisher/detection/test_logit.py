"""The detection logit: the detector's decision as a torch function (exact input gradients) and an ART classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from torch import nn

from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._logit import DetectionLogitClassifier, NotDifferentiableError, art_detector_logit
from tests.art_fisher.adaptive_cases import central_difference_check, fitted_detector, smooth_classifier


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def smooth(request):
    return smooth_classifier(request.param)


@pytest.mark.parametrize("estimator", ["threshold", "logistic", "quantile"])
def test_logit_agrees_with_detect_and_its_gradient_with_central_differences(smooth, estimator):
    clf, x = smooth
    model = clf.model
    before = [p.detach().clone() for p in model.parameters()]
    detector = fitted_detector(clf, x, estimator)
    art = detector.as_art_classifier()
    xs = np.random.default_rng(3).uniform(0.1, 0.9, size=(5, *x.shape[1:]))  # not on a calibration score
    logit = art.predict(xs)[:, 0]
    report, flagged = detector.detect(xs)
    scale = detector.estimator_._proba_scale if estimator == "threshold" else 1.0
    # detect() reads its input as float32; the logit is computed in the model's float64
    np.testing.assert_allclose(logit * scale, report["decision_scores"] - report["threshold"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logit > 0, flagged)
    g = art.class_gradient(xs)
    assert g.shape == (5, 1, *clf.input_shape)
    central_difference_check(lambda xx: art.predict(xx)[:, 0], g[:, 0], xs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_quantile_gradient_is_that_of_the_largest_column():
    """The clean-only estimator's max passes the gradient of its active column (checked against that column alone)."""
    from art_fisher.detection._logit import estimator_logit

    clf, x = smooth_classifier("mlp")
    detector = fitted_detector(clf, x, "quantile")
    q = detector.estimator_
    f = torch.tensor([[2.0, 0.5], [0.1, 3.0]], dtype=torch.float64, requires_grad=True)
    logit = estimator_logit(q, dtype=torch.float64, device=torch.device("cpu"))
    np.testing.assert_allclose(logit(f).detach().numpy(), -q.decision_function(f.detach().numpy()), rtol=1e-12)
    (g,) = torch.autograd.grad(logit(f).sum(), f)
    z = (np.log(f.detach().numpy()) - q.center_) / q.scale_
    active = z.argmax(1)
    for i in range(2):
        expected = np.zeros(2)
        expected[active[i]] = 1 / (q.scale_[active[i]] * f[i, active[i]].item())
        np.testing.assert_allclose(g[i].numpy(), expected, rtol=1e-12)


def test_non_differentiable_choices_are_refused_by_name(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    x = np.concatenate([clean[:10], adv[:10]])
    y = np.repeat([0, 1], 10)
    forest = FisherInformationDetector(digits_cnn.classifier, estimator=RandomForestClassifier(n_estimators=3))
    forest.fit(x, y)
    with pytest.raises(NotDifferentiableError, match="estimator RandomForestClassifier has no input gradient"):
        forest.as_art_classifier()
    maps = FisherInformationDetector(digits_cnn.classifier, metrics=("trace", "sensitivity"))
    maps.fit(x, y)
    with pytest.raises(NotDifferentiableError, match=r"metrics \['sensitivity'\] have no input gradient"):
        maps.as_art_classifier()
    fd = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",), method="finite_difference")
    fd.fit(x, y)
    with pytest.raises(NotDifferentiableError, match="method='exact'"):
        fd.as_art_classifier()
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        FisherInformationDetector(digits_cnn.classifier).as_art_classifier()


def test_detection_logit_classifier_checks_its_inputs(smooth_cnn):
    _clf, x, detector = smooth_cnn
    art = detector.as_art_classifier()
    want = art.predict(x[:3])
    np.testing.assert_allclose(art.predict(x[:3].astype(np.float32)), want, rtol=1e-5)  # any float dtype
    np.testing.assert_allclose(art.predict(x[:3].tolist()), want)  # nested lists
    for bad, match in [
        (x[:3, :, :4], r"x must have shape \(N, 1, 6, 6\)"),
        (x[:0], "at least one sample"),
        (np.full((2, 1, 6, 6), np.nan), "must be finite"),
        ([[1, 2], [3]], ""),  # ragged: ART's own check
        (np.array([["a"] * 36]).reshape(1, 1, 6, 6), "numeric array"),
    ]:
        with pytest.raises(ValueError, match=match):
            art.predict(bad)
    with pytest.raises(ValueError, match=r"detection labels .* for the N = 3 samples of x; got None"):
        art.loss_gradient(x[:3], None)
    with pytest.raises(ValueError, match=r"got shape \(2,\)"):
        art.loss_gradient(x[:3], np.array([0, 1]))
    with pytest.warns(UserWarning, match="looks like 8-bit images"):
        art.loss_gradient(np.round(x[:2] * 255), np.array([0, 1]))


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
