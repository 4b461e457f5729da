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
- :mod:`.field_baselines` (Mahalanobis, LID, energy) and :mod:`.stacked_runs` (the stacked detector and its
  ablation): further registry entries;
- :mod:`.operating_point`: every rate at one clean false-positive rate (``target_fpr``);
- :mod:`.adaptive_attacks`: attacks that know the detector (``adaptive=True``), on every differentiable detector;
- :mod:`.security_curve`: robust accuracy of classifier + detector against the PGD budget;
- :mod:`.seeds`: the run over several seeds, every number as mean ± sd; :mod:`.art_evaluation`: the
  evaluation as an ART ``Evaluation``;
- :mod:`.workflow`: the run; :mod:`.report` and :mod:`.plots`: what it writes.
"""

from art_fisher.evaluation.art_evaluation import DetectionEvaluation
from art_fisher.evaluation.attacks import (
    ATTACKS,
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    AttackSpec,
)
from art_fisher.evaluation.base import DetectorRun, DetectorSpec, RunContext, Scored
from art_fisher.evaluation.registry import DEFAULT_DETECTORS, DETECTORS
from art_fisher.evaluation.seeds import SeedsResult, evaluate_seeds
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
    "DetectionEvaluation",
    "DetectorRun",
    "DetectorSpec",
    "EvaluationPlan",
    "EvaluationResult",
    "RunContext",
    "Scored",
    "SeedsResult",
    "evaluate",
    "evaluate_seeds",
    "prepare",
    "run",
]
