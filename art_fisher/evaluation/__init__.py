"""Evaluation workflow: attack a classifier with ART, fit detectors, measure how well each catches each attack.

``evaluate(config)`` (also ``art_fisher.evaluate`` and ``art-fisher evaluate``) runs it end to end;
``prepare(config)`` checks the files and loads the data without writing anything, ``run_plan(plan)`` does the
work. Every setting of a run is one :class:`EvaluationConfig` (or its keywords). The parts, one module per concept:

- every setting of a run in one frozen object (:class:`EvaluationConfig`);
- the run and its results (``_workflow``);
- the classifier, given or trained here and cached (``_model``);
- the attacks, the registry (:data:`ATTACKS`) and the adaptive attacks that know the detector (``_attacks``);
- the protocol: the detector-train / detector-test split, the fit-on-one, score-on-every-attack measurement
  and every rate at one clean false-positive rate (``_protocol``);
- the detectors compared, their registry (:data:`DETECTORS`) and adapters (:mod:`.detectors`);
- the robust accuracy of classifier + detector against the PGD budget (``_security_curve``);
- the run over several seeds, every number as mean ± sd (``_seeds``);
- what a run writes, tables and figures (:mod:`.report`);
- the evaluation as an ART ``Evaluation`` (:class:`DetectionEvaluation`).
"""

from art_fisher.evaluation._art_evaluation import DetectionEvaluation
from art_fisher.evaluation._attacks import (
    ATTACKS,
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    AttackSpec,
)
from art_fisher.evaluation._config import DEFAULT_ARCH, DEFAULT_EPOCHS, EvaluationConfig
from art_fisher.evaluation._seeds import SeedsResult, evaluate_seeds
from art_fisher.evaluation._workflow import (
    EvaluationPlan,
    EvaluationResult,
    evaluate,
    prepare,
    run_plan,
)
from art_fisher.evaluation.detectors import DEFAULT_DETECTORS, DETECTORS, DetectorRun, DetectorSpec, RunContext, Scored

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
    "EvaluationConfig",
    "EvaluationPlan",
    "EvaluationResult",
    "RunContext",
    "Scored",
    "SeedsResult",
    "evaluate",
    "evaluate_seeds",
    "prepare",
    "run_plan",
]
