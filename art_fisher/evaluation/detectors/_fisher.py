"""The Fisher detectors of the evaluation: :class:`~art_fisher.detection.FisherInformationDetector` adapters.

One detector per scalar Fisher metric that :mod:`art_fisher.metrics` provides, the combined detector
(the per-parameter-tensor traces, :data:`COMBINED`) and the sensitivity map's statistics, each twice: fitted on clean
and adversarial examples of an attack
(``fisher_<metric>``), and calibrated on clean inputs alone (``fisher_<metric>_clean``, ``fit(x)``
without labels, flagging ``target_fpr`` of clean inputs). New metrics registered in
:mod:`art_fisher.detection` appear here without further edits.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from typing import Any

import numpy as np

from art_fisher.detection import _features
from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._features import METRICS
from art_fisher.detection._features import METRICS as _METRIC_SPECS
from art_fisher.distributed import map_rows
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored


class FisherFeatureCache:
    """Fisher metric values of the run's inputs, each computed once and shared by every Fisher detector and fit.

    The protocol fits every supervised detector once per attack and scores the whole detector-test side
    each time, and several detectors use the same metric (``fisher_trace``, ``fisher_combined``, their
    ``_clean`` twins): without the cache the same value would be computed up to ten times. Values are
    keyed by the metric, its settings and a digest of the input row, and each row remembers the seconds
    its computation took (its share of the batch), so a detector's reported time per sample stays the
    cost of computing its features, not of looking them up.
    """

    def __init__(self) -> None:
        self._store: dict[tuple, dict[bytes, tuple[np.ndarray, float]]] = {}

    def values(self, detector: Any, x: np.ndarray, batch_size: int) -> tuple[dict[str, np.ndarray], float, float]:
        """The detector's metric values for the checked inputs ``x``.

        Returns
        -------
        values : dict of str to ndarray
            As :func:`art_fisher.detection._features.compute` gives them (maps reduced).
        cost : float
            Seconds these values took to compute, each row counted at its measured share of its batch.
        spent : float
            Seconds spent computing in this call (rows not cached yet).
        """
        settings = detector._options
        rows = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]
        out: dict[str, np.ndarray] = {}
        cost = spent = 0.0
        for metric in detector._metric_names:
            store = self._store.setdefault((metric, dataclasses.replace(settings, metrics=())), {})
            todo: dict[bytes, int] = {}
            for i, key in enumerate(rows):
                if key not in store and key not in todo:
                    todo[key] = i
            if todo:
                start = time.perf_counter()
                computed = map_rows(  # under torchrun, each rank computes its block of the rows
                    lambda rows, metric=metric: _features.compute(
                        detector.classifier,
                        rows,
                        metrics=(metric,),
                        settings=settings,
                        chunk_size=batch_size,
                        progress=detector.progress,
                    )[metric],
                    x[list(todo.values())],
                )
                seconds = time.perf_counter() - start
                spent += seconds
                for key, value in zip(todo, computed, strict=True):
                    store[key] = (value, seconds / len(todo))
            out[metric] = np.stack([store[key][0] for key in rows])
            cost += sum(store[key][1] for key in rows)
        return out, cost, spent


def _cached_detector(cache: FisherFeatureCache, classifier: Any, **settings: Any) -> Any:
    """A :class:`~art_fisher.detection.FisherInformationDetector` whose metric values come from ``cache``.

    Only the feature computation is replaced; input checks, fitting and decisions are the detector's own.
    After each ``fit`` / ``detect``, ``last_cost`` and ``last_spent`` hold :meth:`FisherFeatureCache.values`'
    two timings.
    """

    class CachedFisherDetector(FisherInformationDetector):
        def _values(self, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
            values, self.last_cost, self.last_spent = cache.values(self, x, batch_size)
            return values

    return CachedFisherDetector(classifier, **settings)


class FisherRun(DetectorRun):
    """A :class:`~art_fisher.detection.FisherInformationDetector` on ``metrics`` with its default estimator.

    ``fit(x, y)`` with labels fits the supervised default (threshold or logistic regression);
    ``fit(x, None)`` calibrates on clean inputs at the context's ``target_fpr``. Metric values come from
    the run's :class:`FisherFeatureCache`; everything else is the detector's own code. ``detect`` reports
    as its time the cost of computing its features plus everything else it did.
    """

    def __init__(self, ctx: RunContext, metrics: tuple[str, ...]) -> None:
        self.detector = _cached_detector(
            ctx.shared.setdefault(__name__, FisherFeatureCache()),
            ctx.classifier,
            metrics=metrics,
            target_fpr=ctx.target_fpr,
            chunk_size=ctx.batch_size,
            progress=ctx.progress,
            tau=ctx.tau,
        )

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.detector.fit(x, y)

    def detect(self, x: np.ndarray) -> Scored:
        start = time.perf_counter()
        report, is_adv = self.detector.detect(x)
        wall = time.perf_counter() - start
        return Scored(
            score=np.asarray(report["decision_scores"], np.float64),
            is_adversarial=np.asarray(is_adv, bool),
            metric_scores={k: np.asarray(v, np.float64) for k, v in report["scores"].items()},
            seconds=wall - self.detector.last_spent + self.detector.last_cost,
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
    per-pixel map, reduced to four statistics) as a detector of its own; at about 3 ms per sample on
    the digits CNN it is in the default set.
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
