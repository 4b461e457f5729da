"""Detector files: what the detectors' ``save`` writes and their ``load`` accepts.

This module knows files, not detectors: it writes and reads back the state dict that every
:class:`~art_fisher.detection.Detector` hands out and takes back (``Detector.save`` / ``Detector.load``), for
:class:`~art_fisher.detection.FisherInformationDetector` and :class:`~art_fisher.detection.StackedDetector`
alike (the ``detector`` argument names which). A file is a ``skops.io`` archive (never bare pickle) of that
dict with three keys added:

- ``format`` (``"art_fisher.<detector>"``, :data:`DETECTOR_FORMAT` for the Fisher detector) and
  ``format_version`` (:data:`DETECTOR_FORMAT_VERSION`): identify the layout;
- ``versions``: the package versions that wrote it (a difference is warned about, not refused);
- ``settings``: the detector's constructor arguments except the classifier and the estimator;
- ``estimator``, ``estimator_``: the estimator as given and as fitted;
- ``feature_names``, ``input_shape``, ``nb_classes``;
- ``model_fingerprint``: :func:`model_fingerprint` of the classifier the detector was fitted for;
- ``decision_threshold``, ``clean_fpr``: the detector's ``threshold_`` and ``clean_fpr_`` (None or a finite
  float); ``calibrated``: whether ``calibrate`` set them (then both are numbers, whatever the settings);
- further keys a detector names (``extra_keys``): the stacked detector's class Gaussians.

Loading reads the archive with skops' default trusted types,
:class:`~art_fisher.detection.ThresholdClassifier`,
:class:`~art_fisher.detection.QuantileOutlierDetector` and the type names the caller adds, then checks
every key, type and value before it hands the state back. Every malformed or foreign file gives ValueError.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from art_fisher.detection._decision import estimator_kind
from art_fisher.utils import atomic_write

logger = logging.getLogger(__name__)

#: Identifies files written by :meth:`FisherInformationDetector.save`.
DETECTOR_FORMAT = "art_fisher.FisherInformationDetector"
#: Bumped whenever the saved layout changes; only this version is read.
DETECTOR_FORMAT_VERSION = 1
#: The fitted decision threshold's keys, beside :data:`_KEYS`.
_THRESHOLD_KEYS = ("decision_threshold", "clean_fpr")
#: Whether ``calibrate`` moved the threshold (a bool).
_CALIBRATED = "calibrated"
#: Types a saved detector may hold beyond skops' own defaults (sklearn estimators, numpy, builtins).
TRUSTED_TYPES = (
    "art_fisher.detection._estimators.ThresholdClassifier",
    "art_fisher.detection._calibration.QuantileOutlierDetector",
    "art_fisher.detection._estimators.LogTransformer",
)
#: Keys :func:`write_state` adds to the detector's state (the others come from the detector).
_ADDED_KEYS = ("format", "format_version", "versions")
_KEYS = (
    "format",
    "format_version",
    "versions",
    "settings",
    "estimator",
    "estimator_",
    "feature_names",
    "input_shape",
    "nb_classes",
    "model_fingerprint",
)


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


def write_state(
    state: dict[str, Any],
    path: str | Path,
    *,
    detector: str = "FisherInformationDetector",
    extra_keys: Sequence[str] = (),
) -> None:
    """Write a fitted detector's state dict to ``path`` atomically (see the module docstring).

    Parameters
    ----------
    state : dict
        ``Detector._get_state()``: ``settings``, ``estimator``, ``estimator_``, ``feature_names``,
        ``input_shape``, ``nb_classes``, ``model_fingerprint``, ``decision_threshold``, ``clean_fpr``,
        ``calibrated`` and the ``extra_keys``. Not changed (the
        estimators are written as copies without scikit-learn's metadata-routing requests).
    path : str or Path
        The file to write, conventionally ``*.skops``.
    detector : str
        The detector class, written as the format ``"art_fisher.<detector>"``.
    extra_keys : sequence of str
        The detector's keys beside the shared ones.
    """
    import skops.io as sio

    keys = [k for k in (*_KEYS, *_THRESHOLD_KEYS, _CALIBRATED, *extra_keys) if k not in _ADDED_KEYS]
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"state is missing the keys {missing}.")
    record = {
        "format": f"art_fisher.{detector}",
        "format_version": DETECTOR_FORMAT_VERSION,
        "versions": _versions(),
        **{key: state[key] for key in keys},
        **{key: None if state[key] is None else float(state[key]) for key in _THRESHOLD_KEYS},
        _CALIBRATED: bool(state[_CALIBRATED]),
        "settings": {key: _plain(value) for key, value in state["settings"].items()},
        "estimator": _without_routing_requests(state["estimator"]),
        "estimator_": _without_routing_requests(state["estimator_"]),
    }
    with atomic_write(path) as fh:
        sio.dump(record, fh)


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


def _plain(value: Any) -> Any:
    """Settings as builtins (tuples become lists, numpy scalars become Python numbers)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def invalid_file(path: str | Path, why: str, detector: str = "FisherInformationDetector") -> ValueError:
    """The ValueError for a detector file that is readable but wrong: ``why`` says what is wrong."""
    return ValueError(f"{path} is not a valid saved {detector}: {why}.")


#: Largest detector file, largest ``schema.json`` and most bytes skops may read from the archive's members
#: (each member counted once per node that reads it). A saved detector is a few KB to a few MB.
MAX_DETECTOR_FILE_BYTES = 64 * 2**20
MAX_SCHEMA_BYTES = 8 * 2**20
MAX_MEMBER_READ_BYTES = 64 * 2**20
_MAX_MEMBERS = 10_000


def _member_references(schema: Any) -> list[str]:
    """Every ``"file"`` a skops schema points at, once per node (iteratively: no recursion limit)."""
    found, todo = [], [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                found.append(node["file"])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def _check_archive(path: Path, detector: str = "FisherInformationDetector") -> None:
    """Bound what skops will read before it reads anything.

    Checks the file size, the members' declared and inflated sizes, and the bytes its schema's nodes
    would read (one member can be named by many nodes).
    """
    import json

    size = path.stat().st_size
    if size > MAX_DETECTOR_FILE_BYTES:
        raise invalid_file(
            path,
            detector=detector,
            why=f"{size} bytes, over the {MAX_DETECTOR_FILE_BYTES}-byte limit for a detector file",
        )
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(infos) > _MAX_MEMBERS or len(set(names)) != len(names):
                raise invalid_file(
                    path,
                    detector=detector,
                    why=f"{len(infos)} archive members, some named twice or over {_MAX_MEMBERS}",
                )
            declared = {info.filename: info.file_size for info in infos}
            if declared.get("schema.json", MAX_SCHEMA_BYTES + 1) > MAX_SCHEMA_BYTES:
                raise invalid_file(path, detector=detector, why=f"no schema.json of at most {MAX_SCHEMA_BYTES} bytes")
            schema = json.loads(archive.read("schema.json"))
            read = 0
            for name in _member_references(schema):
                if name not in declared:
                    raise invalid_file(
                        path, detector=detector, why=f"its schema names a member {name[:60]!r} that the archive lacks"
                    )
                read += declared[name]
            if read > MAX_MEMBER_READ_BYTES:
                raise invalid_file(
                    path,
                    detector=detector,
                    why=f"its schema's nodes would read {read} bytes from the archive's members, over "
                    f"the {MAX_MEMBER_READ_BYTES}-byte limit",
                )
            for info in infos:  # inflate each member once, in chunks: its declared size and CRC must hold
                inflated = 0
                with archive.open(info) as member:
                    while chunk := member.read(2**20):
                        inflated += len(chunk)
                if inflated != info.file_size:
                    raise invalid_file(
                        path,
                        detector=detector,
                        why=f"member {info.filename[:60]!r} inflates to {inflated} bytes, not the "
                        f"{info.file_size} it declares",
                    )
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        EOFError,
        NotImplementedError,
        RuntimeError,
        UnicodeDecodeError,
        RecursionError,
    ) as err:
        raise ValueError(
            f"{path} is not a saved {detector} (not a readable skops file: {type(err).__name__}: {str(err)[:200]})."
        ) from err
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise invalid_file(path, detector=detector, why=f"its schema.json is not JSON ({str(err)[:200]})") from err


def _read_state(path: Path, trusted: Sequence[str], detector: str) -> dict[str, Any]:
    import skops.io as sio

    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (a saved detector is one .skops file).")
    _check_archive(path, detector)
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, RecursionError) as err:
        raise ValueError(
            f"{path} is not a saved {detector} (not a readable skops file: {type(err).__name__}: {str(err)[:200]})."
        ) from err
    allowed = set(TRUSTED_TYPES) | set(trusted)
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise ValueError(
            f"{path} holds types that are not trusted: {refused}. If you created the file and trust "
            "them, pass their names in trusted=."
        )
    try:
        state = sio.load(path, trusted=sorted(set(untrusted)))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, OSError, RecursionError) as err:
        raise ValueError(
            f"{path} is not a saved {detector} (loading failed: {type(err).__name__}: {str(err)[:200]})."
        ) from err
    if not isinstance(state, dict) or state.get("format") != f"art_fisher.{detector}":
        raise ValueError(f"{path} is not a saved {detector} (format {'art_fisher.' + detector!r}).")
    return state


