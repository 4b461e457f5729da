"""The Fisher detectors of the evaluation: :class:`~art_fisher.detection.FisherInformationDetector` adapters.

One detector per scalar Fisher metric that :mod:`art_fisher.metrics` provides, the combined detector
(the per-parameter-tensor traces, :data:`COMBINED`) and the sensitivity map's statistics, each twice: fitted on clean
and adversarial examples of an attack
(``fisher_<metric>``), and calibrated on clean inputs alone (``fisher_<metric>_clean``, ``fit(x)``
without labels, flagging ``target_fpr`` of clean inputs). New metrics registered in
:mod:`art_fisher.detection` appear here without further edits.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from art_fisher.detection import FisherInformationDetector
from art_fisher.detection._features import METRICS
from art_fisher.detection._features import METRICS as _METRIC_SPECS
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored


class FisherRun(DetectorRun):
    """A :class:`~art_fisher.detection.FisherInformationDetector` on ``metrics`` with its default estimator.

    ``fit(x, y)`` with labels fits the supervised default (threshold or logistic regression);
    ``fit(x, None)`` calibrates on clean inputs at the context's ``target_fpr``. Metric values come from
    the run's feature cache (:attr:`RunContext.feature_cache`, the detector's ``feature_source``). ``detect``
    reports as its time the cost of computing its features plus everything else it did.
    """

    def __init__(self, ctx: RunContext, metrics: tuple[str, ...]) -> None:
        self.cache = ctx.feature_cache
        self.detector = FisherInformationDetector(
            ctx.classifier,
            metrics=metrics,
            target_fpr=ctx.target_fpr,
            chunk_size=ctx.batch_size,
            progress=ctx.progress,
            tau=ctx.tau,
            feature_source=self.cache,
        )

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.detector.fit(x, y)

    def detect(self, x: np.ndarray) -> Scored:
        spent, cost = self.cache.seconds_spent, self.cache.seconds_cost
        start = time.perf_counter()
        report, is_adv = self.detector.detect(x)
        wall = time.perf_counter() - start
        spent, cost = self.cache.seconds_spent - spent, self.cache.seconds_cost - cost
        return Scored(
            score=np.asarray(report["decision_scores"], np.float64),
            is_adversarial=np.asarray(is_adv, bool),
            metric_scores={k: np.asarray(v, np.float64) for k, v in report["scores"].items()},
            seconds=wall - spent + cost,
        )

    def detection_logit(self) -> Any:
        return self.detector.as_art_classifier()


def _spec(label: str, metrics: tuple[str, ...], *, clean: bool) -> DetectorSpec:

    maps = [m for m in metrics if METRICS[m].is_map]
    return DetectorSpec(
        f"{label}, clean-calibrated" if clean else label,
        functools.partial(FisherRun, metrics=metrics),
        supervised=not clean,
        no_gradient=f"no input gradient through the statistics of the map {maps}" if maps else None,
    )


#: The metrics of ``fisher_combined``: the trace of each parameter tensor's block of :math:`F(x)` (one
#: feature per tensor, at the cost of the trace), logged and standardised by the default estimator.
#: Chosen in ``tests/benchmarks/bench_fisher_features.py`` over the three scalar metrics together, the
#: sensitivity map's statistics, λ_max against the trace, the predicted class against the runner-up,
#: and combinations with the classifier's confidence (README, "Which Fisher features").
COMBINED = ("block_traces",)


def fisher_specs() -> dict[str, DetectorSpec]:
    """The Fisher registry entries: supervised ones first, then their clean-calibrated twins.

    One detector per scalar metric, ``fisher_combined`` on :data:`COMBINED`, and the sensitivity (a
    per-pixel map, reduced to four statistics) as a detector of its own, in the default set.
    """
    scalar = tuple(m for m, spec in _METRIC_SPECS.items() if not spec.is_map and not spec.per_block)
    entries: list[tuple[str, str, tuple[str, ...]]] = [
        (f"fisher_{m}", f"Fisher {m.replace('_', ' ')}", (m,)) for m in scalar
    ]
    entries.append(("fisher_combined", "Fisher trace of each parameter tensor", COMBINED))
    entries += [
        (f"fisher_{m}", f"Fisher {m} (map statistics)", (m,)) for m, spec in _METRIC_SPECS.items() if spec.is_map
    ]
    specs = {name: _spec(label, metrics, clean=False) for name, label, metrics in entries}
    specs.update({f"{name}_clean": _spec(label, metrics, clean=True) for name, label, metrics in entries})
    return specs
