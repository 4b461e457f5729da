r"""A fitted detector's detection logit as a differentiable torch function of the raw input.

An attacker who knows the detector (Carlini & Wagner 2017; Tramèr et al. 2020) needs the input gradient
of its decision. For :class:`~art_fisher.detection.FisherInformationDetector` that decision is an
estimator applied to Fisher metrics, each a function of the input through first derivatives in the
parameters, so its input gradient holds mixed second derivatives :math:`\partial_x \partial_\theta`.
They come from autodiff: the metrics are computed with ``create_graph=True`` (:mod:`art_fisher.metrics`)
and the fitted estimator is rewritten as torch operations with its fitted numbers.

Differentiable choices (``as_art_classifier`` names the culprit otherwise, before any work; the estimators are
checked by :func:`check_estimator_differentiable`):

- metrics ``"trace"``, ``"quadratic_form"`` (any direction, blockwise or not, either ``classes``),
  ``"max_eigenvalue"`` and ``"block_traces"`` with ``method="exact"``; not ``"sensitivity"`` (its map statistics ``max``
  and ``top_mass`` are sorts, and the map has no ``create_graph``), not ``method="finite_difference"``;
- estimators (fitted, binary):

  * :class:`~art_fisher.detection.ThresholdClassifier`: logit :math:`\sigma(s_j - t) / \mathrm{std}`,
    the log-odds of its ``predict_proba``; linear in the chosen column;
  * a linear classifier (``LogisticRegression``, ``LinearSVC``, ``SGDClassifier``, ``RidgeClassifier``:
    scikit-learn's ``LinearClassifierMixin``), alone or after ``LogTransformer`` / ``StandardScaler``
    steps in a ``Pipeline`` (the default with labels): logit = its ``decision_function``;
  * :class:`~art_fisher.detection.QuantileOutlierDetector` (the clean-only default): logit =
    :math:`\max_j z_j(x) - t` (or the mean). Piecewise differentiable: the maximum passes the gradient
    of its largest column, and a log-feature below its clean floor is constant. The gradient is exact
    wherever the largest column is unique and no feature sits at its floor (almost everywhere); at a tie
    it is the gradient of one of the tied columns (a subgradient choice, as for ReLU).

  Any other estimator (trees, kernels, ``IsolationForest``, a custom one) raises
  :class:`NotDifferentiableError` when gradients are asked.

The logit is 0 at the detector's threshold and positive exactly where it flags the input.

A detector as an ART classifier with one output: the detection logit, with exact input gradients.

ART's ``DetectorClassifier(classifier, detector)`` (and the attacks that run on it) wants the detector as
an ART ``ClassifierNeuralNetwork`` whose ``predict`` gives one detection logit per sample and whose
``class_gradient`` gives its input gradient. :class:`DetectionLogitClassifier` is that object for any
detector whose logit is a torch function of the raw input:

- :meth:`Detector.as_art_classifier() <art_fisher.detection.Detector.as_art_classifier>` of
  :class:`~art_fisher.detection.FisherInformationDetector` and :class:`~art_fisher.detection.StackedDetector`
  (autodiff through their features, :mod:`art_fisher.detection`);
- :func:`art_detector_logit` for ART's own ``BinaryInputDetector`` and ``BinaryActivationDetector``
  (their two-class network's log-odds of "adversarial").

Use it inside :class:`art_fisher.adversarial.AdaptiveDetectorClassifier` to attack classifier and
detector together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from art.estimators.classification.classifier import ClassifierNeuralNetwork

from art_fisher import _checks
from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._estimators import LogTransformer, ThresholdClassifier
from art_fisher.detection._features import _eval_mode, warn_if_uint8_range
from art_fisher.utils import check_int


class NotDifferentiableError(ValueError):
    """The detector's decision has no input gradient here (its estimator, metric or method)."""


def _linear_steps(estimator: Any) -> list[Any] | None:
    """The steps of ``estimator`` if it is a binary linear classifier (after log / StandardScaler steps)."""
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    steps = [s for s in steps if s not in (None, "passthrough")]
    if not steps or not all(isinstance(s, (LogTransformer, StandardScaler)) for s in steps[:-1]):
        return None
    last = steps[-1]
    coef = getattr(last, "coef_", None)
    if not isinstance(last, LinearClassifierMixin) or coef is None or np.shape(coef)[:1] != (1,):
        return None
    return steps


