"""The attacks of the evaluation: a registry of ART evasion attacks and how adversarial examples are made.

:data:`ATTACKS` maps a name to an :class:`AttackSpec`; add an entry to extend it. :func:`run_attack`
attacks every source image and records which attacks succeeded (the prediction differs from the true
label) and the size of the successful perturbations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_fisher.distributed import map_rows

logger = logging.getLogger(__name__)

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "DEFAULT_EPS", "AttackOutcome", "AttackSpec", "predict_labels", "run_attack"]

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
        classifier, norm=np.inf, eps=eps, eps_step=eps / 8, max_iter=20, num_random_init=0,
        batch_size=batch_size, verbose=False,
    )  # fmt: skip


def _deepfool(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import DeepFool

    return DeepFool(classifier, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=batch_size, verbose=False)


def _cw_l2(classifier: Any, eps: float, batch_size: int) -> Any:
    from art.attacks.evasion import CarliniL2Method

    # Fewer binary-search steps / iterations than ART's defaults keep the default run in budget; the
    # larger learning rate and initial constant keep the success rate high with so few steps.
    return CarliniL2Method(
        classifier, confidence=0.0, learning_rate=0.1, binary_search_steps=4, max_iter=10,
        initial_const=1.0, batch_size=batch_size, verbose=False,
    )  # fmt: skip


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("FGSM", _fgsm, uses_eps=True),
    "pgd": AttackSpec("PGD", _pgd, uses_eps=True),
    "deepfool": AttackSpec("DeepFool", _deepfool, uses_eps=False),
    "cw_l2": AttackSpec("C&W L2", _cw_l2, uses_eps=False),
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


def predict_labels(classifier: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Predicted class of each input, shape (N,)."""
    return np.argmax(classifier.predict(x, batch_size=batch_size), axis=1)


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
