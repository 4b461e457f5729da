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
  with class Gaussians fitted in :meth:`StackedFeatures.fit` on clean reference images (or the clean fit
  images) labelled by the classifier;
- ``"input_fisher"``: ``log λ₁`` and ``log tr`` of the Fisher information with respect to the input,
  :math:`G(x) = J_x^\top S J_x` (``art_fisher.detection._input_fisher``).

:class:`StackedDetector` is an ART ``EvasionDetector`` around
``make_pipeline(StackedFeatures(...), StandardScaler(), LogisticRegression())`` when fitted with labels
(clean 0 / adversarial 1), and around the features and a
:class:`~art_fisher.detection.QuantileOutlierDetector` (each column standardised on clean
inputs, suspicious side by prior: high Fisher, low confidence, high entropy, low Mahalanobis score;
combined by their maximum) when fitted on clean inputs alone. Either way its decision threshold flags
``target_fpr`` of clean inputs: the clean-only rule by construction, the supervised one at the
``art_fisher.detection._decision.supervised_threshold`` of its clean fit inputs (out-of-fold scores
of the scaler and logistic regression on the features; the Mahalanobis Gaussians are fitted on all the
clean fit inputs). :meth:`StackedDetector.calibrate` moves it to held-out clean images. Without ``"sensitivity"`` the
detector has exact input gradients (:meth:`StackedDetector.as_art_classifier`, for ART's
``DetectorClassifier`` and adaptive attacks).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from art.defences.detector.evasion.evasion_detector import EvasionDetector
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from art_fisher import metrics as metrics_module
from art_fisher.detection import _features, _persistence
from art_fisher.detection import _layer_scores as fs
from art_fisher.detection._calibration import QuantileOutlierDetector, check_target_fpr, clean_threshold
from art_fisher.detection._decision import detection_labels, fit_logistic
from art_fisher.detection._input_fisher import input_fisher_features, spectrum_features, spectrum_rank
from art_fisher.detection._logit import (
    DetectionLogitClassifier,
    NotDifferentiableError,
    estimator_logit,
)

#: What a stacked detector's file holds beside a Fisher detector's keys: the class Gaussians and column counts.
_EXTRA_KEYS = ("gaussians", "widths")
#: The feature groups, in column order.
PARTS = ("fisher", "sensitivity", "confidence", "mahalanobis", "input_fisher")
_FLOOR = 1e-30


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(parts, str) or not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct names from {PARTS}; got {parts!r}.")
    return tuple(p for p in PARTS if p in parts)


def _preprocessed(classifier: Any, x: torch.Tensor) -> torch.Tensor:
    if classifier.preprocessing_operations:
        x, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
    return x


