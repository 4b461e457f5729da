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

__all__ = ["check_target_fpr", "clean_threshold", "needed_samples"]


def check_target_fpr(target_fpr: float) -> float:
    """``target_fpr`` as a float; ValueError unless it is a number in (0, 1)."""
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, Real) or not 0.0 < float(target_fpr) < 1.0:
        raise ValueError(f"target_fpr must be a number in (0, 1); got {target_fpr!r}.")
    return float(target_fpr)


def needed_samples(target_fpr: float) -> str:
    r"""How many clean scores resolve ``target_fpr`` :math:`\alpha`: :math:`\lceil (1 - \alpha) / \alpha \rceil` (text).

    Written in scientific notation beyond :math:`10^{15}` (for a tiny, even subnormal, :math:`\alpha` the count
    is no integer Python could print, and infinite in floating point).
    """
    needed = (1.0 - target_fpr) / target_fpr if target_fpr > 0 else math.inf
    return str(math.ceil(needed)) if needed < 1e15 else f"{needed:.3g}"


def clean_threshold(clean_scores: np.ndarray, target_fpr: float, sample_weight: np.ndarray | None = None) -> float:
    r"""The :math:`\lceil (1 - \alpha) n \rceil`-th smallest of ``clean_scores`` (see the module docstring).

    Parameters
    ----------
    clean_scores : ndarray of shape (n,)
        Detector scores (higher = more adversarial) of clean calibration images; NaN is not allowed
        (infinite scores are).
    target_fpr : float in (0, 1)
        :math:`\alpha`.
    sample_weight : ndarray of shape (n,), optional
        Non-negative weights of the scores (not all zero): the threshold is then the smallest score
        whose cumulative weight, in increasing order, reaches :math:`(1 - \alpha)` of the total; with
        integer weights, the threshold of the scores repeated as often. None: every score weighs 1.

    Returns
    -------
    float
        Threshold :math:`t`; an input is flagged when its score is above :math:`t`.

    Raises
    ------
    ValueError
        If ``clean_scores`` is empty, not one-dimensional or holds NaN, ``target_fpr`` is not in (0, 1), or
        ``sample_weight`` does not match the scores, is negative or sums to zero.
    """
    alpha = check_target_fpr(target_fpr)
    scores = np.asarray(clean_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"clean_scores must be a non-empty 1-d array; got shape {scores.shape}.")
    if np.any(np.isnan(scores)):
        raise ValueError("clean_scores must not hold NaN.")
    order = np.argsort(scores, kind="stable")
    if sample_weight is None:
        k = max(math.ceil((1.0 - alpha) * len(scores) - 1e-12), 1)
        return float(scores[order][k - 1])
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != scores.shape or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(
            f"sample_weight must be {len(scores)} finite non-negative numbers, not all zero; got shape {weights.shape}."
        )
    cumulative = np.cumsum(weights[order])
    k = int(np.searchsorted(cumulative, (1.0 - alpha) * cumulative[-1] * (1 - 1e-12), side="left"))
    return float(scores[order][min(k, len(scores) - 1)])
