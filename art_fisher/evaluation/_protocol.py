r"""The evaluation protocol: which examples each detector is fitted on and scored on, and the numbers kept.

Source images are split once, half and half, into a detector-train and a detector-test side
(:func:`split_sources`); the same split serves every attack, so no source image, clean or attacked, is
ever on both sides, even when a detector is fitted on one attack and scored on another.

For each detector (:func:`score_detectors`):

- a **supervised** detector is fitted once per attack ``a`` (the ``fit_attack``), on the detector-train
  side's clean images and their successful ``a``-adversarial versions (balanced, label 1 = adversarial);
- a detector that needs **no adversarial example** is fitted once, on the clean images of the
  detector-train side alone (``fit_attack`` ``"clean"``);
- each fitted detector scores the detector-test side once (its clean images and every attack's
  successful adversarial versions), and is then measured on every test attack ``b``: the clean images
  whose ``b`` attack succeeded and those adversarial versions (balanced).

So ``fit_attack == attack`` is the classic same-attack number, ``fit_attack != attack`` an attack the
detector never saw. Per row: ROC-AUC of the continuous score, and the TPR, the achieved FPR and the
balanced accuracy at the run's operating point: the threshold that flags ``target_fpr`` of clean
images, set by two-fold cross-calibration on the detector-test side's clean images
(the operating point); the TPR and FPR of the detector's own decision are kept as ``own_tpr`` and
``own_fpr``.

One operating point for every detector: the threshold that flags ``target_fpr`` of held-out clean images.

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

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from art_fisher.detection._calibration import clean_threshold
from art_fisher.evaluation._attacks import AttackOutcome
from art_fisher.evaluation._model import seed_everything
from art_fisher.evaluation.detectors._base import RunContext, Scored
from art_fisher.evaluation.detectors._registry import DETECTORS


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


logger = logging.getLogger(__name__)


#: ``fit_attack`` of a detector fitted on clean inputs only.
CLEAN_FIT = "clean"
_METRIC_KEYS = ("roc_auc", "detection_accuracy", "tpr", "fpr", "own_tpr", "own_fpr")
#: Offset of the seed of the calibration folds (:func:`calibration_folds`).
_FOLD_SEED = 7_777


def split_sources(n: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of length ``n``: True for the detector-train side (``n // 2`` images, drawn by ``rng``)."""
    side = np.zeros(n, dtype=bool)
    side[rng.permutation(n)[: n // 2]] = True
    return side


def calibration_folds(n_test: int, seed: int) -> np.ndarray:
    """Calibration fold (0/1) of each detector-test source image, seeded by the run's ``seed``."""
    return split_folds(n_test, np.random.default_rng(seed + _FOLD_SEED))


def detection_metrics(
    y: np.ndarray, score: np.ndarray, flagged: np.ndarray, own: np.ndarray | None = None
) -> dict[str, float]:
    """ROC-AUC of ``score``; accuracy, TPR and FPR of the flags at the operating point ``flagged``.

    ``own``: the detector's own decision (``own_tpr``, ``own_fpr``; NaN when not given).
    """
    from sklearn.metrics import roc_auc_score

    own_flags = np.full(len(y), np.nan) if own is None else np.asarray(own, np.float64)
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "detection_accuracy": float(np.mean(flagged == (y == 1))),
        "tpr": float(np.mean(flagged[y == 1])),
        "fpr": float(np.mean(flagged[y == 0])),
        "own_tpr": float(np.mean(own_flags[y == 1])),
        "own_fpr": float(np.mean(own_flags[y == 0])),
    }


@dataclass
class ProtocolResult:
    """What :func:`score_detectors` measured.

    Attributes
    ----------
    rows : list of dict
        One per detector × fit attack × test attack: ``detector``, ``fit_attack``, ``attack`` (the test
        attack), the :func:`detection_metrics`, ``seconds_per_sample`` (as in ``fits``), ``fit_seconds``,
        ``n_train``, ``n_test``. NaN metrics where a side had fewer than two successful examples.
        ``tpr``, ``fpr`` (achieved) and ``detection_accuracy`` are taken at the operating point.
    fits : list of dict
        One per detector × fit attack: ``detector``, ``fit_attack``, ``n_train``, ``fit_seconds``,
        ``detect_seconds`` and ``n_detect`` (wall clock of one ``detect`` call on the whole detector-test
        side), ``seconds_per_sample`` (the detector's cost per sample: its own account when it gives one,
        see :attr:`~art_fisher.evaluation.detectors.Scored.seconds`, else the wall clock), ``clean_fpr``
        (share of all clean detector-test images flagged at the operating point: the achieved FPR),
        ``own_clean_fpr`` (the same for the detector's own decision), ``threshold`` (the mean of the two
        folds' thresholds) and ``n_clean_test``.
    curves : dict
        ``curves[attack][detector] = (fpr, tpr, auc)`` for the same-attack or clean fit.
    metric_scores : dict
        ``metric_scores[metric][attack] = (clean, adversarial)`` raw Fisher metric values on the test side.
    fitted : dict
        ``fitted[(detector, fit_attack)]``: the fitted :class:`~art_fisher.evaluation.detectors.DetectorRun`,
        for later stages (e.g. attacks that know the detector).
    operating_points : dict
        ``operating_points[(detector, fit_attack)]``: its :class:`~.operating_point.OperatingPoint`.
    folds : ndarray
        Calibration fold of each detector-test source image (in the order of ``~side``).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    fits: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[str, tuple]] = field(default_factory=dict)
    metric_scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    fitted: dict[tuple[str, str], Any] = field(default_factory=dict)
    operating_points: dict[tuple[str, str], OperatingPoint] = field(default_factory=dict)
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class _TestPool:
    """The detector-test side as one array: its clean images, then each attack's successful versions."""

    x: np.ndarray
    n_clean: int
    rows: dict[str, tuple[np.ndarray, np.ndarray]]  # attack -> (clean rows, adversarial rows) into x
    fold: np.ndarray  # calibration fold of every row of x (that of its source image)

    @classmethod
    def build(
        cls, x_src: np.ndarray, side: np.ndarray, outcomes: Sequence[AttackOutcome], folds: np.ndarray
    ) -> _TestPool:
        test = np.flatnonzero(~side)
        parts, rows, offset, fold = [x_src[test]], {}, len(test), [folds]
        for o in outcomes:
            ok = o.success[test]
            if ok.sum() < 2:
                continue
            parts.append(o.x_adv[test[ok]])
            fold.append(folds[ok])
            rows[o.name] = (np.flatnonzero(ok), offset + np.arange(int(ok.sum())))
            offset += int(ok.sum())
        return cls(np.concatenate(parts), len(test), rows, np.concatenate(fold))


def _nan_row(detector: str, fit_attack: str, attack: str, n_train: int, n_test: int) -> dict[str, Any]:
    nan = float("nan")
    return {
        "detector": detector, "fit_attack": fit_attack, "attack": attack, **dict.fromkeys(_METRIC_KEYS, nan),
        "seconds_per_sample": nan, "fit_seconds": nan, "n_train": n_train, "n_test": n_test,
    }  # fmt: skip


def score_detectors(
    ctx: RunContext,
    x_src: np.ndarray,
    side: np.ndarray,
    outcomes: Sequence[AttackOutcome],
    detector_names: Sequence[str],
    *,
    on_step: Callable[[str], None] = lambda _: None,
) -> ProtocolResult:
    """Fit every detector as the module docstring says and measure it on every attack.

    ``on_step(description)`` is called before each fit (for a progress bar).
    """
    from sklearn.metrics import roc_curve

    folds = calibration_folds(int((~side).sum()), ctx.seed)
    pool = _TestPool.build(x_src, side, outcomes, folds)
    result = ProtocolResult(folds=folds)
    attacks = [o.name for o in outcomes]
    n_test = {a: 2 * len(pool.rows[a][0]) if a in pool.rows else 2 * int(o.success[~side].sum())
              for a, o in zip(attacks, outcomes, strict=True)}  # fmt: skip
    for name in detector_names:
        spec = DETECTORS[name]
        fit_sets: list[tuple[str, np.ndarray | None, np.ndarray | None]] = []
        if spec.supervised:
            for o in outcomes:
                tr = side & o.success
                if tr.sum() < 2:
                    fit_sets.append((o.name, None, None))
                else:
                    fit_sets.append((o.name, np.concatenate([x_src[tr], o.x_adv[tr]]), np.repeat([0, 1], tr.sum())))
        else:
            fit_sets.append((CLEAN_FIT, x_src[side], None))
        for fit_attack, x_fit, y_fit in fit_sets:
            on_step(f"{name} fitted on {fit_attack}")
            n_train = 0 if x_fit is None else len(x_fit)
            if x_fit is None:
                logger.info(
                    "%s: too few successful %s examples on the detector-train side; not fitted", name, fit_attack
                )
                result.rows += [_nan_row(name, fit_attack, a, n_train, n_test[a]) for a in attacks]
                continue
            seed_everything(ctx.seed)
            start = time.perf_counter()
            run = spec.build(ctx)
            run.fit(x_fit, y_fit)
            fit_seconds = time.perf_counter() - start
            start = time.perf_counter()
            scored: Scored = run.detect(pool.x)
            detect_seconds = time.perf_counter() - start
            per_sample = (detect_seconds if scored.seconds is None else scored.seconds) / len(pool.x)
            point = OperatingPoint.fit(scored.score[: pool.n_clean], folds, ctx.target_fpr)
            flagged = point.flag(scored.score, pool.fold)
            result.fitted[(name, fit_attack)] = run
            result.operating_points[(name, fit_attack)] = point
            result.fits.append({
                "detector": name, "fit_attack": fit_attack, "n_train": n_train, "fit_seconds": fit_seconds,
                "detect_seconds": detect_seconds, "n_detect": len(pool.x), "seconds_per_sample": per_sample,
                "clean_fpr": point.achieved_fpr, "own_clean_fpr": float(np.mean(scored.is_adversarial[: pool.n_clean])),
                "threshold": point.threshold, "n_clean_test": pool.n_clean,
            })  # fmt: skip
            for attack in attacks:
                if attack not in pool.rows:
                    result.rows.append(_nan_row(name, fit_attack, attack, n_train, n_test[attack]))
                    continue
                clean, adv = pool.rows[attack]
                idx = np.concatenate([clean, adv])
                y = np.repeat([0, 1], len(clean))
                metrics = detection_metrics(y, scored.score[idx], flagged[idx], scored.is_adversarial[idx])
                result.rows.append({
                    "detector": name, "fit_attack": fit_attack, "attack": attack, **metrics,
                    "seconds_per_sample": per_sample, "fit_seconds": fit_seconds, "n_train": n_train,
                    "n_test": len(idx),
                })  # fmt: skip
                if fit_attack in (attack, CLEAN_FIT):
                    result.curves.setdefault(attack, {})[name] = (
                        *roc_curve(y, scored.score[idx])[:2],
                        metrics["roc_auc"],
                    )
                for metric, values in scored.metric_scores.items():
                    result.metric_scores.setdefault(metric, {}).setdefault(attack, (values[clean], values[adv]))
    return result
