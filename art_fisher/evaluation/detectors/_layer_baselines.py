"""The field's standard detectors in the evaluation: Mahalanobis, LID and the energy score.

The scores are those of :mod:`art_fisher.detection` (definitions and references there);
this module fits them as their papers do and enters them in the registry:

- ``mahalanobis`` (Lee et al. 2018): class-conditional Gaussians with a tied covariance on the features
  of every activation / pooling layer, fitted on the run's reference training images, labelled by the
  classifier (the paper fits them on training data; an image the Gaussians were fitted on scores as more
  typical than an unseen one, so no fit image is among them); the per-layer confidence scores feed a
  standardised logistic regression fitted on clean (0) and adversarial (1) examples, as the paper's
  feature ensemble. ``mahalanobis_clean``: no adversarial example, the score of the last feature layer
  alone, thresholded at ``target_fpr`` of clean images. Input preprocessing (``noise``) is off in the
  registry (the paper tunes its magnitude on adversarial data); with it the detector has no input
  gradient.
- ``lid`` (Ma et al. 2018): LID estimates of every layer's activations (the logits included) among a
  mini-batch of :data:`LID_BATCH` clean reference images, :data:`LID_K` neighbours, and a standardised
  logistic regression on them, fitted on clean (0) and adversarial (1) examples. The reference images are
  the run's background training images, never a fit or test image: the paper's reference batch holds
  the adversarial examples' own clean sources, which no deployed detector has. The paper defines no
  clean-only variant.
- ``energy_clean`` (Liu et al. 2020): the energy :math:`-T \\log\\sum_c e^{z_c/T}` (:math:`T = 1`) of the
  classifier's logits, thresholded at ``target_fpr`` of clean images (the paper's detector needs no
  adversarial example; a supervised fit of one score would only move its threshold).

``mahalanobis``, ``mahalanobis_clean`` and ``energy_clean`` have input gradients (adaptive attacks
run on them); ``lid`` does not (its score depends on a sampled reference batch). The logistic
regressions' own decisions flag ``target_fpr`` of clean inputs, as every supervised detector's here
(:func:`~art_fisher.detection._decision.fit_logistic`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from art_fisher.detection import _layer_scores as fs
from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._decision import fit_logistic
from art_fisher.detection._features import _eval_mode
from art_fisher.detection._logit import DetectionLogitClassifier, NotDifferentiableError, estimator_logit
from art_fisher.evaluation._model import predict_labels
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored, decided

#: Reference mini-batch size and neighbours of the LID estimate (Ma et al.'s MNIST setting).
LID_BATCH = 100
LID_K = 20


def _preprocessed(classifier: Any, x: torch.Tensor) -> torch.Tensor:
    if classifier.preprocessing_operations:
        x, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
    return x


def _activations(ctx: RunContext, x: np.ndarray, layers: list[str], *, pooled: bool) -> dict[str, np.ndarray]:
    """Layer features of numpy inputs, chunked: channel means (``pooled``) or flattened activations."""
    model = ctx.classifier.model
    parameter = next(model.parameters())
    out: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    with torch.no_grad(), _eval_mode(model):
        for start in range(0, len(x), ctx.batch_size):
            xt = torch.as_tensor(x[start : start + ctx.batch_size], dtype=parameter.dtype, device=parameter.device)
            acts = fs.layer_activations(model, _preprocessed(ctx.classifier, xt), layers)
            for name, a in acts.items():
                a = fs.pooled(a) if pooled else a.flatten(1)
                out[name].append(a.cpu().numpy().astype(np.float64))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _clean_rule(target_fpr: float, polarity: str) -> Any:

    return QuantileOutlierDetector(target_fpr=target_fpr, polarity=polarity)


def _logit_classifier(ctx: RunContext, features: Any, estimator: Any, name: str, threshold: float | None) -> Any:
    """A DetectionLogitClassifier of ``estimator`` on torch ``features(x_preprocessed)`` (N, F), 0 at ``threshold``."""
    clf = ctx.classifier
    parameter = next(clf.model.parameters())
    to_logit = estimator_logit(estimator, dtype=parameter.dtype, device=parameter.device, threshold=threshold)

    def logit(x: torch.Tensor) -> torch.Tensor:
        with _eval_mode(clf.model):
            return to_logit(features(_preprocessed(clf, x)))

    return DetectionLogitClassifier(
        logit,
        input_shape=tuple(clf.input_shape),
        clip_values=clf.clip_values,
        dtype=parameter.dtype,
        device=parameter.device,
        name=name,
    )


class EnergyRun(DetectorRun):
    """Liu et al.'s energy score, thresholded at ``target_fpr`` of the clean fit images (``fit(x, None)``)."""

    def __init__(self, ctx: RunContext, temperature: float = 1.0) -> None:
        self.ctx, self.temperature = ctx, temperature

    def _energy(self, x: np.ndarray) -> np.ndarray:
        logits = _activations(self.ctx, x, ["logits"], pooled=True)["logits"]
        return fs.energy_score(torch.as_tensor(logits), self.temperature).numpy()[:, None]

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.estimator = _clean_rule(self.ctx.target_fpr, "higher").fit(self._energy(x))

    def detect(self, x: np.ndarray) -> Scored:
        return decided(self.estimator, self._energy(x))

    def detection_logit(self) -> Any:
        model = self.ctx.classifier.model
        return _logit_classifier(
            self.ctx, lambda xp: fs.energy_score(model(xp), self.temperature)[:, None], self.estimator, "energy", None
        )


