"""Fisher metric features of an ART ``PyTorchClassifier`` for numpy inputs (shared by detector and sklearn).

This module turns ``(classifier, x)`` into the per-sample metric values that
:class:`~art_fisher.detection.FisherInformationDetector` and
:class:`~art_fisher.detection.FisherFeatures` learn from. It is written once here so both see
exactly the same numbers:

- the inputs go through the classifier's own preprocessing (``classifier._apply_preprocessing``, as
  ``classifier.predict`` does), so the metrics see what the classifier sees;
- the model runs in eval mode (as in ``classifier.predict``) and its mode is restored afterwards;
- scalar metrics give one feature each, ``block_traces`` one per parameter tensor; the per-input-dimension
  sensitivity map is reduced to a few summary features (:data:`SENSITIVITY_REDUCTIONS`).

The options every metric computation takes are one object, :class:`MetricOptions` (defaults, checks
in the words of :mod:`art_fisher`), made from a detector or transformer by :func:`options_of`.
The registry :data:`METRICS` maps a metric name to the function of :mod:`art_fisher.metrics` that
computes it and the options it takes; a new metric is one entry.

Checks of a detector's classifier and inputs, before any work (shared by every detector and estimator).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from art_fisher import _checks
from art_fisher import metrics as metrics_module
from art_fisher.detection._feature_source import COMPUTE, FeatureSource
from art_fisher.metrics._top_mass import check_tau, selection
from art_fisher.utils import check_int


def check_classifier(classifier: Any) -> None:
    """Raise TypeError unless ``classifier`` is an ART ``PyTorchClassifier`` (or a subclass)."""
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(
            "classifier must be an ART art.estimators.classification.PyTorchClassifier (the Fisher "
            f"metrics differentiate a PyTorch model); got {type(classifier).__module__}."
            f"{type(classifier).__qualname__}."
        )


def check_inputs(classifier: Any, x: Any, name: str = "x") -> np.ndarray:
    """Return ``x`` as a float32 array after checking its shape against the classifier and finiteness.

    A torch tensor is taken as its values (detached, on the CPU), as ART's estimators take numpy arrays.

    Raises
    ------
    ValueError
        If ``x`` is empty, not numeric, does not have shape ``(N, *classifier.input_shape)``, or holds
        NaN or infinite values.
    """
    if callable(getattr(x, "detach", None)) and callable(getattr(x, "numpy", None)):  # a torch tensor, maybe with grad
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric array; got dtype {arr.dtype}.")
    expected = tuple(classifier.input_shape)
    if arr.ndim != len(expected) + 1 or tuple(arr.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape (N, *classifier.input_shape) = (N, {', '.join(map(str, expected))}); "
            f"got {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample; got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it holds {int(np.sum(~np.isfinite(arr)))} NaN or inf values.")
    warn_if_uint8_range(classifier, arr, name)
    return arr.astype(np.float32, copy=False)


def warn_if_uint8_range(classifier: Any, arr: np.ndarray, name: str) -> None:
    """Warn when ``arr`` looks like 8-bit images (whole numbers 0..255, max > 1) for a [0, 1] classifier.

    No warning when the classifier's ``clip_values`` declare a range beyond 1 (the model expects it).
    """
    clip = getattr(classifier, "clip_values", None)
    if clip is not None and float(np.max(clip)) > 1.0:
        return
    high = float(arr.max())
    if high <= 1.0 or high > 255.0 or float(arr.min()) < 0.0 or not np.all(arr == np.round(arr)):
        return
    warnings.warn(
        f"{name} looks like 8-bit images (whole numbers from {float(arr.min()):g} to {high:g}), while the "
        f"classifier's clip_values are {None if clip is None else tuple(float(c) for c in clip)}. If the "
        "model was trained on [0, 1] pixels, pass x / 255; the Fisher metrics of unscaled inputs mean little.",
        UserWarning,
        stacklevel=3,
    )


logger = logging.getLogger(__name__)

#: Directions a detector can use (a subset of the metrics' own, :data:`art_fisher._checks.DIRECTIONS`):
#: it has no true labels at detection time, so ``"label"`` is out, and user-given direction tensors
#: would not survive ``save``/``load``. ``"top_eigenvector"`` is for the quadratic form only.
DIRECTIONS = tuple(d for d in _checks.DIRECTIONS if d != "label")
#: Fraction of input dimensions whose share of the absolute sensitivity is the ``top_mass`` feature.
TOP_FRACTION = 0.1

_SCALAR_OPTIONS = ("output", "params", "method", "fd_step", "tau")
_DIRECTIONAL_OPTIONS = (*_SCALAR_OPTIONS[:-1], "direction", "blockwise", "normalize", "classes", "tau")


@dataclass(frozen=True)
class MetricSpec:
    """How to compute one metric.

    Attributes
    ----------
    function : str
        Name of the function in :mod:`art_fisher.metrics`.
    options : tuple of str
        The options (fields of :class:`MetricOptions`) that the function takes as keyword arguments.
    is_map : bool
        True if the metric is a map of the input's shape that is reduced to
        :data:`SENSITIVITY_REDUCTIONS` features; False for one scalar per sample.
    per_block : bool
        True if the metric gives one value per selected parameter tensor (the function returns
        :class:`~art_fisher.metrics.BlockTraces`): one feature column per tensor, named
        ``"<metric>[<parameter name>]"`` (:func:`block_names`).
    """

    function: str
    options: tuple[str, ...]
    is_map: bool = False
    per_block: bool = False


#: Metric name -> how to compute it. Extend here when :mod:`art_fisher.metrics` gains a metric.
METRICS: dict[str, MetricSpec] = {
    "trace": MetricSpec("fisher_trace", _SCALAR_OPTIONS),
    "quadratic_form": MetricSpec("fisher_quadratic_form", _DIRECTIONAL_OPTIONS),
    "max_eigenvalue": MetricSpec("fisher_max_eigenvalue", ("output", "params", "tau")),  # always exact
    # tr F_kk of each parameter tensor k: the per-layer profile of the trace, at the trace's cost.
    "block_traces": MetricSpec("fisher_block_traces", ("output", "params", "tau"), per_block=True),  # always exact
    "sensitivity": MetricSpec("fisher_sensitivity", _DIRECTIONAL_OPTIONS[:-1], is_map=True),  # no tau
}

#: Reductions of a sensitivity map :math:`s` (flattened to :math:`D` entries) to features:
#: ``l1`` :math:`\sum_i |s_i|`, ``l2`` :math:`(\sum_i s_i^2)^{1/2}`, ``max`` :math:`\max_i |s_i|`,
#: ``top_mass`` the share of :math:`\sum_i |s_i|` held by the :math:`\lceil 0.1 D \rceil` largest
#: :math:`|s_i|` (1 when concentrated on few pixels, 0.1 when spread evenly; 0 for an all-zero map).
SENSITIVITY_REDUCTIONS = ("l1", "l2", "max", "top_mass")


def feature_polarities(metrics: Sequence[str], blocks: Sequence[str] = ()) -> list[str]:
    """Which values of each feature column (:func:`feature_names` order) suggest an adversarial input.

    ``"higher"`` for every Fisher magnitude (the scalar metrics, each parameter tensor's trace and the
    ``l1``, ``l2``, ``max`` reductions of a map): more Fisher information means a less settled
    prediction. ``"none"`` for ``top_mass``, a shape statistic of the map with no such prior (its ROC-AUC
    falls on either side of 0.5 depending on the attack), which clean-only calibration leaves out.
    ``blocks``: as in :func:`feature_names`.
    """
    polarities: list[str] = []
    for name in metrics:
        if METRICS[name].is_map:
            polarities.extend("none" if r == "top_mass" else "higher" for r in SENSITIVITY_REDUCTIONS)
        elif METRICS[name].per_block:
            polarities.extend("higher" for _ in _blocks_for(name, blocks))
        else:
            polarities.append("higher")
    return polarities


def _blocks_for(metric: str, blocks: Sequence[str]) -> Sequence[str]:
    if not blocks:
        raise ValueError(f"metric {metric!r} gives one column per parameter tensor: pass their names as blocks.")
    return blocks


def block_names(classifier: Any, options: MetricOptions) -> tuple[str, ...]:
    """The parameter tensors a per-block metric of checked ``options`` gives columns for; () if none is used.

    The tensors the metrics select (:func:`art_fisher._checks.check_params`): ``options.params``, or
    every parameter that requires grad, or every parameter of a frozen model; in model order.
    """
    if not any(METRICS[m].per_block for m in options.metrics):
        return ()
    return tuple(_checks.check_params(classifier.model, options.params))


def feature_names(metrics: Sequence[str], blocks: Sequence[str] = ()) -> list[str]:
    """Column names of the feature matrix for ``metrics``, in order.

    A map gives one column per reduction (``"sensitivity_l1"``), a per-block metric one per parameter
    tensor in ``blocks`` (``"block_traces[features.0.weight]"``; :func:`block_names` gives them).

    Raises
    ------
    ValueError
        If ``metrics`` holds a per-block metric and ``blocks`` is empty.
    """
    names: list[str] = []
    for name in metrics:
        if METRICS[name].is_map:
            names.extend(f"{name}_{r}" for r in SENSITIVITY_REDUCTIONS)
        elif METRICS[name].per_block:
            names.extend(f"{name}[{b}]" for b in _blocks_for(name, blocks))
        else:
            names.append(name)
    return names


@dataclass(frozen=True)
class MetricOptions:
    """The metric options shared by the detector and the scikit-learn transformer.

    :class:`~art_fisher.detection.FisherInformationDetector` and
    :class:`~art_fisher.detection.FisherFeatures` share them: defined, defaulted and checked here only.

    Both classes keep these as flat constructor arguments (scikit-learn's ``get_params`` / ART's
    ``defence_params`` need them by name), take their defaults from :data:`DEFAULT_OPTIONS` and turn them
    into one checked object with :func:`options_of`. The checks are those of the metric functions
    themselves (:mod:`art_fisher`), so an option is refused with the same words whether it
    reaches a metric directly or through a detector.

    Parameters
    ----------
    metrics : sequence of str, default=("trace", "quadratic_form")
        Metric names from :data:`METRICS`. One feature
        column per scalar metric, one per selected parameter tensor for ``"block_traces"`` (the trace of
        that tensor's own block of :math:`F(x)`), four for ``"sensitivity"`` (:data:`SENSITIVITY_REDUCTIONS`).
    output : {"logits", "log_probs", "probs"}, default="logits"
        What the classifier's model returns (``"logits"`` and ``"log_probs"`` give the same metrics,
        since the softmax of log-probabilities is the probabilities).
    direction : {"predicted", "top_eigenvector"}, default="predicted"
        Direction of the quadratic form and sensitivity: the gradient of the predicted class's
        log-probability, or (quadratic form only) the top eigenvector of :math:`F(x)`. (``"label"``
        needs true labels, which a detector does not have at detection time.)
    blockwise : bool or None, default=None
        Layer-wise (block-diagonal) Fisher for the quadratic form and sensitivity; None keeps each
        metric's own default (full for the quadratic form, blockwise for the sensitivity).
    normalize : bool, default=True
        Quadratic form and sensitivity along the unit direction :math:`\\bar v = v / \\|v\\|`; False
        uses the raw gradient :math:`v` (the authors' package), :math:`\\|v\\|^2` times the value.
    classes : {"all", "predicted_vs_rest"}, default="all"
        Sum of the quadratic form and sensitivity over all classes, or over the two classes
        (predicted, rest) as the authors' package does.
    params : sequence of str or None, default=None
        Names of the model's parameters the Fisher information is taken over, trained or frozen; None:
        all that require grad, or all of them when none does (a frozen model).
    method : {"exact", "finite_difference"}, default="exact"
        Autodiff, or the original paper's central finite differences (``"max_eigenvalue"`` is always
        exact).
    fd_step : float, default=1e-3
        Finite-difference step (only used with ``method="finite_difference"``).
    tau : float in (0, 1) or None, default=None
        Many-class heads (:mod:`art_fisher.metrics`): every metric but the sensitivity over the
        classes holding ``1 − tau`` of each sample's probability, a lower bound. None: exact.
    """

    metrics: tuple[str, ...] = ("trace", "quadratic_form")
    output: str = "logits"
    direction: str = "predicted"
    blockwise: bool | None = None
    normalize: bool = True
    classes: str = "all"
    params: tuple[str, ...] | None = None
    method: str = "exact"
    fd_step: float = 1e-3
    tau: float | None = None

    def checked(self, classifier: Any) -> MetricOptions:
        """These options validated for ``classifier``, with sequences as tuples (hashable).

        Raises
        ------
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``, or an option has the wrong type.
        ValueError
            If an option is outside its allowed values, naming it, what is allowed and what came.
        """
        check_classifier(classifier)
        names = (self.metrics,) if isinstance(self.metrics, str) else self.metrics
        if not isinstance(names, Sequence) or len(names) == 0:
            raise ValueError(f"metrics must be a non-empty sequence of metric names; got {self.metrics!r}.")
        known = tuple(METRICS)
        for name in names:
            if name not in known:
                raise ValueError(f"metrics must be names from {known}; got {name!r} in {self.metrics!r}.")
        if len(set(names)) != len(names):
            raise ValueError(f"metrics must not repeat a name; got {self.metrics!r}.")
        _checks.check_choice("output", self.output, _checks.OUTPUTS)
        if not isinstance(self.direction, str) or self.direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be one of {list(DIRECTIONS)} (a detector has no true labels at detection "
                f"time); got {self.direction!r}."
            )
        _checks.check_choice("method", self.method, _checks.METHODS)
        if self.direction == "top_eigenvector" and "sensitivity" in names:
            raise ValueError(
                'direction="top_eigenvector" applies to the quadratic form only; drop "sensitivity" from metrics.'
            )
        if self.direction == "top_eigenvector" and self.method == "finite_difference":
            raise ValueError('direction="top_eigenvector" needs method="exact"; got method="finite_difference".')
        if self.blockwise is not None:
            _checks.check_bool("blockwise", self.blockwise)
        _checks.check_bool("normalize", self.normalize)
        _checks.check_choice("classes", self.classes, _checks.CLASSES)
        selection(self.tau, classes=self.classes, method=self.method)  # tau with classes="all", method="exact"
        tau = check_tau(self.tau)
        params = self.params
        if params is not None:
            # Any parameter, trained or frozen: the Fisher information is defined by the parameters
            # whether or not anyone trains them (a pretrained model under screening is usually frozen).
            params = tuple(_checks.check_params(classifier.model, params))
        return MetricOptions(
            metrics=tuple(names),
            output=self.output,
            direction=self.direction,
            blockwise=self.blockwise,
            normalize=self.normalize,
            classes=self.classes,
            params=params,
            method=self.method,
            fd_step=_checks.check_fd_step(self.fd_step),
            tau=tau,
        )

    def kwargs_for(self, metric: str) -> dict[str, Any]:
        """Keyword arguments of the metric function of ``metric`` (None ``blockwise``: its own default)."""
        kwargs = {key: getattr(self, key) for key in METRICS[metric].options}
        if kwargs.get("tau", 0) is None:  # exact: the metric's own default
            del kwargs["tau"]
        if kwargs.get("params") is not None:
            kwargs["params"] = list(kwargs["params"])
        if kwargs.get("blockwise", True) is None:
            del kwargs["blockwise"]
        return kwargs


#: The defaults of every option, for the constructors that expose them.
DEFAULT_OPTIONS = MetricOptions()
#: Names of the options, as constructor arguments and attributes.
OPTION_NAMES = tuple(f.name for f in fields(MetricOptions))


def options_of(owner: Any) -> MetricOptions:
    """The checked :class:`MetricOptions` held (as attributes of the same names) by a detector or transformer."""
    values = {name: getattr(owner, name) for name in OPTION_NAMES}
    return MetricOptions(**values).checked(owner.classifier)


def chunk_size_of(owner: Any) -> int:
    """The checked ``chunk_size`` of a detector or transformer."""
    return check_chunk_size(owner.chunk_size)


def check_chunk_size(chunk_size: Any, name: str = "chunk_size") -> int:
    """``chunk_size`` as an int; TypeError / ValueError unless it is a positive integer (None refused)."""
    return int(check_int(chunk_size, name, low=1))


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (as ``PyTorchClassifier.predict`` does); restore every module's mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _standardisation_scale(classifier: Any, x_shape: tuple[int, ...]) -> np.ndarray | None:
    """Per-dimension :math:`1/\\sigma^2` if the classifier's preprocessing is exactly ``(x - mean) / std``.

    The sensitivity is a product of two input derivatives, so by the chain rule the map with respect
    to the raw input is the map with respect to the standardised input times :math:`1/\\sigma_i^2`.
    Returns None when there is no preprocessing, and logs when the map stays in the preprocessed space.
    """
    from art.preprocessing.standardisation_mean_std.numpy import StandardisationMeanStd
    from art.preprocessing.standardisation_mean_std.pytorch import (
        StandardisationMeanStdPyTorch,
    )
    from art.preprocessing.standardisation_mean_std.utils import broadcastable_mean_std

    ops = classifier.preprocessing_operations
    if not ops:
        return None
    if len(ops) == 1 and isinstance(ops[0], (StandardisationMeanStd, StandardisationMeanStdPyTorch)):
        mean = np.asarray(ops[0].mean, dtype=np.float64)
        std = np.asarray(ops[0].std, dtype=np.float64)
        _, std = broadcastable_mean_std(np.empty(x_shape), mean, std)
        return np.broadcast_to(1.0 / std**2, x_shape).astype(np.float32)
    logger.info(
        "The classifier's preprocessing %s is not a plain standardisation: sensitivity maps are with "
        "respect to the preprocessed input.",
        [type(op).__name__ for op in ops],
    )
    return None


def _reduce_map(maps: np.ndarray) -> np.ndarray:
    """Features of :data:`SENSITIVITY_REDUCTIONS` for maps of shape (N, ...); returns (N, 4)."""
    flat = np.abs(maps.reshape(len(maps), -1)).astype(np.float64)
    l1 = flat.sum(axis=1)
    l2 = np.sqrt((flat**2).sum(axis=1))
    k = max(1, math.ceil(TOP_FRACTION * flat.shape[1]))
    top = -np.sort(-flat, axis=1)[:, :k].sum(axis=1)
    top_mass = np.divide(top, l1, out=np.zeros_like(l1), where=l1 > 0)
    return np.column_stack([l1, l2, flat.max(axis=1), top_mass])


def compute(
    classifier: Any,
    x: np.ndarray,
    *,
    metrics: Sequence[str],
    settings: MetricOptions,
    chunk_size: int,
    reduce_maps: bool = True,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per-sample metric values of checked inputs ``x`` (see :func:`check_inputs`).

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
    x : ndarray of shape (N, *classifier.input_shape)
        Raw inputs (before the classifier's preprocessing).
    metrics : sequence of str
        Names from :data:`METRICS`.
    settings : MetricOptions
        Checked options (:func:`options_of`); its ``metrics`` are not used (``metrics`` says which).
    chunk_size : int
        Samples per metric call (bounds memory; the values do not depend on it).
    reduce_maps : bool
        If True, a map metric gives its :data:`SENSITIVITY_REDUCTIONS` features, shape (N, 4);
        if False, the map itself, of the shape of ``x`` (w.r.t. the raw input for a plain
        standardisation, see :func:`_standardisation_scale`).
    progress : bool
        Show a tqdm bar over batches.

    Returns
    -------
    dict of str to ndarray
        Metric name -> float64 values, shape (N,) for a scalar metric, (N, K) for a per-block one (K
        parameter tensors, :func:`block_names` order).
    """
    model = classifier.model
    dtype = next(model.parameters()).dtype
    device = classifier.device
    scale = _standardisation_scale(classifier, x.shape[1:]) if any(METRICS[m].is_map for m in metrics) else None
    kwargs = {name: settings.kwargs_for(name) for name in metrics}
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    starts = range(0, len(x), chunk_size)
    with _eval_mode(model):
        for start in tqdm(starts, desc="Fisher metrics", disable=not progress, leave=False):
            batch = x[start : start + chunk_size]
            batch, _ = classifier._apply_preprocessing(batch, y=None, fit=False)
            # A fresh tensor with canonical strides: numpy slices of (N, 1, H, W) arrays can carry
            # unusual strides on size-1 axes, which the metrics' internal ``view`` calls reject.
            xt = torch.as_tensor(np.asarray(batch), dtype=dtype, device=device)
            xt = xt.clone(memory_format=torch.contiguous_format)
            for name in metrics:
                spec = METRICS[name]
                values = getattr(metrics_module, spec.function)(model, xt, **kwargs[name])
                values = metric_columns(values, spec) if spec.per_block else values
                values = values.detach().cpu().numpy().astype(np.float64)
                if spec.is_map:
                    if scale is not None and values.shape[1:] == scale.shape:
                        values = values * scale
                    if reduce_maps:
                        values = _reduce_map(values)
                chunks[name].append(values)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def metric_values(
    classifier: Any,
    x: np.ndarray,
    metric: str,
    settings: MetricOptions,
    *,
    chunk_size: int,
    progress: bool = False,
    source: FeatureSource = COMPUTE,
) -> np.ndarray:
    """Per-sample values of one metric of checked inputs ``x`` (as :func:`compute` gives them), through ``source``.

    The key is ``("fisher_metric", metric, settings)`` with ``settings.metrics`` emptied (the values of one
    metric do not depend on which others a detector uses), so that every detector of the classifier with the
    same options shares them in a :class:`~art_fisher.detection.FeatureCache`.
    """
    key = ("fisher_metric", metric, dataclasses.replace(settings, metrics=()))

    def values(rows: np.ndarray) -> np.ndarray:
        return compute(
            classifier, rows, metrics=(metric,), settings=settings, chunk_size=chunk_size, progress=progress
        )[metric]

    return source.rows(key, x, values)


def metric_columns(values: Any, spec: MetricSpec) -> torch.Tensor:
    """A scalar or per-block metric function's result as feature columns, shape (N, 1) or (N, K), autograd kept."""
    if spec.per_block:
        return values.values
    return values[:, None]


def feature_matrix(values: dict[str, np.ndarray], metrics: Sequence[str]) -> np.ndarray:
    """Stack reduced metric values (from :func:`compute`) into the (N, n_features) feature matrix."""
    return np.column_stack([values[name].reshape(len(values[name]), -1) for name in metrics])
