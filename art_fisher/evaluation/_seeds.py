"""The evaluation over several seeds: every number as mean ± sd over model seeds and splits.

:func:`evaluate_seeds` runs :func:`~art_fisher.evaluation.evaluate` once per seed (each seed
draws its own model when none is given, its own images, detector-train / detector-test split,
calibration folds, attacks and detector fits) into ``output_dir/seed_<s>/``, then aggregates:

- the protocol's table (one row per detector × fit attack × test attack);
- the unseen-attack summary (per detector, computed per seed, then averaged);
- the adaptive-attack rows, when ``adaptive=True``;
- the detection-aware security curve (robust accuracy against the PGD budget);

each metric as ``<metric>_mean`` and ``<metric>_sd`` (sample standard deviation over the seeds, 0 for
one seed) and ``n_seeds`` (the seeds where it was measured). ``output_dir`` gets ``results.json``,
``report.md`` (tables as ``mean ± sd``) and ``unseen_auc.png`` (bars with ± sd).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from art_fisher.evaluation._config import MAX_SEED, EvaluationConfig, config_of
from art_fisher.evaluation._workflow import EvaluationResult, prepare, run_plan
from art_fisher.evaluation.detectors._registry import DETECTORS
from art_fisher.evaluation.report._plots import plot_mean_sd
from art_fisher.utils import atomic_write, check_output_dir

logger = logging.getLogger(__name__)

#: Metrics aggregated per group of rows.
TABLE_METRICS = ("roc_auc", "tpr", "fpr", "detection_accuracy", "own_tpr", "own_fpr")
SUMMARY_METRICS = ("same_attack_auc", "unseen_auc", "min_unseen_auc", "same_attack_tpr", "unseen_tpr", "clean_fpr")
ADAPTIVE_METRICS = ("success_rate", "evasion_rate", "flagged_successful", "clean_fpr", "roc_auc")
#: The security curve's rows: grouped by these keys, these metrics aggregated.
CURVE_KEYS = ("detector", "eps")
CURVE_METRICS = ("robust_accuracy", "flagged")


def parse_seeds(text: str | Sequence[int]) -> tuple[int, ...]:
    """Seeds from ``"0,1,2"`` or a sequence of non-negative integers; ValueError naming the bad entry."""
    parts = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    seeds: list[int] = []
    for part in parts:
        value: object
        try:
            value = int(part) if isinstance(part, str) else part
        except ValueError:
            value = part
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ValueError(f"seeds must be non-negative integers such as '0,1,2'; got {part!r}.")
        seeds.append(int(value))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must name at least one seed, each once; got {text!r}.")
    return tuple(seeds)


def aggregate(
    rows_per_seed: Sequence[Sequence[Mapping[str, Any]]], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Group rows of every seed by ``keys``; per group, each metric's mean, sample sd and seed count (NaN-aware).

    Groups keep the order of first appearance; a metric that is NaN or missing in a seed is left out of
    that group's mean (``<metric>_n`` counts the seeds used).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for rows in rows_per_seed:
        for row in rows:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, rows in groups.items():
        entry: dict[str, Any] = dict(zip(keys, key, strict=True))
        entry["n_seeds"] = len(rows)
        for m in metrics:
            values = np.array([r.get(m, np.nan) for r in rows], dtype=np.float64)
            values = values[~np.isnan(values)]
            entry[f"{m}_mean"] = float(values.mean()) if len(values) else float("nan")
            entry[f"{m}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else (0.0 if len(values) else float("nan"))
            entry[f"{m}_n"] = len(values)
        out.append(entry)
    return out


def format_mean_sd(row: Mapping[str, Any], metric: str, digits: int = 3) -> str:
    """``"0.851 ± 0.008"`` (``"0.851"`` from one seed, ``"n/a"`` if unmeasured)."""
    mean, sd, n = row.get(f"{metric}_mean"), row.get(f"{metric}_sd"), row.get(f"{metric}_n", 0)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


@dataclass(frozen=True)
class SeedsResult:
    """What :func:`evaluate_seeds` returns.

    Attributes
    ----------
    seeds : tuple of int
    runs : list of EvaluationResult
        One per seed, in order.
    table, summary, adaptive : list of dict
        Aggregated rows (module docstring); ``table`` keyed by ``detector``, ``fit_attack``, ``attack``;
        ``summary`` by ``detector``, ``fitted_on``; ``adaptive`` by ``detector``, ``fit_attack``, ``attack``.
    security_curve : list of dict
        The detection-aware security curve, keyed by ``detector`` and ``eps``.
    paths : dict of str to Path
        ``results_json``, ``report_md`` and the plots.
    """

    seeds: tuple[int, ...]
    runs: list[Any]
    table: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    adaptive: list[dict[str, Any]] = field(default_factory=list)
    security_curve: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    def format_table(self) -> str:
        """The aggregated unseen-attack summary and same-attack rows as text (mean ± sd)."""
        return "\n".join([*_summary_lines(self.summary, markdown=False), "", *_same_attack_lines(self.table, False)])


def evaluate_seeds(
    config: EvaluationConfig | None = None,
    /,
    *,
    seeds: Sequence[int] | str = (0, 1, 2),
    net: Any = None,
    extra_detectors: Sequence[str] = (),
    **settings: Any,
) -> SeedsResult:
    """Run the evaluation once per seed and aggregate every table as mean ± sd.

    Parameters
    ----------
    config : EvaluationConfig, optional
        The settings of every run but ``seed``; its ``output_dir`` gets the aggregate, and each seed's full
        report goes to ``output_dir/seed_<s>/``.
    seeds : sequence of int or str
        Non-negative, distinct (``"0,1,2"`` accepted).
    net : torch.nn.Module, optional
        A model evaluated under every seed (the seeds then vary images, splits, attacks and detectors
        only); None: ``model`` or a model trained per seed.
    extra_detectors : sequence of str
        Registry names added to the run's detectors (e.g. the stacked detector's ablation, outside the
        default set); with ``adaptive=True`` the differentiable ones are attacked too.
    **settings
        Keywords of :class:`~art_fisher.evaluation.EvaluationConfig` but ``seed``, applied on top of
        ``config``.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        As :func:`~art_fisher.evaluation.evaluate`, for every seed's settings before any work.
    """
    if "seed" in settings:
        raise TypeError("evaluate_seeds takes seeds=..., not seed=....")
    config = config_of(config, settings)
    seed_list = parse_seeds(seeds)
    out = Path(config.output_dir)
    too_large = [s for s in seed_list if s > MAX_SEED]
    if too_large:
        raise ValueError(f"seeds must be integers from 0 to {MAX_SEED}; got {too_large[0]}.")
    for s in seed_list:
        check_output_dir(out / f"seed_{s}")
    # One plan (the files checked, the data and a given model loaded once); each seed runs on a copy of it that
    # differs in its seed and folder only, one seed after another.
    base = prepare(config, seed=seed_list[0], output_dir=out / f"seed_{seed_list[0]}")
    if net is not None:
        base = dataclasses.replace(base, net=net)
    if extra_detectors:
        extra = tuple(extra_detectors)
        bad = [d for d in extra if d not in DETECTORS or d in base.detectors]
        if bad or len(set(extra)) != len(extra):
            raise ValueError(f"extra_detectors must be distinct registry names not already run; got {list(extra)}.")
        attacked = tuple(d for d in extra if DETECTORS[d].no_gradient is None) if base.adaptive else ()
        base = dataclasses.replace(base, detectors=base.detectors + extra, adaptive=base.adaptive + attacked)
    runs: list[EvaluationResult] = []
    for s in seed_list:
        logger.info("seed %d of %s", s, list(seed_list), extra={"stage": True})
        runs.append(run_plan(dataclasses.replace(base, seed=s, output_dir=out / f"seed_{s}")))
    table = aggregate([r.table for r in runs], ("detector", "fit_attack", "attack"), TABLE_METRICS)
    summary = aggregate([r.unseen_summary() for r in runs], ("detector", "fitted_on"), SUMMARY_METRICS)
    adaptive = aggregate([r.adaptive for r in runs], ("detector", "fit_attack", "attack"), ADAPTIVE_METRICS)
    curve = aggregate([list(r.security_curve) for r in runs], CURVE_KEYS, CURVE_METRICS)
    seeds_result = SeedsResult(seed_list, runs, table, summary, adaptive, curve)
    seeds_result.paths.update(_write(out, seeds_result))
    return seeds_result


def _summary_lines(summary: Sequence[Mapping[str, Any]], markdown: bool) -> list[str]:
    headers = ["detector", "fitted on", "same-attack AUC", "unseen AUC", "unseen TPR", "clean FPR", "seeds"]
    cells = [
        [
            r["detector"],
            r["fitted_on"],
            "-" if r["fitted_on"] == "clean" else format_mean_sd(r, "same_attack_auc"),
            format_mean_sd(r, "unseen_auc"),
            format_mean_sd(r, "unseen_tpr"),
            format_mean_sd(r, "clean_fpr"),
            str(r["n_seeds"]),
        ]
        for r in summary
    ]
    return _grid(headers, cells, markdown)


def _same_attack_lines(table: Sequence[Mapping[str, Any]], markdown: bool) -> list[str]:
    headers = ["attack", "detector", "ROC-AUC", "TPR", "FPR (achieved)", "seeds"]
    rows = [r for r in table if r["fit_attack"] in (r["attack"], "clean")]
    attacks = list(dict.fromkeys(r["attack"] for r in table))
    rows.sort(key=lambda r: attacks.index(r["attack"]))
    cells = [
        [
            r["attack"],
            r["detector"],
            format_mean_sd(r, "roc_auc"),
            format_mean_sd(r, "tpr"),
            format_mean_sd(r, "fpr"),
            str(r["n_seeds"]),
        ]
        for r in rows
    ]
    return _grid(headers, cells, markdown)


def _adaptive_lines(rows: Sequence[Mapping[str, Any]], markdown: bool) -> list[str]:
    headers = ["detector", "fitted on", "attack", "success", "evasion", "flagged", "clean FPR", "ROC-AUC", "seeds"]
    cells = [
        [
            r["detector"],
            r["fit_attack"],
            r["attack"],
            *(format_mean_sd(r, m) for m in ADAPTIVE_METRICS),
            str(r["n_seeds"]),
        ]
        for r in rows
    ]
    return _grid(headers, cells, markdown)


def _grid(headers: Sequence[str], cells: Sequence[Sequence[str]], markdown: bool) -> list[str]:
    if markdown:
        return [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(c) + " |" for c in cells),
        ]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(c) for c in cells)]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return str(obj) if isinstance(obj, Path) else obj


def _write(out: Path, result: SeedsResult) -> dict[str, Path]:

    out.mkdir(parents=True, exist_ok=True)
    paths = {"results_json": out / "results.json", "report_md": out / "report.md"}
    settings = dict(result.runs[0].settings)
    settings.pop("seed", None)
    payload = {
        "seeds": list(result.seeds),
        "settings": settings,
        "table": result.table,
        "unseen_summary": result.summary,
        "adaptive": result.adaptive,
        "security_curve": result.security_curve,
        "clean_test_accuracy": [r.settings["clean_test_accuracy"] for r in result.runs],
        "seed_reports": [str(r.paths["report_md"]) for r in result.runs],
    }
    written: dict[str, Path] = {}
    if result.summary:
        written["unseen_auc"] = out / "unseen_auc.png"
        plot_mean_sd(written["unseen_auc"], result.summary, "unseen_auc", "unseen-attack ROC-AUC (mean ± sd)")
    lines = [
        f"# art-fisher evaluation over seeds {', '.join(map(str, result.seeds))}",
        "",
        f"Every number: mean ± sd over the seeds (sample sd). Operating point: target clean FPR "
        f"{settings.get('target_fpr')}; TPR and the achieved FPR at it. Each seed's full report: "
        + ", ".join(f"`seed_{s}/report.md`" for s in result.seeds)
        + ".",
        "",
        "## Unseen attacks and clean-only detectors (deployment cases)",
        "",
        *_summary_lines(result.summary, markdown=True),
        "",
        "## Same attack",
        "",
        *_same_attack_lines(result.table, markdown=True),
        "",
    ]
    if result.adaptive:
        lines += ["## Adaptive attacks (at the operating point)", "", *_adaptive_lines(result.adaptive, True), ""]
    rows = result.security_curve
    if rows:
        metrics = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
        keys = [k for k in rows[0] if not k.endswith(("_mean", "_sd", "_n")) and k != "n_seeds"]
        cells = [[*(str(r[k]) for k in keys), *(format_mean_sd(r, m) for m in metrics)] for r in rows]
        lines += ["## security_curve", "", *_grid([*keys, *metrics], cells, True), ""]
    lines += [f"![{n}]({p.name})" for n, p in written.items()]
    with atomic_write(paths["results_json"], text=True) as fh:
        fh.write(json.dumps(_jsonable(payload), indent=2) + "\n")
    with atomic_write(paths["report_md"], text=True) as fh:
        fh.write("\n".join(lines) + "\n")
    return {**paths, **written}
