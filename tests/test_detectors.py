"""Tests of :mod:`art_fisher.detectors` (and the shared feature extraction) on a digits CNN and ART attacks."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from art_fisher import _features
from art_fisher.detectors import DETECTOR_FORMAT, FisherInformationDetector, default_estimator
from art_fisher.estimators import FisherFeatures, ThresholdClassifier

SCALAR_METRICS = tuple(m for m in ("trace", "quadratic_form", "max_eigenvalue") if m in _features.METRICS)


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
    metrics = tuple(m for m in SCALAR_METRICS if m in _features.available_metrics())
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
    combined = _held_out_auc(
        f_clean, f_adv, default_columns, default_estimator(len(default_columns))
    )
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
    assert clf.direction_ == "higher"


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
    assert report["threshold"] == 0.0
    assert is_adv.dtype == bool and is_adv.shape == (len(x_test),)
    np.testing.assert_array_equal(is_adv, report["decision_scores"] > 0)
    assert roc_auc_score(y_test, report["decision_scores"]) >= MIN_AUC["deepfool"]
    assert isinstance(detector.estimator_, Pipeline)


def test_one_hot_labels_and_threshold_default(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    x, y = _detection_set(clean, adv, np.arange(30))
    a = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",))
    a.fit(x, y)
    b = FisherInformationDetector(digits_cnn.classifier, metrics=["trace"])
    b.fit(x, np.eye(2)[y], nb_epochs=5)  # ART's one-hot form; nb_epochs is accepted and ignored
    assert isinstance(a.estimator_, ThresholdClassifier)
    assert a.estimator_.threshold_ == b.estimator_.threshold_
    report, is_adv = a.detect(x)
    np.testing.assert_array_equal(is_adv, a.estimator_.predict(report["scores"]["trace"][:, None]) == 1)


def test_sensitivity_maps_and_their_features(digits_cnn):
    if "sensitivity" not in _features.available_metrics():
        pytest.skip("art_fisher.metrics has no fisher_sensitivity")
    x = digits_cnn.x_test[:6]
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("sensitivity",))
    maps = detector.sensitivity_maps(x, batch_size=4)
    assert maps.shape == x.shape
    values = _features.compute(
        digits_cnn.classifier, x, metrics=("sensitivity",), settings=_features.settings_of(detector), batch_size=6
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
    metrics = ("trace", "sensitivity") if "sensitivity" in _features.available_metrics() else ("trace",)
    settings = _features.settings_of(FisherInformationDetector(with_prep))
    a = _features.compute(with_prep, x, metrics=metrics, settings=settings, batch_size=5, reduce_maps=False)
    b = _features.compute(
        digits_cnn.classifier, (x - mean) / std, metrics=metrics, settings=settings, batch_size=5, reduce_maps=False
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
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",), batch_size=7, blockwise=True)
    params = detector.get_params()
    assert params["batch_size"] == 7 and params["metrics"] == ("trace",) and params["blockwise"] is True
    copy = FisherInformationDetector(**params)
    assert copy.get_params() == params
    copy.set_params(**params)
    assert copy.get_params() == params


def test_set_params_checks_and_keeps_or_discards_fit(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    x, y = _detection_set(clean, adv, np.arange(10))
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace",))
    detector.fit(x, y)
    detector.set_params(batch_size=3, metrics=["trace"])  # same features: the fit stays
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
    with pytest.raises(ValueError, match="params must name parameters"):
        FisherInformationDetector(clf, params=("classifier.3.weight", "nope"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        FisherInformationDetector(clf, batch_size=0)
    with pytest.raises(TypeError, match="estimator must be None, a scikit-learn classifier"):
        FisherInformationDetector(clf, estimator=StandardScaler())
    with pytest.raises(ValueError, match="top_eigenvector.*quadratic form only"):
        FisherInformationDetector(clf, metrics=("sensitivity",), direction="top_eigenvector")
    with pytest.raises(ValueError, match="classes must be one of"):
        FisherInformationDetector(clf, classes="rest")
    with pytest.raises(ValueError, match="normalize must be True or False"):
        FisherInformationDetector(clf, normalize=1)
    FisherInformationDetector(clf, params=("classifier.3.weight",), blockwise=False)  # valid


@pytest.mark.parametrize(
    "options",
    [
        {"normalize": False, "blockwise": True},
        {"direction": "top_eigenvector", "params": ("classifier.1.weight", "classifier.3.weight")},
        {"method": "finite_difference", "epsilon": 1e-4},
        {"classes": "predicted_vs_rest", "normalize": False},
    ],
)
def test_metric_options_pass_through(digits_cnn, options):
    from art_fisher.metrics import fisher_quadratic_form, fisher_trace

    clf = digits_cnn.classifier
    x = digits_cnn.x_test[:6]
    detector = FisherInformationDetector(clf, **options)
    values = _features.compute(
        clf, x, metrics=detector.metrics, settings=_features.settings_of(detector), batch_size=4
    )
    xt = torch.as_tensor(x).clone(memory_format=torch.contiguous_format)  # canonical strides (see _features)
    kwargs = {k: (list(v) if k == "params" else v) for k, v in options.items()}
    trace_kwargs = {k: v for k, v in kwargs.items() if k in ("params", "method", "epsilon", "output")}
    np.testing.assert_allclose(values["trace"], fisher_trace(clf.model, xt, **trace_kwargs).numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        values["quadratic_form"], fisher_quadratic_form(clf.model, xt, **kwargs).numpy(), rtol=1e-5
    )


def test_bad_inputs_raise_before_any_metric_is_computed(digits_cnn, monkeypatch):
    clf = digits_cnn.classifier
    x = digits_cnn.x_test[:8]
    y = np.r_[np.zeros(4), np.ones(4)]
    detector = FisherInformationDetector(clf)
    with pytest.raises(NotFittedError):
        detector.detect(x)

    def forbidden(*args, **kwargs):
        raise AssertionError("metrics computed before the inputs were checked")

    monkeypatch.setattr(_features, "compute", forbidden)
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


# ------------------------------------------------------------------------------------ persistence
@pytest.fixture(scope="module")
def fitted_detector(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["deepfool"]
    x, y = _detection_set(clean, adv, np.arange(16))
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace", "quadratic_form"))
    detector.fit(x, y)
    return detector, x


@pytest.mark.parametrize("estimator", [None, ThresholdClassifier(strategy="target_fpr", target_fpr=0.1)])
def test_save_load_round_trip_gives_identical_decisions(digits_cnn, digits_attacks, tmp_path, estimator):
    clean, adv = digits_attacks["deepfool"]
    x, y = _detection_set(clean, adv, np.arange(16))
    detector = FisherInformationDetector(digits_cnn.classifier, estimator=estimator, batch_size=16)
    detector.fit(x, y)
    path = tmp_path / "detector.skops"
    detector.save(path)
    loaded = FisherInformationDetector.load(path, digits_cnn.classifier)
    assert loaded.get_params().keys() == detector.get_params().keys()
    for key, value in detector.get_params().items():
        if key != "estimator":
            assert loaded.get_params()[key] == value, key
    (r1, d1), (r2, d2) = detector.detect(x), loaded.detect(x)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(r1["decision_scores"], r2["decision_scores"])
    with zipfile.ZipFile(path) as archive:  # the learned state only: no weights, no pickle
        assert not any(name.endswith((".pkl", ".pt", ".model")) for name in archive.namelist())
        assert sum(info.file_size for info in archive.infolist()) < 200_000


def test_load_refuses_other_files_without_running_them(digits_cnn, fitted_detector, tmp_path):
    import skops.io as sio

    clf = digits_cnn.classifier
    marker = tmp_path / "executed"
    payload = tmp_path / "evil.skops"
    payload.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ValueError, match="not a saved FisherInformationDetector"):
        FisherInformationDetector.load(payload, clf)
    assert not marker.exists()

    other = tmp_path / "other.skops"
    sio.dump({"format": "something else", "format_version": 1}, other)
    with pytest.raises(ValueError, match="not a saved FisherInformationDetector"):
        FisherInformationDetector.load(other, clf)

    detector, _ = fitted_detector
    good = tmp_path / "good.skops"
    detector.save(good)
    state = sio.load(good, trusted=sio.get_untrusted_types(file=good))
    assert state["format"] == DETECTOR_FORMAT
    state["format_version"] = 99
    newer = tmp_path / "newer.skops"
    sio.dump(state, newer)
    with pytest.raises(ValueError, match="format version 99"):
        FisherInformationDetector.load(newer, clf)

    state["format_version"] = 1
    state["estimator_"] = _Unknown()
    untrusted = tmp_path / "untrusted.skops"
    sio.dump(state, untrusted)
    with pytest.raises(ValueError, match="not trusted.*_Unknown"):
        FisherInformationDetector.load(untrusted, clf)


def test_load_checks_the_classifier(fitted_detector, tmp_path):
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.models import SmallCNN

    detector, _ = fitted_detector
    path = tmp_path / "d.skops"
    detector.save(path)
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        FisherInformationDetector.load(path, object())
    other = PyTorchClassifier(SmallCNN(n_classes=3), torch.nn.CrossEntropyLoss(), (1, 8, 8), 3, device_type="cpu")
    with pytest.raises(ValueError, match="3 classes"):
        FisherInformationDetector.load(path, other)
    with pytest.raises(NotFittedError):
        FisherInformationDetector(detector.classifier).save(tmp_path / "unfitted.skops")


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Unknown:
    pass


@pytest.mark.slow
def test_example_walkthrough_runs():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "detector_in_art_workflow.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "identical decisions" in proc.stdout and "held-out ROC-AUC" in proc.stdout