def _check_state(
    path: Path, state: dict[str, Any], setting_names: Sequence[str], detector: str, extra_keys: Sequence[str]
) -> None:
    """Every key present with the right type; ValueError naming the first problem."""
    version = state.get("format_version")
    if isinstance(version, bool) or not isinstance(version, Integral) or version != DETECTOR_FORMAT_VERSION:
        raise ValueError(
            f"{path} has detector format version {version!r}; this art_fisher reads version "
            f"{DETECTOR_FORMAT_VERSION} only. Fit the detector again and save it with this version."
        )
    missing = [k for k in (*_KEYS, *_THRESHOLD_KEYS, _CALIBRATED, *extra_keys) if k not in state]
    if missing:
        raise invalid_file(path, detector=detector, why=f"keys {missing} are missing")
    if not isinstance(state[_CALIBRATED], bool):
        raise invalid_file(
            path, detector=detector, why=f"'calibrated' must be True or False; got {_shown_value(state[_CALIBRATED])}"
        )
    settings = state["settings"]
    if not isinstance(settings, dict):
        raise invalid_file(path, detector=detector, why=f"'settings' must be a dict; got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(setting_names))
    if unknown:
        raise invalid_file(path, detector=detector, why=f"'settings' has unknown keys {unknown}")
    names = state["feature_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise invalid_file(path, detector=detector, why="'feature_names' must be a list of str")
    shape = state["input_shape"]
    if not isinstance(shape, list) or not all(isinstance(d, Integral) and int(d) > 0 for d in shape):
        raise invalid_file(
            path, detector=detector, why=f"'input_shape' must be a list of positive integers; got {shape!r}"
        )
    if not isinstance(state["nb_classes"], Integral) or int(state["nb_classes"]) < 2:
        raise invalid_file(
            path, detector=detector, why=f"'nb_classes' must be an integer >= 2; got {state['nb_classes']!r}"
        )
    if not isinstance(state["versions"], dict):
        raise invalid_file(path, detector=detector, why="'versions' must be a dict")
    fingerprint = state.get("model_fingerprint")
    if not (isinstance(fingerprint, str) and len(fingerprint) == 64):
        raise invalid_file(
            path,
            detector=detector,
            why=f"'model_fingerprint' must be a 64-character SHA-256 hex digest; got {_shown_value(fingerprint)}",
        )
    for key in _THRESHOLD_KEYS:
        value = state.get(key)
        number = isinstance(value, Real) and not isinstance(value, bool)
        if value is not None and not (number and np.isfinite(float(value))):
            raise invalid_file(
                path, detector=detector, why=f"{key!r} must be None or a finite number; got {_shown_value(value)}"
            )
    clean_fpr = state.get("clean_fpr")
    if clean_fpr is not None and not 0.0 <= float(clean_fpr) <= 1.0:
        raise invalid_file(path, detector=detector, why=f"'clean_fpr' must be a share in [0, 1]; got {clean_fpr!r}")
    for key in ("estimator", "estimator_"):
        where = _non_finite_value(state[key])
        if where is not None:
            raise invalid_file(path, detector=detector, why=f"{key!r} holds a NaN or infinite value at {where}")


def _shown_value(value: Any) -> str:
    """A short description of a file's value for an error message (type and at most 60 characters)."""
    return f"{type(value).__name__} {repr(value)[:60]}"


def _non_finite_value(estimator: Any) -> str | None:
    """Where a fitted estimator holds a NaN or infinite float (e.g. ``"steps[2][1].coef_"``); None if nowhere.

    Walks the estimator's attributes, the items of lists, tuples and dicts, the objects of scikit-learn and
    art_fisher held in them (pipeline steps, trees: their ``threshold`` and ``value`` arrays), iteratively
    and each object once.
    """
    todo: list[tuple[str, Any]] = [("", estimator)]
    seen: set[int] = set()
    while todo:
        where, obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (float, np.floating, np.ndarray)):
            arr = np.asarray(obj)
            if arr.dtype.kind in "fc" and not bool(np.all(np.isfinite(arr))):
                return where or "<root>"
        elif isinstance(obj, dict):
            todo.extend((f"{where}[{k!r}]", v) for k, v in obj.items())
        elif isinstance(obj, (list, tuple)):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(obj))
        elif type(obj).__module__.split(".")[0] in ("sklearn", "art_fisher"):
            attributes = dict(getattr(obj, "__dict__", {}))
            for name in ("threshold", "value"):  # a fitted tree's arrays live on its Cython Tree
                if type(obj).__name__ == "Tree" and hasattr(obj, name):
                    attributes[name] = getattr(obj, name)
            todo.extend((f"{where}.{k}".lstrip("."), v) for k, v in attributes.items())
    return None


