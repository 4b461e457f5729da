"""KD+BU (Feinman et al. 2017) and feature squeezing (Xu et al. 2018) against their papers' formulas, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_fisher.evaluation import DEFAULT_DETECTORS, DETECTORS, RunContext
from art_fisher.evaluation.detectors._feature_squeezing import (
    FeatureSqueezingRun,
    bit_depth,
    median_smoothing,
    squeezing_scores,
)
from art_fisher.evaluation.detectors._kd_bu import KdBuRun, bayesian_uncertainty, hidden_features
from tests.art_fisher.adaptive_cases import smooth_classifier


def _context(clf, x_background) -> RunContext:
    return RunContext(
        classifier=clf, model=clf.model, x_background=x_background, seed=3, device=torch.device("cpu"), batch_size=8,
        target_fpr=0.1, progress=False,
    )  # fmt: skip


def test_kernel_density_is_the_gaussian_kde_of_the_predicted_class():
    clf, x = smooth_classifier("cnn")
    model = clf.model  # Conv, Softplus, Conv, Tanh, Flatten, Linear: the last hidden layer is the Flatten output
    run = KdBuRun(_context(clf, x[:25]), bandwidth=0.7, samples=4)
    with torch.no_grad():
        ref = model[:5](torch.as_tensor(x[:25])).numpy()
        ref_pred = model(torch.as_tensor(x[:25])).argmax(1).numpy()
        h = model[:5](torch.as_tensor(x[25:])).numpy()
        pred = model(torch.as_tensor(x[25:])).argmax(1).numpy()
    sigma, d = 0.7, h.shape[1]
    want = []
    for hi, t in zip(h, pred, strict=True):
        pool = ref[ref_pred == t] if np.any(ref_pred == t) else ref  # an unseen class: all reference images
        sq = ((pool - hi) ** 2).sum(1)
        want.append(np.log(np.mean(np.exp(-sq / (2 * sigma**2)))) - d / 2 * np.log(2 * np.pi * sigma**2))
    np.testing.assert_allclose(run.features(x[25:])[:, 0], want, rtol=1e-9)
    hh, _ = hidden_features(model, torch.as_tensor(x[25:]))
    np.testing.assert_allclose(hh.detach().numpy(), h)


def test_bayesian_uncertainty_with_dropout_injected_on_the_last_hidden_layer():
    clf, x = smooth_classifier("mlp")  # Flatten, Linear, Tanh, Linear: no dropout of its own
    model, xt = clf.model, torch.as_tensor(x[:5])
    state = torch.random.get_rng_state()
    got = bayesian_uncertainty(model, xt, samples=6, rate=0.5, seed=11)
    assert torch.equal(state, torch.random.get_rng_state()) and not model.training
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        h = model[:3](xt)
        probs = []
        for _ in range(6):
            mask = torch.empty_like(h).bernoulli_(0.5, generator=generator)
            probs.append(torch.softmax(model[3](h * mask / 0.5), 1).numpy())
    p = np.stack(probs)  # (T, N, C)
    want = np.mean(np.sum(p * p, axis=2), axis=0) - np.sum(p.mean(0) ** 2, axis=1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    assert np.all(want > 0)


def test_a_model_with_dropout_uses_its_own_modules_in_training_mode_only_for_the_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    u = bayesian_uncertainty(model, x, samples=8, seed=2)
    assert bool((u > 0).all()) and not model[2].training
    torch.testing.assert_close(u, bayesian_uncertainty(model, x, samples=8, seed=2))
    with torch.no_grad():
        deterministic = torch.softmax(model(x), 1)
    torch.testing.assert_close(deterministic, torch.softmax(model(x), 1))


def test_kd_bu_is_supervised_logistic_regression_on_the_two_scores():
    clf, x = smooth_classifier("cnn")
    run = KdBuRun(_context(clf, x[:20]), samples=5)
    clean = x[20:]
    adv = np.clip(clean + np.random.default_rng(0).choice([-0.3, 0.3], size=clean.shape), 0, 1)
    run.fit(np.concatenate([clean, adv]), np.repeat([0, 1], len(clean)))
    f = run.features(adv)
    np.testing.assert_allclose(run.detect(adv).score, run.estimator.decision_function(f), rtol=1e-12)
    with pytest.raises(ValueError, match="clean-only"):
        run.fit(clean, None)
    with pytest.raises(ValueError, match="nn.Linear"):
        KdBuRun(_context(_conv_only_classifier(), x[:4]))


def _conv_only_classifier() -> PyTorchClassifier:
    model = nn.Sequential(nn.Conv2d(1, 4, 6), nn.Flatten()).double()
    return PyTorchClassifier(model, nn.CrossEntropyLoss(), (1, 6, 6), 4, clip_values=(0.0, 1.0))


def test_bit_depth_and_2x2_median_by_hand():
    x = np.array([[[[0.1, 0.6, 0.49], [0.9, 0.3, 0.51]]]])  # (1, 1, 2, 3)
    np.testing.assert_array_equal(bit_depth(x, 1, (0.0, 1.0)), [[[[0, 1, 0], [1, 0, 1]]]])
    np.testing.assert_allclose(bit_depth(x, 2, (0.0, 1.0)), np.round(x * 3) / 3)
    np.testing.assert_allclose(bit_depth(2 * x - 1, 1, (-1.0, 1.0)), 2 * bit_depth(x, 1, (0.0, 1.0)) - 1)
    img = np.random.default_rng(0).uniform(size=(2, 3, 5, 4))
    want = np.empty_like(img)
    for i in range(5):
        for j in range(4):
            rows, cols = [max(i - 1, 0), i], [max(j - 1, 0), j]  # the window {i-1, i} x {j-1, j}, reflected
            window = img[:, :, rows][:, :, :, cols].reshape(2, 3, 4)
            want[:, :, i, j] = np.sort(window, axis=-1)[..., 2]  # the upper middle of four values
    np.testing.assert_allclose(median_smoothing(img), want)


def test_squeezing_score_is_the_largest_l1_distance_and_is_thresholded_on_clean_inputs():
    clf, x = smooth_classifier("cnn")

    def softmax(a):
        z = clf.predict(a).astype(np.float64)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p = softmax(x)
    d_bits = np.abs(p - softmax((x > 0.5).astype(x.dtype))).sum(1)  # 1 bit for a single-channel image
    d_median = np.abs(p - softmax(median_smoothing(x))).sum(1)
    np.testing.assert_allclose(squeezing_scores(clf, x, batch_size=7), np.maximum(d_bits, d_median), rtol=1e-9)
    run = FeatureSqueezingRun(_context(clf, x[:5]))
    run.fit(x[:30], None)
    assert run.detect(x[:30]).is_adversarial.mean() <= 0.1 + 1 / 30
    flagged = run.detect(x[:30]).is_adversarial
    score = np.maximum(d_bits, d_median)[:30]
    assert np.all(score[flagged] > score[~flagged].max())


def test_registry_entries():
    assert {"kd_bu", "feature_squeezing"} <= set(DEFAULT_DETECTORS)
    assert DETECTORS["kd_bu"].supervised and not DETECTORS["feature_squeezing"].supervised
    assert DETECTORS["kd_bu"].no_gradient and DETECTORS["feature_squeezing"].no_gradient
