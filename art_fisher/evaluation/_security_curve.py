r"""A detection-aware security curve: robust accuracy of classifier + detector against the PGD budget ε.

ART's :class:`~art.evaluations.SecurityCurve` measures the accuracy of a classifier under ART's PGD for
a list of budgets. With a detector in front of the classifier, a flag is neither right nor wrong by
itself: a flagged attacked input is *caught*, a flagged clean input is an *error* (a false alarm).
Robust accuracy at budget :math:`\varepsilon`, over images :math:`x_i` with labels :math:`y_i`:

.. math::

    \operatorname{acc}(0) = \frac{1}{n} \sum_i [h(x_i) = y_i \wedge \neg D(x_i)], \qquad
    \operatorname{acc}(\varepsilon) = \frac{1}{n} \sum_i [h(x_i^\varepsilon) = y_i \vee D(x_i^\varepsilon)]
    \quad (\varepsilon > 0),

:math:`x_i^\varepsilon` the PGD L∞ example of budget :math:`\varepsilon` against the classifier
:math:`h` and :math:`D` the detector's flag at the operating point (the threshold that flags
``target_fpr`` of held-out clean images, the operating point). The attack does not know the
detector (the adaptive attacks do); one PGD run per budget serves every
detector. ART's own ``SecurityCurve`` on ``DetectorClassifier`` counts every flag as a wrong answer,
clean ones included, which is why its clean accuracy drops when a detector is added.

- :class:`DetectionSecurityCurve`: an ART ``Evaluation`` for any classifier and detector score function;
- :func:`security_curve_rows`: the curve of the evaluation run's detectors (in ``report.md`` as
  ``security_curve.png``), with the run's calibration folds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from art.evaluations.evaluation import Evaluation

from art_fisher.detection._calibration import check_target_fpr, clean_threshold
from art_fisher.evaluation._model import predict_labels, seed_everything

#: Detectors drawn in the report's security curve when the run has them.
CURVE_DETECTORS = (
    "fisher_combined",
    "fisher_combined_clean",
    "stacked",
    "stacked_clean",
    "max_softmax",
    "max_softmax_clean",
    "mahalanobis",
    "energy_clean",
    "binary_input",
)
#: Budgets of the report's curve, as fractions of the run's ``eps``.
EPS_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
#: PGD iterations per budget (step ε / 8, no random start).
STEPS = 20
#: Images of the detector-test side on the curve.
MAX_IMAGES = 100


def _pgd(classifier: Any, x: np.ndarray, y: np.ndarray, eps: float, batch_size: int) -> np.ndarray:
    from art.attacks.evasion import ProjectedGradientDescent

    if eps == 0:
        return x
    attack = ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=eps,
        eps_step=eps / 8,
        max_iter=STEPS,
        num_random_init=0,
        batch_size=batch_size,
        verbose=False,
    )
    return attack.generate(x, y=y).astype(x.dtype)


def robust_accuracy(correct: np.ndarray, flagged: np.ndarray, *, attacked: bool) -> float:
    """Mean of ``correct and not flagged`` (clean inputs) or ``correct or flagged`` (attacked inputs)."""
    correct, flagged = np.asarray(correct, bool), np.asarray(flagged, bool)
    return float(np.mean(correct | flagged) if attacked else np.mean(correct & ~flagged))


class DetectionSecurityCurve(Evaluation):
    """ART ``Evaluation``: the detection-aware security curve of a classifier and a detector score.

    Parameters
    ----------
    eps : int or list of float
        Budgets as ART's ``SecurityCurve`` takes them: an int ``k`` gives ``k`` evenly spaced budgets up to
        the classifier's clip range; a list gives them explicitly. Budget 0 (clean) is always added.
    target_fpr : float in (0, 1)
        The detector flags scores above the threshold that flags this share of ``x_calibration``.

    Examples
    --------
    >>> curve = DetectionSecurityCurve(eps=[0.1, 0.2], target_fpr=0.05)        # doctest: +SKIP
    >>> eps, acc, clean_acc = curve.evaluate(classifier, x, y, score_fn=score, x_calibration=x_cal)  # doctest: +SKIP
    """

    def __init__(self, eps: int | Sequence[float], target_fpr: float = 0.05) -> None:
        self.eps = eps
        self.target_fpr = target_fpr

    def _budgets(self, classifier: Any, x: np.ndarray) -> list[float]:
        eps = self.eps
        if isinstance(eps, bool):
            raise ValueError(f"eps must be a positive number of budgets or a list of budgets; got {eps!r}.")
        if isinstance(eps, int):
            if eps < 1:
                raise ValueError(f"eps must be a positive number of budgets or a list of budgets; got {eps!r}.")
            low, high = classifier.clip_values if classifier.clip_values is not None else (np.min(x), np.max(x))
            return [float(i * (high - low) / eps) for i in range(1, eps + 1)]
        budgets = [float(e) for e in eps]
        if not budgets or any(not e >= 0 for e in budgets):
            raise ValueError(f"eps must be non-negative budgets; got {self.eps!r}.")
        return budgets

    def evaluate(
        self,
        classifier: Any,
        x: np.ndarray,
        y: np.ndarray,
        *,
        score_fn: Callable[[np.ndarray], np.ndarray],
        x_calibration: np.ndarray,
        batch_size: int = 128,
    ) -> tuple[list[float], list[float], float]:
        """Budgets, robust accuracies of classifier + detector at each, and the clean one (budget 0).

        Parameters
        ----------
        classifier : art ClassifierLossGradients
            Attacked with ART's PGD L∞ (no random start, :data:`STEPS` steps of ε / 8).
        x, y : ndarray
            Images (N, ...) and labels (N,) or one-hot (N, C).
        score_fn : callable
            ``score_fn(x) -> (N,)`` detector scores, higher = more adversarial.
        x_calibration : ndarray
            Clean images, disjoint from ``x``, that set the threshold at ``target_fpr``.
        batch_size : int
        """
        alpha = check_target_fpr(self.target_fpr)
        labels = np.asarray(y)
        labels = labels.argmax(1) if labels.ndim == 2 else labels
        threshold = clean_threshold(np.asarray(score_fn(x_calibration), np.float64), alpha)
        self.threshold_ = threshold
        out = []
        for eps in [0.0, *self._budgets(classifier, x)]:
            x_eps = _pgd(classifier, x, labels, eps, batch_size)
            correct = classifier.predict(x_eps, batch_size=batch_size).argmax(1) == labels
            flagged = np.asarray(score_fn(x_eps), np.float64) > threshold
            out.append((eps, robust_accuracy(correct, flagged, attacked=eps > 0)))
        self.eps_list = [e for e, _ in out[1:]]
        self.accuracy_adv_list = [a for _, a in out[1:]]
        self.accuracy = out[0][1]
        return self.eps_list, self.accuracy_adv_list, self.accuracy


def security_curve_rows(
    ctx: Any,
    x_src: np.ndarray,
    y_src: np.ndarray,
    side: np.ndarray,
    protocol: Any,
    detectors: Sequence[str],
    *,
    eps: float,
    fit_attack: str,
) -> list[dict[str, Any]]:
    """The curve of ``detectors`` (those of :data:`CURVE_DETECTORS` fitted in ``protocol``) on the test side.

    Each image is judged at its calibration fold's threshold. Rows: ``detector`` (``"none"``: the
    classifier alone), ``eps``, ``robust_accuracy``, ``flagged`` (share of the images flagged).
    """
    test = np.flatnonzero(~side)[:MAX_IMAGES]
    x, y, fold = x_src[test], y_src[test], protocol.folds[:MAX_IMAGES]
    chosen = []
    for name in (d for d in CURVE_DETECTORS if d in detectors):
        key = (name, fit_attack) if (name, fit_attack) in protocol.fitted else (name, "clean")
        if key in protocol.fitted:
            chosen.append((name, protocol.fitted[key], protocol.operating_points[key]))
    rows: list[dict[str, Any]] = []
    for i, fraction in enumerate(EPS_FRACTIONS):
        seed_everything(ctx.seed + 31 * (i + 1))
        budget = float(fraction * eps)
        x_eps = _pgd(ctx.classifier, x, y, budget, ctx.batch_size)
        correct = predict_labels(ctx.classifier, x_eps, ctx.batch_size) == y
        rows.append({"detector": "none", "eps": budget, "robust_accuracy": float(correct.mean()), "flagged": 0.0})
        for name, run, point in chosen:
            flagged = point.flag(run.detect(x_eps).score, fold)
            rows.append(
                {
                    "detector": name,
                    "eps": budget,
                    "flagged": float(flagged.mean()),
                    "robust_accuracy": robust_accuracy(correct, flagged, attacked=budget > 0),
                }
            )
    return rows
