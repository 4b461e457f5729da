"""Evaluation workflow: attack a classifier with ART, fit detectors, measure how well each catches each attack.

``evaluate(...)`` (also ``art_fisher.evaluate`` and ``art-fisher evaluate``) runs it end to end;
``prepare(...)`` checks the arguments and loads the data without writing anything, ``run(plan)`` does the
work. One module per part:

- :mod:`.attacks`: the attack registry (:data:`ATTACKS`) and adversarial-example generation;
- :mod:`.registry`: the detector registry (:data:`DETECTORS`), built from :mod:`.fisher_runs` (the Fisher
  detectors, supervised and clean-calibrated) and :mod:`.baselines` (ART's detectors, the classifier's
  confidence); :mod:`.base` holds what every detector adapter shares;
- :mod:`.model_cache`: the classifier, given or trained here and cached;
- :mod:`.protocol`: the detector-train / detector-test split and the fit-on-one, score-on-every-attack
  measurement;
- :mod:`.adaptive`: attacks that know the detector (``adaptive=True``), on every differentiable detector;
- :mod:`.workflow`: the run; :mod:`.report` and :mod:`.plots`: what it writes.
"""

from art_fisher.evaluation.attacks import ATTACKS, DEFAULT_ATTACKS, DEFAULT_EPS, AttackSpec
from art_fisher.evaluation.base import DetectorRun, DetectorSpec, RunContext, Scored
from art_fisher.evaluation.registry import DEFAULT_DETECTORS, DETECTORS
from art_fisher.evaluation.workflow import (
    DEFAULT_ARCH,
    DEFAULT_EPOCHS,
    EvaluationPlan,
    EvaluationResult,
    evaluate,
    prepare,
    run,
)

__all__ = [
    "ATTACKS",
    "DEFAULT_ARCH",
    "DEFAULT_ATTACKS",
    "DEFAULT_DETECTORS",
    "DEFAULT_EPOCHS",
    "DEFAULT_EPS",
    "DETECTORS",
    "AttackSpec",
    "DetectorRun",
    "DetectorSpec",
    "EvaluationPlan",
    "EvaluationResult",
    "RunContext",
    "Scored",
    "evaluate",
    "prepare",
    "run",
]
