"""The baselines of the evaluation: ART's own detectors and the classifier's confidence.

- ``binary_input`` / ``binary_activation``: ART's ``BinaryInputDetector`` (a small CNN on the image) and
  ``BinaryActivationDetector`` (an MLP on the classifier's penultimate top-level block), trained on the
  same examples as every supervised detector.
- ``subset_scanning``: ART's ``SubsetScanningDetector``; unsupervised, its null model is built from clean
  training images.
- ``max_softmax``: the free baseline of Hendrycks & Gimpel (2017): the classifier's maximum softmax
  probability and the entropy of its prediction, a standardised logistic regression on the two (its
  threshold flags ``target_fpr`` of clean inputs, :func:`~art_fisher.detection._decision.fit_logistic`);
  ``max_softmax_clean`` calibrates the same two features on clean inputs alone (low maximum probability
  and high entropy are suspicious), as the ``fisher_*_clean`` detectors do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._decision import fit_logistic
from art_fisher.detection._logit import DetectionLogitClassifier, art_detector_logit, classifier_logits, estimator_logit
from art_fisher.evaluation._model import seed_everything
from art_fisher.evaluation.detectors._base import (
    DetectorRun,
    DetectorSpec,
    RunContext,
    Scored,
    decided,
)
from art_fisher.models._architectures import build_model


def _device_type(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def _one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(2, dtype=np.float32)[y.astype(int)]


class ArtBinaryRun(DetectorRun):
    """ART's BinaryInputDetector / BinaryActivationDetector: a small network trained on clean vs adversarial."""

    def __init__(self, ctx: RunContext, *, on_activations: bool) -> None:
        from art.defences.detector.evasion import BinaryActivationDetector, BinaryInputDetector
        from art.estimators.classification import PyTorchClassifier

        self.ctx = ctx
        torch.manual_seed(ctx.seed)
        clf = ctx.classifier
        if on_activations:
            # The penultimate top-level block of the classifier (its feature extractor for the
            # package's models); ART names layers by the model's top-level children.
            layer = max(len(clf.layer_names) - 2, 0)
            act_shape = clf.get_activations(ctx.x_background[:1], layer, batch_size=1).shape[1:]
            n_in = int(np.prod(act_shape))
            net: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 2))
            input_shape = tuple(act_shape)
        else:
            net = build_model("small_cnn", in_channels=clf.input_shape[0], n_classes=2)
            input_shape = tuple(clf.input_shape)
        wrapped = PyTorchClassifier(
            net,
            loss=nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
            input_shape=input_shape,
            nb_classes=2,
            device_type=_device_type(ctx.device),
        )
        if on_activations:
            self.detector = BinaryActivationDetector(classifier=clf, detector=wrapped, layer=layer)
        else:
            self.detector = BinaryInputDetector(wrapped)

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        if y is None:
            raise ValueError("ART's binary detectors are supervised: fit needs labels y (1 = adversarial); got None.")
        seed_everything(self.ctx.seed)
        self.detector.fit(x, _one_hot(y), batch_size=32, nb_epochs=20)

    def detect(self, x: np.ndarray) -> Scored:
        report, is_adv = self.detector.detect(x, batch_size=self.ctx.batch_size)
        logits = np.asarray(report["predictions"], dtype=np.float64)
        return Scored(score=logits[:, 1] - logits[:, 0], is_adversarial=np.asarray(is_adv, bool))

    def detection_logit(self) -> Any:
        return art_detector_logit(self.detector)


class SubsetScanningRun(DetectorRun):
    """ART's SubsetScanningDetector; unsupervised: its null model is built from clean training images.

    ``fit`` uses neither its inputs nor labels: the detector fixes its threshold at the largest
    background score of :attr:`RunContext.x_background`.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        from art.defences.detector.evasion import SubsetScanningDetector

        clf = self.ctx.classifier
        layer = max(len(clf.layer_names) - 2, 0)
        self.detector = SubsetScanningDetector(clf, bgd_data=self.ctx.x_background, layer=layer, verbose=False)

    def detect(self, x: np.ndarray) -> Scored:
        report, is_adv = self.detector.detect(x, batch_size=self.ctx.batch_size)
        return Scored(score=np.asarray(report["scores"], np.float64), is_adversarial=np.asarray(is_adv, bool))


def softmax_features(classifier: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Maximum softmax probability and entropy (nats) of the classifier's prediction, shape (N, 2).

    The classifier's outputs are taken as logits (the evaluation's models return logits).
    """
    from scipy.special import entr, softmax

    p = softmax(np.asarray(classifier.predict(x, batch_size=batch_size), dtype=np.float64), axis=1)
    return np.column_stack([p.max(axis=1), entr(p).sum(axis=1)])


class MaxSoftmaxRun(DetectorRun):
    """Hendrycks & Gimpel's baseline on (max softmax probability, entropy).

    With labels: ``StandardScaler`` + ``LogisticRegression``. Without (``fit(x, None)``): a
    :class:`~art_fisher.detection.QuantileOutlierDetector` flagging ``target_fpr`` of clean inputs,
    low probability and high entropy being suspicious.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        features = softmax_features(self.ctx.classifier, x, self.ctx.batch_size)
        if y is None:
            self.estimator = QuantileOutlierDetector(
                target_fpr=self.ctx.target_fpr, polarity=("lower", "higher"), log=True
            ).fit(features)
            self.threshold = None
        else:
            self.estimator, self.threshold = fit_logistic(features, y, self.ctx.target_fpr)

    def detect(self, x: np.ndarray) -> Scored:
        return decided(self.estimator, softmax_features(self.ctx.classifier, x, self.ctx.batch_size), self.threshold)

    def detection_logit(self) -> Any:
        """Logistic regression (or clean quantile rule) on the softmax features, in torch."""
        clf = self.ctx.classifier
        parameter = next(clf.model.parameters())
        to_logit = estimator_logit(
            self.estimator, dtype=parameter.dtype, device=parameter.device, threshold=self.threshold
        )

        def logit(x: torch.Tensor) -> torch.Tensor:
            log_p = torch.log_softmax(classifier_logits(clf, x), dim=1)
            p = log_p.exp()
            return to_logit(torch.stack([p.max(dim=1).values, -(p * log_p).sum(dim=1)], dim=1))

        return DetectionLogitClassifier(
            logit,
            input_shape=tuple(clf.input_shape),
            clip_values=clf.clip_values,
            dtype=parameter.dtype,
            device=parameter.device,
            name="max_softmax",
        )


def baseline_specs() -> dict[str, DetectorSpec]:
    """The baseline registry entries."""
    return {
        "max_softmax": DetectorSpec("Max softmax + entropy (Hendrycks & Gimpel)", MaxSoftmaxRun, no_gradient=None),
        "max_softmax_clean": DetectorSpec(
            "Max softmax + entropy, clean-calibrated",
            MaxSoftmaxRun,
            supervised=False,
            no_gradient=None,
        ),
        "binary_input": DetectorSpec(
            "ART BinaryInput", lambda ctx: ArtBinaryRun(ctx, on_activations=False), no_gradient=None
        ),
        "binary_activation": DetectorSpec(
            "ART BinaryActivation",
            lambda ctx: ArtBinaryRun(ctx, on_activations=True),
            no_gradient=None,
        ),
        "subset_scanning": DetectorSpec(
            "ART SubsetScanning",
            SubsetScanningRun,
            supervised=False,
            no_gradient="no input gradient (a scan over subsets of activations)",
        ),
    }