def _check_threshold_settings(
    path: Path, state: dict[str, Any], settings: dict[str, Any], kind: str, detector: str
) -> None:
    """The saved ``decision_threshold`` and ``clean_fpr`` are what a fit with the saved settings leaves.

    ``threshold`` a number: that number and no clean FPR; ``"estimator"``, or ``"target_fpr"`` after a
    clean-only fit: neither; ``"target_fpr"`` after a fit with labels: both. After ``calibrate``: both,
    whatever the settings.
    """
    setting, saved, clean_fpr = settings.get("threshold"), state.get("decision_threshold"), state.get("clean_fpr")
    if state.get(_CALIBRATED):
        expected = "a number each (calibrated on held-out clean images)"
        ok = saved is not None and clean_fpr is not None
    elif isinstance(setting, Real) and not isinstance(setting, bool):
        expected = "the threshold setting's value and no 'clean_fpr'"
        ok = saved is not None and float(saved) == float(setting) and clean_fpr is None
    elif setting == "target_fpr" and kind == "classifier":
        expected = "a number each (the threshold a fit with labels sets at target_fpr)"
        ok = saved is not None and clean_fpr is not None
    elif setting in ("target_fpr", "estimator"):
        expected = "None (the estimator's own decision)"
        ok = saved is None and clean_fpr is None
    else:
        return  # an invalid setting: the detector's constructor names it
    if not ok:
        raise invalid_file(
            path,
            detector=detector,
            why=f"its settings say threshold={setting!r} (with a fitted {kind.replace('_', ' ')}), so "
            f"'decision_threshold' and 'clean_fpr' must be {expected}; got {saved!r} and {clean_fpr!r}",
        )


