r"""Classifier and detector as one ART model that ART's attacks can attack together (adaptive attacks).

ART's ``DetectorClassifier(classifier, detector)`` appends the detector as a class: logits
:math:`(z_1, \dots, z_C, (d + 1)\max_c z_c)` for the classifier's logits :math:`z` and the detection
logit :math:`d` (Carlini & Wagner 2017, "Adversarial examples are not easily detected"). In ART 1.20 its
``loss_gradient`` and ``compute_loss`` raise ``NotImplementedError`` (so PGD and AutoPGD cannot run on
it), and its ``class_gradient`` mixes up indices when several samples ask for the detector's class (as
C&W does). :class:`AdaptiveDetectorClassifier` is that class with both fixed, for a PyTorch classifier
and a detector given as a torch detection logit
(:class:`~art_fisher.detection.DetectionLogitClassifier`,
e.g. ``FisherInformationDetector.as_art_classifier()``):

- ``predict`` is ART's (C + 1 logits);
- ``class_gradient`` is the exact gradient of each of the C + 1 logits (one autodiff pass per asked class);
- ``loss_gradient`` / ``compute_loss`` are the **attacker's loss** of an adaptive attack (Tramèr et al.
  2020, "On adaptive attacks to adversarial example defenses"): for a label :math:`y < C`

  .. math:: L(x, y) = \ell(z(x), y) - w\, [m(x) > 0] \operatorname{softplus}(d(x)),
     \qquad m = \max_{j \ne y} z_j - z_y, \qquad \ell = \min(m, \kappa),

  the classifier's logit margin (C&W's loss; ``classifier_loss="margin"``, default), capped at a
  confidence :math:`\kappa` (``confidence``), plus, once the classifier is fooled (:math:`m > 0`),
  :math:`w` times the detector's log-probability of "clean" (:math:`-\operatorname{softplus}(d) =
  \log(1 - \sigma(d))`, taking :math:`d` as a logit). An untargeted attack that *ascends* :math:`L` (ART's
  PGD) first crosses the decision boundary, then pushes the input below the detector's threshold while
  keeping it misclassified (the evaluation guide's *Adaptive attacks* section says why the gate and the
  margin were chosen, with the measurements). The cross entropy
  (``classifier_loss="cross_entropy"``) has a vanishing gradient at confidently classified inputs.
  Ascending the cross entropy of the C + 1 combined logits instead would push inputs into the detector's
  class, which is no evasion. With ``targeted=True`` the attack *descends*
  :math:`\max(m_t, -\kappa) + w\, [m_t < 0] \operatorname{softplus}(d)` with :math:`m_t = \max_{j \ne t}
  z_j - z_t`. A label equal to :math:`C` (the detector's class, e.g. when ART takes ``y`` from ``predict``
  of a flagged input) is replaced by the classifier's own prediction; pass true labels to avoid that.
  The gate makes :math:`L` discontinuous where :math:`m = 0`; elsewhere its gradient is exact.

Which attacks and how: ART's PGD (L∞ or L2) ascends ``loss_gradient`` and returns its last iterate, so it
runs untargeted as it is (pass the true labels as ``y``). AutoPGD and C&W judge success by the argmax of the
C + 1 logits, where the detector's class counts as a success of an untargeted attack (AutoPGD stops on a
sample as soon as it is *flagged*): run them **targeted** at a classifier class (e.g. the runner-up) on an
``AdaptiveDetectorClassifier(..., targeted=True)``. A targeted success needs the target logit above every
other, the detector's included, i.e. the target class and :math:`d < 0` (when :math:`\max_c z_c > 0`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from art.estimators.classification import DetectorClassifier

from art_fisher.detection._base import Detector
from art_fisher.detection._logit import DetectionLogitClassifier, classifier_logits
from art_fisher.detection._persistence import model_fingerprint
from art_fisher.utils import check_bool, check_choice, check_real

#: What the attacker's classifier term is: the logit margin or the cross entropy.
ClassifierLoss = Literal["margin", "cross_entropy"]
#: How :meth:`AdaptiveDetectorClassifier.compute_loss` reduces the per-sample losses.
Reduction = Literal["none", "mean", "sum"]


class AdaptiveDetectorClassifier(DetectorClassifier):
    """ART's ``DetectorClassifier`` with an attacker's loss and exact gradients of all C + 1 logits.

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The attacked classifier (outputs logits).
    detector : DetectionLogitClassifier or Detector
        The detector's logit; a fitted :class:`~art_fisher.detection.Detector` (e.g.
        :class:`~art_fisher.detection.FisherInformationDetector`, :class:`~art_fisher.detection.StackedDetector`)
        is turned into one with ``as_art_classifier()`` (which raises where it has no input gradient).
    detector_weight : float, default=1.0
        :math:`w \\ge 0` in the attacker's loss (module docstring); 0 ignores the detector.
    classifier_loss : {"margin", "cross_entropy"}, default="margin"
        The classifier's term :math:`\\ell` of the attacker's loss (module docstring).
    confidence : float, default=5.0
        :math:`\\kappa \\ge 0`, the cap of the margin (logit units).
    targeted : bool, default=False
        Set True when a targeted attack uses ``loss_gradient`` (it descends the loss).
    allow_other_model : bool, default=False
        Accept a detector fitted on a classifier with other weights or preprocessing (its
        ``model_fingerprint`` differs from this classifier's).

    Raises
    ------
    TypeError
        If ``classifier`` is not an ART ``PyTorchClassifier`` or ``detector`` is neither accepted type.
    ValueError
        If ``detector_weight`` is negative or not a number, the input shapes differ, or the detector was
        fitted on another classifier (``art_fisher.detection._persistence.model_fingerprint``) and
        ``allow_other_model`` is False. ``loss_gradient`` and ``compute_loss`` raise it for ``y`` that is
        None, of the wrong length or one-hot width, not finite, or not whole-number labels in range;
        ``class_gradient`` for a ``label`` that is not a whole-number class.
    """

    detector_weight: float
    classifier_loss: ClassifierLoss
    confidence: float
    targeted: bool

    def __init__(
        self,
        classifier: Any,
        detector: Any,
        *,
        detector_weight: float = 1.0,
        classifier_loss: ClassifierLoss = "margin",
        confidence: float = 5.0,
        targeted: bool = False,
        allow_other_model: bool = False,
    ) -> None:
        from art.estimators.classification import PyTorchClassifier

        if not isinstance(classifier, PyTorchClassifier):
            raise TypeError(f"classifier must be an ART PyTorchClassifier; got {type(classifier).__qualname__}.")
        if isinstance(detector, Detector):
            detector = detector.as_art_classifier()
        if not isinstance(detector, DetectionLogitClassifier):
            raise TypeError(
                "detector must be a DetectionLogitClassifier (Detector.as_art_classifier(), "
                f"art_fisher.detection._logit.art_detector_logit) or a fitted art_fisher.detection.Detector; got "
                f"{type(detector).__qualname__}."
            )
        check_real(detector_weight, "detector_weight", low=0.0)
        check_choice(classifier_loss, "classifier_loss", ClassifierLoss)
        check_real(confidence, "confidence", low=0.0)
        check_bool(targeted, "targeted")
        if tuple(detector.input_shape) != tuple(classifier.input_shape):
            raise ValueError(
                f"detector input shape {detector.input_shape} differs from the classifier's {classifier.input_shape}."
            )
        check_bool(allow_other_model, "allow_other_model")
        if detector.model_fingerprint is not None and not allow_other_model:
            fingerprint = model_fingerprint(classifier)
            if fingerprint != detector.model_fingerprint:
                raise ValueError(
                    f"detector {detector.name} was fitted on a classifier with other weights or preprocessing "
                    f"(fingerprint {detector.model_fingerprint[:12]}…, this classifier {fingerprint[:12]}…): the "
                    "combined model would attack one network and read the detector's features from another. Pass "
                    "the classifier the detector was fitted on, or allow_other_model=True on purpose."
                )
        super().__init__(classifier, detector)
        self.detector_weight = float(detector_weight)
        self.classifier_loss = classifier_loss
        self.confidence = float(confidence)
        self.targeted = targeted
        #: Set to a list to record the per-sample loss at every ``loss_gradient`` call (an attack's trajectory).
        self.loss_history: list[np.ndarray] | None = None

    # ------------------------------------------------------------------------------------ torch parts
    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return self.detector._tensor(x)

    def _classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_logits(self.classifier, x)

    def combined_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The C + 1 logits of ``predict`` as a differentiable tensor (N, C + 1)."""
        z = self._classifier_logits(x)
        d = self.detector.logits(x)
        return torch.cat([z, ((d + 1) * z.max(dim=1).values)[:, None]], dim=1)

    def _class_labels(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        """Classifier labels (N,) from C + 1 one-hot rows or indices; the detector's class -> the prediction."""
        expected = f"y must be labels in [0, {self.nb_classes - 1}] of shape (N,) or one-hot (N, {self.nb_classes})"
        if y is None:
            raise ValueError(f"{expected}; got None.")
        try:
            arr = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{expected}; got {type(y).__name__}.") from None
        if arr.ndim not in (1, 2) or arr.shape[0] != len(x) or (arr.ndim == 2 and arr.shape[1] != self.nb_classes):
            raise ValueError(f"{expected} for the N = {len(x)} samples of x; got shape {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{expected}; it holds {int(np.sum(~np.isfinite(arr)))} NaN or inf values.")
        if arr.ndim == 2:
            if not (np.isin(arr, (0.0, 1.0)).all() and (arr.sum(axis=1) == 1).all()):
                raise ValueError(f"{expected}: each one-hot row must hold one 1 and zeros elsewhere.")
            labels = np.argmax(arr, axis=1)
        else:
            if not np.all(arr == np.round(arr)):
                raise ValueError(
                    f"{expected}: labels must be whole numbers; got e.g. {arr[arr != np.round(arr)][0]!r}."
                )
            labels = arr.astype(np.int64)
        if np.any(labels < 0) or np.any(labels > self.nb_classes - 1):
            raise ValueError(f"{expected}; got values from {labels.min()} to {labels.max()}.")
        labels_t = torch.as_tensor(labels, device=x.device)
        detected = labels_t == self.nb_classes - 1
        if bool(detected.any()):
            with torch.no_grad():
                labels_t = torch.where(detected, self._classifier_logits(x).argmax(1), labels_t)
        return labels_t

    def _loss(self, xt: torch.Tensor, y: Any) -> torch.Tensor:
        labels = self._class_labels(xt.detach(), y)
        z = self._classifier_logits(xt)
        z_label = z.gather(1, labels[:, None])[:, 0]
        margin = z.scatter(1, labels[:, None], float("-inf")).max(dim=1).values - z_label  # > 0: not the label
        if self.classifier_loss == "cross_entropy":
            term = torch.nn.functional.cross_entropy(z, labels, reduction="none")
        elif self.targeted:
            term = torch.clamp(margin, min=-self.confidence)
        else:
            term = torch.clamp(margin, max=self.confidence)
        if self.detector_weight == 0:
            return term
        # The detector term counts once the classifier says what the attacker wants (the gate).
        gate = (margin < 0) if self.targeted else (margin > 0)
        evade = gate.to(z.dtype).detach() * torch.nn.functional.softplus(self.detector.logits(xt))
        return term + (1.0 if self.targeted else -1.0) * self.detector_weight * evade

    # ----------------------------------------------------------------------------------- ART methods
    def compute_loss(self, x: np.ndarray, y: np.ndarray, reduction: Reduction = "none", **kwargs: Any) -> np.ndarray:
        """The attacker's loss per sample (nats; module docstring), reduced by ``"none"``, ``"mean"`` or ``"sum"``."""
        check_choice(reduction, "reduction", Reduction)
        with torch.enable_grad():
            loss = self._loss(self._tensor(x), y).detach()
        loss = loss if reduction == "none" else (loss.mean() if reduction == "mean" else loss.sum())
        return loss.cpu().numpy()

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, training_mode: bool = False, **kwargs: Any) -> np.ndarray:
        """Input gradient of each sample's attacker loss (module docstring), shape and dtype of ``x``."""
        if training_mode:
            raise ValueError("training_mode=True is not supported: both models run in eval mode.")
        xt = self._tensor(x).requires_grad_(True)
        loss = self._loss(xt, y)
        (g,) = torch.autograd.grad(loss.sum(), xt)
        if self.loss_history is not None:
            self.loss_history.append(loss.detach().cpu().numpy())
        return g.detach().cpu().numpy().astype(np.asarray(x).dtype, copy=False)

    def class_gradient(
        self,
        x: np.ndarray,
        label: int | list[int] | np.ndarray | None = None,
        training_mode: bool = False,
        **kwargs: Any,
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
            if arr.dtype.kind not in "iu" and not (
                arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
            ):
                raise ValueError(f"label must be None, a whole-number class or one per sample; got {label!r:.80}.")
            arr = arr.astype(np.int64)
            if arr.size == 1:
                arr = np.full(n, int(arr[0]))
            if arr.shape != (n,) or np.any(arr < 0) or np.any(arr >= self.nb_classes):
                raise ValueError(f"Label {label!r:.80} is out of range.")
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
