r"""The attacks of the evaluation: a registry of ART evasion attacks and how adversarial examples are made.

:data:`ATTACKS` maps a name to an :class:`AttackSpec`; add an entry to extend it. :func:`run_attack`
attacks every source image and records which attacks succeeded (the prediction differs from the true
label) and the size of the successful perturbations.

Adaptive attacks: ART's PGD on classifier and detector together, for every differentiable detector.

Threat model (:data:`THREAT_MODEL`, printed in the report): a white-box attacker who knows the classifier
and the fitted detector (features, estimator, threshold) and attacks both at once. For each
differentiable detector of the run (:attr:`~art_fisher.evaluation.detectors.DetectorSpec.no_gradient` is
None), its fit on PGD examples (or its clean-only fit) becomes an
:class:`~art_fisher.adversarial.AdaptiveDetectorClassifier` with the classifier, and ART's
``ProjectedGradientDescent`` ascends the attacker's loss
:math:`\min(m, \kappa) - [m > 0] \operatorname{softplus}(d(x))`, :math:`m = \max_{j \ne y} z_j - z_y` (logit
margin capped at :math:`\kappa = 5`; the detector term once the classifier is fooled; see
:mod:`art_fisher.adversarial`) from the clean image (no random start),
with exact input gradients (for the Fisher detectors: through the metrics' mixed second derivatives):

- ``pgd_linf``: L∞ ball of the run's ``eps``, :data:`STEPS` steps of ``eps / 8``;
- ``pgd_l2``: L2 ball of radius :math:`\varepsilon_2 = \varepsilon \sqrt{D} / 4` (:math:`D` input
  dimensions; 0.4 for 8×8 digits at ε = 0.2, 2.1 for MNIST at ε = 0.3, the usual pairing),
  :data:`STEPS` steps of :math:`\varepsilon_2 / 8`.

Attacked: up to :data:`MAX_IMAGES` clean images of the detector-test side (never seen by a detector),
with their true labels. Every flag is taken at the run's operating point (the threshold that flags
``target_fpr`` of held-out clean images (the operating point); the attacker's detection logit is
shifted so that it is 0 there). Per detector and attack: the success rate against the classifier alone,
the evasion rate (misclassified *and* not flagged), the flag rate of the successful examples, the
achieved clean FPR on the attacked images' clean versions, the ROC-AUC of the detector's score between
the clean images and the successful adaptive examples, and the attacker's mean loss at the start, after
half the steps and at the end (a flat second half means the attack converged).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_fisher.adversarial._adaptive_classifier import AdaptiveDetectorClassifier
from art_fisher.adversarial._spectral_attack import OneStepSpectralAttack
from art_fisher.detection._logit import DetectionLogitClassifier
from art_fisher.distributed import map_rows
from art_fisher.evaluation._model import predict_labels, seed_everything
from art_fisher.evaluation.detectors._registry import DETECTORS

logger = logging.getLogger(__name__)


#: L∞ budget of FGSM / PGD when ``eps`` is not given, per data set.
DEFAULT_EPS = {"digits": 0.2, "mnist": 0.3, "cifar10": 8 / 255}


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the registry.

    Attributes
    ----------
    label : str
        Display name.
    build : callable
        ``build(classifier, eps, batch_size) -> art.attacks.EvasionAttack``.
    uses_eps : bool
        Whether the ``eps`` budget applies (L∞ attacks); minimal-perturbation attacks ignore it.
    """

    label: str
    build: Callable[[Any, float, int], Any]
    uses_eps: bool


