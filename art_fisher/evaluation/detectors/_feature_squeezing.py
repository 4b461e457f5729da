r"""Feature squeezing (Xu, Evans, Qi, NDSS 2018) in the evaluation.

The score of an input ``x`` is the largest L1 distance between the classifier's softmax on ``x`` and on
each squeezed copy of it,

.. math:: s(x) = \max_{q \in Q} \| \operatorname{softmax}(z(x)) - \operatorname{softmax}(z(q(x))) \|_1,

with the paper's two squeezers for images (``Q``, its "joint" detector):

- **bit-depth reduction** to ``b`` bits: with ``u = (x − lo) / (hi − lo)`` (the classifier's
  ``clip_values``), ``q(x) = lo + (hi − lo) · round(u (2^b − 1)) / (2^b − 1)``; ``b = 1`` for
  single-channel images (the paper's MNIST setting), ``b = 5`` otherwise (its CIFAR-10 setting);
- **median smoothing** over a 2 × 2 window per channel, as the paper's code computes it
  (``scipy.ndimage.median_filter`` with ``size=2`` on the spatial axes and ``mode="reflect"``: the window
  of pixel ``(i, j)`` is ``{i − 1, i} × {j − 1, j}``, reflected at the border, and its median the upper
  middle value, the third smallest of four); only for inputs of shape (C, H, W).

The detector is fitted on clean inputs alone (``feature_squeezing``, clean-calibrated): an input is
flagged when its score exceeds the clean inputs' ``1 − target_fpr`` quantile, as the paper sets its
threshold on legitimate examples. Rounding and the median have no useful input gradient, so adaptive
attacks do not run on it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored, decided

#: Side of the median filter's square window (the paper's 2 × 2).
MEDIAN_SIZE = 2


def bit_depth(x: np.ndarray, bits: int, clip_values: tuple[float, float]) -> np.ndarray:
    """``x`` reduced to ``bits`` bits within ``clip_values`` (module docstring)."""
    lo, hi = float(clip_values[0]), float(clip_values[1])
    levels = 2**bits - 1
    u = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (lo + (hi - lo) * np.round(u * levels) / levels).astype(x.dtype)


def median_smoothing(x: np.ndarray, size: int = MEDIAN_SIZE) -> np.ndarray:
    """Per-channel median filter of images ``x`` (N, C, H, W) over a ``size`` × ``size`` window (module docstring)."""
    from scipy.ndimage import median_filter

    return median_filter(x, size=(1, 1, size, size), mode="reflect")


def default_bits(input_shape: tuple[int, ...]) -> int:
    """The paper's bit depth: 1 for single-channel images (MNIST), 5 otherwise (CIFAR-10)."""
    return 1 if len(input_shape) == 3 and input_shape[0] == 1 else 5


def squeezers(classifier: Any, bits: int | None = None) -> list[Callable[[np.ndarray], np.ndarray]]:
    """The squeezers of the classifier's inputs: bit depth, and the median filter for (C, H, W) images."""
    clip = classifier.clip_values
    if clip is None:
        raise ValueError(
            "feature_squeezing needs the classifier's clip_values (the range bit-depth reduction rounds in)."
        )
    shape = tuple(classifier.input_shape)
    b = default_bits(shape) if bits is None else bits
    out: list[Callable[[np.ndarray], np.ndarray]] = [lambda x: bit_depth(x, b, clip)]
    if len(shape) == 3:
        out.append(median_smoothing)
    return out


def _softmax(classifier: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.asarray(classifier.predict(x, batch_size=batch_size), dtype=np.float64), axis=1)


def squeezing_scores(classifier: Any, x: np.ndarray, *, batch_size: int = 128, bits: int | None = None) -> np.ndarray:
    """Xu et al.'s score (N,): the largest L1 distance between the softmax on ``x`` and on a squeezed ``x``.

    The classifier's outputs are taken as logits (the evaluation's models return logits).
    """
    p = _softmax(classifier, x, batch_size)
    distances = [np.abs(p - _softmax(classifier, q(x), batch_size)).sum(1) for q in squeezers(classifier, bits)]
    return np.max(distances, axis=0)


class FeatureSqueezingRun(DetectorRun):
    """Xu et al.'s joint squeezing detector, thresholded at ``target_fpr`` of clean inputs.

    ``fit(x, y)`` uses only the clean rows (``y == 0``; all of ``x`` without ``y``).
    """

    def __init__(self, ctx: RunContext, bits: int | None = None) -> None:
        self.ctx, self.bits = ctx, bits
        squeezers(ctx.classifier, bits)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return squeezing_scores(self.ctx.classifier, x, batch_size=self.ctx.batch_size, bits=self.bits)[:, None]

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        clean = x if y is None else x[np.asarray(y) == 0]
        self.estimator = QuantileOutlierDetector(target_fpr=self.ctx.target_fpr, polarity="higher").fit(
            self._scores(clean)
        )

    def detect(self, x: np.ndarray) -> Scored:
        return decided(self.estimator, self._scores(x))


def feature_squeezing_specs() -> dict[str, DetectorSpec]:
    """The registry entry ``feature_squeezing`` (clean-calibrated)."""
    return {
        "feature_squeezing": DetectorSpec(
            "Feature squeezing (Xu et al. 2018), clean-calibrated",
            FeatureSqueezingRun,
            supervised=False,
            no_gradient="no input gradient (bit-depth rounding and the median filter)",
        )
    }
