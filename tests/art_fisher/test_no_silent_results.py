"""Inputs that used to give a silent or raw result: huge logits, non-finite models, a detector fitted on another
classifier, bad shapes / dtypes / labels at the ART classifiers, train-mode randomness, half precision, and ART
attacks that query in float64."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from art_fisher.adversarial.adaptive_classifier import AdaptiveDetectorClassifier
from art_fisher.metrics import fisher_quadratic_form, fisher_sensitivity, fisher_trace
from tests.art_fisher.adaptive_cases import fitted_detector, smooth_classifier


# ----------------------------------------------------------------------------- metrics
def _huge_logit_model(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_(scale)
    return model


@pytest.mark.parametrize("scale", [1e21, 1e30])
def test_sensitivity_raises_where_the_other_metrics_do(scale):
    """Before: fisher_sensitivity returned 0.0 for |z| ≈ 1e21..1e38, where trace and quadratic form raise."""
    model, x = _huge_logit_model(scale), torch.rand(3, 4) + 0.5
    assert float(model(x).abs().max()) > 1e20 and bool(torch.isfinite(model(x)).all())
    for metric in (fisher_trace, fisher_quadratic_form, fisher_sensitivity):
        with pytest.raises(ValueError, match=r"logits exceed 8\.39e\+06 in magnitude for samples \[0, 1, 2\]"):
            metric(model, x)
        with pytest.raises(ValueError, match=r"logits exceed 4\.5e\+15 in magnitude"):
            metric(copy.deepcopy(model).double(), x.double())
    # A model of ordinary scale is untouched by the check.
    assert bool(torch.isfinite(fisher_sensitivity(_huge_logit_model(1.0), x)).all())


class _FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.dropout(torch.relu(self.fc1(x)), p=0.5, training=True))


def test_functional_train_mode_dropout_is_detected():
    model, x = _FunctionalDropout().eval(), torch.rand(4, 6)
    for metric in (fisher_trace, fisher_quadratic_form, fisher_sensitivity):
        with pytest.raises(ValueError, match="differs between two calls in eval mode"):
            metric(model, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_says_unsupported(dtype):
    """Before: torch's NotImplementedError: linalg_eigh_cpu from the trace."""
    model = nn.Sequential(nn.Linear(4, 3)).to(dtype).eval()
    with pytest.raises(TypeError, match=rf"half precision is not supported \(x is {dtype}\).*model.float\(\)"):
        fisher_trace(model, torch.rand(2, 4, dtype=dtype))
    with pytest.raises(TypeError, match=r"half precision is not supported \(parameter '0.weight'"):
        fisher_trace(model, torch.rand(2, 4))


# ------------------------------------------------------------------------- ART classifiers
@pytest.fixture(scope="module")
def smooth_cnn():
    clf, x = smooth_classifier("cnn")
    return clf, x, fitted_detector(clf, x, "logistic")


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


# --------------------------------------------------------------------- evaluation: models
def _digits_state(tmp_path, tamper):
    from art_fisher.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN()
    state = model.state_dict()
    tamper(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda s: s[next(k for k in s if k.endswith("weight"))].fill_(float("nan")), r"weights \[.*\] hold NaN"),
        (lambda s: [t.mul_(1e30) for k, t in s.items() if k.endswith("weight")], "outputs are not finite"),
    ],
)
def test_a_model_with_non_finite_outputs_is_refused_with_its_name(tmp_path, capsys, tamper, match):
    """Before: "clean test accuracy 0.1000", empty rows, exit status 0."""
    from art_fisher.cli import main

    path = _digits_state(tmp_path, tamper)
    assert main(["evaluate", "--model", str(path), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model {path}" in err and __import__("re").search(match, err), err
    assert not (tmp_path / "out").exists()


def test_a_cache_with_non_finite_weights_is_rebuilt(tmp_path):
    from art_fisher.evaluation import model_cache
    from art_fisher.models import SmallCNN

    state = {k: v.clone() for k, v in SmallCNN().state_dict().items()}
    next(v for k, v in state.items() if k.endswith("weight")).fill_(float("inf"))
    path = tmp_path / "cache.pt"
    torch.save(
        {"format": model_cache.CACHE_FORMAT, "key": "k", "state_dict": state, "digest": model_cache._digest(state)},
        path,
    )
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        model_cache._read_cache(path, "k", SmallCNN())


# ---------------------------------------------------------------- evaluation: any ART attack
class _Float64Queries:
    """A stub ART evasion attack that queries like HopSkipJump: predict on float64 arrays, then a loss gradient."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def generate(self, x: np.ndarray) -> np.ndarray:
        x64 = np.asarray(x, dtype=np.float64)
        labels = self.classifier.predict(x64).argmax(1)
        g = self.classifier.loss_gradient(x64, np.eye(self.classifier.nb_classes)[labels])
        return np.clip(x64 + 0.1 * np.sign(g), 0, 1)


def test_attacks_that_query_in_float64_reach_a_float32_model(digits_cnn):
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.evaluation.classifier import attacked_classifier

    model = digits_cnn.classifier.model
    x = digits_cnn.x_test[:2].astype(np.float32)
    plain = PyTorchClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0), device_type="cpu")
    with pytest.raises(RuntimeError, match="double"):  # the failure the evaluation's classifier removes
        _Float64Queries(plain).generate(x)
    clf = attacked_classifier(model, input_shape=(1, 8, 8), nb_classes=10, device=torch.device("cpu"))
    np.testing.assert_allclose(clf.predict(x.astype(np.float64)), plain.predict(x), rtol=1e-6)
    adv = _Float64Queries(clf).generate(x)
    assert adv.shape == x.shape and np.isfinite(adv).all()
    g64 = clf.loss_gradient(x.astype(np.float64), np.eye(10)[[0, 1]])
    np.testing.assert_allclose(g64, plain.loss_gradient(x, np.eye(10)[[0, 1]]), rtol=1e-5, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hsj = HopSkipJump(clf, max_iter=1, max_eval=20, init_eval=5, init_size=20, verbose=False)
        adv = hsj.generate(x=x)
    assert adv.shape == x.shape and np.isfinite(adv).all()


def test_a_softmax_classifier_is_refused_by_the_detectors_and_the_attacker_loss():
    """Before: a classifier whose model ends in a softmax gave Fisher features ~95x too small, and energy /
    confidence / logit-margin values of probabilities, without a word."""
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.adversarial.art_classifier import classifier_logits
    from art_fisher.detection.detector import FisherInformationDetector
    from art_fisher.detection.stacked import StackedDetector

    clf, x = smooth_classifier("mlp")
    probs = PyTorchClassifier(
        nn.Sequential(clf.model, nn.Softmax(1)).eval(), nn.CrossEntropyLoss(), clf.input_shape, 4,
        clip_values=(0.0, 1.0), device_type="cpu",
    )  # fmt: skip
    with pytest.raises(ValueError, match="output='logits' but the model's outputs .* probability vectors"):
        FisherInformationDetector(probs, metrics=("trace",)).fit(x)
    with pytest.raises(ValueError, match="probability vectors"):
        StackedDetector(probs, parts=("confidence", "mahalanobis")).fit(x)
    with pytest.raises(ValueError, match="the attacker's loss .* probability vectors"):
        classifier_logits(probs, torch.as_tensor(x[:3]))
    # declared as probabilities, the detector measures them
    FisherInformationDetector(probs, metrics=("trace",), output="probs").fit(x)
