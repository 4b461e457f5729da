r"""A stacked detector: Fisher features, the classifier's confidence and the Mahalanobis scores in one pipeline.

``StackedFeatures`` is a scikit-learn transformer from raw inputs to one feature matrix, the
columns of the chosen ``parts``:

- ``"fisher"``: :math:`\log \operatorname{tr} F_{kk}(x)` of every parameter tensor :math:`k` (the
  ``block_traces`` metric, :mod:`art_fisher.metrics`);
- ``"sensitivity"``: the log of the four statistics of the Fisher sensitivity map
  (``art_fisher.detection._features.SENSITIVITY_REDUCTIONS``);
- ``"confidence"``: the maximum softmax probability and the entropy of the prediction (Hendrycks &
  Gimpel 2017);
- ``"mahalanobis"``: Lee et al.'s per-layer confidence scores (:mod:`art_fisher.detection`),
  with class Gaussians fitted in :meth:`StackedFeatures.fit` on clean reference images (``x_reference``,
  or without them the clean fit images) labelled by the classifier;
- ``"input_fisher"``: ``log λ₁`` and ``log tr`` of the Fisher information with respect to the input,
  :math:`G(x) = J_x^\top S J_x` (``art_fisher.detection._input_fisher``).

:class:`StackedDetector` is the configuration of :class:`~art_fisher.detection.Detector` on these
features: by default ``StandardScaler`` + ``LogisticRegression`` when fitted with labels (clean 0 /
adversarial 1), and a :class:`~art_fisher.detection.QuantileOutlierDetector` (each column standardised on
clean inputs, suspicious side by prior: high Fisher, low confidence, high entropy, low Mahalanobis score;
combined by their maximum) when fitted on clean inputs alone. Either way its decision threshold flags
``target_fpr`` of clean inputs: the clean-only rule by construction, the supervised one at the
:func:`~art_fisher.detection._decision.supervised_threshold` of its clean fit inputs (out-of-fold scores of
the estimator on the features; the Mahalanobis Gaussians are fitted once, before). Without ``"sensitivity"``
the detector has exact input gradients (``as_art_classifier``, for ART's ``DetectorClassifier`` and
adaptive attacks).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from art_fisher import metrics as metrics_module
from art_fisher.detection import _features
from art_fisher.detection import _layer_scores as fs
from art_fisher.detection._base import Detector
from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._decision import logistic_pipeline
from art_fisher.detection._feature_source import FeatureSource, check_feature_source, row_digests
from art_fisher.detection._input_fisher import input_fisher_features, spectrum_features, spectrum_rank
from art_fisher.detection._logit import NotDifferentiableError, check_estimator_differentiable

#: The feature groups, in column order.
PARTS = ("fisher", "sensitivity", "confidence", "mahalanobis", "input_fisher")
_FLOOR = 1e-30
_NO_GRADIENT = "the stacked detector with 'sensitivity' has no input gradient (map statistics)."


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(parts, str) or not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct names from {PARTS}; got {parts!r}.")
    return tuple(p for p in PARTS if p in parts)


def _preprocessed(classifier: Any, x: torch.Tensor) -> torch.Tensor:
    if classifier.preprocessing_operations:
        x, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
    return x


def _layers(classifier: Any) -> list[str]:
    """The layers with class Gaussians: every feature layer of the model but its logits."""
    return [name for name in fs.feature_layers(classifier.model) if name != "logits"]


def _fisher_options(classifier: Any, metrics: tuple[str, ...]) -> _features.MetricOptions:
    return _features.MetricOptions(metrics=metrics).checked(classifier)


def widths(classifier: Any, parts: Sequence[str]) -> dict[str, int]:
    """Columns of each part, in ``PARTS`` order (known from the classifier's model, before any fit)."""
    parts = _check_parts(parts)
    counts = {
        "fisher": lambda: len(_features.block_names(classifier, _fisher_options(classifier, ("block_traces",)))),
        "sensitivity": lambda: len(_features.SENSITIVITY_REDUCTIONS),
        "confidence": lambda: 2,
        "mahalanobis": lambda: len(_layers(classifier)),
        "input_fisher": lambda: 2,
    }
    return {part: counts[part]() for part in parts}


def feature_names(classifier: Any, parts: Sequence[str]) -> list[str]:
    """Names of the columns: ``<part>_<i>`` in ``PARTS`` order."""
    return [f"{part}_{i}" for part, width in widths(classifier, parts).items() for i in range(width)]


def polarities(classifier: Any, parts: Sequence[str]) -> list[str]:
    """Suspicious side of each column (for clean-only calibration): high Fisher, low confidence, ..."""
    out: list[str] = []
    for part, width in widths(classifier, parts).items():
        if part == "sensitivity":
            out += _features.feature_polarities(("sensitivity",))
        elif part == "confidence":
            out += ["lower", "higher"]  # maximum probability, entropy
        else:
            out += ["lower" if part == "mahalanobis" else "higher"] * width
    return out


class StackedFeatures(TransformerMixin, BaseEstimator):
    """Raw inputs (N, *input_shape) to the stacked feature matrix (N, n_features) (module docstring).

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The monitored classifier (logits out).
    parts : sequence of str, default=PARTS
        Feature groups, from ``PARTS``.
    chunk_size : int, default=128
    feature_source : FeatureSource, optional
        Where the Fisher values, the input-Fisher spectrum and the class Gaussians come from (None: computed;
        see :class:`~art_fisher.detection.FeatureCache`).

    Attributes
    ----------
    gaussians_ : dict of str to ClassGaussians
        Per layer (``"mahalanobis"`` only).
    n_features_out_ : int
    """

    def __init__(
        self,
        classifier: Any,
        *,
        parts: Sequence[str] = PARTS,
        chunk_size: int = 128,
        feature_source: FeatureSource | None = None,
    ) -> None:
        self.classifier = classifier
        self.parts = parts
        self.chunk_size = chunk_size
        self.feature_source = feature_source

    @property
    def _source(self) -> FeatureSource:
        return check_feature_source(self.feature_source)

    def _fisher_values(self, x: np.ndarray, metrics: tuple[str, ...], chunk_size: int) -> dict[str, np.ndarray]:
        """Fisher metric values of ``x`` (default metric options), through the feature source."""
        options = _fisher_options(self.classifier, metrics)
        return {
            metric: _features.metric_values(
                self.classifier, x, metric, options, chunk_size=chunk_size, source=self._source
            )
            for metric in metrics
        }

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, *, x_reference: np.ndarray | None = None
    ) -> StackedFeatures:
        """Fit the Mahalanobis Gaussians on ``x_reference``, or without it on the clean rows of ``X``.

        The clean rows are those with ``y == 0``, or all rows without ``y``. With ``x_reference`` the rows of
        ``X`` stay out of the Gaussians, so that their scores (on which a detector's estimator and threshold
        are fitted) are those of images the Gaussians have not seen, as a new input's are.
        """
        self.parts_ = _check_parts(self.parts)
        _features.check_chunk_size(self.chunk_size)
        x = _features.check_inputs(self.classifier, X, "X")
        self.gaussians_ = {}
        if "mahalanobis" in self.parts_:
            if x_reference is not None:
                clean, source = _features.check_inputs(self.classifier, x_reference, "x_reference"), "x_reference"
            else:
                clean = x if y is None else x[np.asarray(y) == 0]
                source = "X (its clean rows, without x_reference)"
            self.gaussians_ = self._reference_gaussians(clean, source)
        self._set_widths()
        return self

    def _set_widths(self) -> None:
        self.widths_ = widths(self.classifier, self.parts_)
        self.n_features_out_ = sum(self.widths_.values())

    def _restore(self, gaussians: dict[str, fs.ClassGaussians]) -> StackedFeatures:
        """Fitted from saved class Gaussians (ValueError unless they are those of this model's layers)."""
        self.parts_ = _check_parts(self.parts)
        expected = _layers(self.classifier) if "mahalanobis" in self.parts_ else []
        if sorted(gaussians) != sorted(expected):
            raise ValueError(f"its class Gaussians are for the layers {sorted(gaussians)}, not {sorted(expected)}")
        self.gaussians_ = {name: gaussians[name] for name in expected}
        self._set_widths()
        return self

    def _reference_gaussians(self, clean: np.ndarray, source: str) -> dict[str, fs.ClassGaussians]:
        """:meth:`_class_gaussians` of ``clean``, refused (ValueError naming ``source``) when degenerate.

        Degenerate: fewer than two distinct images, or no layer whose features vary about their class means
        (e.g. one image per class); the Gaussians would score every input alike and the detector never flag.
        Fewer than two distinct images per class of the classifier is warned about.
        """
        distinct = len(np.unique(clean.reshape(len(clean), -1), axis=0)) if len(clean) else 0
        if distinct < 2:
            raise ValueError(
                f"{source} must hold at least two distinct clean images for the Mahalanobis Gaussians; got "
                f"{len(clean)} images, {distinct} distinct."
            )
        n_classes = int(self.classifier.nb_classes)
        if distinct < 2 * n_classes:
            warnings.warn(
                f"{source} holds {distinct} distinct clean images for the Mahalanobis Gaussians of {n_classes} "
                "classes (fewer than two per class): their class means and covariance are poorly estimated.",
                UserWarning,
                stacklevel=3,
            )
        gaussians = self._class_gaussians(clean)
        if not any(np.any(g.precision) for g in gaussians.values()):
            raise ValueError(
                f"{source}: the features of its {distinct} distinct images do not vary about their class means in "
                "any layer (e.g. one image per class), so every Mahalanobis score would be the same; give more "
                "clean images, several per class."
            )
        return gaussians

    def _class_gaussians(self, clean: np.ndarray) -> dict[str, fs.ClassGaussians]:
        """Per feature layer, the class Gaussians of ``clean`` labelled by the classifier (through the source).

        The key is ``("class_gaussians", layers, digest of clean)``: detectors that share a
        :class:`~art_fisher.detection.FeatureCache` and their reference images fit them once.
        """
        layers = _layers(self.classifier)

        def fit() -> dict[str, fs.ClassGaussians]:
            feats = self._layer_features(clean, [*layers, "logits"], self.chunk_size)
            labels = feats.pop("logits").argmax(1)
            n_classes = self.classifier.nb_classes
            return {name: fs.ClassGaussians.fit(feats[name], labels, n_classes) for name in layers}

        (digest,) = row_digests(clean.reshape(1, -1))
        return self._source.once(("class_gaussians", tuple(layers), clean.shape, digest), fit)

    def _layer_features(self, x: np.ndarray, layers: list[str], chunk_size: int) -> dict[str, np.ndarray]:
        """Pooled features of ``layers`` (``"logits"`` included), computed in the model's dtype."""
        model = self.classifier.model
        out: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        parameter = next(model.parameters())
        with torch.no_grad(), _features._eval_mode(model):
            for start in range(0, len(x), chunk_size):
                xt = torch.as_tensor(x[start : start + chunk_size], dtype=parameter.dtype, device=parameter.device)
                for name, a in fs.layer_activations(model, _preprocessed(self.classifier, xt), layers).items():
                    out[name].append(fs.pooled(a).cpu().numpy().astype(np.float64))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The feature matrix, shape (N, n_features): the parts' columns in ``PARTS`` order."""
        check_is_fitted(self, "gaussians_")
        x = _features.check_inputs(self.classifier, X, "X")
        return self._matrix(x, self.chunk_size)

    def _matrix(self, x: np.ndarray, chunk_size: int) -> np.ndarray:
        """The feature matrix of checked inputs, ``chunk_size`` samples per computation."""
        columns: list[np.ndarray] = []
        fisher = tuple(m for p, m in (("fisher", "block_traces"), ("sensitivity", "sensitivity")) if p in self.parts_)
        values = self._fisher_values(x, fisher, chunk_size) if fisher else {}
        if "fisher" in self.parts_:
            columns.append(np.log(np.maximum(values["block_traces"], _FLOOR)))
        if "sensitivity" in self.parts_:
            columns.append(np.log(np.maximum(values["sensitivity"], _FLOOR)))
        if "confidence" in self.parts_:
            from scipy.special import entr, softmax

            p = softmax(self._layer_features(x, ["logits"], chunk_size)["logits"], axis=1)
            columns.append(np.column_stack([p.max(1), entr(p).sum(1)]))
        if "mahalanobis" in self.parts_:
            columns.append(self._mahalanobis_numpy(x, chunk_size))
        if "input_fisher" in self.parts_:
            columns.append(input_fisher_features(self.classifier, x, chunk_size=chunk_size, source=self._source))
        return np.column_stack(columns)

    def _mahalanobis_numpy(self, x: np.ndarray, chunk_size: int) -> np.ndarray:
        model = self.classifier.model
        parameter = next(model.parameters())
        out = []
        with torch.no_grad(), _features._eval_mode(model):
            for start in range(0, len(x), chunk_size):
                xt = torch.as_tensor(x[start : start + chunk_size], dtype=parameter.dtype, device=parameter.device)
                m = fs.mahalanobis_scores(model, _preprocessed(self.classifier, xt), self.gaussians_)
                out.append(m.cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the columns: ``<part>_<i>`` in ``PARTS`` order."""
        check_is_fitted(self, "gaussians_")
        return np.array(feature_names(self.classifier, self.parts_), dtype=object)

    def polarities(self) -> list[str]:
        """Suspicious side of each column (for clean-only calibration): high Fisher, low confidence, ..."""
        check_is_fitted(self, "gaussians_")
        return polarities(self.classifier, self.parts_)

    def torch_features(self, x: torch.Tensor) -> torch.Tensor:
        """The same columns as :meth:`transform` for a tensor of preprocessed inputs, differentiable in ``x``.

        Raises
        ------
        art_fisher.detection.NotDifferentiableError
            With ``"sensitivity"`` among the parts (its statistics are sorts).
        """
        check_is_fitted(self, "gaussians_")
        if "sensitivity" in self.parts_:
            raise NotDifferentiableError(_NO_GRADIENT)
        model, columns = self.classifier.model, []
        with _features._eval_mode(model):
            if "fisher" in self.parts_:
                spec = _features.METRICS["block_traces"]
                values = getattr(metrics_module, spec.function)(model, x.contiguous(), create_graph=True)
                columns.append(torch.log(torch.clamp(_features.metric_columns(values, spec), min=_FLOOR)))
            logits = model(x)
            if "confidence" in self.parts_:
                log_p = torch.log_softmax(logits, dim=1)
                p = log_p.exp()
                columns.append(torch.stack([p.max(dim=1).values, -(p * log_p).sum(dim=1)], dim=1))
            if "mahalanobis" in self.parts_:
                columns.append(fs.mahalanobis_scores(model, x, self.gaussians_))
            if "input_fisher" in self.parts_:
                columns.append(
                    spectrum_features(model, x.contiguous(), spectrum_rank(self.classifier), create_graph=True)
                )
        return torch.cat(columns, dim=1)


class StackedDetector(Detector):
    """The stacked configuration of :class:`~art_fisher.detection.Detector`, on ``StackedFeatures``.

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The (trained) classifier whose inputs are screened (logits out). Never modified; not saved.
    parts : sequence of str, default=PARTS
        Feature groups, from ``PARTS``.
    estimator, target_fpr, threshold, chunk_size, progress, feature_source
        As for every detector (:class:`~art_fisher.detection.Detector`). ``estimator`` None: ``StandardScaler``
        + ``LogisticRegression`` with labels, a :class:`~art_fisher.detection.QuantileOutlierDetector` on the
        columns' suspicious sides without.

    Attributes
    ----------
    features_ : StackedFeatures
        The fitted features (their class Gaussians).
    estimator_, feature_names_, calibration_, threshold_, clean_fpr_, model_fingerprint_
        The fit, as for every detector (:class:`~art_fisher.detection.Detector`).

    Notes
    -----
    ``fit(x, y, x_reference=...)``: clean images for the Mahalanobis Gaussians, recommended with
    ``"mahalanobis"``; without them the Gaussians are fitted on the clean fit images, whose scores are then more
    typical than a new clean input's, so that the threshold flags more than ``target_fpr`` of new clean inputs.
    Saved files hold the Gaussians, not the reference images.

    Examples
    --------
    >>> detector = StackedDetector(classifier, parts=("fisher", "confidence", "mahalanobis"))  # doctest: +SKIP
    >>> detector.fit(x_clean, x_reference=x_train[:1000])            # clean-only  # doctest: +SKIP
    >>> report, is_adversarial = detector.detect(x_test)            # doctest: +SKIP
    """

    defence_params: ClassVar[list[str]] = [
        "classifier",
        "parts",
        "estimator",
        "target_fpr",
        "threshold",
        "chunk_size",
        "progress",
        "feature_source",
    ]
    _FILE_KIND: ClassVar[str] = "StackedDetector"
    _EXTRA_KEYS: ClassVar[tuple[str, ...]] = ("gaussians",)

    def __init__(
        self,
        classifier: Any,
        *,
        parts: Sequence[str] = PARTS,
        estimator: Any = None,
        target_fpr: float = 0.05,
        threshold: str | float = "target_fpr",
        chunk_size: int = 128,
        progress: bool = False,
        feature_source: FeatureSource | None = None,
    ) -> None:
        super().__init__(
            classifier,
            estimator=estimator,
            target_fpr=target_fpr,
            threshold=threshold,
            chunk_size=chunk_size,
            progress=progress,
            feature_source=feature_source,
        )
        self.parts = parts
        self._check_params()

    def _check_config(self) -> None:
        _check_parts(self.parts)

    def _feature_names(self) -> list[str]:
        return feature_names(self.classifier, self.parts)

    def _new_features(self) -> StackedFeatures:
        return StackedFeatures(
            self.classifier, parts=self.parts, chunk_size=self.chunk_size, feature_source=self.feature_source
        )

    def _fit_features(self, x: np.ndarray, labels: np.ndarray | None, x_reference: np.ndarray | None) -> None:
        self.features_ = self._new_features().fit(x, labels, x_reference=x_reference)

    def _features(self, x: np.ndarray, chunk_size: int) -> np.ndarray:
        return self.features_._matrix(x, chunk_size)

    def _default_estimator(self, *, labelled: bool, n_features: int) -> Any:
        if labelled:
            return logistic_pipeline(log=False)
        return QuantileOutlierDetector(target_fpr=self.target_fpr, polarity=polarities(self.classifier, self.parts))

    def _saved_settings(self) -> dict[str, Any]:
        settings = super()._saved_settings()
        settings["parts"] = list(_check_parts(self.parts))
        return settings

    def _discard_fit(self) -> None:
        super()._discard_fit()
        del self.features_

    def _check_differentiable(self) -> None:
        if "sensitivity" in self.parts:
            raise NotDifferentiableError(_NO_GRADIENT)
        check_estimator_differentiable(self.estimator_)

    def _torch_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_.torch_features(x)

    def _extra_state(self) -> dict[str, Any]:
        gaussians = self.features_.gaussians_
        return {"gaussians": {k: {"means": g.means, "precision": g.precision} for k, g in gaussians.items()}}

    def _restore_features(self, state: dict[str, Any]) -> None:
        gaussians = {
            str(k): fs.ClassGaussians(np.asarray(g["means"], np.float64), np.asarray(g["precision"], np.float64))
            for k, g in state["gaussians"].items()
        }
        self.features_ = self._new_features()._restore(gaussians)
