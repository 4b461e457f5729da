"""The stacked detector: its columns by hand, its threshold at the target FPR, its life in ART's DetectorClassifier.

What it shares with the Fisher detector (reports, files, x_reference, feature sources) is tested in test_base.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_fisher.detection import _features
from art_fisher.detection import _layer_scores as fs
from art_fisher.detection._logit import NotDifferentiableError
from art_fisher.detection._stacked import PARTS, StackedDetector, StackedFeatures
from art_fisher.metrics import fisher_input_spectrum
from tests.art_fisher.adaptive_cases import central_difference_check, smooth_classifier

DIFFERENTIABLE = ("fisher", "confidence", "mahalanobis", "input_fisher")


@pytest.fixture(scope="module")
def data():
    clf, x = smooth_classifier("cnn")
    rng = np.random.default_rng(3)
    clean = x[:20]
    adv = np.clip(clean + rng.choice([-0.25, 0.25], size=clean.shape), 0, 1)
    return clf, x, clean, adv


def test_columns_are_the_parts_computed_by_hand(data):
    clf, x, clean, _ = data
    feats = StackedFeatures(clf).fit(clean, x_reference=x[20:])
    f = feats.transform(x[:5])
    values = _features.compute(
        clf,
        x[:5],
        metrics=("block_traces", "sensitivity"),
        settings=_features.MetricOptions(metrics=("block_traces", "sensitivity")).checked(clf),
        chunk_size=8,
    )
    z = clf.predict(x[:5]).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    k = values["block_traces"].shape[1]
    np.testing.assert_allclose(f[:, :k], np.log(values["block_traces"]), rtol=1e-5)
    np.testing.assert_allclose(f[:, k : k + 4], np.log(values["sensitivity"]), rtol=1e-5)
    np.testing.assert_allclose(f[:, k + 4], p.max(1), rtol=1e-5)
    np.testing.assert_allclose(f[:, k + 5], -(p * np.log(p)).sum(1), rtol=1e-5)
    model = clf.model
    with torch.no_grad():
        m = fs.mahalanobis_scores(model, torch.as_tensor(x[:5]), feats.gaussians_).numpy()
    # Another batching sums the distances through the near-singular covariance's pseudo-inverse in another order:
    # 8.4e-7 relative in float64 was measured.
    n_m = len(feats.gaussians_)
    np.testing.assert_allclose(f[:, k + 6 : k + 6 + n_m], m, rtol=1e-5)
    spectrum = fisher_input_spectrum(model, torch.as_tensor(x[:5]), k=3).values.numpy()  # 4 classes: rank 3
    # log λ₁ and log tr G; inputs cast to float32 by the features: 6e-10 relative measured
    want = np.log(np.column_stack([spectrum[:, 0], spectrum.sum(1)]))
    np.testing.assert_allclose(f[:, k + 6 + n_m :], want, rtol=1e-6)
    assert f.shape[1] == feats.n_features_out_ == k + 6 + n_m + 2
    sides = ["higher"] * k + _features.feature_polarities(("sensitivity",)) + ["lower", "higher"] + ["lower"] * n_m
    assert feats.polarities() == [*sides, "higher", "higher"]


@pytest.mark.parametrize("supervised", [True, False])
def test_threshold_flags_the_target_share_of_clean_inputs(data, supervised):
    clf, x, clean, adv = data
    det = StackedDetector(clf, parts=DIFFERENTIABLE, target_fpr=0.1)
    if supervised:
        det.fit(np.concatenate([clean, adv]), np.repeat([0, 1], len(clean)), x_reference=x[20:])
    else:
        det.fit(clean, x_reference=x[20:])
    report, flagged = det.detect(clean)
    assert flagged.mean() <= 0.1 + 1e-12
    np.testing.assert_array_equal(flagged, report["decision_scores"] > report["threshold"])
    det.calibrate(x[20:])
    assert det.detect(x[20:])[1].mean() <= 0.1 + 1e-12


@pytest.mark.parametrize("supervised", [True, False])
def test_inside_arts_detector_classifier(data, supervised):
    """ART's DetectorClassifier predicts the detection logit as its extra class and differentiates through it."""
    from art.estimators.classification import DetectorClassifier

    clf, x, clean, adv = data
    det = StackedDetector(clf, parts=DIFFERENTIABLE)
    if supervised:
        det.fit(np.concatenate([clean, adv]), np.repeat([0, 1], len(clean)), x_reference=x[20:])
    else:
        det.fit(clean, x_reference=x[20:])
    logit = det.as_art_classifier()
    combo = DetectorClassifier(clf, logit)
    xs = x[30:33]
    report, flagged = det.detect(xs)
    d = logit.predict(xs)[:, 0]
    np.testing.assert_allclose(d, report["decision_scores"] - report["threshold"], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(d > 0, flagged)
    z = clf.predict(xs)
    np.testing.assert_allclose(combo.predict(xs), np.column_stack([z, (d + 1) * z.max(1)]), rtol=1e-5)
    g = logit.class_gradient(xs)[:, 0]
    central_difference_check(lambda xx: logit.predict(xx)[:, 0].astype(np.float64), g, xs, tol=1e-4)
    assert combo.class_gradient(xs, label=4).shape == (3, 1, *xs.shape[1:])


def test_sensitivity_has_no_gradient_and_bad_parts_are_refused(data):
    clf, x, clean, adv = data
    det = StackedDetector(clf)
    det.fit(np.concatenate([clean, adv]), np.repeat([0, 1], len(clean)), x_reference=x[20:])
    assert det.detect(adv)[0]["decision_scores"].shape == (len(adv),)
    with pytest.raises(NotDifferentiableError, match="sensitivity"):
        det.as_art_classifier()
    for bad in (("fisher", "fisher"), ("nope",), ()):
        with pytest.raises(ValueError, match="parts"):
            StackedDetector(clf, parts=bad)
    with pytest.raises(ValueError, match="target_fpr"):
        StackedDetector(clf, target_fpr=1.5)
    assert set(PARTS) == {"fisher", "sensitivity", "confidence", "mahalanobis", "input_fisher"}


def test_with_reference_images_the_gaussians_see_none_of_the_fit_images(data):
    """Scores of fit images must be those of unseen images, or a threshold set on them flags more than its target."""
    clf, x, clean, adv = data
    a = StackedFeatures(clf, parts=("mahalanobis",)).fit(clean, x_reference=x[20:])
    b = StackedFeatures(clf, parts=("mahalanobis",)).fit(
        np.concatenate([adv, clean[:5]]), np.r_[np.ones(len(adv)), np.zeros(5)], x_reference=x[20:]
    )
    for name, gauss in a.gaussians_.items():
        np.testing.assert_array_equal(gauss.means, b.gaussians_[name].means)
        np.testing.assert_array_equal(gauss.precision, b.gaussians_[name].precision)
    # without reference images the clean fit rows are all there is
    c = StackedFeatures(clf, parts=("mahalanobis",)).fit(clean)
    assert any(not np.array_equal(g.means, a.gaussians_[n].means) for n, g in c.gaussians_.items())


def test_the_ablation_entries_leave_one_part_out_of_both_variants():
    import functools

    from art_fisher.detection._stacked import PARTS
    from art_fisher.evaluation import DETECTORS

    for part in PARTS:
        for variant, supervised in (("stacked", True), ("stacked_clean", False)):
            spec = DETECTORS[f"{variant}_without_{part}"]
            assert spec.supervised is supervised and not spec.in_default
            assert isinstance(spec.build, functools.partial)
            assert spec.build.keywords["parts"] == tuple(p for p in PARTS if p != part)


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        (lambda x: x[:1], r"x_reference must hold at least two distinct clean images .* got 1 images, 1 distinct"),
        (lambda x: np.repeat(x[:1], 30, axis=0), r"got 30 images, 1 distinct"),
        (lambda x: np.zeros((0, *x.shape[1:])), "x_reference must hold at least one sample"),
    ],
)
def test_a_degenerate_reference_set_is_refused(data, reference, match):
    """Before: one image or copies of one gave Gaussians of zero covariance; the detector then never flagged."""
    clf, x, clean, adv = data
    xy, labels = np.concatenate([clean, adv]), np.repeat([0, 1], len(clean))
    with pytest.raises(ValueError, match=match):
        StackedDetector(clf, parts=("mahalanobis",)).fit(xy, labels, x_reference=reference(x))


def test_a_reference_set_without_spread_about_its_class_means_is_refused(data, monkeypatch):
    """Distinct images, one per predicted class: the tied covariance is zero in every layer."""
    clf, x, clean, _ = data
    predicted = clf.predict(x).argmax(1)
    one_per_class = x[[int(np.flatnonzero(predicted == c)[0]) for c in np.unique(predicted)]]
    assert len(one_per_class) >= 2
    with pytest.warns(UserWarning, match="fewer than two per class"), pytest.raises(ValueError, match="do not vary"):
        StackedFeatures(clf, parts=("mahalanobis",)).fit(clean, x_reference=one_per_class)
    with pytest.raises(ValueError, match=r"X \(its clean rows, without x_reference\) must hold at least two"):
        StackedFeatures(clf, parts=("mahalanobis",)).fit(np.repeat(clean[:1], 5, axis=0))
