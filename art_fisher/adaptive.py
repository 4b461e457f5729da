r"""Classifier and detector as one ART model that ART's attacks can attack together (adaptive attacks).

ART's ``DetectorClassifier(classifier, detector)`` appends the detector as a class: logits
:math:`(z_1, \dots, z_C, (d + 1)\max_c z_c)` for the classifier's logits :math:`z` and the detection
logit :math:`d` (Carlini & Wagner 2017, "Adversarial examples are not easily detected"). In ART 1.20 its
``loss_gradient`` and ``compute_loss`` raise ``NotImplementedError`` (so PGD and AutoPGD cannot run on
it), and its ``class_gradient`` mixes up indices when several samples ask for the detector's class (as
C&W does). :class:`AdaptiveDetectorClassifier` is that class with both fixed, for a PyTorch classifier
and a detector given as a torch detection logit (:class:`~art_fisher.art_classifier.DetectionLogitClassifier`,
e.g. ``FisherInformationDetector.as_art_classifier()``):

- ``predict`` is ART's (C + 1 logits);
- ``class_gradient`` is the exact gradient of each of the C + 1 logits (one autodiff pass per asked class);
- ``loss_gradient`` / ``compute_loss`` are the **attacker's loss** of an adaptive attack (Tramèr et al.
  2020, "On adaptive attacks to adversarial example defenses"): for a label :math:`y < C`

  .. math:: L(x, y) = \operatorname{CE}(z(x), y) - w \operatorname{softplus}(d(x))
            = -\log p(y \mid x) + w \log(1 - \sigma(d(x))),

  the classifier's cross entropy plus :math:`w` times the detector's log-probability of "clean" (taking
  :math:`d` as a logit). An untargeted attack that *ascends* :math:`L` (ART's PGD, AutoPGD) pushes the
  input away from class :math:`y` *and* below the detector's threshold; ascending the cross entropy of the
  C + 1 combined logits instead would push inputs into the detector's class, which is no evasion. With
  ``targeted=True`` the sign of the detector term flips (:math:`\operatorname{CE}(z, t) + w
  \operatorname{softplus}(d)`), since targeted attacks *descend* the loss. A label equal to :math:`C`
  (the detector's class, e.g. when ART takes ``y`` from ``predict`` of a flagged input) is replaced by
  the classifier's own prediction; pass true labels to avoid that.

Which attacks and how: ART's PGD (L∞ or L2) ascends ``loss_gradient`` and returns its last iterate, so it
runs untargeted as it is (pass the true labels as ``y``). AutoPGD and C&W judge success by the argmax of the
C + 1 logits, where the detector's class counts as a success of an untargeted attack (AutoPGD stops on a
sample as soon as it is *flagged*): run them **targeted** at a classifier class (e.g. the runner-up) on an
``AdaptiveDetectorClassifier(..., targeted=True)``. A targeted success needs the target logit above every
other, the detector's included, i.e. the target class and :math:`d < 0` (when :math:`\max_c z_c > 0`).
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np
import torch
from art.estimators.classification import DetectorClassifier

from art_fisher.art_classifier import DetectionLogitClassifier

__all__ = ["AdaptiveDetectorClassifier"]


class AdaptiveDetectorClassifier(DetectorClassifier):
    """ART's ``DetectorClassifier`` with an attacker's loss and exact gradients of all C + 1 logits.

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The attacked classifier (outputs logits).
    detector : DetectionLogitClassifier or FisherInformationDetector
        The detector's logit; a fitted :class:`~art_fisher.detectors.FisherInformationDetector` is turned
        into one with ``as_art_classifier()`` (which raises for a non-differentiable estimator).
    detector_weight : float, default=1.0
        :math:`w \\ge 0` in the attacker's loss (module docstring); 0 ignores the detector.
    targeted : bool, default=False
        Set True when a targeted attack uses ``loss_gradient`` (it descends the loss).

    Raises
    ------
    TypeError
        If ``classifier`` is not an ART ``PyTorchClassifier`` or ``detector`` is neither accepted type.
    ValueError
        If ``detector_weight`` is negative or not a number, or the input shapes differ.
    """

    def __init__(self, classifier: Any, detector: Any, *, detector_weight: float = 1.0, targeted: bool = False) -> None:
        from art.estimators.classification import PyTorchClassifier

        from art_fisher.detectors import FisherInformationDetector

        if not isinstance(classifier, PyTorchClassifier):
            raise TypeError(f"classifier must be an ART PyTorchClassifier; got {type(classifier).__qualname__}.")
        if isinstance(detector, FisherInformationDetector):
            detector = detector.as_art_classifier()
        if not isinstance(detector, DetectionLogitClassifier):
            raise TypeError(
                "detector must be a DetectionLogitClassifier (FisherInformationDetector.as_art_classifier(), "
                f"art_fisher.art_classifier.art_detector_logit) or a FisherInformationDetector; got "
                f"{type(detector).__qualname__}."
            )
        if isinstance(detector_weight, bool) or not isinstance(detector_weight, Real) or not detector_weight >= 0:
            raise ValueError(f"detector_weight must be a number >= 0; got {detector_weight!r}.")
        if not isinstance(targeted, bool):
            raise ValueError(f"targeted must be True or False; got {targeted!r}.")
        if tuple(detector.input_shape) != tuple(classifier.input_shape):
            raise ValueError(
                f"detector input shape {detector.input_shape} differs from the classifier's {classifier.input_shape}."
            )
        super().__init__(classifier, detector)
        self.detector_weight = float(detector_weight)
        self.targeted = targeted

    # ------------------------------------------------------------------------------------ torch parts
    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return self.detector._tensor(x)

    def _classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        clf = self.classifier
        xp = x
        if clf.preprocessing_operations:
            xp, _ = clf._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        from art_fisher._features import _eval_mode

        with _eval_mode(clf.model):
            return clf.model(xp.to(next(clf.model.parameters()).dtype))

    def combined_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The C + 1 logits of ``predict`` as a differentiable tensor (N, C + 1)."""
        z = self._classifier_logits(x)
        d = self.detector.logits(x)
        return torch.cat([z, ((d + 1) * z.max(dim=1).values)[:, None]], dim=1)

    def _class_labels(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        """Classifier labels (N,) from C + 1 one-hot rows or indices; the detector's class -> the prediction."""
        arr = np.asarray(y)
        labels = np.argmax(arr, axis=1) if arr.ndim == 2 else arr.astype(np.int64)
        if labels.shape != (len(x),) or np.any(labels < 0) or np.any(labels > self.nb_classes - 1):
            raise ValueError(
                f"y must be labels in [0, {self.nb_classes - 1}] of shape (N,) or one-hot (N, {self.nb_classes}); "
                f"got shape {arr.shape}."
            )
        labels_t = torch.as_tensor(labels, device=x.device)
        detected = labels_t == self.nb_classes - 1
        if bool(detected.any()):
            with torch.no_grad():
                labels_t = torch.where(detected, self._classifier_logits(x).argmax(1), labels_t)
        return labels_t

    def _loss(self, xt: torch.Tensor, y: Any) -> torch.Tensor:
        labels = self._class_labels(xt.detach(), y)
        z = self._classifier_logits(xt)
        ce = torch.nn.functional.cross_entropy(z, labels, reduction="none")
        if self.detector_weight == 0:
            return ce
        evade = torch.nn.functional.softplus(self.detector.logits(xt))
        sign = 1.0 if self.targeted else -1.0
        return ce + sign * self.detector_weight * evade

    # ----------------------------------------------------------------------------------- ART methods
    def compute_loss(self, x: np.ndarray, y: np.ndarray, reduction: str = "none", **kwargs: Any) -> np.ndarray:
        """The attacker's loss per sample (nats; module docstring), reduced by ``"none"``, ``"mean"`` or ``"sum"``."""
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum'; got {reduction!r}.")
        with torch.enable_grad():
            loss = self._loss(self._tensor(x), y).detach()
        loss = loss if reduction == "none" else (loss.mean() if reduction == "mean" else loss.sum())
        return loss.cpu().numpy()

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, training_mode: bool = False, **kwargs: Any) -> np.ndarray:
        """Input gradient of each sample's attacker loss (module docstring), shape and dtype of ``x``."""
        if training_mode:
            raise ValueError("training_mode=True is not supported: both models run in eval mode.")
        xt = self._tensor(x).requires_grad_(True)
        (g,) = torch.autograd.grad(self._loss(xt, y).sum(), xt)
        return g.detach().cpu().numpy().astype(np.asarray(x).dtype, copy=False)

    def class_gradient(
        self, x: np.ndarray, label: int | list[int] | np.ndarray | None = None, training_mode: bool = False, **kwargs: Any
    ) -> np.ndarray:
        """Exact input gradients of the C + 1 logits of ``predict``.

        Returns
        -------
        ndarray
            Shape (N, C + 1, *input_shape) for ``label=None``, else (N, 1, *input_shape): class ``label``
            (an int) or ``label[i]`` for sample ``i`` (an array of N labels).
        """
        if training_mode:
            raise ValueError("training_mode=True is not supported: both models run in eval mode.")
        n = len(x)
        if label is None:
            wanted = np.tile(np.arange(self.nb_classes), (n, 1))
        else:
            arr = np.asarray(label).reshape(-1)
            if arr.size == 1:
                arr = np.full(n, int(arr[0]))
            if arr.shape != (n,) or np.any(arr < 0) or np.any(arr >= self.nb_classes):
                raise ValueError(f"Label {label} is out of range.")
            wanted = arr[:, None]
        xt = self._tensor(x).requires_grad_(True)
        columns = np.unique(wanted)
        z = self._classifier_logits(xt)
        if columns[-1] == self.nb_classes - 1:  # the detector's logit only when asked
            logits = torch.cat([z, ((self.detector.logits(xt) + 1) * z.max(dim=1).values)[:, None]], dim=1)
        else:
            logits = z
        out = np.zeros((n, wanted.shape[1], *self.input_shape), dtype=np.asarray(x).dtype)
        # Samples do not interact (both models run in eval mode), so one backward pass of the sum over
        # samples of each sample's wanted logit gives every sample's own gradient.
        for k in range(wanted.shape[1]):
            index = torch.as_tensor(wanted[:, k], device=logits.device)[:, None]
            last = k == wanted.shape[1] - 1
            (g,) = torch.autograd.grad(logits.gather(1, index).sum(), xt, retain_graph=not last)
            out[:, k] = g.detach().cpu().numpy()
        return out
