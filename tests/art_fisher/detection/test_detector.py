"""Tests of :class:`FisherInformationDetector` (and the shared feature extraction) on a digits CNN and ART attacks."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from art_fisher.detection import _features
from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._decision import default_estimator, supervised_threshold
from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._estimators import FisherFeatures, ThresholdClassifier

SCALAR_METRICS = ("trace", "quadratic_form", "max_eigenvalue")


def _split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pair indices for fitting and for testing (a digit and its adversarial twin stay together)."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: n // 2], perm[n // 2 :]


def _detection_set(clean: np.ndarray, adv: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([clean[idx], adv[idx]])
    y = np.r_[np.zeros(len(idx), dtype=int), np.ones(len(idx), dtype=int)]
    return x, y


@pytest.fixture(scope="module")
def attack_features(digits_cnn, digits_attacks):
    """Attack -> (features of clean, features of adversarial, feature names) of the scalar metrics.

    The clean digits are shared by the attacks, so their features are computed once.
    """
    metrics = SCALAR_METRICS
    transformer = FisherFeatures(digits_cnn.classifier, metrics=metrics).fit(digits_cnn.x_test[:2])
    names = list(transformer.get_feature_names_out())
    clean_all = np.concatenate([clean for clean, _ in digits_attacks.values()])
    unique, inverse = np.unique(clean_all.reshape(len(clean_all), -1), axis=0, return_inverse=True)
    f_unique = transformer.transform(unique.reshape(-1, *clean_all.shape[1:]))
    out, start = {}, 0
    for attack, (clean, adv) in digits_attacks.items():
        rows = inverse.reshape(-1)[start : start + len(clean)]
        start += len(clean)
        out[attack] = (f_unique[rows], transformer.transform(adv), names)
    return out


def _held_out_auc(f_clean, f_adv, columns, estimator) -> float:
    fit, test = _split(len(f_clean))
    X_fit = np.concatenate([f_clean[fit][:, columns], f_adv[fit][:, columns]])
    X_test = np.concatenate([f_clean[test][:, columns], f_adv[test][:, columns]])
    y_fit = np.r_[np.zeros(len(fit)), np.ones(len(fit))]
    y_test = np.r_[np.zeros(len(test)), np.ones(len(test))]
    est = clone(estimator).fit(X_fit, y_fit)
    return roc_auc_score(y_test, est.decision_function(X_test))


# Levels the maths supports on this kind of model (measured over seeds 0-4: see the README); a
# DeepFool example sits on the decision boundary, where the predictive distribution is most uncertain.
MIN_AUC = {"deepfool": 0.9, "fgsm": 0.7, "pgd": 0.7}


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "deepfool"])
def test_held_out_roc_auc_of_each_metric_and_of_the_default_detector(attack, attack_features):
    f_clean, f_adv, names = attack_features[attack]
    assert len(f_clean) >= 50, f"too few successful {attack} examples: {len(f_clean)}"
    auc = {}
    for metric in SCALAR_METRICS:
        if metric in names:
            auc[metric] = _held_out_auc(f_clean, f_adv, [names.index(metric)], ThresholdClassifier())
    default_columns = [names.index(m) for m in ("trace", "quadratic_form")]
    combined = _held_out_auc(f_clean, f_adv, default_columns, default_estimator(len(default_columns)))
    for metric, value in auc.items():
        assert value >= MIN_AUC[attack], f"{attack} {metric}: ROC-AUC {value:.3f} < {MIN_AUC[attack]}"
    assert combined >= MIN_AUC[attack]
    assert combined >= max(auc["trace"], auc["quadratic_form"]) - 0.02, (combined, auc)


@pytest.mark.parametrize("attack", ["fgsm", "deepfool"])
def test_adversarial_inputs_have_higher_fisher_trace(attack, attack_features):
    f_clean, f_adv, names = attack_features[attack]
    clf = ThresholdClassifier().fit(
        np.r_[f_clean[:, [names.index("trace")]], f_adv[:, [names.index("trace")]]],
        np.r_[np.zeros(len(f_clean)), np.ones(len(f_adv))],
    )
    assert clf.polarity_ == "higher"


def test_detector_end_to_end_matches_features_and_estimator(digits_cnn, digits_attacks, attack_features):
    clean, adv = digits_attacks["deepfool"]
    fit, test = _split(len(clean))
    detector = FisherInformationDetector(digits_cnn.classifier)
    x_fit, y_fit = _detection_set(clean, adv, fit)
    detector.fit(x_fit, y_fit)
    x_test, y_test = _detection_set(clean, adv, test)
    report, is_adv = detector.detect(x_test, batch_size=37)
    # same numbers as the transformer (through a different batching)
    f_clean, f_adv, names = attack_features["deepfool"]
    cols = [names.index("trace"), names.index("quadratic_form")]
    expected = np.concatenate([f_clean[test][:, cols], f_adv[test][:, cols]])
    # float32 sums in another batching order: agreement to float32 rounding
    np.testing.assert_allclose(report["scores"]["trace"], expected[:, 0], rtol=1e-4)
    np.testing.assert_allclose(report["scores"]["quadratic_form"], expected[:, 1], rtol=1e-4)
    assert report["feature_names"] == ["trace", "quadratic_form"]
    # the decision threshold flags target_fpr of the clean fit examples (their out-of-fold scores)
    assert report["threshold"] == detector.threshold_ and detector.clean_fpr_ <= detector.target_fpr
    assert is_adv.dtype == bool and is_adv.shape == (len(x_test),)
    np.testing.assert_array_equal(is_adv, report["decision_scores"] > detector.threshold_)
    assert roc_auc_score(y_test, report["decision_scores"]) >= MIN_AUC["deepfool"]
    assert isinstance(detector.estimator_, Pipeline)


def test_one_hot_labels_and_threshold_default(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    x, y = _detection_set(clean, adv, np.arange(30))
    a = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",), threshold="estimator")
    a.fit(x, y)
    b = FisherInformationDetector(digits_cnn.classifier, metrics=["trace"], threshold="estimator")
    b.fit(x, np.eye(2)[y], 16, 5)  # ART's one-hot form and positional (batch_size, nb_epochs)
    assert isinstance(a.estimator_, ThresholdClassifier)
    assert a.estimator_.threshold_ == b.estimator_.threshold_
    report, is_adv = a.detect(x)
    np.testing.assert_array_equal(is_adv, a.estimator_.predict(report["scores"]["trace"][:, None]) == 1)
    # What ART's own detectors accept in detect: a positional batch size and ignored keywords.
    _report_b, is_adv_b = b.detect(x, 7, verbose=False)
    np.testing.assert_array_equal(is_adv_b, is_adv)


def test_sensitivity_maps_and_their_features(digits_cnn):
    x = digits_cnn.x_test[:6]
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("sensitivity",))
    maps = detector.sensitivity_maps(x, chunk_size=4)
    assert maps.shape == x.shape
    values = _features.compute(
        digits_cnn.classifier, x, metrics=("sensitivity",), settings=_features.options_of(detector), chunk_size=6
    )["sensitivity"]
    flat = np.abs(maps.reshape(len(x), -1))
    np.testing.assert_allclose(values[:, 0], flat.sum(1), rtol=1e-4)
    np.testing.assert_allclose(values[:, 1], np.sqrt((flat**2).sum(1)), rtol=1e-4)
    np.testing.assert_allclose(values[:, 2], flat.max(1), rtol=1e-4)
    top7 = np.sort(flat, axis=1)[:, -7:].sum(1)  # ceil(0.1 * 64) = 7 largest of 64 pixels
    np.testing.assert_allclose(values[:, 3], top7 / flat.sum(1), rtol=1e-4)
    assert _features.feature_names(("trace", "sensitivity")) == [
        "trace",
        "sensitivity_l1",
        "sensitivity_l2",
        "sensitivity_max",
        "sensitivity_top_mass",
    ]


def test_classifier_preprocessing_is_applied(digits_cnn):
    """A classifier with (x - mean) / std preprocessing gives the metrics of the standardised input."""
    from art.estimators.classification import PyTorchClassifier

    model = digits_cnn.classifier.model
    mean, std = 0.3, 0.5
    with_prep = PyTorchClassifier(
        model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, preprocessing=(mean, std), device_type="cpu"
    )
    x = digits_cnn.x_test[:5]
    metrics = ("trace", "sensitivity")
    settings = _features.options_of(FisherInformationDetector(with_prep))
    a = _features.compute(with_prep, x, metrics=metrics, settings=settings, chunk_size=5, reduce_maps=False)
    b = _features.compute(
        digits_cnn.classifier, (x - mean) / std, metrics=metrics, settings=settings, chunk_size=5, reduce_maps=False
    )
    np.testing.assert_allclose(a["trace"], b["trace"], rtol=1e-4)
    if "sensitivity" in metrics:  # chain rule: d/dx = (1/std) d/dx', twice
        np.testing.assert_allclose(a["sensitivity"], b["sensitivity"] / std**2, rtol=1e-4, atol=1e-12)


def test_model_and_classifier_unchanged(digits_cnn, digits_attacks):
    clf = digits_cnn.classifier
    model = clf.model
    clean, adv = digits_attacks["pgd"]
    x, y = _detection_set(clean, adv, np.arange(20))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}  # ART leaves some
    preds = clf.predict(x)
    model.train()  # a mode the detector must restore (it computes in eval mode, like predict)
    try:
        detector = FisherInformationDetector(clf, metrics=("trace", "quadratic_form"))
        detector.fit(x, y)
        detector.detect(x)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for n, p in model.named_parameters():
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    np.testing.assert_array_equal(clf.predict(x), preds)


# ------------------------------------------------------------------------------------- parameters
def test_defence_params_match_constructor_and_round_trip(digits_cnn):
    import inspect

    signature = inspect.signature(FisherInformationDetector.__init__)
    assert list(signature.parameters)[1:] == FisherInformationDetector.defence_params
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",), chunk_size=7, blockwise=True)
    params = detector.get_params()
    assert params["chunk_size"] == 7 and params["metrics"] == ("trace",) and params["blockwise"] is True
    copy = FisherInformationDetector(**params)
    assert copy.get_params() == params
    copy.set_params(**params)
    assert copy.get_params() == params


def test_set_params_checks_and_keeps_or_discards_fit(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    x, y = _detection_set(clean, adv, np.arange(10))
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",))
    detector.fit(x, y)
    detector.set_params(chunk_size=3, metrics=["trace"])  # same features: the fit stays
    assert hasattr(detector, "estimator_")
    with pytest.raises(ValueError, match="method must be one of"):
        detector.set_params(method="adjoint")
    assert detector.method == "exact" and hasattr(detector, "estimator_")
    with pytest.raises(ValueError, match="Unknown parameters"):
        detector.set_params(treshold=1.0)
    detector.set_params(metrics=("quadratic_form",))
    with pytest.raises(NotFittedError):
        detector.detect(x)


# ------------------------------------------------------------------------------------- bad inputs
def test_bad_constructor_arguments(digits_cnn):
    clf = digits_cnn.classifier
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        FisherInformationDetector(clf.model)
    with pytest.raises(ValueError, match="metrics must be names from"):
        FisherInformationDetector(clf, metrics=("trace", "entropy"))
    with pytest.raises(ValueError, match="metrics must be a non-empty"):
        FisherInformationDetector(clf, metrics=())
    with pytest.raises(ValueError, match="output must be one of"):
        FisherInformationDetector(clf, output="softmax")
    with pytest.raises(ValueError, match="direction must be one of"):
        FisherInformationDetector(clf, direction="label")
    with pytest.raises(ValueError, match="params: unknown parameter names"):
        FisherInformationDetector(clf, params=("classifier.3.weight", "nope"))
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        FisherInformationDetector(clf, chunk_size=0)
    with pytest.raises(TypeError, match="estimator must be None, a scikit-learn classifier"):
        FisherInformationDetector(clf, estimator=StandardScaler())
    with pytest.raises(ValueError, match="top_eigenvector.*quadratic form only"):
        FisherInformationDetector(clf, metrics=("sensitivity",), direction="top_eigenvector")
    with pytest.raises(ValueError, match="classes must be one of"):
        FisherInformationDetector(clf, classes="rest")
    with pytest.raises(TypeError, match="normalize must be True or False"):
        FisherInformationDetector(clf, normalize=1)
    with pytest.raises(TypeError, match="fd_step must be a finite number > 0"):
        FisherInformationDetector(clf, fd_step="small")
    FisherInformationDetector(clf, params=("classifier.3.weight",), blockwise=False)  # valid


@pytest.mark.parametrize(
    "options",
    [
        {"normalize": False, "blockwise": True},
        {"direction": "top_eigenvector", "params": ("classifier.1.weight", "classifier.3.weight")},
        {"method": "finite_difference", "fd_step": 1e-4},
        {"classes": "predicted_vs_rest", "normalize": False},
    ],
)
def test_metric_options_pass_through(digits_cnn, options):
    from art_fisher.metrics import fisher_quadratic_form, fisher_trace

    clf = digits_cnn.classifier
    x = digits_cnn.x_test[:6]
    detector = FisherInformationDetector(clf, **options)
    values = _features.compute(clf, x, metrics=detector.metrics, settings=_features.options_of(detector), chunk_size=4)
    xt = torch.as_tensor(x).clone(memory_format=torch.contiguous_format)  # canonical strides (see _features)
    kwargs = {k: (list(v) if k == "params" else v) for k, v in options.items()}
    trace_kwargs = {k: v for k, v in kwargs.items() if k in ("params", "method", "fd_step", "output")}
    # float32, chunks of 4 against the whole batch: the summation order differs. The quadratic form's relative
    # difference reached 1.05e-5 on one machine (a ratio of Gram sums over every parameter), the trace's 1e-6.
    np.testing.assert_allclose(values["trace"], fisher_trace(clf.model, xt, **trace_kwargs).numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        values["quadratic_form"], fisher_quadratic_form(clf.model, xt, **kwargs).numpy(), rtol=1e-3
    )


@pytest.fixture
def metrics_forbidden(monkeypatch):
    """Fail the test if any Fisher metric is computed: argument errors must come before that work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("metrics computed before the arguments were checked")

    monkeypatch.setattr(_features, "compute", forbidden)