class MahalanobisRun(DetectorRun):
    """Lee et al.'s Mahalanobis detector: logistic regression on the per-layer scores, or the last layer's alone.

    Parameters
    ----------
    ctx : RunContext
    noise : float
        Magnitude of the paper's input preprocessing (0: none).
    """

    def __init__(self, ctx: RunContext, noise: float = 0.0) -> None:
        self.ctx, self.noise = ctx, noise
        self.layers = [name for name in fs.feature_layers(ctx.classifier.model) if name != "logits"]
        if not self.layers:
            raise ValueError("mahalanobis needs a model with activation or pooling modules; found none.")

    def _scores(self, x: np.ndarray) -> np.ndarray:
        model = self.ctx.classifier.model
        parameter = next(model.parameters())
        out = []
        with _eval_mode(model):
            for start in range(0, len(x), self.ctx.batch_size):
                xt = torch.as_tensor(
                    x[start : start + self.ctx.batch_size], dtype=parameter.dtype, device=parameter.device
                )
                with torch.set_grad_enabled(self.noise > 0):
                    m = fs.mahalanobis_scores(
                        model,
                        _preprocessed(self.ctx.classifier, xt),
                        self.gaussians,
                        noise=self.noise,
                        clip_values=None,
                    )
                out.append(m.detach().cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    def _reference_gaussians(self) -> dict[str, fs.ClassGaussians]:
        """Per layer, the class Gaussians of the run's reference training images, fitted once per run.

        None of the fit images is among them (the paper fits them on training data): the scores of the fit
        images, on which the logistic regression and the threshold are set, are then those of unseen images.
        """
        shared = self.ctx.shared.setdefault(__name__, {})
        if "gaussians" not in shared:
            x_gauss = self.ctx.gaussian_images
            labels = predict_labels(self.ctx.classifier, x_gauss, self.ctx.batch_size)
            features = _activations(self.ctx, x_gauss, self.layers, pooled=True)
            n_classes = self.ctx.classifier.nb_classes
            shared["gaussians"] = {
                name: fs.ClassGaussians.fit(features[name], labels, n_classes) for name in self.layers
            }
        return dict(shared["gaussians"])

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.gaussians = self._reference_gaussians()
        if y is None:
            self.gaussians = {self.layers[-1]: self.gaussians[self.layers[-1]]}
            self.estimator, self.threshold = _clean_rule(self.ctx.target_fpr, "lower").fit(self._scores(x)), None
        else:
            self.estimator, self.threshold = fit_logistic(self._scores(x), y, self.ctx.target_fpr)

    def detect(self, x: np.ndarray) -> Scored:
        return decided(self.estimator, self._scores(x), self.threshold)

    def detection_logit(self) -> Any:
        if self.noise > 0:
            raise NotDifferentiableError("mahalanobis with input preprocessing (noise > 0) has no input gradient.")
        model = self.ctx.classifier.model
        return _logit_classifier(
            self.ctx,
            lambda xp: fs.mahalanobis_scores(model, xp, self.gaussians),
            self.estimator,
            "mahalanobis",
            self.threshold,
        )


class LIDRun(DetectorRun):
    """Ma et al.'s LID detector: per-layer LID estimates among clean reference mini-batches, logistic regression."""

    def __init__(self, ctx: RunContext, batch: int = LID_BATCH, k: int = LID_K) -> None:
        self.ctx, self.batch, self.k = ctx, batch, k
        self.layers = fs.feature_layers(ctx.classifier.model)

    def _lids(self, x: np.ndarray) -> np.ndarray:
        acts = _activations(self.ctx, x, self.layers, pooled=False)
        rng = np.random.default_rng(self.ctx.seed)
        n_ref = len(self.reference[self.layers[0]])
        batch = min(self.batch, n_ref)
        k = min(self.k, batch - 1)
        out = np.empty((len(x), len(self.layers)))
        for start in range(0, len(x), self.batch):
            ref = rng.permutation(n_ref)[:batch]
            for j, name in enumerate(self.layers):
                out[start : start + self.batch, j] = fs.lid_estimates(
                    acts[name][start : start + self.batch], self.reference[name][ref], k
                )
        # an estimate is infinite only where all k distances tie; cap it at the largest finite one
        finite = np.isfinite(out)
        return np.where(finite, out, np.max(out[finite], initial=0.0))

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        if y is None:
            raise ValueError("lid is fitted on clean and adversarial examples (Ma et al. define no clean-only fit).")
        y = np.asarray(y)
        self.reference = _activations(self.ctx, self.ctx.x_background, self.layers, pooled=False)
        self.estimator, self.threshold = fit_logistic(self._lids(x), y, self.ctx.target_fpr)

    def detect(self, x: np.ndarray) -> Scored:
        return decided(self.estimator, self._lids(x), self.threshold)


def layer_baseline_specs() -> dict[str, DetectorSpec]:
    """The registry entries of the field's baselines."""
    return {
        "mahalanobis": DetectorSpec("Mahalanobis, layer ensemble (Lee et al. 2018)", MahalanobisRun, no_gradient=None),
        "lid": DetectorSpec(
            "LID (Ma et al. 2018)",
            LIDRun,
            no_gradient="no input gradient here (its estimate depends on a sampled reference mini-batch)",
        ),
        "mahalanobis_clean": DetectorSpec(
            "Mahalanobis, last feature layer, clean-calibrated",
            MahalanobisRun,
            supervised=False,
            no_gradient=None,
        ),
        "energy_clean": DetectorSpec(
            "Energy score (Liu et al. 2020), clean-calibrated",
            EnergyRun,
            supervised=False,
            no_gradient=None,
        ),
    }