def _log_floor(f: torch.Tensor, *, floor: torch.Tensor) -> torch.Tensor:
    """:class:`~art_fisher.detection.LogTransformer` in torch: ``log(max(f, floor))``."""
    return torch.log(torch.maximum(f, floor))


def _standardise(f: torch.Tensor, *, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """A fitted ``StandardScaler`` in torch (``None``: that step is off)."""
    return (f if mean is None else f - mean) / (1.0 if std is None else std)


def _describe(estimator: Any) -> str:
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        return f"Pipeline({', '.join(type(s).__name__ for _, s in estimator.steps)})"
    return type(estimator).__qualname__


def check_estimator_differentiable(estimator: Any) -> None:
    """Raise :class:`NotDifferentiableError` unless the fitted ``estimator`` has an input gradient here.

    Differentiable: the estimators of the module docstring; does no work.
    """
    if isinstance(estimator, (ThresholdClassifier, QuantileOutlierDetector)) or _linear_steps(estimator):
        return
    raise NotDifferentiableError(
        f"estimator {_describe(estimator)} has no input gradient: gradients need a ThresholdClassifier, a binary "
        "linear classifier (e.g. LogisticRegression, optionally after StandardScaler in a Pipeline: the "
        "default with labels) or a QuantileOutlierDetector (the default without labels)."
    )


def estimator_logit(
    estimator: Any, *, dtype: torch.dtype, device: torch.device, threshold: float | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fitted estimator as a torch map from features (N, F) to detection logits (N,).

    ``threshold``: a decision-score threshold (the units of
    ``art_fisher.detection._decision.decide``'s scores) at which the logit is 0; None: the
    estimator's own (0 for these estimators).

    Raises
    ------
    NotDifferentiableError
        For an estimator outside the differentiable ones (module docstring).
    """

    def t(value: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype, device=device)

    shift = 0.0 if threshold is None else float(threshold)
    if isinstance(estimator, ThresholdClassifier):
        j, cut, proba_scale = estimator.feature_index_, estimator.threshold_, estimator._proba_scale
        sign = 1.0 if estimator.polarity_ == "higher" else -1.0
        return lambda f: (sign * (f[:, j] - cut) - shift) / proba_scale
    if isinstance(estimator, QuantileOutlierDetector):
        signs, two_sided, used = (np.asarray(a) for a in estimator._signs(estimator.n_features_in_))
        center, scale, floor = t(estimator.center_), t(estimator.scale_), t(estimator.floor_)
        sign_t, used_idx = t(signs), torch.as_tensor(np.flatnonzero(used), device=device)
        two_sided_t = torch.as_tensor(two_sided, device=device)

        def quantile(f: torch.Tensor) -> torch.Tensor:
            g = torch.log(torch.maximum(f, floor)) if estimator.log else f
            z = (g - center) / scale * sign_t
            z = torch.where(two_sided_t, z.abs(), z)[:, used_idx]
            combined = z.max(dim=1).values if estimator.combine == "max" else z.mean(dim=1)
            return combined - estimator.threshold_ - shift

        return quantile
    steps = _linear_steps(estimator)
    if steps is None:
        raise NotDifferentiableError(
            f"estimator {_describe(estimator)} has no input gradient (see check_estimator_differentiable)."
        )

    maps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for step in steps[:-1]:
        if isinstance(step, LogTransformer):
            maps.append(functools.partial(_log_floor, floor=t(step.floor_)))
            continue
        mean = t(step.mean_) if step.with_mean and step.mean_ is not None else None
        std = t(step.scale_) if step.with_std and step.scale_ is not None else None
        maps.append(functools.partial(_standardise, mean=mean, std=std))
    coef, intercept = t(steps[-1].coef_[0]), float(np.ravel(steps[-1].intercept_)[0])

    def linear(f: torch.Tensor) -> torch.Tensor:
        for step_map in maps:
            f = step_map(f)
        return f @ coef + (intercept - shift)

    return linear


class DetectionLogitClassifier(ClassifierNeuralNetwork):
    """An ART classifier with one output, the detection logit ``d(x)``: positive exactly where the detector flags ``x``.

    Parameters
    ----------
    logit_function : callable
        ``logit_function(x) -> Tensor (N,)`` for raw inputs ``x`` (a tensor of shape (N, *input_shape)),
        differentiable in ``x``.
    input_shape : tuple of int
        Shape of one input (as the attacked classifier's).
    clip_values : tuple of float, optional
        Input range (as the attacked classifier's).
    dtype, device
        Dtype and device of the tensors handed to ``logit_function`` (those of the model behind it).
    name : str
        What the logit belongs to, for messages and ``repr``.
    channels_first : bool
    model_fingerprint : str or None
        ``art_fisher.detection._persistence.model_fingerprint`` of the classifier the detector was
        fitted on (set by ``FisherInformationDetector.as_art_classifier()``); checked by
        :class:`~art_fisher.adversarial.AdaptiveDetectorClassifier`.

    Notes
    -----
    ``predict`` returns shape (N, 1); ``class_gradient`` (label None or 0) shape (N, 1, *input_shape), the
    exact gradient of ``d`` by autodiff; ``loss_gradient(x, y)`` and ``compute_loss`` use the binary cross
    entropy of ``d`` against detection labels ``y`` (0 clean, 1 adversarial; shape (N,) or (N, 1)).
    ``fit``, ``save`` and ``get_activations`` are not available: fit and save the detector itself.

    Every method takes ``x`` as an array (or nested list) of shape (N, *input_shape), N >= 1, of finite
    numbers in any float or integer dtype (cast to ``dtype``), and raises ValueError otherwise; inputs that
    look like 8-bit images (whole numbers up to 255) for a model with ``clip_values`` up to 1 get the same
    UserWarning as ``FisherInformationDetector.detect``.
    """

    estimator_params: ClassVar[list[str]] = [*ClassifierNeuralNetwork.estimator_params, "logit_function", "name"]

    def __init__(
        self,
        logit_function: Callable[[torch.Tensor], torch.Tensor],
        *,
        input_shape: tuple[int, ...],
        clip_values: Any = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        name: str = "detector",
        channels_first: bool = True,
        model_fingerprint: str | None = None,
    ) -> None:
        super().__init__(model=None, clip_values=clip_values, channels_first=channels_first)
        if not callable(logit_function):
            raise TypeError(f"logit_function must be callable; got {type(logit_function).__name__}.")
        self.logit_function = logit_function
        self._input_shape = tuple(int(s) for s in input_shape)
        self._nb_classes = 1  # ART's setter refuses one class; a detection logit is one output
        self.dtype = dtype
        self.device = torch.device(device)
        self.name = name
        self.model_fingerprint = model_fingerprint

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return self._input_shape

    def _array(self, x: Any) -> np.ndarray:
        """``x`` checked (numeric, shape (N, *input_shape), N >= 1, finite; 8-bit range warned about)."""
        try:
            arr = np.asarray(x)
        except ValueError as err:  # ragged nested lists
            raise ValueError(
                f"x must be an array of shape (N, {', '.join(map(str, self._input_shape))}); {str(err)[:200]}"
            ) from None
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"x must be a numeric array; got dtype {arr.dtype}.")
        if arr.ndim != len(self._input_shape) + 1 or tuple(arr.shape[1:]) != self._input_shape:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self._input_shape))}); got {arr.shape}.")
        if arr.shape[0] == 0:
            raise ValueError(f"x must hold at least one sample; got shape {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"x must be finite; it holds {int(np.sum(~np.isfinite(arr)))} NaN or inf values.")
        warn_if_uint8_range(self, arr, "x")
        return arr

    def _tensor(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(self._array(x), dtype=self.dtype, device=self.device).clone()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Detection logits (N,) of a tensor batch, with a graph to ``x`` if it requires grad."""
        return self.logit_function(x)

    def predict(self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False, **kwargs: Any) -> np.ndarray:
        """Detection logits, shape (N, 1); positive = flagged.

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape)
        batch_size : int
        training_mode : bool
            Must be False (the detector's model runs in eval mode).
        """
        if training_mode:
            raise ValueError("training_mode=True is not supported: the detector's model runs in eval mode.")
        batch_size = check_int(batch_size, "batch_size", low=1)
        x = self._array(x)
        out = []
        for start in range(0, len(x), batch_size):
            xt = self._tensor(x[start : start + batch_size])
            with torch.enable_grad():  # the Fisher metrics differentiate in the parameters
                out.append(self.logit_function(xt).detach().cpu().numpy().astype(np.float64))
        return np.concatenate(out).reshape(-1, 1).astype(np.float32 if self.dtype == torch.float32 else np.float64)

    def _gradient(self, x: np.ndarray, weights: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        xt = self._tensor(x).requires_grad_(True)
        d = self.logit_function(xt)
        (g,) = torch.autograd.grad(weights(d).sum(), xt)
        return g.detach().cpu().numpy()

    def class_gradient(
        self,
        x: np.ndarray,
        label: int | list[int] | np.ndarray | None = None,
        training_mode: bool = False,
        **kwargs: Any,
    ) -> np.ndarray:
        """Input gradient of the detection logit, shape (N, 1, *input_shape).

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape)
        label : None, 0 or an array of zeros
            The only class is 0.
        """
        labels = np.atleast_1d(np.asarray(0 if label is None else label))
        if np.any(labels != 0):
            raise ValueError(f"label must be None or 0 (the detection logit is the only output); got {label!r}.")
        if training_mode:
            raise ValueError("training_mode=True is not supported: the detector's model runs in eval mode.")
        return self._gradient(x, lambda d: d)[:, None]

    @staticmethod
    def _labels(y: Any, n: int) -> np.ndarray:
        expected = "y must be detection labels 0 (clean) / 1 (adversarial) of shape (N,), (N, 1) or (N, 2)"
        if y is None:
            raise ValueError(f"{expected} for the N = {n} samples of x; got None.")
        try:
            arr = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{expected}; got {type(y).__name__}.") from None
        if arr.ndim == 0 or arr.shape[0] != n or arr.ndim > 2:
            raise ValueError(f"{expected} for the N = {n} samples of x; got shape {arr.shape}.")
        arr = arr.reshape(n, -1)
        if arr.shape[1] == 2:  # ART's one-hot form
            if not np.isin(arr, (0.0, 1.0)).all() or not (arr.sum(axis=1) == 1).all():
                raise ValueError(f"{expected}: each one-hot row must hold one 1 and one 0.")
            arr = arr[:, 1:]
        if arr.shape[1] != 1 or not np.isin(arr, (0.0, 1.0)).all():
            raise ValueError(f"{expected}.")
        return arr[:, 0]

    def compute_loss(self, x: np.ndarray, y: np.ndarray, reduction: str = "none", **kwargs: Any) -> np.ndarray:
        """Binary cross entropy (nats) of the detection logit against detection labels ``y``."""
        yt = torch.as_tensor(self._labels(y, len(x)), dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            d = self.logit_function(self._tensor(x)).detach()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(d, yt, reduction=reduction)
        return loss.cpu().numpy()

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, training_mode: bool = False, **kwargs: Any) -> np.ndarray:
        """Input gradient of :meth:`compute_loss` (per sample), shape of ``x``."""
        yt = torch.as_tensor(self._labels(y, len(x)), dtype=self.dtype, device=self.device)
        return self._gradient(
            x, lambda d: torch.nn.functional.binary_cross_entropy_with_logits(d, yt, reduction="none")
        )

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 128, nb_epochs: int = 20, **kwargs: Any) -> None:
        raise NotImplementedError(f"{self.name}: fit the detector itself; this object only exposes its logit.")

    def get_activations(
        self, x: np.ndarray, layer: int | str, batch_size: int = 128, framework: bool = False
    ) -> np.ndarray:
        raise NotImplementedError(f"{self.name}: a detection logit has no layers to read.")

    @property
    def layer_names(self) -> list[str]:
        """No layers are exposed."""
        return []

    def save(self, filename: str, path: str | None = None) -> None:
        raise NotImplementedError(f"{self.name}: save the detector itself (e.g. FisherInformationDetector.save).")

    def clone_for_refitting(self) -> DetectionLogitClassifier:
        raise NotImplementedError(f"{self.name}: nothing to refit here.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, input_shape={self._input_shape})"


def art_detector_logit(detector: Any, classifier: Any = None) -> DetectionLogitClassifier:
    """ART's ``BinaryInputDetector`` / ``BinaryActivationDetector`` as a :class:`DetectionLogitClassifier`.

    The logit is ``z_1 - z_0`` of the detector's two-class PyTorch network (the log-odds of "adversarial"
    under its softmax): ART's detectors flag ``argmax = 1``, i.e. a positive logit. For the activation
    detector the network reads the attacked classifier's activations at its layer, so the gradient
    passes through the classifier's first layers too.

    Parameters
    ----------
    detector : art.defences.detector.evasion.BinaryInputDetector or BinaryActivationDetector
        Fitted, with an ART ``PyTorchClassifier`` of two classes as its ``detector``.
    classifier : PyTorchClassifier, optional
        Unused for ``BinaryInputDetector``; for ``BinaryActivationDetector`` its own ``classifier`` is used.

    Raises
    ------
    TypeError
        For another detector type or a detector network that is not an ART ``PyTorchClassifier`` of 2 classes.
    """
    from art.defences.detector.evasion import BinaryActivationDetector, BinaryInputDetector
    from art.estimators.classification import PyTorchClassifier

    net = getattr(detector, "detector", None)
    if not isinstance(detector, (BinaryInputDetector, BinaryActivationDetector)) or not (
        isinstance(net, PyTorchClassifier) and net.nb_classes == 2
    ):
        raise TypeError(
            "detector must be an ART BinaryInputDetector or BinaryActivationDetector whose detector is a "
            f"PyTorchClassifier of 2 classes; got {type(detector).__qualname__}."
        )
    parameter = next(net.model.parameters())

    def two_class_logit(features: torch.Tensor) -> torch.Tensor:
        if net.preprocessing_operations:
            features, _ = net._apply_preprocessing(features, y=None, fit=False, no_grad=False)
        z = net._model(features)[-1]  # ART's ModelWrapper returns every layer's output
        return z[:, 1] - z[:, 0]

    fn: Callable[[torch.Tensor], torch.Tensor]
    if isinstance(detector, BinaryInputDetector):
        source, fn = net, two_class_logit
    else:
        source = detector.classifier
        module = dict(source.model.named_modules())[detector._layer_name]

        def layer_logit(x: torch.Tensor) -> torch.Tensor:
            xp = x
            if source.preprocessing_operations:
                xp, _ = source._apply_preprocessing(x, y=None, fit=False, no_grad=False)
            captured: list[torch.Tensor] = []
            handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                source.model(xp)
            finally:
                handle.remove()
            return two_class_logit(captured[0])

        fn = layer_logit

    return DetectionLogitClassifier(
        _in_eval_mode(fn, [net.model] + ([] if source is net else [source.model])),
        input_shape=tuple(source.input_shape),
        clip_values=source.clip_values,
        dtype=parameter.dtype,
        device=parameter.device,
        name=type(detector).__name__,
    )


def _in_eval_mode(fn: Callable[[torch.Tensor], torch.Tensor], models: list[torch.nn.Module]) -> Callable:

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        with _eval_mode(models[0]):
            if len(models) > 1:
                with _eval_mode(models[1]):
                    return fn(x)
            return fn(x)

    return wrapped


def classifier_logits(classifier: Any, x: torch.Tensor) -> torch.Tensor:
    """An ART ``PyTorchClassifier``'s outputs (N, C) for raw inputs ``x``, differentiable, in eval mode.

    The classifier's preprocessing is applied in PyTorch (as ART does for its standardisation); the
    model's modes come back as they were.
    """
    xp = x
    if classifier.preprocessing_operations:
        xp, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
    with _eval_mode(classifier.model):
        z = classifier.model(xp.to(next(classifier.model.parameters()).dtype))
    _checks.check_logits(z, "the attacker's loss (the classifier's logit margin or cross entropy)")
    return z
