"""What the protocol and every detector adapter of the evaluation share.

A detector enters the evaluation as a :class:`DetectorSpec` (a registry entry) whose ``build(context)``
returns a fresh :class:`DetectorRun`: an adapter with two calls, ``fit(x, y)`` and ``detect(x)``, so that
ART's detectors, the Fisher detectors and the free baselines are fitted and scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from art_fisher.detection import FeatureCache
from art_fisher.detection._decision import decide
from art_fisher.detection._logit import NotDifferentiableError
from art_fisher.distributed import map_rows


@dataclass
class RunContext:
    """What detector builders may use: the wrapped classifier and clean data it was trained on.

    Attributes
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The attacked classifier (logits out, inputs in [0, 1]).
    model : torch.nn.Module
        Its model.
    x_background : ndarray
        Clean images from the model's training split (never from the test split).
    seed : int
        The run's seed.
    device : torch.device
        Where the classifier runs.
    batch_size : int
        Batch size of prediction and detection.
    target_fpr : float
        False-positive rate that clean-calibrated detectors aim at.
    progress : bool
        Whether inner loops may show progress bars.
    tau : float or None
        Many-class option of the Fisher metrics (``art_fisher.detection._features.MetricOptions``);
        None: exact.
    x_reference : ndarray or None
        More clean training images, for class-conditional Gaussians (the Mahalanobis detector and the
        stacked detector's Mahalanobis scores); None: ``x_background``. Use :attr:`gaussian_images`.
    shared : dict
        Per-run state that adapters may share (e.g. the trained KDEs of a reference set); keyed by the
        adapter module. The per-input values of the detectors of :mod:`art_fisher.detection` are shared
        through :attr:`feature_cache`.
    """

    classifier: Any
    model: nn.Module
    x_background: np.ndarray
    seed: int
    device: torch.device
    batch_size: int
    target_fpr: float
    progress: bool
    shared: dict[str, Any] = field(default_factory=dict)
    tau: float | None = None
    x_reference: np.ndarray | None = None

    @property
    def gaussian_images(self) -> np.ndarray:
        """The clean training images class-conditional Gaussians are fitted on: ``x_reference`` or ``x_background``."""
        return self.x_background if self.x_reference is None else self.x_reference

    @property
    def feature_cache(self) -> FeatureCache:
        """The run's :class:`~art_fisher.detection.FeatureCache`, the ``feature_source`` of its detectors.

        Every Fisher metric value, input-Fisher spectrum and set of class Gaussians is computed once per run
        and shared by every detector and fit (under ``torchrun``, each rank computes its block of the rows:
        :func:`art_fisher.distributed.map_rows`). Its ``seconds_spent`` / ``seconds_cost`` let an adapter
        report the cost of computing its features rather than of looking them up.
        """
        return self.shared.setdefault("feature_cache", FeatureCache(map_rows=map_rows))


@dataclass
class Scored:
    """Output of one detector on a set of inputs.

    Attributes
    ----------
    score : ndarray of shape (N,)
        Continuous score, higher = more adversarial (ROC curves are drawn from it).
    is_adversarial : ndarray of shape (N,), bool
        The detector's own decision.
    metric_scores : dict of str to ndarray of shape (N,)
        Raw Fisher metric values, for the histograms (Fisher detectors only).
    seconds : float or None
        The adapter's own account of what ``detect`` costs, when its wall time would mislead (features
        taken from a per-run cache count at the cost measured when they were computed); None: the
        protocol times the call.
    """

    score: np.ndarray
    is_adversarial: np.ndarray
    metric_scores: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float | None = None


class DetectorRun:
    """Adapter giving every detector the same two calls.

    ``fit(x, y)`` gets labels 0 (clean) / 1 (adversarial) for a supervised detector, and ``y=None`` with
    clean inputs only for a detector whose spec has ``supervised=False``.
    """

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        raise NotImplementedError

    def detect(self, x: np.ndarray) -> Scored:
        raise NotImplementedError

    def detection_logit(self) -> Any:
        """The fitted detector as a detection logit, for adaptive attacks.

        A :class:`~art_fisher.detection.DetectionLogitClassifier`.

        Raises
        ------
        art_fisher.detection.NotDifferentiableError
            For a detector without input gradients (the default).
        """
        raise NotDifferentiableError(f"{type(self).__name__} has no input gradient.")


@dataclass(frozen=True)
class DetectorSpec:
    """One detector of the registry.

    Attributes
    ----------
    label : str
        Display name.
    build : callable
        ``build(context) -> DetectorRun``, a fresh, unfitted adapter.
    supervised : bool
        True: fitted on clean and adversarial examples of each attack in turn (one fit per attack, each
        scored on every attack). False: fitted once without adversarial examples (``fit_attack`` is
        ``"clean"`` in the results) and scored on every attack.
    no_gradient : str or None
        None if the fitted detector has input gradients (``DetectorRun.detection_logit``), so that
        adaptive attacks can attack it; else why not (shown in errors and the report).
    in_default : bool
        Whether the default run includes it (ablation variants do not).
    """

    label: str
    build: Callable[[RunContext], DetectorRun]
    supervised: bool = True
    no_gradient: str | None = "no input gradient"
    in_default: bool = True


def decided(estimator: Any, features: np.ndarray, threshold: float | None = None) -> Scored:
    """:class:`Scored` of a fitted estimator (``art_fisher.detection._decision.decide``)."""
    score, _, flagged = decide(estimator, features, threshold)
    return Scored(score=score, is_adversarial=flagged)
