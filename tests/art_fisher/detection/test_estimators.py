"""The scikit-learn estimators: the threshold classifier, the Fisher feature transformer and LogTransformer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_curve
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from art_fisher.detection import _features
from art_fisher.detection._estimators import FisherFeatures, LogTransformer, ThresholdClassifier


@parametrize_with_checks(
    [
        ThresholdClassifier(),
        ThresholdClassifier(strategy="accuracy"),
        ThresholdClassifier(strategy="target_fpr", target_fpr=0.1),
    ]
)
def test_sklearn_conventions(estimator, check):
    check(estimator)


def _scores(seed: int = 0, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    s = rng.normal(size=n) + 1.5 * y
    return s[:, None], y


def _brute_force(s: np.ndarray, y: np.ndarray, criterion) -> float:
    """Best value of ``criterion(y, pred)`` over every rule ``s > t`` (t at every score and below all)."""
    ts = np.concatenate([[s.min() - 1], np.unique(s)])
    return max(criterion(y, (s > t).astype(int)) for t in ts)


def test_youden_threshold_is_optimal_and_between_scores():
    X, y = _scores()
    clf = ThresholdClassifier().fit(X, y)
    fpr, tpr, _ = roc_curve(y, X[:, 0])
    assert clf.criterion_ == pytest.approx(np.max(tpr - fpr))
    pred = clf.predict(X)
    assert np.mean(pred[y == 1]) - np.mean(pred[y == 0]) == pytest.approx(clf.criterion_)
    assert clf.polarity_ == "higher"
    assert not np.any(X[:, 0] == clf.threshold_)  # a midpoint, never a training score


def test_balanced_accuracy_selects_the_youden_threshold():
    X, y = _scores(1, 150)
    ba = ThresholdClassifier(strategy="balanced_accuracy").fit(X, y)
    yj = ThresholdClassifier(strategy="youden").fit(X, y)
    assert ba.threshold_ == yj.threshold_
    assert balanced_accuracy_score(y, ba.predict(X)) == pytest.approx(_brute_force(X[:, 0], y, balanced_accuracy_score))


def test_accuracy_strategy_is_optimal_on_imbalanced_data():
    X, y = _scores(2, 200)
    keep = np.r_[np.arange(100), np.arange(100, 130)]  # 100 negatives, 30 positives
    X, y = X[keep], y[keep]
    clf = ThresholdClassifier(strategy="accuracy").fit(X, y)
    acc = np.mean(clf.predict(X) == y)
    assert acc == pytest.approx(_brute_force(X[:, 0], y, lambda a, b: np.mean(a == b)))


@pytest.mark.parametrize("target", [0.0, 0.05, 0.2, 1.0])
def test_target_fpr_is_respected_and_tpr_maximal(target):
    X, y = _scores(3)
    clf = ThresholdClassifier(strategy="target_fpr", target_fpr=target).fit(X, y)
    pred = clf.predict(X)
    fpr, tpr = np.mean(pred[y == 0]), np.mean(pred[y == 1])
    assert fpr <= target
    # no threshold with a training FPR <= target reaches a higher TPR
    roc_fpr, roc_tpr, _ = roc_curve(y, X[:, 0])
    assert tpr == pytest.approx(np.max(roc_tpr[roc_fpr <= target]))


def test_polarity_auto_flips_for_low_scores_and_fixed_polarity_is_kept():
    X, y = _scores(4)
    auto = ThresholdClassifier().fit(-X, y)
    assert auto.polarity_ == "lower"
    assert np.array_equal(auto.predict(-X), ThresholdClassifier().fit(X, y).predict(X))
    fixed = ThresholdClassifier(polarity="higher").fit(-X, y)
    assert fixed.polarity_ == "higher"
    assert np.mean(fixed.predict(-X) == y) < 0.6  # the wrong polarity, as asked


def test_decision_function_and_proba_agree_with_predict():
    X, y = _scores(5)
    clf = ThresholdClassifier(polarity="lower").fit(-X, y)
    d = clf.decision_function(-X)
    assert np.array_equal(clf.predict(-X), (d > 0).astype(int))
    np.testing.assert_allclose(d, clf.threshold_ + X[:, 0])
    proba = clf.predict_proba(-X)
    assert np.array_equal(np.argmax(proba, axis=1), clf.predict(-X))
    assert clf.score(-X, y) == np.mean(clf.predict(-X) == y)


def test_several_columns_pick_the_informative_one():
    X, y = _scores(6)
    noise = np.random.default_rng(0).normal(size=X.shape)
    clf = ThresholdClassifier().fit(np.column_stack([noise, X]), y)
    assert clf.feature_index_ == 1
    assert clf.n_features_in_ == 2


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"strategy": "f1"}, ValueError, "strategy must be one of"),
        ({"polarity": "up"}, ValueError, "polarity must be one of"),
        ({"strategy": "target_fpr"}, TypeError, "target_fpr must be a finite number in .*; got None"),
        ({"strategy": "target_fpr", "target_fpr": 1.5}, ValueError, r"target_fpr must be a finite number in \[0, 1\]"),
        ({"target_fpr": 0.1}, ValueError, "only used with strategy='target_fpr'"),
    ],
)
def test_bad_parameters_raise_in_fit(params, error, match):
    X, y = _scores()
    with pytest.raises(error, match=match):
        ThresholdClassifier(**params).fit(X, y)


def test_multiclass_and_single_class_targets_raise():
    X, _ = _scores(n=30)
    with pytest.raises(ValueError, match="Only binary classification"):
        ThresholdClassifier().fit(X, np.arange(30) % 3)
    with pytest.raises(ValueError, match="one class"):
        ThresholdClassifier().fit(X, np.ones(30))


def test_sample_weight_is_a_count_of_samples():
    X, y = _scores(7, 60)
    weights = np.random.default_rng(1).integers(0, 4, size=len(y))
    for strategy in ("youden", "accuracy"):
        weighted = ThresholdClassifier(strategy=strategy).fit(X, y, sample_weight=weights)
        repeated = ThresholdClassifier(strategy=strategy).fit(np.repeat(X, weights, axis=0), np.repeat(y, weights))
        assert weighted.threshold_ == repeated.threshold_ and weighted.criterion_ == pytest.approx(repeated.criterion_)
        np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X))
    # Weighting the clean (0) class up makes the accuracy-optimal threshold stricter.
    heavy = np.where(y == 0, 10.0, 1.0)
    assert ThresholdClassifier(strategy="accuracy").fit(X, y, sample_weight=heavy).threshold_ > (
        ThresholdClassifier(strategy="accuracy").fit(X, y).threshold_
    )
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        ThresholdClassifier().fit(X, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        ThresholdClassifier().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="positive weight on samples of both classes"):
        ThresholdClassifier().fit(X, y, sample_weight=(y == 1).astype(float))


# ------------------------------------------------------------------------------------ FisherFeatures
def test_fisher_features_in_pipeline_and_grid_search(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["fgsm"]
    n = 20
    x = np.concatenate([clean[:n], adv[:n]])
    y = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]
    features = FisherFeatures(digits_cnn.classifier, metrics=("trace", "max_eigenvalue"), chunk_size=32)
    pipe = Pipeline([("fisher", features), ("scale", StandardScaler()), ("lr", LogisticRegression())])
    search = GridSearchCV(pipe, {"lr__C": [0.1, 10.0]}, cv=2, scoring="roc_auc").fit(x, y)
    assert search.best_estimator_.named_steps["fisher"].classifier is digits_cnn.classifier  # shared, not copied
    assert search.predict(x).shape == (len(x),)
    assert search.best_score_ > 0.6
    assert clone(features).classifier is digits_cnn.classifier
    np.testing.assert_array_equal(features.get_feature_names_out(), ["trace", "max_eigenvalue"])
    values = _features.compute(
        digits_cnn.classifier,
        x[:5],
        metrics=("trace", "max_eigenvalue"),
        settings=_features.options_of(features),
        chunk_size=5,
    )
    np.testing.assert_allclose(
        features.fit_transform(x[:5]), np.column_stack([values["trace"], values["max_eigenvalue"]]), rtol=1e-4
    )


def test_fisher_features_bad_input(digits_cnn):
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        FisherFeatures(digits_cnn.classifier.model).fit(digits_cnn.x_test[:2])
    with pytest.raises(ValueError, match="X must have shape"):
        FisherFeatures(digits_cnn.classifier).transform(digits_cnn.x_test[:2, 0])
    with pytest.raises(ValueError, match="metrics must be names"):
        FisherFeatures(digits_cnn.classifier, metrics=("hessian",)).fit(digits_cnn.x_test[:2])


def test_detector_and_transformer_share_one_options_object(digits_cnn):
    """Same option names, defaults, checks and messages for FisherFeatures and the detector."""
    import inspect

    from art_fisher.detection._detector import FisherInformationDetector

    for cls in (FisherFeatures, FisherInformationDetector):
        signature = inspect.signature(cls.__init__).parameters
        for name in _features.OPTION_NAMES:
            assert signature[name].default == getattr(_features.DEFAULT_OPTIONS, name), (cls, name)
    clf = digits_cnn.classifier
    for bad, error in (
        ({"classes": "rest"}, ValueError),
        ({"normalize": 1}, TypeError),
        ({"fd_step": 0.0}, ValueError),
    ):
        messages = []
        for build in (
            lambda: FisherFeatures(clf, **bad).fit(digits_cnn.x_test[:2]),
            lambda: FisherInformationDetector(clf, **bad),
        ):
            with pytest.raises(error) as info:
                build()
            messages.append(str(info.value))
        assert messages[0] == messages[1]
    options = _features.options_of(FisherFeatures(clf, metrics=["trace"], params=["classifier.3.weight"]))
    assert options.metrics == ("trace",) and options.params == ("classifier.3.weight",)
    assert hash(options) == hash(
        _features.options_of(FisherInformationDetector(clf, metrics=("trace",), params=("classifier.3.weight",)))
    )


@parametrize_with_checks([LogTransformer()])
def test_log_transformer_sklearn_conventions(estimator, check):
    check(estimator)


def test_values_and_floor():
    X = np.array([[1e-12, 0.0, 3.0], [2.0, 0.0, 0.0], [5.0, 0.0, 7.0]])
    t = LogTransformer().fit(X)
    np.testing.assert_array_equal(t.floor_, [0.5e-12, np.finfo(np.float64).tiny, 1.5])
    out = t.transform(np.array([[0.0, 0.0, 2.0], [4.0, 1.0, 0.0]]))
    expected = np.log([[0.5e-12, np.finfo(np.float64).tiny, 2.0], [4.0, 1.0, 1.5]])
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    assert np.all(np.isfinite(out))


def test_negative_input_is_refused_naming_the_values():
    t = LogTransformer().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"non-negative.*1 negative values \(smallest -2\)"):
        t.transform(np.array([[1.0, -2.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        LogTransformer().fit(np.array([[-1.0], [1.0]]))