def test_bad_inputs_raise_before_any_metric_is_computed(digits_cnn, metrics_forbidden):
    clf = digits_cnn.classifier
    x = digits_cnn.x_test[:8]
    y = np.r_[np.zeros(4), np.ones(4)]
    detector = FisherInformationDetector(clf)
    with pytest.raises(NotFittedError):
        detector.detect(x)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*got \(8, 8, 8\)"):
        detector.fit(x[:, 0], y)
    bad = x.copy()
    bad[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        detector.fit(bad, y)
    bad[1, 0, 2, 3] = np.inf
    with pytest.raises(ValueError, match="finite"):
        detector.sensitivity_maps(bad)
    with pytest.raises(ValueError, match="detection labels 0"):
        detector.fit(x, np.arange(8) % 3)
    with pytest.raises(ValueError, match="x has 8 samples, y has 7"):
        detector.fit(x, y[:7])
    with pytest.raises(ValueError, match="both clean"):
        detector.fit(x, np.zeros(8))
    with pytest.raises(ValueError, match="one-hot"):
        detector.fit(x, np.ones((8, 2)))
    with pytest.raises(ValueError, match="batch_size"):
        detector.fit(x, y, batch_size=-1)


# --------------------------------------------------------------------------- clean-only calibration
def test_clean_only_fit_flags_the_target_rate_of_clean_inputs(digits_cnn, digits_attacks):
    """fit(x) without labels: the threshold is the clean conformal quantile of the metric (brute force)."""
    clf = digits_cnn.classifier
    x_cal, x_new = digits_cnn.x_test[:300], digits_cnn.x_test[300:]
    detector = FisherInformationDetector(clf, metrics=("trace",), target_fpr=0.1)
    detector.fit(x_cal)
    assert detector.calibration_ == "clean" and isinstance(detector.estimator_, QuantileOutlierDetector)
    trace = lambda x: _features.compute(  # noqa: E731
        clf, x, metrics=("trace",), settings=_features.options_of(detector), chunk_size=128
    )["trace"]
    threshold = np.sort(trace(x_cal))[math.ceil(0.9 * 301) - 1]
    report, flagged = detector.detect(x_new)
    np.testing.assert_array_equal(flagged, report["scores"]["trace"] > threshold)
    np.testing.assert_array_equal(flagged, report["decision_scores"] > report["threshold"])
    assert abs(flagged.mean() - 0.1) < 0.05  # 497 fresh clean digits
    _, adv = digits_attacks["deepfool"]
    assert detector.detect(adv)[1].mean() > 0.5  # higher Fisher information = adversarial


def test_clean_only_combines_metrics_and_accepts_an_outlier_detector(digits_cnn, digits_attacks):
    from sklearn.ensemble import IsolationForest

    clf = digits_cnn.classifier
    clean = digits_cnn.x_test[:200]
    detector = FisherInformationDetector(clf, metrics=("trace", "quadratic_form", "max_eigenvalue"))
    detector.fit(clean)
    assert detector.estimator_.polarity == ["higher", "higher", "higher"] and detector.estimator_.log
    assert detector.estimator_.train_fpr_ <= 0.05
    with_map = FisherInformationDetector(clf, metrics=("trace", "sensitivity"))
    with_map.fit(clean[:40])
    assert with_map.estimator_.polarity == ["higher", "higher", "higher", "higher", "none"]  # top_mass left out
    _, adv = digits_attacks["deepfool"]
    report, flagged = detector.detect(adv)
    assert flagged.mean() > 0.5 and np.all(np.isfinite(report["decision_scores"]))
    forest = FisherInformationDetector(clf, estimator=IsolationForest(contamination=0.1, random_state=0))
    forest.fit(clean)
    assert forest.calibration_ == "clean"
    assert 0.05 <= forest.detect(clean)[1].mean() <= 0.15


def test_label_mismatches_fail_before_any_metric_is_computed(digits_cnn, metrics_forbidden):
    from sklearn.ensemble import IsolationForest
    from sklearn.linear_model import LinearRegression

    clf = digits_cnn.classifier
    x = digits_cnn.x_test[:8]
    y = np.r_[np.zeros(4), np.ones(4)]
    from sklearn.linear_model import LogisticRegression

    for classifier_estimator in (LogisticRegression(), _DuckClassifier()):
        name = type(classifier_estimator).__qualname__
        with pytest.raises(ValueError, match=f"without labels.*{name} is a classifier that needs"):
            FisherInformationDetector(clf, estimator=classifier_estimator).fit(x)
    with pytest.raises(ValueError, match="outlier detector, fitted on clean inputs only"):
        FisherInformationDetector(clf, estimator=IsolationForest()).fit(x, y)
    with pytest.raises(TypeError, match="got LinearRegression, a regressor"):
        FisherInformationDetector(clf, estimator=LinearRegression())
    detector = FisherInformationDetector(clf)
    with pytest.raises(TypeError, match="got LinearRegression"):
        detector.set_params(estimator=LinearRegression())
    assert detector.estimator is None
    detector.estimator = LinearRegression()  # set behind the checks' back: fit refuses it before any work
    with pytest.raises(TypeError, match="got LinearRegression"):
        detector.fit(x, y)
    with pytest.raises(ValueError, match=r"target_fpr must be a finite number in \(0, 1\); got 0.0"):
        FisherInformationDetector(clf, target_fpr=0.0)


class _DuckClassifier:  # a classifier without scikit-learn's base classes or tags
    def fit(self, X, y):
        from sklearn.linear_model import LogisticRegression

        self.inner_ = LogisticRegression().fit(X, y)
        self.classes_ = self.inner_.classes_
        return self

    def predict(self, X):
        return self.inner_.predict(X)

    def decision_function(self, X):
        return self.inner_.decision_function(X)


def test_set_params_target_fpr_discards_a_fit_that_depends_on_it(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    x, y = _detection_set(clean, adv, np.arange(10))
    labelled = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",), threshold="estimator")
    labelled.fit(x, y)
    labelled.set_params(target_fpr=0.2)
    assert hasattr(labelled, "estimator_")
    at_target = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",))
    at_target.fit(x, y)
    at_target.set_params(target_fpr=0.2)
    assert not hasattr(at_target, "estimator_") and not hasattr(at_target, "threshold_")
    calibrated = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",))
    calibrated.fit(digits_cnn.x_test[:40])
    calibrated.set_params(target_fpr=0.2)
    assert not hasattr(calibrated, "estimator_")


# ------------------------------------------------------------------------------------ sample_weight
def test_sample_weight_reaches_both_default_estimators(digits_cnn, digits_attacks):
    """Integer weights fit the same detector as repeated samples (threshold and routed pipeline alike)."""
    clean, adv = digits_attacks["deepfool"]
    x, y = _detection_set(clean, adv, np.arange(20))
    weights = np.random.default_rng(0).integers(0, 4, size=len(x))
    weights[[0, -1]] = 1  # both classes keep weight
    for metrics in (("trace",), ("trace", "quadratic_form")):
        weighted = FisherInformationDetector(digits_cnn.classifier, metrics=metrics)
        weighted.fit(x, y, sample_weight=weights)
        repeated = FisherInformationDetector(digits_cnn.classifier, metrics=metrics)
        repeated.fit(np.repeat(x, weights, axis=0), np.repeat(y, weights))
        unweighted = FisherInformationDetector(digits_cnn.classifier, metrics=metrics)
        unweighted.fit(x, y)
        scores = [d.detect(x)[0]["decision_scores"] for d in (weighted, repeated, unweighted)]
        np.testing.assert_allclose(scores[0], scores[1], rtol=1e-4, atol=1e-6)
        assert not np.allclose(scores[0], scores[2]), metrics


def test_sample_weight_errors_come_before_any_metric(digits_cnn, metrics_forbidden):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = digits_cnn.classifier
    x = digits_cnn.x_test[:8]
    y = np.r_[np.zeros(4), np.ones(4)]
    with pytest.raises(ValueError, match=r"sample_weight must be numbers of shape \(8,\)"):
        FisherInformationDetector(clf).fit(x, y, sample_weight=np.ones(7))
    with pytest.raises(ValueError, match="finite and non-negative"):
        FisherInformationDetector(clf).fit(x, y, sample_weight=-np.ones(8))
    with pytest.raises(ValueError, match="sample_weight cannot reach estimator Pipeline.*metadata routing"):
        FisherInformationDetector(clf, estimator=make_pipeline(StandardScaler(), LogisticRegression())).fit(
            x, y, sample_weight=np.ones(8)
        )
    with pytest.raises(ValueError, match="sample_weight cannot reach estimator QuantileOutlierDetector"):
        FisherInformationDetector(clf).fit(x, sample_weight=np.ones(8))
    with pytest.raises(ValueError, match="does not take the keyword argument 'epochs'"):
        FisherInformationDetector(clf, estimator=LogisticRegression()).fit(x, y, epochs=3)


# -------------------------------------------------------------------------------- frozen, uint8
def test_frozen_model_works_by_default_and_by_name(digits_cnn):
    """A pretrained model under screening is often frozen: same metrics, and its flags stay frozen."""
    from art.estimators.classification import PyTorchClassifier

    x = digits_cnn.x_test[:24]
    frozen_model = copy.deepcopy(digits_cnn.classifier.model).requires_grad_(False)
    frozen = PyTorchClassifier(frozen_model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0))
    names = [n for n, _ in frozen_model.named_parameters()]
    reference = FisherFeatures(digits_cnn.classifier, metrics=("trace", "quadratic_form")).fit_transform(x)
    for params in (None, names, names[-2:]):
        values = FisherFeatures(frozen, metrics=("trace", "quadratic_form"), params=params).fit_transform(x)
        if params is None or params == names:
            np.testing.assert_allclose(values, reference, rtol=1e-5)
        else:
            assert np.all(values <= reference * (1 + 1e-5))  # a sub-block of F: smaller trace
    detector = FisherInformationDetector(frozen, metrics=("trace",))
    detector.fit(x)
    assert not any(p.requires_grad for p in frozen_model.parameters())
    assert all(p.grad is None for p in frozen_model.parameters())


def test_uint8_range_images_are_warned_about(digits_cnn):
    from art.estimators.classification import PyTorchClassifier

    clf = digits_cnn.classifier
    detector = FisherInformationDetector(clf, metrics=("trace",))
    pixels = np.round(digits_cnn.x_test[:6] * 255)
    with pytest.warns(UserWarning, match=r"looks like 8-bit images.*x / 255"):
        detector.sensitivity_maps(pixels)
    wide = PyTorchClassifier(clf.model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 255.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FisherInformationDetector(wide, metrics=("trace",)).sensitivity_maps(pixels)  # the model expects 0..255
        detector.sensitivity_maps(digits_cnn.x_test[:6])  # [0, 1] inputs


# ------------------------------------------------------------------------------ the Fisher detector
def _fit_set(digits_attacks, attack: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    clean, adv = digits_attacks[attack]
    return np.concatenate([clean[:n], adv[:n]]), np.repeat([0, 1], n)


def test_detector_threshold_is_its_features_supervised_threshold(digits_cnn, digits_attacks):
    x, y = _fit_set(digits_attacks, "fgsm", 40)
    detector = FisherInformationDetector(digits_cnn.classifier, target_fpr=0.1)
    detector.fit(x, y)
    report, flagged = detector.detect(x)
    features = np.column_stack([report["scores"][name] for name in report["feature_names"]])
    expected, clean_fpr = supervised_threshold(default_estimator(features.shape[1]), features, y, 0.1)
    assert detector.threshold_ == pytest.approx(expected, rel=1e-9) and detector.clean_fpr_ == clean_fpr
    np.testing.assert_array_equal(flagged, report["decision_scores"] > detector.threshold_)
    logit = detector.as_art_classifier().predict(x)[:, 0]
    np.testing.assert_array_equal(logit > 0, flagged)


def test_detector_on_held_out_clean_digits_flags_about_the_target(digits_cnn, digits_attacks):
    """Achieved FPR on clean digits no detector saw, against the estimator's own threshold."""
    x, y = _fit_set(digits_attacks, "pgd", 60)
    held_out = digits_cnn.x_test[160:]  # the attacks use the first 160 test digits
    rates = {}
    for threshold in ("target_fpr", "estimator"):
        detector = FisherInformationDetector(digits_cnn.classifier, target_fpr=0.05, threshold=threshold)
        detector.fit(x, y)
        rates[threshold] = float(np.mean(detector.detect(held_out)[1]))
    # 60 clean fit scores set the quantile (±0.03 at this size); held-out digits differ a little more
    assert rates["target_fpr"] <= 0.12, rates
    assert rates["estimator"] > rates["target_fpr"] + 0.05, rates


def test_a_number_as_threshold_and_invalid_thresholds(digits_cnn, digits_attacks):
    x, y = _fit_set(digits_attacks, "fgsm", 20)
    detector = FisherInformationDetector(digits_cnn.classifier, threshold=0.7)
    detector.fit(x, y)
    report, flagged = detector.detect(x)
    assert detector.threshold_ == report["threshold"] == 0.7 and detector.clean_fpr_ is None
    np.testing.assert_array_equal(flagged, report["decision_scores"] > 0.7)
    for bad in ("youden", True, float("nan"), None, [0.5]):
        with pytest.raises(ValueError, match="threshold must be one of"):
            FisherInformationDetector(digits_cnn.classifier, threshold=bad)


def test_detect_takes_a_tensor_that_requires_grad(digits_cnn, digits_attacks):
    """Before: RuntimeError "Can't call numpy() on Tensor that requires grad" from detect()."""
    from art_fisher.detection._detector import FisherInformationDetector

    clean, adv = digits_attacks["deepfool"]
    x = np.concatenate([clean[:8], adv[:8]])
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",))
    detector.fit(x, np.repeat([0, 1], 8))
    tensor = torch.as_tensor(x).requires_grad_(True)
    report, flagged = detector.detect(tensor)
    expected_report, expected = detector.detect(x)
    np.testing.assert_array_equal(flagged, expected)
    np.testing.assert_array_equal(report["decision_scores"], expected_report["decision_scores"])
    assert tensor.grad is None


def test_a_softmax_classifier_is_refused_by_the_detectors_and_the_attacker_loss():
    """Before: a classifier whose model ends in a softmax gave Fisher features ~95x too small, and energy /
    confidence / logit-margin values of probabilities, without a word."""
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.detection._detector import FisherInformationDetector
    from art_fisher.detection._logit import classifier_logits
    from art_fisher.detection._stacked import StackedDetector
    from tests.art_fisher.adaptive_cases import smooth_classifier

    clf, x = smooth_classifier("mlp")
    probs = PyTorchClassifier(
        torch.nn.Sequential(clf.model, torch.nn.Softmax(1)).eval(), torch.nn.CrossEntropyLoss(), clf.input_shape, 4,
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
