r"""One operating point for every detector: the threshold that flags ``target_fpr`` of held-out clean images.

Detectors decide at thresholds of their own (a logistic regression at probability 1/2, ART's networks
at their argmax, the clean-calibrated ones at their quantile), so their yes/no rates are taken at very
different clean false-positive rates and cannot be ranked. The field compares detectors at one clean
FPR (e.g. TPR at 5 % FPR), with the threshold set on clean data the detector was not fitted on.

The evaluation does that by **two-fold cross-calibration** of the detector-test side (whose images no
detector was fitted on): its source images are split at random into two folds; a test image of fold
:math:`k` is judged at the threshold set on the clean images of the other fold, so no image is ever
judged at a threshold its own clean version helped to set, and every test image is used. The threshold
on :math:`n` clean calibration scores :math:`s_{(1)} \le \dots \le s_{(n)}` is

.. math:: t = s_{(\lceil (1 - \alpha) n \rceil)}, \qquad \text{flag } x \iff s(x) > t,

the empirical :math:`1 - \alpha` quantile (:func:`clean_threshold`): at most :math:`\alpha n` of the
calibration images lie above it, and a new exchangeable clean image lies above it with probability
:math:`(n + 1 - \lceil (1 - \alpha) n \rceil) / (n + 1)` (no ties), within :math:`1 / (n + 1)` of
:math:`\alpha`. The *achieved* FPR, measured on the other fold's clean images, is reported beside every
rate taken at the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from art_fisher.detection.thresholds import check_target_fpr, clean_threshold

__all__ = ["OperatingPoint", "check_target_fpr", "clean_threshold", "split_folds"]


def split_folds(n: int, rng: np.random.Generator) -> np.ndarray:
    """Fold (0 or 1) of each of ``n`` items: a random half (``n // 2``) in fold 0, the rest in fold 1."""
    fold = np.ones(n, dtype=np.int64)
    fold[rng.permutation(n)[: n // 2]] = 0
    return fold


@dataclass(frozen=True)
class OperatingPoint:
    """Thresholds of one fitted detector at ``target_fpr``, set by two-fold cross-calibration.

    Attributes
    ----------
    target_fpr : float
        The clean false-positive rate aimed at.
    thresholds : ndarray of shape (2,)
        ``thresholds[k]``: the threshold for the images of fold ``k``, set on the clean images of fold
        ``1 - k``.
    achieved_fpr : float
        Share of all clean calibration images above the threshold set on the other fold.
    """

    target_fpr: float
    thresholds: np.ndarray
    achieved_fpr: float

    @classmethod
    def fit(cls, clean_scores: np.ndarray, clean_folds: np.ndarray, target_fpr: float) -> OperatingPoint:
        """Thresholds from the clean scores of both folds (each fold needs at least one clean image).

        Raises
        ------
        ValueError
            If ``clean_folds`` does not match ``clean_scores`` or holds values other than 0 and 1, or a
            fold is empty.
        """
        scores, folds = np.asarray(clean_scores, np.float64), np.asarray(clean_folds)
        if folds.shape != scores.shape or not np.isin(folds, (0, 1)).all():
            raise ValueError(f"clean_folds must be 0/1 of shape {scores.shape}; got {folds.shape}.")
        if not (np.any(folds == 0) and np.any(folds == 1)):
            raise ValueError("both folds need at least one clean calibration image.")
        thresholds = np.array([clean_threshold(scores[folds == 1 - k], target_fpr) for k in (0, 1)])
        flagged = scores > thresholds[folds]
        return cls(float(target_fpr), thresholds, float(np.mean(flagged)))

    def flag(self, scores: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """Bool flags of ``scores`` whose images are in ``folds`` (each judged at its fold's threshold)."""
        return np.asarray(scores, np.float64) > self.thresholds[np.asarray(folds, np.int64)]

    @property
    def threshold(self) -> float:
        """One threshold for an attacker who must beat both folds' thresholds: the mean of the two."""
        return float(np.mean(self.thresholds))
