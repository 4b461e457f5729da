"""One detector contract: both configurations report, save, load, take x_reference and feature sources alike."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from art.defences.detector.evasion import EvasionDetector

import art_fisher
from art_fisher import metrics as metrics_module
from art_fisher.detection import Detector, FeatureCache, FisherInformationDetector, StackedDetector, _input_fisher
from art_fisher.detection import _layer_scores as fs
from tests.art_fisher.adaptive_cases import smooth_classifier

REPORT_KEYS = {"scores", "decision_scores", "threshold", "feature_names"}
MAKE = {
    "fisher": lambda clf, **kw: FisherInformationDetector(
        clf, metrics=("trace", "quadratic_form"), target_fpr=0.1, **kw
    ),
    "stacked": lambda clf, **kw: StackedDetector(
        clf, parts=("fisher", "confidence", "mahalanobis", "input_fisher"), target_fpr=0.1, **kw
    ),
}


@pytest.fixture(scope="module")
def data():
    clf, x = smooth_classifier("cnn")
    rng = np.random.default_rng(3)
    clean = x[:20]
    adv = np.clip(clean + rng.choice([-0.25, 0.25], size=clean.shape), 0, 1)
    return clf, x, clean, adv


def _fit(det: Detector, data, mode: str) -> Detector:
    _, x, clean, adv = data
    if mode == "supervised":
        det.fit(np.concatenate([clean, adv]), np.repeat([0, 1], len(clean)), x_reference=x[20:])
    else:
        det.fit(clean, x_reference=x[20:])
    if mode == "calibrated":
        det.calibrate(x[20:])
    return det


def test_the_detectors_are_one_abstraction_with_one_report(data):
    clf, x, _, adv = data
    assert art_fisher.StackedDetector is StackedDetector
    assert art_fisher.FisherInformationDetector is FisherInformationDetector
    for kind, make in MAKE.items():
        det = _fit(make(clf), data, "supervised")
        assert isinstance(det, Detector) and isinstance(det, EvasionDetector), kind
        report, flagged = det.detect(np.concatenate([x[20:], adv]))
        assert set(report) == REPORT_KEYS, kind
        assert report["feature_names"] == list(report["scores"]) == det.feature_names_
        np.testing.assert_array_equal(flagged, report["decision_scores"] > report["threshold"])
        assert det.threshold_ == report["threshold"] and 0.0 <= det.clean_fpr_ <= 0.1
        for method in ("fit", "detect", "calibrate", "save", "load", "as_art_classifier", "set_params"):
            assert method not in vars(type(det)) and method in vars(Detector), (kind, method)  # one body


@pytest.mark.parametrize("mode", ["supervised", "clean", "calibrated"])
@pytest.mark.parametrize("kind", sorted(MAKE))
def test_save_and_load_give_identical_decisions(data, kind, mode, tmp_path):
    clf, x, _, adv = data
    det = _fit(MAKE[kind](clf), data, mode)
    det.save(tmp_path / "detector.skops")
    loaded = type(det).load(tmp_path / "detector.skops", clf)
    xs = np.concatenate([x[20:], adv])
    (report, flagged), (again, flagged_again) = det.detect(xs), loaded.detect(xs)
    np.testing.assert_array_equal(flagged_again, flagged)
    np.testing.assert_array_equal(again["decision_scores"], report["decision_scores"])
    assert again["threshold"] == report["threshold"] and again["feature_names"] == report["feature_names"]
    for attribute in ("threshold_", "clean_fpr_", "calibration_", "feature_names_", "model_fingerprint_"):
        assert getattr(loaded, attribute) == getattr(det, attribute), attribute
    assert loaded.get_params().keys() == det.get_params().keys()
    np.testing.assert_array_equal(loaded.as_art_classifier().predict(xs[:5]), det.as_art_classifier().predict(xs[:5]))


def test_a_file_of_one_detector_is_refused_by_the_other(data, tmp_path):
    clf = data[0]
    _fit(MAKE["stacked"](clf), data, "clean").save(tmp_path / "stacked.skops")
    _fit(MAKE["fisher"](clf), data, "clean").save(tmp_path / "fisher.skops")
    with pytest.raises(ValueError, match="not a saved FisherInformationDetector"):
        FisherInformationDetector.load(tmp_path / "stacked.skops", clf)
    with pytest.raises(ValueError, match="not a saved StackedDetector"):
        StackedDetector.load(tmp_path / "fisher.skops", clf)


def test_x_reference_goes_to_fit_for_every_detector(data):
    clf, x, clean, adv = data
    for kind, make in MAKE.items():
        det = make(clf)
        assert "x_reference" not in det.defence_params, kind
        parameter = inspect.signature(type(det).fit).parameters["x_reference"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is None
        with pytest.raises(ValueError, match=r"x_reference must have shape .* = \(N, 1, 6, 6\); got \(20, 1, 3, 6\)"):
            det.fit(clean, x_reference=x[20:, :, :3])
    # the Fisher metrics fit nothing: x_reference changes no score; the stacked Gaussians are fitted on it
    for kind, same in (("fisher", True), ("stacked", False)):
        with_reference = _fit(MAKE[kind](clf), data, "clean").detect(adv)[0]["decision_scores"]
        without = MAKE[kind](clf)
        without.fit(clean)
        assert np.array_equal(without.detect(adv)[0]["decision_scores"], with_reference) is same, kind


@pytest.fixture
def nothing_computed(monkeypatch):
    """Every Fisher metric, input-Fisher spectrum and class-Gaussian fit raises: values must be looked up."""

    def forbidden(*args, **kwargs):
        raise AssertionError("computed instead of looked up")

    for name in ("fisher_trace", "fisher_quadratic_form", "fisher_block_traces"):
        monkeypatch.setattr(metrics_module, name, forbidden)
    monkeypatch.setattr(_input_fisher, "_spectrum_numpy", forbidden)
    monkeypatch.setattr(fs.ClassGaussians, "fit", forbidden)


@pytest.mark.parametrize("kind", sorted(MAKE))
@pytest.mark.parametrize("mode", ["supervised", "clean"])
def test_a_feature_source_gives_the_scores_of_the_plain_detector(data, kind, mode, request):
    """Values computed by one detector (another chunking) and looked up by another give the plain path's scores."""
    clf, x, _, adv = data
    xs = np.concatenate([x[20:], adv])
    plain = _fit(MAKE[kind](clf), data, mode).detect(xs)[0]
    cache = FeatureCache()
    first = MAKE[kind](clf, feature_source=cache, chunk_size=3)
    warm = _fit(first, data, mode).detect(xs)[0]
    # float64 model on float32 inputs, summed in other chunks: CONTRIBUTING's float32 tolerance for the features
    np.testing.assert_allclose(warm["decision_scores"], plain["decision_scores"], rtol=1e-4, atol=1e-8)
    for name in plain["feature_names"]:
        np.testing.assert_allclose(warm["scores"][name], plain["scores"][name], rtol=1e-4, atol=1e-8)
    request.getfixturevalue("nothing_computed")
    # the same chunks as the first detector: what is not cached (the logits of the confidence and Mahalanobis
    # parts) is recomputed, and a model's output may differ in its last bits between batch sizes
    second = _fit(MAKE[kind](clf, feature_source=cache, chunk_size=3), data, mode)
    looked_up = second.detect(xs)[0]
    np.testing.assert_array_equal(looked_up["decision_scores"], warm["decision_scores"])
    assert cache.seconds_cost > 0


def test_a_feature_source_is_checked_and_not_part_of_the_fit(data):
    clf = data[0]
    for make in MAKE.values():
        with pytest.raises(TypeError, match="feature_source must be None or an object with methods rows"):
            make(clf, feature_source={})
        det = _fit(make(clf), data, "clean")
        det.set_params(feature_source=FeatureCache())
        assert hasattr(det, "estimator_")  # the values do not depend on where they come from
        det.set_params(target_fpr=0.2)
        assert not hasattr(det, "estimator_")
