"""The input-Fisher detectors: features are the log-eigenvalues of G(x), fitted as the module says, differentiable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_fisher import fisher_input_spectrum
from art_fisher.detection._input_fisher import (
    feature_count,
    input_fisher_features,
    spectrum_features,
    spectrum_rank,
)
from art_fisher.evaluation import DEFAULT_DETECTORS, DETECTORS, RunContext
from art_fisher.evaluation._attacks import adaptive_detectors
from art_fisher.evaluation.detectors._input_fisher import InputFisherRun
from tests.art_fisher.adaptive_cases import central_difference_check, smooth_classifier


@pytest.fixture(scope="module")
def context():
    clf, x = smooth_classifier("cnn")  # float64, 4 classes: 3 eigenvalues
    ctx = RunContext(
        classifier=clf, model=clf.model, x_background=x[:10], seed=0, device=torch.device("cpu"), batch_size=8,
        target_fpr=0.1, progress=False,
    )  # fmt: skip
    rng = np.random.default_rng(5)
    clean = x[10:]
    adv = np.clip(clean + rng.choice([-0.3, 0.3], size=clean.shape), 0, 1)
    return ctx, clean, adv


def test_features_are_the_log_top_eigenvalue_and_trace(context):
    ctx, clean, _ = context
    clf = ctx.classifier
    assert feature_count(clf, "spectrum") == 2 and feature_count(clf, "top") == 1 and spectrum_rank(clf) == 3
    f = input_fisher_features(clf, clean[:6], chunk_size=4)
    values = fisher_input_spectrum(clf.model, torch.as_tensor(clean[:6]), k=3).values.numpy()
    np.testing.assert_allclose(f, np.log(np.column_stack([values[:, 0], values.sum(1)])), rtol=1e-12)
    np.testing.assert_allclose(input_fisher_features(clf, clean[:6], features="top"), f[:, :1], rtol=1e-12)
    cache = ctx.feature_cache  # the run's, shared with the stacked detector's input_fisher part
    cached = input_fisher_features(clf, clean[:6], chunk_size=8, source=cache)
    np.testing.assert_allclose(cached, f, rtol=1e-12)  # another chunking
    spent, cost = cache.seconds_spent, cache.seconds_cost
    again = input_fisher_features(clf, clean[:6], features="top", source=cache)
    np.testing.assert_array_equal(again, cached[:, :1])
    assert spent > 0 and cost > 0 and cache.seconds_spent == spent  # looked up, not computed again
    with pytest.raises(ValueError, match="features must be one of"):
        feature_count(clf, "all")


def test_rank_one_input_fisher_has_its_trace_equal_to_its_top_eigenvalue():
    model = torch.nn.Sequential(torch.nn.Linear(5, 1), torch.nn.Tanh(), torch.nn.Linear(1, 4)).double()  # rank 1
    f = spectrum_features(model, torch.randn(3, 5, dtype=torch.float64), 3)
    assert bool(torch.isfinite(f).all())
    torch.testing.assert_close(f[:, 0], f[:, 1], rtol=1e-12, atol=0)


@pytest.mark.parametrize(("features", "supervised"), [("spectrum", True), ("spectrum", False), ("top", True)])
def test_fitted_as_documented_and_the_logit_has_exact_gradients(context, features, supervised):
    ctx, clean, adv = context
    run = InputFisherRun(ctx, features=features)
    x = np.concatenate([clean, adv])
    run.fit(x, np.repeat([0, 1], len(clean))) if supervised else run.fit(clean, None)
    scored = run.detect(x)
    threshold = run.threshold if supervised else 0.0
    np.testing.assert_array_equal(scored.is_adversarial, scored.score > threshold)
    assert scored.seconds is not None and scored.seconds > 0
    if not supervised:
        assert run.detect(clean).is_adversarial.mean() <= ctx.target_fpr + 1 / len(clean)
    logit = run.detection_logit()
    np.testing.assert_allclose(logit.predict(adv)[:, 0], scored.score[len(clean) :] - threshold, rtol=1e-8, atol=1e-10)
    g = logit.class_gradient(adv[:4])[:, 0]
    central_difference_check(lambda xx: logit.predict(xx)[:, 0], g, adv[:4], tol=1e-5)


def test_registry_entries():
    assert {"fisher_input", "fisher_input_clean"} <= set(DEFAULT_DETECTORS)
    assert "fisher_input_top" not in DEFAULT_DETECTORS and "fisher_input_top_clean" in DETECTORS
    assert DETECTORS["fisher_input"].supervised and not DETECTORS["fisher_input_clean"].supervised
    names = ["fisher_input", "fisher_input_clean", "stacked_without_sensitivity"]
    assert adaptive_detectors(names, explicit=True) == names
    assert "stacked_without_input_fisher" in DETECTORS and "stacked_clean_without_input_fisher" in DETECTORS