def _fgsm(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import FastGradientMethod

    return FastGradientMethod(classifier, norm=np.inf, eps=eps, eps_step=eps, batch_size=batch_size)


def _pgd(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=eps,
        eps_step=eps / 8,
        max_iter=20,
        num_random_init=0,
        batch_size=batch_size,
        verbose=False,
    )


def _deepfool(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import DeepFool

    return DeepFool(classifier, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=batch_size, verbose=False)


def _cw_l2(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import CarliniL2Method

    # Fewer binary-search steps / iterations than ART's defaults keep the default run in budget; the
    # larger learning rate and initial constant keep the success rate high with so few steps.
    return CarliniL2Method(
        classifier,
        confidence=0.0,
        learning_rate=0.1,
        binary_search_steps=4,
        max_iter=10,
        initial_const=1.0,
        batch_size=batch_size,
        verbose=False,
    )


def _ossa(classifier: Any, eps: float, batch_size: int) -> Any:
    # An L2 step: a quarter of the largest L2 step inside the L∞ ball of radius eps (2.1 on MNIST at 0.3).
    l2 = eps * float(np.prod(classifier.input_shape)) ** 0.5 / 4
    return OneStepSpectralAttack(classifier, eps=l2, batch_size=batch_size)


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("FGSM", _fgsm, uses_eps=True),
    "pgd": AttackSpec("PGD", _pgd, uses_eps=True),
    "deepfool": AttackSpec("DeepFool", _deepfool, uses_eps=False),
    "cw_l2": AttackSpec("C&W L2", _cw_l2, uses_eps=False),
    "ossa": AttackSpec("One-step spectral (L2)", _ossa, uses_eps=True),
}
DEFAULT_ATTACKS = ("fgsm", "pgd", "deepfool", "cw_l2")


@dataclass
class AttackOutcome:
    """Adversarial versions of every source image and which of them succeeded.

    Attributes
    ----------
    name : str
        Key of :data:`ATTACKS`.
    x_adv : ndarray
        Same shape as the source images.
    success : ndarray of shape (N,), bool
        The classifier's prediction on ``x_adv`` differs from the true label.
    stats : dict
        ``attack``, ``success_rate``, ``n_attacked``, ``n_successful``, ``mean_l2``, ``mean_linf`` (of the
        successful perturbations, input units) and ``seconds``.
    """

    name: str
    x_adv: np.ndarray
    success: np.ndarray
    stats: dict[str, Any]


def run_attack(
    name: str, classifier: Any, x: np.ndarray, y: np.ndarray, *, eps: float, batch_size: int, progress: bool
) -> AttackOutcome:
    """Attack every image of ``x`` (true labels ``y``) with :data:`ATTACKS` ``[name]``; seed first."""
    spec = ATTACKS[name]
    start = time.perf_counter()
    attack = spec.build(classifier, float(eps), batch_size)

    def generate(xs: np.ndarray) -> np.ndarray:
        out = np.empty_like(xs)
        with tqdm(total=len(xs), desc=f"attack {spec.label}", unit="img", disable=not progress, leave=False) as bar:
            for lo in range(0, len(xs), batch_size):
                hi = min(lo + batch_size, len(xs))
                out[lo:hi] = attack.generate(xs[lo:hi])
                bar.update(hi - lo)
                if not progress:
                    logger.info("attack %s: %d/%d images", spec.label, hi, len(xs))
        return out

    x_adv = map_rows(generate, x)  # under torchrun, each rank attacks its block of the images
    seconds = time.perf_counter() - start
    success = predict_labels(classifier, x_adv, batch_size) != y
    delta = (x_adv - x).reshape(len(x), -1)[success]
    stats = {
        "attack": name,
        "success_rate": float(success.mean()),
        "n_attacked": len(success),
        "n_successful": int(success.sum()),
        "mean_l2": float(np.linalg.norm(delta, axis=1).mean()) if len(delta) else float("nan"),
        "mean_linf": float(np.abs(delta).max(axis=1).mean()) if len(delta) else float("nan"),
        "seconds": seconds,
    }
    return AttackOutcome(name=name, x_adv=x_adv, success=success, stats=stats)


#: PGD steps of every adaptive attack.
STEPS = 40
#: At most this many detector-test images are attacked per detector and attack.
MAX_IMAGES = 100
#: Adaptive attack name -> (label, norm).
ADAPTIVE_ATTACKS = {"pgd_linf": ("adaptive PGD L∞", np.inf), "pgd_l2": ("adaptive PGD L2", 2)}
THREAT_MODEL = (
    "White-box adaptive attacker (Carlini & Wagner 2017; Tramèr et al. 2020): knows the classifier and the "
    "fitted detector (features, estimator, threshold) and attacks both together with ART's "
    "ProjectedGradientDescent on DetectorClassifier(classifier, detector) (art_fisher.adversarial._adaptive_classifier."
    "AdaptiveDetectorClassifier), ascending min(m, 5) - [m > 0] softplus(d) with m = max_{j != y} z_j - z_y "
    "(the classifier's logit margin capped at 5; once the classifier is fooled, the detector's "
    "log-probability of 'clean', d being the detection logit) with exact "
    f"input gradients; untargeted, true labels, no random start, {STEPS} steps: L∞ at the run's eps (step "
    "eps/8) and L2 at eps2 = eps * sqrt(D) / 4 (step eps2/8). Detectors: each fitted non-adaptively on PGD "
    "examples of the detector-train side (clean-calibrated ones on clean images), then frozen, with the "
    "threshold of the run's operating point (target clean FPR, set on held-out clean images; the attacker's "
    f"detection logit is 0 there). Attacked: up to {MAX_IMAGES} clean detector-test images. Evasion = "
    "misclassified by the classifier AND not flagged at the operating point."
)


def adaptive_detectors(names: Sequence[str], *, explicit: bool) -> list[str]:
    """The detectors of ``names`` that adaptive attacks can attack.

    Raises
    ------
    ValueError
        Before any work: if ``explicit`` (the user named the detectors) and one has no input gradient, or if
        none has one; the message names each such detector and why.
    """
    refused = {n: DETECTORS[n].no_gradient for n in names if DETECTORS[n].no_gradient is not None}
    usable = [n for n in names if n not in refused]
    if refused and (explicit or not usable):
        reasons = "; ".join(f"{n}: {why}" for n, why in refused.items())
        raise ValueError(
            f"adaptive attacks need detectors with input gradients; {reasons}. Drop them from detectors or run "
            "without adaptive."
        )
    return usable


def shifted_logit(logit: Any, threshold: float, x_check: np.ndarray, score_check: np.ndarray, name: str) -> Any:
    """Return ``logit`` shifted to 0 at ``threshold``.

    ``logit`` is a :class:`~art_fisher.detection.DetectionLogitClassifier`.

    ``threshold`` is on the scale of the protocol's scores, which are increasing affine maps
    :math:`s = a d + b` of the detectors' detection logits :math:`d` (the logit itself, or a metric
    before a threshold rule's scaling). :math:`a, b` are fitted on ``x_check`` and their protocol scores
    ``score_check`` (ValueError naming the detector unless the map is affine and increasing), and the
    attacker's logit becomes :math:`d - (t - b) / a`: 0 exactly at the operating point's threshold.
    """
    d = logit.predict(x_check, batch_size=len(x_check))[:, 0].astype(np.float64)
    s = np.asarray(score_check, np.float64)
    slope, intercept = np.polyfit(d, s, 1) if np.ptp(d) > 0 else (1.0, float(np.mean(s - d)))
    if not slope > 0 or not np.allclose(slope * d + intercept, s, rtol=1e-3, atol=1e-4 * (1 + np.abs(s).max())):
        raise ValueError(
            f"{name}: its protocol score {s[:3]} is not an increasing affine map of its detection logit {d[:3]}; "
            "the operating point's threshold cannot be carried over to the attacker."
        )
    offset = float((threshold - intercept) / slope)
    base = logit.logit_function
    return DetectionLogitClassifier(
        lambda xt: base(xt) - offset,
        input_shape=logit.input_shape,
        clip_values=logit.clip_values,
        dtype=logit.dtype,
        device=logit.device,
        name=f"{logit.name} at the operating point",
    )


def _l2_eps(eps: float, input_shape: Sequence[int]) -> float:
    return eps * math.sqrt(float(np.prod(input_shape))) / 4


def _attack(combo: Any, norm: float, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(
        combo,
        norm=norm,
        eps=eps,
        eps_step=eps / 8,
        max_iter=STEPS,
        num_random_init=0,
        batch_size=batch_size,
        verbose=False,
    )


def run_adaptive(
    ctx: Any,
    x_src: np.ndarray,
    y_src: np.ndarray,
    side: np.ndarray,
    fitted: dict[tuple[str, str], Any],
    detector_names: Sequence[str],
    *,
    eps: float,
    fit_attack: str,
    operating_points: dict[tuple[str, str], Any],
    folds: np.ndarray,
    on_step: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Attack every detector of ``detector_names`` (differentiable, see :func:`adaptive_detectors`) adaptively.

    ``fitted[(name, fit_attack)]`` (or ``fitted[(name, "clean")]``) is the detector's fitted
    :class:`~art_fisher.evaluation.detectors.DetectorRun`, ``operating_points`` the same keys'
    :class:`~.operating_point.OperatingPoint` and ``folds`` the calibration fold of each detector-test
    source image. Returns one row per detector × adaptive attack (keys in :data:`ROW_KEYS`).
    """
    from sklearn.metrics import roc_auc_score

    test = np.flatnonzero(~side)[:MAX_IMAGES]
    x, y, fold = x_src[test], y_src[test], np.asarray(folds)[:MAX_IMAGES]
    rows: list[dict[str, Any]] = []
    for name in detector_names:
        key = (name, fit_attack) if (name, fit_attack) in fitted else (name, "clean")
        run = fitted.get(key)
        if run is None:
            logger.warning("%s: no fitted detector for adaptive attacks (fit %s); skipped", name, fit_attack)
            continue
        clean = run.detect(x)
        point = operating_points[key]
        clean_flags = point.flag(clean.score, fold)
        logit = shifted_logit(run.detection_logit(), point.threshold, x[:16], clean.score[:16], name)
        combo = AdaptiveDetectorClassifier(ctx.classifier, logit)
        for a_i, (attack, (label, norm)) in enumerate(ADAPTIVE_ATTACKS.items()):
            on_step(f"{label} on {name}")
            budget = eps if norm == np.inf else _l2_eps(eps, x.shape[1:])
            seed_everything(ctx.seed + 7919 * (a_i + 1))
            combo.loss_history = []
            start = time.perf_counter()
            x_adv = _attack(combo, norm, budget, batch_size=len(x)).generate(x, y=y).astype(np.float32)
            seconds = time.perf_counter() - start
            history, combo.loss_history = combo.loss_history, None
            final_loss = combo.compute_loss(x_adv, y)
            fooled = predict_labels(ctx.classifier, x_adv, ctx.batch_size) != y
            scored = run.detect(x_adv)
            flagged = point.flag(scored.score, fold)
            auc = float("nan")
            if fooled.sum() >= 2:
                labels = np.r_[np.zeros(len(x)), np.ones(int(fooled.sum()))]
                auc = float(roc_auc_score(labels, np.r_[clean.score, np.asarray(scored.score)[fooled]]))
            rows.append(
                {
                    "detector": name,
                    "fit_attack": key[1],
                    "attack": attack,
                    "norm": "linf" if norm == np.inf else "l2",
                    "eps": budget,
                    "steps": STEPS,
                    "n_attacked": len(x),
                    "success_rate": float(fooled.mean()),
                    "evasion_rate": float(np.mean(fooled & ~flagged)),
                    "flagged_successful": float(flagged[fooled].mean()) if fooled.any() else float("nan"),
                    "clean_fpr": float(np.mean(clean_flags)),
                    "threshold": point.threshold,
                    "roc_auc": auc,
                    "loss_start": float(np.mean(history[0])),
                    "loss_half": float(np.mean(history[STEPS // 2])),
                    "loss_final": float(np.mean(final_loss)),
                    "seconds": seconds,
                }
            )
            logger.info(
                "%s on %s: success %.3f, evasion %.3f, AUC %.3f, loss %.3f -> %.3f -> %.3f (%.1f s)",
                label,
                name,
                rows[-1]["success_rate"],
                rows[-1]["evasion_rate"],
                auc,
                rows[-1]["loss_start"],
                rows[-1]["loss_half"],
                rows[-1]["loss_final"],
                seconds,
            )
    return rows


#: Keys of every adaptive row, in the order of ``adaptive.csv``.
ROW_KEYS = (
    "detector",
    "fit_attack",
    "attack",
    "norm",
    "eps",
    "steps",
    "n_attacked",
    "success_rate",
    "evasion_rate",
    "flagged_successful",
    "clean_fpr",
    "threshold",
    "roc_auc",
    "loss_start",
    "loss_half",
    "loss_final",
    "seconds",
)
