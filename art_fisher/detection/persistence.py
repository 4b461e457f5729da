"""Detector files: what :meth:`FisherInformationDetector.save` writes and :meth:`~.load` accepts.

A file is a ``skops.io`` archive (never bare pickle) of one dict:

- ``format``, ``format_version``: identify the layout (:data:`DETECTOR_FORMAT`, :data:`DETECTOR_FORMAT_VERSION`);
- ``versions``: the package versions that wrote it (a difference is warned about, not refused);
- ``settings``: the detector's constructor arguments except the classifier and the estimator;
- ``estimator``, ``estimator_``: the estimator as given and as fitted;
- ``feature_names``, ``input_shape``, ``nb_classes``;
- ``model_fingerprint`` (format 2): :func:`model_fingerprint` of the classifier the detector was fitted for.

Loading reads the archive with skops' default trusted types,
:class:`~art_fisher.detection.estimators.ThresholdClassifier`,
:class:`~art_fisher.detection.calibration.QuantileOutlierDetector` and the type names the caller adds, then checks
every key, type and value before building the detector. Every malformed or foreign file gives ValueError.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from art_fisher._atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from art_fisher.detection.detector import FisherInformationDetector

logger = logging.getLogger(__name__)

__all__ = ["DETECTOR_FORMAT", "DETECTOR_FORMAT_VERSION", "load_detector", "model_fingerprint", "save_detector"]

#: Identifies files written by :meth:`FisherInformationDetector.save`.
DETECTOR_FORMAT = "art_fisher.FisherInformationDetector"
#: Bumped whenever the saved layout changes. Version 2 added ``model_fingerprint`` and ``target_fpr``;
#: version 1 files still load, but only with ``allow_other_model=True`` (they cannot be tied to a model).
DETECTOR_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: Types a saved detector may hold beyond skops' own defaults (sklearn estimators, numpy, builtins).
TRUSTED_TYPES = (
    "art_fisher.detection.estimators.ThresholdClassifier",
    "art_fisher.detection.calibration.QuantileOutlierDetector",
    "art_fisher.detection.transforms.LogTransformer",
)
#: Where the trusted types lived in art-fisher-lease 0.1: files written then still load (the names are
#: resolved through these modules while the file is read).
_FORMER_MODULES = {
    "art_fisher.estimators": "art_fisher.detection.estimators",
    "art_fisher.calibration": "art_fisher.detection.calibration",
    "art_fisher.transforms": "art_fisher.detection.transforms",
}
_KEYS = ("format", "format_version", "versions", "settings", "estimator", "estimator_", "feature_names",
         "input_shape", "nb_classes")  # fmt: skip


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import art
    import sklearn
    import torch

    import art_fisher

    return {
        "art_fisher": art_fisher.__version__,
        "scikit-learn": sklearn.__version__,
        "adversarial-robustness-toolbox": art.__version__,
        "torch": torch.__version__,
        "skops": version("skops"),
    }


def _hash_value(h: Any, value: Any) -> None:
    """Feed a preprocessing parameter into the hash: numbers and arrays by value, other objects by type."""
    if value is None or isinstance(value, (bool, str, Integral, Real)):
        h.update(repr(value).encode())
    elif isinstance(value, (tuple, list)):
        h.update(b"[")
        for item in value:
            _hash_value(h, item)
        h.update(b"]")
    else:
        arr = np.asarray(value) if not hasattr(value, "detach") else value.detach().cpu().numpy()
        if arr.dtype.kind in "biuf":
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        else:
            h.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())


def model_fingerprint(classifier: Any) -> str:
    """SHA-256 of what the Fisher metrics depend on: the model's weights and the classifier's preprocessing.

    Hashed: every entry of ``classifier.model.state_dict()`` (name, dtype, shape and bytes; buffers such
    as BatchNorm statistics included) and every preprocessing operation of the ART classifier (its
    type and the values of its ``params``, e.g. a standardisation's mean and std). Not hashed: the
    device, ``clip_values`` and postprocessing defences (they do not change the metrics).

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    import torch

    h = hashlib.sha256(b"art_fisher.model_fingerprint.v1")
    for name, tensor in classifier.model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for op in classifier.preprocessing_operations or ():
        h.update(f"op|{type(op).__module__}.{type(op).__qualname__}|".encode())
        for param in getattr(op, "params", ()):
            h.update(f"{param}=".encode())
            _hash_value(h, getattr(op, param, None))
    return h.hexdigest()


def save_detector(detector: FisherInformationDetector, path: str | Path) -> None:
    """Write a fitted detector's learned state to ``path`` atomically (see the module docstring)."""
    import skops.io as sio

    state = {
        "format": DETECTOR_FORMAT,
        "format_version": DETECTOR_FORMAT_VERSION,
        "versions": _versions(),
        "settings": {key: _plain(getattr(detector, key)) for key in _setting_names(detector)},
        "estimator": _without_routing_requests(detector.estimator),
        "estimator_": _without_routing_requests(detector.estimator_),
        "feature_names": list(detector.feature_names_),
        "input_shape": [int(d) for d in detector.classifier.input_shape],
        "nb_classes": int(detector.classifier.nb_classes),
        "model_fingerprint": detector.model_fingerprint_,
    }
    state["settings"]["metrics"] = list(detector._metric_names)
    with atomic_write(path) as fh:
        sio.dump(state, fh)


def _without_routing_requests(estimator: Any) -> Any:
    """A deep copy of ``estimator`` without scikit-learn metadata-routing requests (``set_fit_request``).

    skops cannot store the request objects (it recurses without end), and a fitted estimator needs
    them no more: they only route ``sample_weight`` during ``fit``. The caller's object is not changed.
    """
    if estimator is None or not hasattr(estimator, "get_params"):
        return estimator
    copied = copy.deepcopy(estimator)
    for obj in (copied, *copied.get_params(deep=True).values()):
        if "_metadata_request" in getattr(obj, "__dict__", {}):
            del obj.__dict__["_metadata_request"]
    return copied


def _setting_names(detector_or_cls: Any) -> list[str]:
    return [k for k in detector_or_cls.defence_params if k not in ("classifier", "estimator")]


def _plain(value: Any) -> Any:
    """Settings as builtins (tuples become lists, numpy scalars become Python numbers)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _refuse(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid saved FisherInformationDetector: {why}.")


@contextlib.contextmanager
def _former_modules() -> Iterator[None]:
    """Make the modules of :data:`_FORMER_MODULES` importable by their former names while a file loads."""
    import importlib
    import sys

    added = [old for old in _FORMER_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(_FORMER_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def _read_state(path: Path, trusted: Sequence[str]) -> dict[str, Any]:
    import skops.io as sio

    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (a saved detector is one .skops file).")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, RecursionError) as err:
        raise ValueError(
            f"{path} is not a saved FisherInformationDetector (not a readable skops file: "
            f"{type(err).__name__}: {str(err)[:200]})."
        ) from err
    allowed = set(TRUSTED_TYPES) | set(trusted) | {
        f"{former}.{t.rpartition('.')[2]}"
        for former, module in _FORMER_MODULES.items()
        for t in TRUSTED_TYPES
        if t.startswith(module + ".")
    }
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise ValueError(
            f"{path} holds types that are not trusted: {refused}. If you created the file and trust "
            "them, pass their names in trusted=."
        )
    try:
        with _former_modules():
            state = sio.load(path, trusted=sorted(set(untrusted)))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, OSError, RecursionError) as err:
        raise ValueError(
            f"{path} is not a saved FisherInformationDetector (loading failed: {type(err).__name__}: {str(err)[:200]})."
        ) from err
    if not isinstance(state, dict) or state.get("format") != DETECTOR_FORMAT:
        raise ValueError(f"{path} is not a saved FisherInformationDetector (format {DETECTOR_FORMAT!r}).")
    return state


def _check_state(path: Path, state: dict[str, Any], cls: type) -> None:
    """Every key present with the right type; ValueError naming the first problem."""
    version = state.get("format_version")
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"{path} has detector format version {version!r}; this art_fisher reads versions "
            f"{list(_READABLE_VERSIONS)}."
        )
    keys = (*_KEYS, "model_fingerprint") if version >= 2 else _KEYS
    missing = [k for k in keys if k not in state]
    if missing:
        raise _refuse(path, f"keys {missing} are missing")
    settings = state["settings"]
    if not isinstance(settings, dict):
        raise _refuse(path, f"'settings' must be a dict; got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(_setting_names(cls)))
    if unknown:
        raise _refuse(path, f"'settings' has unknown keys {unknown}")
    names = state["feature_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _refuse(path, "'feature_names' must be a list of str")
    shape = state["input_shape"]
    if not isinstance(shape, list) or not all(isinstance(d, Integral) and int(d) > 0 for d in shape):
        raise _refuse(path, f"'input_shape' must be a list of positive integers; got {shape!r}")
    if not isinstance(state["nb_classes"], Integral) or state["nb_classes"] < 2:
        raise _refuse(path, f"'nb_classes' must be an integer >= 2; got {state['nb_classes']!r}")
    if not isinstance(state["versions"], dict):
        raise _refuse(path, "'versions' must be a dict")
    fingerprint = state.get("model_fingerprint")
    if version >= 2 and not (isinstance(fingerprint, str) and len(fingerprint) == 64):
        raise _refuse(path, "'model_fingerprint' must be a 64-character SHA-256 hex digest")


def load_detector(
    cls: type,
    path: str | Path,
    classifier: Any,
    *,
    trusted: Sequence[str] = (),
    allow_other_model: bool = False,
) -> FisherInformationDetector:
    """Read, check and rebuild a detector; see :meth:`FisherInformationDetector.load`."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from art_fisher.detection import features as _features

    _features.check_classifier(classifier)
    if not isinstance(allow_other_model, bool):
        raise ValueError(f"allow_other_model must be True or False; got {allow_other_model!r}.")
    path = Path(path)
    state = _read_state(path, trusted)
    _check_state(path, state, cls)
    saved_shape = tuple(state["input_shape"])
    if tuple(classifier.input_shape) != saved_shape or classifier.nb_classes != state["nb_classes"]:
        raise ValueError(
            f"{path} was fitted for a classifier with input_shape {saved_shape} and "
            f"{state['nb_classes']} classes; got input_shape {tuple(classifier.input_shape)} and "
            f"{classifier.nb_classes} classes."
        )
    fingerprint = model_fingerprint(classifier)
    saved_fingerprint = state.get("model_fingerprint")
    if saved_fingerprint != fingerprint:
        why = (
            "it was saved by an older art_fisher (format 1) that did not record the model"
            if saved_fingerprint is None
            else "it was fitted for a model with other weights or preprocessing (fingerprint "
            f"{saved_fingerprint[:12]}…, this classifier {fingerprint[:12]}…)"
        )
        if not allow_other_model:
            raise ValueError(
                f"{path} cannot be tied to this classifier: {why}. Its decisions are only meaningful for "
                "the model it was fitted on; pass allow_other_model=True to load it anyway."
            )
        warnings.warn(f"{path}: {why}; loaded because allow_other_model=True.", UserWarning, stacklevel=3)
    now = _versions()
    for package in ("art_fisher", "scikit-learn"):
        if state["versions"].get(package) != now[package]:
            warnings.warn(
                f"{path} was saved with {package} {state['versions'].get(package)}; running "
                f"{now[package]}. Check its decisions before relying on them.",
                UserWarning,
                stacklevel=3,
            )
    settings = dict(state["settings"])
    for key in ("metrics", "params"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    try:
        detector = cls(classifier, estimator=state["estimator"], **settings)
    except (TypeError, ValueError) as err:
        raise _refuse(path, f"its settings are invalid ({err})") from err
    fitted = state["estimator_"]
    try:
        kind = _estimator_kind(fitted, "estimator_")
        check_is_fitted(fitted)
    except (TypeError, NotFittedError) as err:
        raise _refuse(path, f"'estimator_' is not a fitted estimator ({err})") from err
    if kind == "classifier" and len(getattr(fitted, "classes_", ())) != 2:
        raise _refuse(path, "'estimator_' is not a binary classifier")
    blocks = _features.block_names(classifier, detector._options)
    if state["feature_names"] != _features.feature_names(detector._metric_names, blocks):
        raise ValueError(f"{path} is inconsistent: its feature names do not match its metrics.")
    detector.estimator_ = fitted
    detector.feature_names_ = list(state["feature_names"])
    detector.model_fingerprint_ = fingerprint
    detector.calibration_ = "clean" if kind == "outlier_detector" else "labels"
    return detector


def _estimator_kind(estimator: Any, name: str = "estimator") -> str:
    """``"classifier"`` or ``"outlier_detector"``; TypeError for anything a detector cannot decide with."""
    from art_fisher.detection.decision import estimator_kind

    return estimator_kind(estimator, name)
