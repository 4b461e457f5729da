r"""The threshold that flags a chosen share of clean scores: the operating point of every detector here.

:func:`clean_threshold` is the empirical :math:`1 - \alpha` quantile of clean scores,
:math:`t = s_{(\lceil (1 - \alpha) n \rceil)}` (flag :math:`s > t`); a new exchangeable clean score lies
above it with probability :math:`(n + 1 - \lceil (1 - \alpha) n \rceil) / (n + 1)` (no ties), within
:math:`1 / (n + 1)` of :math:`\alpha`. Used by the stacked detector's decision and by the evaluation's
operating point (:mod:`art_fisher.evaluation.operating_point`).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

__all__ = ["check_target_fpr", "clean_threshold"]


def check_target_fpr(target_fpr: float) -> float:
    """``target_fpr`` as a float; ValueError unless it is a number in (0, 1)."""
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, Real) or not 0.0 < float(target_fpr) < 1.0:
        raise ValueError(f"target_fpr must be a number in (0, 1); got {target_fpr!r}.")
    return float(target_fpr)


def clean_threshold(clean_scores: np.ndarray, target_fpr: float) -> float:
    r"""The :math:`\lceil (1 - \alpha) n \rceil`-th smallest of ``clean_scores`` (see the module docstring).

    Parameters
    ----------
    clean_scores : ndarray of shape (n,)
        Detector scores (higher = more adversarial) of clean calibration images; NaN is not allowed
        (infinite scores are).
    target_fpr : float in (0, 1)
        :math:`\alpha`.

    Returns
    -------
    float
        Threshold :math:`t`; an input is flagged when its score is above :math:`t`.

    Raises
    ------
    ValueError
        If ``clean_scores`` is empty, not one-dimensional or holds NaN, or ``target_fpr`` is not in (0, 1).
    """
    alpha = check_target_fpr(target_fpr)
    scores = np.asarray(clean_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"clean_scores must be a non-empty 1-d array; got shape {scores.shape}.")
    if np.any(np.isnan(scores)):
        raise ValueError("clean_scores must not hold NaN.")
    k = max(math.ceil((1.0 - alpha) * len(scores) - 1e-12), 1)
    return float(np.sort(scores)[k - 1])
