"""The per-parameter-tensor trace features (``metrics=("block_traces",)``): values, names, fits, gradients, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_fisher.detection import _features
from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._estimators import FisherFeatures, LogTransformer
from tests.art_fisher.adaptive_cases import central_difference_check, smooth_classifier


def brute_force_block_traces(model: torch.nn.Module, x: np.ndarray, names: list[str]) -> np.ndarray:
    """``Σ_c p_c ‖∇_{θ_k} log p_c‖²`` per sample and tensor ``k``, one autograd call per sample and class (float64)."""
    params = dict(model.named_parameters())
    out = np.zeros((len(x), len(names)))
    for i, xi in enumerate(torch.as_tensor(x, dtype=torch.float64)):
        log_p = torch.log_softmax(model(xi[None]), dim=1)[0]
        for c in range(len(log_p)):
            grads = torch.autograd.grad(log_p[c], [params[n] for n in names], retain_graph=True)
            out[i] += log_p[c].exp().item() * np.array([g.pow(2).sum().item() for g in grads])
    return out


@pytest.fixture(scope="module")
def cnn():
    return smooth_classifier("cnn")


def test_block_trace_features_match_brute_force(cnn):
    clf, x = cnn
    names = [n for n, _ in clf.model.named_parameters()]
    features = FisherFeatures(clf, metrics=("block_traces",)).fit(x)
    got = features.transform(x[:6])
    want = brute_force_block_traces(clf.model, x[:6].astype(np.float32), names)  # the detector reads float32
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert list(features.get_feature_names_out()) == [f"block_traces[{n}]" for n in names]
    # with other metrics: the columns in the order asked, the traces summing to the trace
    both = FisherFeatures(clf, metrics=("trace", "block_traces")).fit(x).transform(x[:6])
    np.testing.assert_allclose(both[:, 1:].sum(1), both[:, 0], rtol=1e-10)


def test_block_trace_columns_follow_the_selected_and_the_frozen_parameters(cnn):
    clf, x = cnn
    one = FisherFeatures(clf, metrics=("block_traces",), params=("2.weight", "0.bias")).fit(x)
    assert list(one.get_feature_names_out()) == ["block_traces[0.bias]", "block_traces[2.weight]"]  # model order
    want = brute_force_block_traces(clf.model, x[:3].astype(np.float32), ["0.bias", "2.weight"])
    np.testing.assert_allclose(one.transform(x[:3]), want, rtol=1e-9)
    model = clf.model
    model.requires_grad_(False)
    try:  # a frozen model: every tensor counts
        frozen = FisherFeatures(clf, metrics=("block_traces",)).fit(x)
        assert len(frozen.get_feature_names_out()) == len(list(model.parameters()))
    finally:
        model.requires_grad_(True)


def test_feature_names_need_the_blocks():
    with pytest.raises(ValueError, match="one column per parameter tensor"):
        _features.feature_names(("block_traces",))
    assert _features.feature_polarities(("trace", "block_traces"), ("a", "b")) == ["higher"] * 3


def test_detector_on_block_traces_labelled_clean_only_gradient_and_file(cnn, tmp_path):
    clf, x = cnn
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    det = FisherInformationDetector(clf, metrics=("block_traces",))
    det.fit(x, y)
    assert isinstance(det.estimator_.steps[0][1], LogTransformer)  # the default: logs, standardised, logistic
    assert det.feature_names_ == [f"block_traces[{n}]" for n, _ in clf.model.named_parameters()]
    xs = np.random.default_rng(3).uniform(0.1, 0.9, size=(5, *x.shape[1:]))
    report, _flagged = det.detect(xs)
    art = det.as_art_classifier()
    logit = report["decision_scores"] - report["threshold"]  # 0 at the threshold that flags target_fpr of clean
    np.testing.assert_allclose(art.predict(xs)[:, 0], logit, rtol=1e-5, atol=1e-6)
    central_difference_check(lambda xx: art.predict(xx)[:, 0], art.class_gradient(xs)[:, 0], xs)

    path = tmp_path / "det.skops"
    det.save(path)
    loaded = FisherInformationDetector.load(path, clf)
    np.testing.assert_array_equal(loaded.detect(xs)[0]["decision_scores"], report["decision_scores"])

    clean = FisherInformationDetector(clf, metrics=("block_traces",), target_fpr=0.2)
    clean.fit(x)  # no labels: every tensor's trace is suspicious when high
    assert list(clean.estimator_.polarity) == ["higher"] * len(det.feature_names_)
    assert abs(float(np.mean(clean.detect(x)[1])) - 0.2) <= 0.05
    art_clean = clean.as_art_classifier()
    central_difference_check(lambda xx: art_clean.predict(xx)[:, 0], art_clean.class_gradient(xs)[:, 0], xs)
