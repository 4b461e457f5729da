r"""Clean-only calibration: flag a chosen fraction of clean inputs, with no adversarial example at hand.

:class:`QuantileOutlierDetector` is a scikit-learn outlier detector over score columns (for example the
Fisher metrics of clean inputs). It is what :meth:`art_fisher.detection.FisherInformationDetector.fit`
uses when it gets no labels.

How several columns are combined without labels
-----------------------------------------------
Each column :math:`j` is put on a common scale with statistics of the clean calibration data only,

.. math:: z_j(x) = \\sigma_j \\, \\frac{g(f_j(x)) - \\operatorname{median}_j}{1.4826 \\operatorname{MAD}_j},

where :math:`g` is :math:`\\log` (``log=True``; Fisher metrics are positive and span orders of magnitude)
or the identity, the median and the median absolute deviation are taken over the clean data (robust to a
few odd calibration inputs), and :math:`\\sigma_j = +1` if high values are suspicious (``"higher"``),
:math:`-1` if low values are (``"lower"``); ``"two-sided"`` uses :math:`|z_j|`, and ``"none"`` leaves
the column out (a statistic with no prior direction would only raise the threshold: every column added
to a maximum widens the clean tail the threshold has to clear). The combined score is
:math:`s(x) = \\max_j z_j(x)` (``combine="max"``: an input is as suspicious as its most extreme
column, so a column that reacts to one attack is not averaged away by the others) or the mean
(``combine="mean"``: more power when every column shifts a little). The threshold is then set on the
combined score itself, so the false-positive rate holds for the combination whatever the correlation of
the columns (no Bonferroni-style correction is needed): with :math:`n` clean scores, the threshold
:math:`t` is the :math:`\\lceil (1 - \\alpha)(n + 1) \\rceil`-th smallest of them (the split-conformal
quantile), and an input is flagged when :math:`s(x) > t`. For exchangeable clean inputs and a fixed
score function, this flags a new clean input with probability at most :math:`\\alpha`
(``target_fpr``) and at least :math:`\\alpha - 1/(n + 1)` (no ties). The scale statistics come from the
same data, which makes the guarantee approximate; it is close for a few hundred clean inputs.

The threshold that flags a chosen share of clean scores: the operating point of every detector here.

:func:`clean_threshold` is the empirical :math:`1 - \alpha` quantile of clean scores,
:math:`t = s_{(\lceil (1 - \alpha) n \rceil)}` (flag :math:`s > t`); a new exchangeable clean score lies
above it with probability :math:`(n + 1 - \lceil (1 - \alpha) n \rceil) / (n + 1)` (no ties), within
:math:`1 / (n + 1)` of :math:`\alpha`. Used by the stacked detector's decision and by the evaluation's
operating point (:mod:`art_fisher.evaluation`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from art_fisher.utils import check_probability


def check_target_fpr(target_fpr: object) -> float:
    """``target_fpr`` as a float in (0, 1) (:func:`art_fisher.utils.check_probability`)."""
    return check_probability(target_fpr, "target_fpr")


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


_POLARITIES = ("higher", "lower", "two-sided", "none")
_COMBINE = ("max", "mean")
#: Normal-consistency factor of the median absolute deviation.
_MAD_TO_STD = 1.4826


class QuantileOutlierDetector(OutlierMixin, BaseEstimator):
    r"""Flag inputs whose combined, standardised score exceeds the clean data's (1 − target_fpr) quantile.

    Fitted on clean data only (``fit(X)``); see the module docstring for the maths. Follows
    scikit-learn's outlier-detector conventions: ``predict`` returns -1 for a flagged input (an outlier,
    here "adversarial") and +1 otherwise; ``decision_function`` is negative exactly for flagged inputs;
    ``score_samples`` is lower for more suspicious inputs.

    Parameters
    ----------
    target_fpr : float in (0, 1), default=0.05
        Fraction of clean inputs to flag (the false-positive rate aimed at).
    polarity : {"higher", "lower", "two-sided", "none"} or sequence of them, default="higher"
        Which values of a column are suspicious; one string for every column, or one per column
        (``"none"``: the column is not used; at least one must be used).
    combine : {"max", "mean"}, default="max"
        How the standardised columns are combined into one score.
    log : bool, default=False
        Standardise :math:`\log` of the columns (they must then be non-negative; zeros are raised to half
        the smallest positive clean value of their column).

    Attributes
    ----------
    polarity_ : str or list of str
        The polarity ``fit`` used.
    center_ : ndarray of shape (n_features,)
        Median of each (log-)column on the clean data.
    scale_ : ndarray of shape (n_features,)
        :math:`1.4826 \times` MAD of each (log-)column (the standard deviation if the MAD is 0, else 1).
    floor_ : ndarray of shape (n_features,)
        Smallest value a column is raised to before the log (``log=True``), else zeros.
    threshold_ : float
        Flag when the combined score exceeds it: the :math:`\\lceil (1 - \\alpha)(n + 1) \\rceil`-th
        smallest clean score, or the largest one (with a warning) when :math:`n` is too small for that.
    offset_ : float
        ``-threshold_`` (``decision_function = score_samples - offset_``, as scikit-learn defines it).
    train_fpr_ : float
        Fraction of the clean calibration data that is flagged.
    n_features_in_ : int
        Number of columns seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from art_fisher.detection._calibration import QuantileOutlierDetector
    >>> clean = np.random.default_rng(0).lognormal(size=(999, 2))
    >>> det = QuantileOutlierDetector(target_fpr=0.1, log=True).fit(clean)
    >>> round(det.train_fpr_, 3)  # 99 of 999: the conformal quantile rounds towards fewer flags
    0.099
    >>> det.predict([[1.0, 1.0], [100.0, 1.0]])
    array([ 1, -1])
    """

    def __init__(
        self,
        target_fpr: float = 0.05,
        polarity: str | Sequence[str] = "higher",
        combine: str = "max",
        log: bool = False,
    ) -> None:
        self.target_fpr = target_fpr
        self.polarity = polarity
        self.combine = combine
        self.log = log

    def _signs(self, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-column sign (+1 / -1), whether it is two-sided and whether it is used; checks the polarity."""
        polarity = getattr(self, "polarity_", self.polarity)
        given = [polarity] * n_features if isinstance(polarity, str) else list(polarity)
        if len(given) != n_features:
            raise ValueError(
                f"polarity must be one of {_POLARITIES} or one per column ({n_features} columns); "
                f"got {len(given)} entries: {polarity!r}."
            )
        bad = [d for d in given if d not in _POLARITIES]
        if bad:
            raise ValueError(f"polarity must be one of {_POLARITIES} (per column); got {bad[0]!r}.")
        used = np.array([d != "none" for d in given])
        if not used.any():
            raise ValueError(f"polarity must use at least one column; got {polarity!r}.")
        signs = np.array([-1.0 if d == "lower" else 1.0 for d in given])
        return signs, np.array([d == "two-sided" for d in given]), used

    def _check_params(self) -> None:
        check_target_fpr(self.target_fpr)
        if self.combine not in _COMBINE:
            raise ValueError(f"combine must be one of {_COMBINE}; got {self.combine!r}.")
        if not isinstance(self.log, bool):
            raise ValueError(f"log must be True or False; got {self.log!r}.")

    def _transform(self, X: np.ndarray) -> np.ndarray:
        if not self.log:
            return X
        if np.any(X < 0):
            raise ValueError("log=True needs non-negative columns; X holds negative values.")
        return np.log(np.maximum(X, self.floor_))

    def fit(self, X: Any, y: Any = None) -> QuantileOutlierDetector:
        """Learn the per-column scale and the threshold from clean data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Scores of clean inputs.
        y : ignored
            Present for scikit-learn's API; clean-only calibration uses no labels.

        Returns
        -------
        self : QuantileOutlierDetector

        Raises
        ------
        ValueError
            If a parameter is invalid, ``X`` is not finite, or ``log=True`` and ``X`` is negative.
        """
        self._check_params()
        X = validate_data(self, X, dtype=np.float64)
        self.polarity_ = self.polarity
        self._signs(X.shape[1])
        if self.log:
            if np.any(X < 0):
                raise ValueError("log=True needs non-negative columns; X holds negative values.")
            positive = np.where(X > 0, X, np.inf).min(axis=0)
            self.floor_ = np.where(np.isfinite(positive), positive / 2, np.finfo(np.float64).tiny)
        else:
            self.floor_ = np.zeros(X.shape[1])
        G = self._transform(X)
        self.center_ = np.median(G, axis=0)
        mad = _MAD_TO_STD * np.median(np.abs(G - self.center_), axis=0)
        std = G.std(axis=0)
        self.scale_ = np.where(mad > 0, mad, np.where(std > 0, std, 1.0))
        scores = self._combined(G)
        n = len(scores)
        k = math.ceil((1.0 - float(self.target_fpr)) * (n + 1))
        if k > n:
            warnings.warn(
                f"QuantileOutlierDetector: {n} clean samples are too few for target_fpr={self.target_fpr} "
                f"(the conformal quantile needs at least {needed_samples(float(self.target_fpr))}); "
                "the threshold is the largest clean score, so the false-positive rate is not controlled.",
                UserWarning,
                stacklevel=2,
            )
            k = n
        elif len(np.unique(scores)) * float(self.target_fpr) < 1:
            warnings.warn(
                f"QuantileOutlierDetector: the {n} clean samples give {len(np.unique(scores))} distinct scores "
                f"(copies of a few inputs), too few for target_fpr={self.target_fpr} (at least "
                f"{needed_samples(float(self.target_fpr))} distinct are needed); the false-positive rate is not "
                "controlled.",
                UserWarning,
                stacklevel=2,
            )
        self.threshold_ = float(np.sort(scores)[k - 1])
        self.offset_ = -self.threshold_
        self.train_fpr_ = float(np.mean(scores > self.threshold_))
        return self

    def _combined(self, G: np.ndarray) -> np.ndarray:
        signs, two_sided, used = self._signs(G.shape[1])
        z = (G - self.center_) / self.scale_ * signs
        z = np.where(two_sided, np.abs(z), z)[:, used]
        return z.max(axis=1) if self.combine == "max" else z.mean(axis=1)

    def score_samples(self, X: Any) -> np.ndarray:
        """Minus the combined score: lower = more suspicious (scikit-learn's convention).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return -self._combined(self._transform(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """``threshold_ - s(x)``: negative exactly for flagged inputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,)
            In units of the standardised score.
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """-1 for flagged (suspicious) inputs, +1 for the others.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,), int
        """
        return np.where(self.decision_function(X) < 0, -1, 1)
