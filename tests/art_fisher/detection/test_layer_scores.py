"""The layer-density scores (Mahalanobis, LID, energy) against their papers' definitions and their adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from art_fisher.detection import _layer_scores as fs
from art_fisher.evaluation import DETECTORS, RunContext
from art_fisher.evaluation._attacks import adaptive_detectors, shifted_logit
from art_fisher.evaluation.detectors._layer_baselines import EnergyRun, LIDRun, MahalanobisRun
from tests.art_fisher.adaptive_cases import central_difference_check, smooth_classifier


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_energy_is_minus_t_logsumexp(temperature):
    z = np.random.default_rng(0).normal(size=(5, 4)) * 3
    want = -temperature * np.log(np.exp(z / temperature).sum(axis=1))
    got = fs.energy_score(torch.as_tensor(z), temperature).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        fs.energy_score(torch.as_tensor(z), 0.0)


def test_class_gaussians_tied_covariance_and_min_distance_by_hand():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(60, 3)) + np.repeat(np.eye(3) * 4, 20, axis=0)
    y = np.repeat([0, 1, 2], 20)
    g = fs.ClassGaussians.fit(f, y, n_classes=3)
    means = np.stack([f[y == c].mean(0) for c in range(3)])
    cov = sum((f[y == c] - means[c]).T @ (f[y == c] - means[c]) for c in range(3)) / 60
    np.testing.assert_allclose(g.means, means, rtol=1e-12)
    np.testing.assert_allclose(g.precision, np.linalg.inv(cov), rtol=1e-8)
    x = rng.normal(size=(7, 3)) * 3
    dist = np.array([[(xi - m) @ np.linalg.inv(cov) @ (xi - m) for m in means] for xi in x])
    score, closest = g.scores(torch.as_tensor(x))
    np.testing.assert_allclose(score.numpy(), -dist.min(1), rtol=1e-8)
    np.testing.assert_array_equal(closest.numpy(), dist.argmin(1))
    with pytest.raises(ValueError, match="range"):
        fs.ClassGaussians.fit(f, y + 1, n_classes=3)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double().eval()


def test_layers_and_activations():
    model = _tiny_model()
    assert fs.feature_layers(model) == ["1", "logits"]
    x = torch.randn(4, 3, dtype=torch.float64)
    acts = fs.layer_activations(model, x, ["1", "logits"])
    np.testing.assert_allclose(acts["1"].detach().numpy(), torch.tanh(model[0](x)).detach().numpy())
    np.testing.assert_allclose(acts["logits"].detach().numpy(), model(x).detach().numpy())
    with pytest.raises(ValueError, match="unknown"):
        fs.layer_activations(model, x, ["7"])


def test_mahalanobis_input_preprocessing_is_a_signed_gradient_step_on_the_score():
    model = _tiny_model()
    rng = np.random.default_rng(2)
    train = rng.uniform(size=(30, 3))
    feats = np.tanh(train @ model[0].weight.detach().numpy().T + model[0].bias.detach().numpy())
    g = {"1": fs.ClassGaussians.fit(feats, rng.integers(0, 2, 30), 2)}
    x = rng.uniform(size=(4, 3))

    def score(xx):  # float64 numpy oracle of M(x) on the layer
        h = np.tanh(xx @ model[0].weight.detach().numpy().T + model[0].bias.detach().numpy())
        d = np.stack([np.einsum("nd,de,ne->n", h - m, g["1"].precision, h - m) for m in g["1"].means], 1)
        return -d.min(1)

    grad = np.stack([[(score(x + 1e-6 * e) - score(x - 1e-6 * e))[i] / 2e-6 for e in np.eye(3)] for i in range(4)])
    want = score(x + 0.01 * np.sign(grad))
    got = fs.mahalanobis_scores(model, torch.as_tensor(x), g, noise=0.01)[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert np.all(got >= score(x) - 1e-12)  # the step raises the confidence score
    np.testing.assert_allclose(fs.mahalanobis_scores(model, torch.as_tensor(x), g)[:, 0].detach().numpy(), score(x))


def test_lid_is_the_mle_of_ma_et_al():
    x = np.zeros((1, 1))
    reference = np.array([[1.0], [-2.0], [3.0], [4.0], [0.0]])  # the point itself (distance 0) is no neighbour
    want = -1.0 / np.mean(np.log(np.array([1.0, 2.0, 3.0]) / 3.0))
    assert fs.lid_estimates(x, reference, k=3)[0] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        fs.lid_estimates(x, reference, k=5)


@pytest.mark.parametrize("dim", [2, 5])
def test_lid_recovers_the_dimension_of_uniform_data(dim):
    """For points spread uniformly in a d-dimensional cube, the MLE averages close to d."""
    rng = np.random.default_rng(dim)
    reference = rng.uniform(size=(4000, dim))
    x = rng.uniform(0.3, 0.7, size=(200, dim))  # away from the faces
    estimate = fs.lid_estimates(x, reference, k=20).mean()
    assert estimate == pytest.approx(dim, rel=0.15)


@pytest.fixture(scope="module")
def context():
    clf, x = smooth_classifier("cnn")
    torch.manual_seed(0)
    ctx = RunContext(
        classifier=clf,
        model=clf.model,
        x_background=x[:30],
        seed=0,
        device=torch.device("cpu"),
        batch_size=16,
        target_fpr=0.1,
        progress=False,
    )
    rng = np.random.default_rng(5)
    clean = x[30:]
    adv = np.clip(clean + rng.choice([-0.3, 0.3], size=clean.shape), 0, 1)
    return ctx, clean, adv


def _labelled(clean, adv):
    return np.concatenate([clean, adv]), np.repeat([0, 1], len(clean))


@pytest.mark.parametrize(
    ("run_type", "supervised"), [(MahalanobisRun, True), (MahalanobisRun, False), (EnergyRun, False)]
)
def test_differentiable_adapters_logit_is_the_score_and_its_gradient_is_exact(context, run_type, supervised):
    ctx, clean, adv = context
    run = run_type(ctx)
    run.fit(*_labelled(clean, adv)) if supervised else run.fit(clean, None)
    scored = run.detect(np.concatenate([clean, adv]))
    assert scored.score.shape == (2 * len(clean),) and scored.is_adversarial.dtype == bool
    # a supervised fit flags target_fpr of clean inputs (run.threshold); a clean-only rule flags above 0
    threshold = run.threshold if supervised else 0.0
    assert (getattr(run, "threshold", None) is not None) == supervised
    np.testing.assert_array_equal(scored.is_adversarial, scored.score > threshold)
    logit = run.detection_logit()
    np.testing.assert_allclose(logit.predict(clean)[:, 0], scored.score[: len(clean)] - threshold, rtol=1e-6, atol=1e-8)
    g = logit.class_gradient(adv)[:, 0]
    central_difference_check(lambda xx: logit.predict(xx)[:, 0], g, adv)
    shifted = shifted_logit(logit, 0.5, clean, scored.score[: len(clean)], "test")
    # 0 where the protocol score is 0.5: the logit (score - threshold) moved by 0.5 - threshold
    np.testing.assert_allclose(
        shifted.predict(adv)[:, 0], logit.predict(adv)[:, 0] - (0.5 - threshold), rtol=1e-6, atol=1e-8
    )


def test_energy_clean_flags_target_share_of_its_clean_fit(context):
    ctx, clean, _ = context
    run = EnergyRun(ctx)
    run.fit(clean, None)
    logits = ctx.classifier.predict(clean).astype(np.float64)
    energy = -np.log(np.exp(logits).sum(1))
    flagged = run.detect(clean).is_adversarial
    assert flagged.mean() <= ctx.target_fpr + 1 / len(clean)
    assert np.all(energy[flagged] >= energy[~flagged].max())  # the highest energies are the flagged ones


def test_mahalanobis_clean_uses_the_last_feature_layer(context):
    ctx, clean, _ = context
    run = MahalanobisRun(ctx)
    run.fit(clean, None)
    assert list(run.gaussians) == [fs.feature_layers(ctx.classifier.model)[-2]]


def test_lid_adapter_fits_on_layers_and_is_deterministic(context):
    ctx, clean, adv = context
    run = LIDRun(ctx, batch=20, k=5)
    run.fit(*_labelled(clean, adv))
    first = run.detect(adv).score
    np.testing.assert_array_equal(first, run.detect(adv).score)
    lids = run._lids(adv)
    assert lids.shape == (len(adv), len(fs.feature_layers(ctx.classifier.model))) and np.all(np.isfinite(lids))
    with pytest.raises(ValueError, match="clean-only"):
        LIDRun(ctx).fit(clean, None)


def test_registry_and_adaptive_eligibility():
    for name in ("mahalanobis", "lid", "mahalanobis_clean", "energy_clean"):
        assert name in DETECTORS
    assert DETECTORS["mahalanobis"].supervised and not DETECTORS["energy_clean"].supervised
    assert adaptive_detectors(["mahalanobis", "mahalanobis_clean", "energy_clean"], explicit=True) == [
        "mahalanobis",
        "mahalanobis_clean",
        "energy_clean",
    ]
    with pytest.raises(ValueError, match="lid"):
        adaptive_detectors(["lid"], explicit=True)


def test_mahalanobis_gaussians_are_fitted_on_training_images_only(context):
    """None of the fit images is in the Gaussians: their scores, which set the threshold, are those of unseen images."""
    ctx, clean, adv = context
    a, b = MahalanobisRun(ctx), MahalanobisRun(ctx)
    a.fit(*_labelled(clean, adv))
    b.fit(clean[:10], None)
    labels = ctx.classifier.predict(ctx.gaussian_images).argmax(1)
    for name, gauss in b.gaussians.items():
        np.testing.assert_array_equal(gauss.means, a.gaussians[name].means)
        np.testing.assert_array_equal(gauss.precision, a.gaussians[name].precision)
        model = ctx.classifier.model
        acts = fs.layer_activations(model, torch.as_tensor(ctx.gaussian_images), [name])[name]
        expected = fs.ClassGaussians.fit(fs.pooled(acts).detach().numpy(), labels, ctx.classifier.nb_classes)
        np.testing.assert_allclose(gauss.means, expected.means, rtol=1e-10, atol=1e-12)
