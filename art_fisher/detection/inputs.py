"""Checks of a detector's classifier and inputs, before any work (shared by every detector and estimator)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["check_classifier", "check_inputs", "warn_if_uint8_range"]


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