def read_state(
    path: str | Path,
    classifier: Any,
    *,
    setting_names: Sequence[str],
    trusted: Sequence[str] = (),
    allow_other_model: bool = False,
    detector: str = "FisherInformationDetector",
    extra_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Read and check a detector file for ``classifier``; the state dict for ``_set_state``.

    Checked: the archive holds only trusted types; every key is present with the right type; the
    settings are among ``setting_names``; the saved input shape and class count are the classifier's;
    the saved fingerprint is the classifier's (:func:`model_fingerprint`; a mismatch is
    refused unless ``allow_other_model``, then warned about); ``estimator_`` is a fitted
    binary classifier or outlier detector. Different package versions are warned about.

    Parameters
    ----------
    path : str or Path
    classifier : art.estimators.classification.PyTorchClassifier
    setting_names : sequence of str
        The constructor arguments a file's ``settings`` may hold.
    trusted : sequence of str
        Further type names to trust.
    allow_other_model : bool

    Returns
    -------
    dict
        The file's state, with ``settings`` as constructor keyword arguments (sequences as tuples,
        renamed settings of earlier files under their current names), ``model_fingerprint`` the
        fingerprint of ``classifier``, ``calibration`` ``"labels"`` or ``"clean"`` (from the kind of
        ``estimator_``), and ``decision_threshold``, ``clean_fpr`` and ``calibrated`` as saved.

    Raises
    ------
    ValueError
        If the file is missing, malformed, untrusted or of another format, or fitted for another
        classifier.
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(allow_other_model, bool):
        raise ValueError(f"allow_other_model must be True or False; got {allow_other_model!r}.")
    path = Path(path)
    state = _read_state(path, trusted, detector)
    _check_state(path, state, setting_names, detector, extra_keys)
    saved_shape = tuple(state["input_shape"])
    if tuple(classifier.input_shape) != saved_shape or classifier.nb_classes != state["nb_classes"]:
        raise ValueError(
            f"{path} was fitted for a classifier with input_shape {saved_shape} and "
            f"{state['nb_classes']} classes; got input_shape {tuple(classifier.input_shape)} and "
            f"{classifier.nb_classes} classes."
        )
    fingerprint = model_fingerprint(classifier)
    saved_fingerprint = str(state["model_fingerprint"])  # checked: a 64-character digest
    if saved_fingerprint != fingerprint:
        why = (
            "it was fitted for a model with other weights or preprocessing (fingerprint "
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
    fitted = state["estimator_"]
    try:
        kind = estimator_kind(fitted, "estimator_")
        check_is_fitted(fitted)
    except (TypeError, NotFittedError) as err:
        raise invalid_file(path, detector=detector, why=f"'estimator_' is not a fitted estimator ({err})") from err
    if kind == "classifier" and len(getattr(fitted, "classes_", ())) != 2:
        raise invalid_file(path, detector=detector, why="'estimator_' is not a binary classifier")
    _check_threshold_settings(path, state, settings, kind, detector)
    return {
        **state,
        "settings": settings,
        "model_fingerprint": fingerprint,
        "calibration": "clean" if kind == "outlier_detector" else "labels",
        **{key: state.get(key) for key in _THRESHOLD_KEYS},
    }
