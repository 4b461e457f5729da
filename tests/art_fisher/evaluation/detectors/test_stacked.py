"""The evaluation's stacked entries: a StackedDetector fed by the run's feature cache, scoring as the plain one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_fisher import metrics as metrics_module
from art_fisher.detection import StackedDetector, _input_fisher
from art_fisher.detection import _layer_scores as fs
from art_fisher.evaluation.detectors._base import RunContext
from art_fisher.evaluation.detectors._fisher import FisherRun
from art_fisher.evaluation.detectors._input_fisher import InputFisherRun
from art_fisher.evaluation.detectors._stacked import StackedRun
from tests.art_fisher.adaptive_cases import smooth_classifier

PARTS = ("fisher", "confidence", "mahalanobis", "input_fisher")


@pytest.fixture(scope="module")
def run_data():
    clf, x = smooth_classifier("cnn")
    rng = np.random.default_rng(4)
    clean = x[:20]
    adv = np.clip(clean + rng.choice([-0.25, 0.25], size=clean.shape), 0, 1)
    return clf, x, clean, adv


def _context(clf, x) -> RunContext:
    return RunContext(
        classifier=clf, model=clf.model, x_background=x[20:], seed=0, device=torch.device("cpu"), batch_size=8,
        target_fpr=0.1, progress=False,
    )  # fmt: skip


@pytest.mark.parametrize("supervised", [True, False])
def test_stacked_runs_score_as_the_plain_detector_from_the_shared_cache(run_data, supervised, monkeypatch):
    clf, x, clean, adv = run_data
    xs, labels = np.concatenate([clean, adv]), np.repeat([0, 1], len(clean))
    fit = (xs, labels) if supervised else (clean, None)
    ctx = _context(clf, x)
    # the Fisher and input-Fisher detectors of the run compute the values the stacked one needs
    fisher, input_fisher = FisherRun(ctx, ("block_traces",)), InputFisherRun(ctx)
    fisher.fit(*fit)
    input_fisher.fit(*fit)
    fisher.detect(xs)
    input_fisher.detect(xs)
    first = StackedRun(ctx, parts=PARTS)
    first.fit(*fit)  # fits the class Gaussians on the context's reference images, once per run
    plain = StackedDetector(clf, parts=PARTS, target_fpr=0.1, chunk_size=8)
    plain.fit(*fit, x_reference=ctx.gaussian_images)
    want = plain.detect(xs)[0]["decision_scores"]
    np.testing.assert_allclose(first.detect(xs).score, want, rtol=1e-4, atol=1e-8)  # another chunking

    def forbidden(*args, **kwargs):
        raise AssertionError("computed again instead of taken from the run's cache")

    monkeypatch.setattr(metrics_module, "fisher_block_traces", forbidden)
    monkeypatch.setattr(fs.ClassGaussians, "fit", forbidden)
    monkeypatch.setattr(_input_fisher, "fisher_input_spectrum", forbidden)
    ablation = StackedRun(ctx, parts=PARTS)
    ablation.fit(*fit)
    scored = ablation.detect(xs)
    np.testing.assert_array_equal(scored.score, first.detect(xs).score)
    np.testing.assert_array_equal(scored.is_adversarial, scored.score > (ablation.detector.threshold_ or 0.0))
