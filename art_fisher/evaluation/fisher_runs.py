"""The Fisher detectors of the evaluation: :class:`~art_fisher.detectors.FisherInformationDetector` adapters.

One detector per scalar Fisher metric that :mod:`art_fisher.metrics` provides, their combination and the
sensitivity map's statistics, each twice: fitted on clean and adversarial examples of an attack
(``fisher_<metric>``), and calibrated on clean inputs alone (``fisher_<metric>_clean``, ``fit(x)``
without labels, flagging ``target_fpr`` of clean inputs). New metrics registered in
:mod:`art_fisher._features` appear here without further edits.
"""

from __future__ import annotations

import numpy as np

from art_fisher.evaluation.base import DetectorRun, DetectorSpec, RunContext, Scored

__all__ = ["FisherRun", "fisher_specs"]


class FisherRun(DetectorRun):
    """A :class:`~art_fisher.detectors.FisherInformationDetector` on ``metrics`` with its default estimator.

    ``fit(x, y)`` with labels fits the supervised default (threshold or logistic regression);
    ``fit(x, None)`` calibrates on clean inputs at the context's ``target_fpr``.
    """

    def __init__(self, ctx: RunContext, metrics: tuple[str, ...]) -> None:
        from art_fisher.detectors import FisherInformationDetector

        self.detector = FisherInformationDetector(
            ctx.classifier, metrics=metrics, target_fpr=ctx.target_fpr, batch_size=ctx.batch_size,
            progress=ctx.progress,
        )  # fmt: skip

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.detector.fit(x, y)

    def detect(self, x: np.ndarray) -> Scored:
        report, is_adv = self.detector.detect(x)
        return Scored(
            score=np.asarray(report["decision_scores"], np.float64),
            is_adversarial=np.asarray(is_adv, bool),
            metric_scores={k: np.asarray(v, np.float64) for k, v in report["scores"].items()},
        )


def _spec(label: str, metrics: tuple[str, ...], *, clean: bool) -> DetectorSpec:
    return DetectorSpec(
        f"{label}, clean-calibrated" if clean else label,
        lambda ctx, m=metrics: FisherRun(ctx, m),
        "fisher",
        supervised=not clean,
    )


def fisher_specs() -> dict[str, DetectorSpec]:
    """The Fisher registry entries: supervised ones first, then their clean-calibrated twins.

    The sensitivity (a per-pixel map, reduced to four statistics) is a detector of its own and not part
    of the combination; at about 3 ms per sample on the digits CNN it is in the default set.
    """
    from art_fisher._features import METRICS as _METRIC_SPECS
    from art_fisher._features import available_metrics

    available = available_metrics()
    scalar = tuple(m for m in available if not _METRIC_SPECS[m].is_map)
    entries: list[tuple[str, str, tuple[str, ...]]] = [
        (f"fisher_{m}", f"Fisher {m.replace('_', ' ')}", (m,)) for m in scalar
    ]
    if len(scalar) > 1:
        entries.append(("fisher_combined", f"Fisher {' + '.join(scalar)}", scalar))
    entries += [(f"fisher_{m}", f"Fisher {m} (map statistics)", (m,)) for m in available if _METRIC_SPECS[m].is_map]
    specs = {name: _spec(label, metrics, clean=False) for name, label, metrics in entries}
    specs.update({f"{name}_clean": _spec(label, metrics, clean=True) for name, label, metrics in entries})
    return specs