class StackedFeatures(TransformerMixin, BaseEstimator):
    """Raw inputs (N, *input_shape) to the stacked feature matrix (N, n_features) (module docstring).

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The monitored classifier (logits out).
    parts : sequence of str, default=PARTS
        Feature groups, from :data:`PARTS`.
    x_reference : ndarray, optional
        Clean images (e.g. from the classifier's training set, as Lee et al. use) for the Mahalanobis
        Gaussians. None: the clean inputs of :meth:`fit`, whose scores are then more typical than a new
        clean input's (a detector's threshold set on them flags more than its target).
    chunk_size : int, default=128

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
        x_reference: np.ndarray | None = None,
        chunk_size: int = 128,
    ) -> None:
        self.classifier = classifier
        self.parts = parts
        self.x_reference = x_reference
        self.chunk_size = chunk_size

    def _fisher_values(self, x: np.ndarray, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Fisher metric values of ``x`` (overridden by the evaluation to share computed values)."""
        return _features.compute(
            self.classifier,
            x,
            metrics=metrics,
            settings=_features.MetricOptions(metrics=metrics).checked(self.classifier),
            chunk_size=self.chunk_size,
        )

    def _input_fisher_values(self, x: np.ndarray) -> np.ndarray:
        """Input-Fisher features (``log λ₁``, ``log tr G``) of ``x`` (the evaluation overrides it to share values)."""
        return input_fisher_features(self.classifier, x, chunk_size=self.chunk_size)

    def _layers(self) -> list[str]:
        return [name for name in fs.feature_layers(self.classifier.model) if name != "logits"]

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> StackedFeatures:
        """Fit the Mahalanobis Gaussians on ``x_reference``, or without it on the clean rows of ``X``.

        The clean rows are those with ``y == 0``, or all rows without ``y``. With ``x_reference`` the rows of
        ``X`` stay out of the Gaussians, so that their scores (on which a detector's estimator and threshold
        are fitted) are those of images the Gaussians have not seen, as a new input's are.
        """
        self._parts = _check_parts(self.parts)
        _features.check_chunk_size(self.chunk_size)
        x = _features.check_inputs(self.classifier, X, "X")
        self.gaussians_ = {}
        if "mahalanobis" in self._parts:
            if self.x_reference is not None:
                clean, source = _features.check_inputs(self.classifier, self.x_reference, "x_reference"), "x_reference"
            else:
                clean = x if y is None else x[np.asarray(y) == 0]
                source = "X (its clean rows, without x_reference)"
            self.gaussians_ = self._reference_gaussians(clean, source)
        self.widths_ = {part: block.shape[1] for part, block in self._columns(x[:1])}
        self.n_features_out_ = sum(self.widths_.values())
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
        """Per feature layer, the class Gaussians of ``clean`` labelled by the classifier.

        The evaluation overrides it to fit them once per run on its reference images.
        """
        feats = self._layer_features(clean, [*self._layers(), "logits"])
        labels = feats.pop("logits").argmax(1)
        n_classes = self.classifier.nb_classes
        return {name: fs.ClassGaussians.fit(feats[name], labels, n_classes) for name in self._layers()}

    def _layer_features(self, x: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
        """Pooled features of ``layers`` (``"logits"`` included), computed in the model's dtype."""
        model = self.classifier.model
        out: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        parameter = next(model.parameters())
        with torch.no_grad(), _features._eval_mode(model):
            for start in range(0, len(x), self.chunk_size):
                xt = torch.as_tensor(x[start : start + self.chunk_size], dtype=parameter.dtype, device=parameter.device)
                for name, a in fs.layer_activations(model, _preprocessed(self.classifier, xt), layers).items():
                    out[name].append(fs.pooled(a).cpu().numpy().astype(np.float64))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The feature matrix, shape (N, n_features): the parts' columns in :data:`PARTS` order."""
        check_is_fitted(self, "gaussians_")
        x = _features.check_inputs(self.classifier, X, "X")
        return np.column_stack([block for _, block in self._columns(x)])

    def _columns(self, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        columns: list[tuple[str, np.ndarray]] = []
        fisher = tuple(m for p, m in (("fisher", "block_traces"), ("sensitivity", "sensitivity")) if p in self._parts)
        values = self._fisher_values(x, fisher) if fisher else {}
        if "fisher" in self._parts:
            columns.append(("fisher", np.log(np.maximum(values["block_traces"], _FLOOR))))
        if "sensitivity" in self._parts:
            columns.append(("sensitivity", np.log(np.maximum(values["sensitivity"], _FLOOR))))
        if "confidence" in self._parts:
            from scipy.special import entr, softmax

            p = softmax(self._layer_features(x, ["logits"])["logits"], axis=1)
            columns.append(("confidence", np.column_stack([p.max(1), entr(p).sum(1)])))
        if "mahalanobis" in self._parts:
            columns.append(("mahalanobis", self._mahalanobis_numpy(x)))
        if "input_fisher" in self._parts:
            columns.append(("input_fisher", self._input_fisher_values(x)))
        return columns

    def _mahalanobis_numpy(self, x: np.ndarray) -> np.ndarray:
        model = self.classifier.model
        parameter = next(model.parameters())
        out = []
        with torch.no_grad(), _features._eval_mode(model):
            for start in range(0, len(x), self.chunk_size):
                xt = torch.as_tensor(x[start : start + self.chunk_size], dtype=parameter.dtype, device=parameter.device)
                m = fs.mahalanobis_scores(model, _preprocessed(self.classifier, xt), self.gaussians_)
                out.append(m.cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the columns: ``<part>_<i>`` in :data:`PARTS` order."""
        check_is_fitted(self, "gaussians_")
        return np.array([f"{part}_{i}" for part in self._parts for i in range(self.widths_[part])], dtype=object)

    def polarities(self) -> list[str]:
        """Suspicious side of each column (for clean-only calibration): high Fisher, low confidence, ..."""
        check_is_fitted(self, "gaussians_")
        sides = {
            "fisher": ["higher"] * self.widths_.get("fisher", 0),
            "sensitivity": _features.feature_polarities(("sensitivity",)),
            "confidence": ["lower", "higher"],
            "mahalanobis": ["lower"] * self.widths_.get("mahalanobis", 0),
            "input_fisher": ["higher"] * self.widths_.get("input_fisher", 0),
        }
        return [side for part in self._parts for side in sides[part]]

    def torch_features(self, x: torch.Tensor) -> torch.Tensor:
        """The same columns as :meth:`transform` for a tensor of preprocessed inputs, differentiable in ``x``.

        Raises
        ------
        art_fisher.detection._logit.NotDifferentiableError
            With ``"sensitivity"`` among the parts (its statistics are sorts).
        """
        check_is_fitted(self, "gaussians_")
        if "sensitivity" in self._parts:
            raise NotDifferentiableError(
                "the stacked detector with 'sensitivity' has no input gradient (map statistics)."
            )
        model, columns = self.classifier.model, []
        with _features._eval_mode(model):
            if "fisher" in self._parts:
                spec = _features.METRICS["block_traces"]
                values = getattr(metrics_module, spec.function)(model, x.contiguous(), create_graph=True)
                columns.append(torch.log(torch.clamp(_features.metric_columns(values, spec), min=_FLOOR)))
            logits = model(x)
            if "confidence" in self._parts:
                log_p = torch.log_softmax(logits, dim=1)
                p = log_p.exp()
                columns.append(torch.stack([p.max(dim=1).values, -(p * log_p).sum(dim=1)], dim=1))
            if "mahalanobis" in self._parts:
                columns.append(fs.mahalanobis_scores(model, x, self.gaussians_))
            if "input_fisher" in self._parts:
                columns.append(
                    spectrum_features(model, x.contiguous(), spectrum_rank(self.classifier), create_graph=True)
                )
        return torch.cat(columns, dim=1)


class StackedDetector(EvasionDetector):
    """ART detector on ``StackedFeatures`` (module docstring), supervised or clean-only.

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
    parts : sequence of str, default=PARTS
    target_fpr : float in (0, 1), default=0.05
        Share of clean inputs the decision threshold flags.
    x_reference : ndarray, optional
        Clean images for the Mahalanobis Gaussians (see ``StackedFeatures``); recommended with
        ``"mahalanobis"``, so that the threshold holds ``target_fpr`` on new inputs.
    chunk_size : int, default=128

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        ``StackedFeatures`` then ``StandardScaler`` + ``LogisticRegression`` (labels) or
        ``QuantileOutlierDetector`` (clean only).
    threshold_ : float
        Decision score above which an input is flagged.
    """

    defence_params: ClassVar[list[str]] = ["classifier", "parts", "target_fpr", "x_reference", "chunk_size"]

    def __init__(
        self,
        classifier: Any,
        *,
        parts: Sequence[str] = PARTS,
        target_fpr: float = 0.05,
        x_reference: np.ndarray | None = None,
        chunk_size: int = 128,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.parts = parts
        self.target_fpr = target_fpr
        self.x_reference = x_reference
        self.chunk_size = chunk_size
        self._check_params()

    def _check_params(self) -> None:
        _features.check_classifier(self.classifier)
        _check_parts(self.parts)
        check_target_fpr(self.target_fpr)
        _features.check_chunk_size(self.chunk_size)

    def _check_fitted(self) -> None:
        from sklearn.exceptions import NotFittedError

        if not hasattr(self, "pipeline_"):
            raise NotFittedError("This StackedDetector is not fitted yet: call fit(x, y) or fit(x_clean) first.")

    def _new_features(self) -> StackedFeatures:
        return StackedFeatures(
            self.classifier, parts=self.parts, x_reference=self.x_reference, chunk_size=self.chunk_size
        )

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> None:
        """With ``y`` (0 clean / 1 adversarial, or one-hot): the logistic pipeline; without: clean-only calibration."""
        x = _features.check_inputs(self.classifier, x)
        features = self._new_features()
        self.model_fingerprint_ = _persistence.model_fingerprint(self.classifier)
        if y is None:
            f = features.fit_transform(x)
            rule = QuantileOutlierDetector(target_fpr=self.target_fpr, polarity=features.polarities()).fit(f)
            self.pipeline_ = Pipeline([("features", features), ("outlier", rule)])
            self.threshold_ = 0.0
            return
        labels = detection_labels(y, len(x))
        head, self.threshold_ = fit_logistic(features.fit_transform(x, labels), labels, self.target_fpr)
        self.pipeline_ = Pipeline([("features", features), *head.steps])

    def _decide(self, features: np.ndarray) -> np.ndarray:
        """Decision scores (N,) of a feature matrix, higher = more adversarial."""
        head = self.pipeline_[1:] if len(self.pipeline_) > 2 else self.pipeline_[-1]
        score = head.decision_function(features)
        return np.asarray(-score if "outlier" in self.pipeline_.named_steps else score, np.float64)

    def decision_scores(self, x: np.ndarray) -> np.ndarray:
        """Decision scores (N,), higher = more adversarial."""
        self._check_fitted()
        x = _features.check_inputs(self.classifier, x)
        return self._decide(self.pipeline_[0].transform(x))

    def calibrate(self, x_clean: np.ndarray) -> StackedDetector:
        """Move the threshold to flag ``target_fpr`` of the held-out clean images ``x_clean``."""
        self.threshold_ = clean_threshold(self.decision_scores(x_clean), self.target_fpr)
        return self

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> tuple[dict, np.ndarray]:
        """Flag adversarial inputs; the report has the keys of :meth:`FisherInformationDetector.detect`.

        Returns
        -------
        report : dict
            ``"scores"``: dict feature name -> ndarray (N,); ``"decision_scores"``: ndarray (N,), higher =
            more adversarial; ``"threshold"``: float; ``"feature_names"``: list of str.
        is_adversarial : ndarray of shape (N,), bool
            ``decision_scores > threshold``.
        """
        self._check_fitted()
        x = _features.check_inputs(self.classifier, x)
        features = self.pipeline_[0].transform(x)
        names = [str(n) for n in self.pipeline_[0].get_feature_names_out()]
        score = self._decide(features)
        report = {
            "scores": dict(zip(names, features.T.copy(), strict=True)),
            "decision_scores": score,
            "threshold": self.threshold_,
            "feature_names": names,
        }
        return report, score > self.threshold_

    # ----------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the learned state to ``path`` (a skops file), atomically, as :meth:`FisherInformationDetector.save`.

        Stored: the settings (not ``x_reference``: the class Gaussians fitted on it are stored instead), the
        fitted decision head, the column names, the classifier's input shape, class count and fingerprint,
        the threshold and the package versions. Not stored: the classifier or its weights.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        """
        self._check_fitted()
        features = self.pipeline_[0]
        state = {
            "settings": {"parts": list(features._parts), "target_fpr": self.target_fpr, "chunk_size": self.chunk_size},
            "estimator": None,
            "estimator_": self.pipeline_[1:] if len(self.pipeline_) > 2 else self.pipeline_[-1],
            "feature_names": [str(n) for n in features.get_feature_names_out()],
            "input_shape": [int(d) for d in self.classifier.input_shape],
            "nb_classes": int(self.classifier.nb_classes),
            "model_fingerprint": self.model_fingerprint_,
            "decision_threshold": self.threshold_,
            "clean_fpr": None,
            "gaussians": {k: {"means": g.means, "precision": g.precision} for k, g in features.gaussians_.items()},
            "widths": dict(features.widths_),
        }
        _persistence.write_state(state, path, detector="StackedDetector", extra_keys=_EXTRA_KEYS)

    @classmethod
    def load(
        cls, path: str | Path, classifier: Any, *, trusted: Sequence[str] = (), allow_other_model: bool = False
    ) -> StackedDetector:
        """Load a detector written by :meth:`save` and attach it to ``classifier``.

        Parameters and checks as :meth:`FisherInformationDetector.load`; its decisions are those of the
        detector that was saved.

        Raises
        ------
        ValueError
            If the file is missing, malformed, untrusted or of another format, or fitted for another
            classifier.
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``.
        """
        _features.check_classifier(classifier)
        state = _persistence.read_state(
            path, classifier, setting_names=("parts", "target_fpr", "chunk_size"), trusted=trusted,
            allow_other_model=allow_other_model, detector="StackedDetector", extra_keys=_EXTRA_KEYS,
        )  # fmt: skip
        try:
            detector = cls(classifier, **state["settings"])
            detector._set_state(state)
        except (TypeError, ValueError, KeyError) as err:
            raise _persistence.invalid_file(path, f"its state is inconsistent ({err})", "StackedDetector") from err
        return detector

    def _set_state(self, state: dict[str, Any]) -> None:
        """The fitted pipeline and threshold of a state read by ``read_state``."""
        features = self._new_features()
        features._parts = _check_parts(self.parts)
        gaussians = state["gaussians"]
        features.gaussians_ = {
            str(k): fs.ClassGaussians(np.asarray(g["means"], np.float64), np.asarray(g["precision"], np.float64))
            for k, g in gaussians.items()
        }
        features.widths_ = {str(k): int(v) for k, v in state["widths"].items()}
        features.n_features_out_ = sum(features.widths_.values())
        if [str(n) for n in features.get_feature_names_out()] != list(state["feature_names"]):
            raise ValueError("its column names do not match its parts")
        head = state["estimator_"]
        if getattr(head, "n_features_in_", features.n_features_out_) != features.n_features_out_:
            raise ValueError(f"its head was fitted on {head.n_features_in_} columns, not {features.n_features_out_}")
        steps = head.steps if isinstance(head, Pipeline) else [("outlier", head)]
        self.pipeline_ = Pipeline([("features", features), *steps])
        self.threshold_ = float(state["decision_threshold"])
        self.model_fingerprint_ = state["model_fingerprint"]

    def as_art_classifier(self) -> Any:
        """The detection logit (decision score minus threshold) as a DetectionLogitClassifier with input gradients.

        Raises
        ------
        art_fisher.detection._logit.NotDifferentiableError
            With ``"sensitivity"`` among the parts.
        """
        self._check_fitted()
        features = self.pipeline_.named_steps["features"]
        if "sensitivity" in features._parts:
            raise NotDifferentiableError(
                "the stacked detector with 'sensitivity' has no input gradient (map statistics)."
            )
        clf, parameter = self.classifier, next(self.classifier.model.parameters())
        rest = self.pipeline_[1:] if len(self.pipeline_) > 2 else self.pipeline_[-1]
        to_logit = estimator_logit(rest, dtype=parameter.dtype, device=parameter.device)
        threshold = self.threshold_

        def logit(x: torch.Tensor) -> torch.Tensor:
            return to_logit(features.torch_features(_preprocessed(clf, x))) - threshold

        return DetectionLogitClassifier(
            logit,
            input_shape=tuple(clf.input_shape),
            clip_values=clf.clip_values,
            dtype=parameter.dtype,
            device=parameter.device,
            name="StackedDetector",
        )
