"""Evaluation report: the results table as text / Markdown / CSV / JSON, and the plots.

Plots use matplotlib's non-interactive Agg backend (no display needed) and are written as PNG:

- ``roc_curves.png``: one panel per attack, one ROC curve per detector (detector-test side);
- ``score_histograms.png``: one row per Fisher metric, one panel per attack, clean vs adversarial scores;
- ``sensitivity_maps.png``: clean images, their Fisher information sensitivity maps, the adversarial
  versions and their maps (first attack of the run).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["format_table", "markdown_table", "write_report"]

_COLUMNS = (  # (key, header, format)
    ("attack", "attack", "{}"),
    ("success_rate", "success", "{:.3f}"),
    ("detector", "detector", "{}"),
    ("roc_auc", "ROC-AUC", "{:.3f}"),
    ("tpr_at_5pct_fpr", "TPR@5%FPR", "{:.3f}"),
    ("detection_accuracy", "accuracy", "{:.3f}"),
    ("seconds_per_sample", "ms/sample", "{:.3f}"),
    ("n_test", "n_test", "{}"),
)


def _cells(table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    success = {a["attack"]: a["success_rate"] for a in attacks}
    out = []
    for row in table:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = success.get(row["attack"]) if key == "success_rate" else row.get(key)
            if key == "seconds_per_sample" and value is not None:
                value = 1000.0 * value
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("n/a")
            else:
                cells.append(fmt.format(value))
        out.append(cells)
    return out


def format_table(table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text table: one line per attack × detector.

    Parameters
    ----------
    table : sequence of dict
        Rows as in :attr:`art_fisher.evaluation.EvaluationResult.table`.
    attacks : sequence of dict
        Per-attack rows (for the success rate column).
    """
    headers = [h for _, h, _ in _COLUMNS]
    cells = _cells(table, attacks)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [key not in ("attack", "detector") for key, _, _ in _COLUMNS]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def markdown_table(table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]) -> str:
    """The same table in GitHub Markdown."""
    headers = [h for _, h, _ in _COLUMNS]
    numeric = [key not in ("attack", "detector") for key, _, _ in _COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in _cells(table, attacks)]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_csv(path: Path, table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]) -> None:
    success = {a["attack"]: a["success_rate"] for a in attacks}
    keys = ["attack", "attack_success_rate", *[k for k in (table[0] if table else {}) if k != "attack"]]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in table:
            writer.writerow({**row, "attack_success_rate": success.get(row["attack"])})


def _write_markdown(
    path: Path,
    *,
    table: Sequence[Mapping[str, Any]],
    attacks: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    timings: Mapping[str, float],
    plots: Mapping[str, Path],
) -> None:
    labels = settings.get("labels", {})
    lines = ["# art-fisher evaluation report", "", "## Detection results (detector-test side)", ""]
    lines += [markdown_table(table, attacks), ""]
    lines += [
        "ROC-AUC of each detector's continuous score; TPR at 5 % FPR; accuracy of the detector's own "
        "yes/no decision; wall-clock milliseconds of `detect` per sample. Only successful adversarial "
        "examples count; clean and adversarial versions of a source image are on the same side.",
        "",
        "## Attacks",
        "",
        "| attack | success rate | successful / attacked | mean L2 | mean L∞ | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for a in attacks:
        name = labels.get("attacks", {}).get(a["attack"], a["attack"])
        lines.append(
            f"| {name} (`{a['attack']}`) | {a['success_rate']:.3f} | {a['n_successful']} / {a['n_attacked']} | "
            f"{a['mean_l2']:.3f} | {a['mean_linf']:.3f} | {a['seconds']:.1f} |"
        )
    lines += ["", "## Settings", ""]
    for key, value in settings.items():
        if key not in ("versions", "labels"):
            lines.append(f"- {key}: `{value}`")
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in settings.get("versions", {}).items()]
    lines += ["", "## Timings (seconds, wall clock)", ""]
    lines += [f"- {k}: {v:.2f}" for k, v in timings.items()]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({p.name})" for name, p in plots.items()]
    path.write_text("\n".join(lines) + "\n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _plot_roc(path: Path, curves: Mapping[str, Mapping[str, tuple]], labels: Mapping[str, Any]) -> None:
    plt = _pyplot()
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    for ax, (attack, by_det) in zip(axes[0], curves.items()):
        for det, (fpr, tpr, auc) in by_det.items():
            ax.plot(fpr, tpr, label=f"{labels.get('detectors', {}).get(det, det)} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(labels.get("attacks", {}).get(attack, attack))
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_histograms(
    path: Path, metric_scores: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], labels: Mapping[str, Any]
) -> None:
    plt = _pyplot()
    metrics = list(metric_scores)
    attacks = list(dict.fromkeys(a for m in metrics for a in metric_scores[m]))
    fig, axes = plt.subplots(
        len(metrics), len(attacks), figsize=(3.6 * len(attacks), 2.8 * len(metrics)), squeeze=False
    )
    for i, metric in enumerate(metrics):
        for j, attack in enumerate(attacks):
            ax = axes[i][j]
            if attack not in metric_scores[metric]:
                ax.axis("off")
                continue
            clean, adv = metric_scores[metric][attack]
            both = np.concatenate([clean, adv])
            log = bool(np.all(both > 0))
            values = [np.log10(v) if log else v for v in (clean, adv)]
            bins = np.histogram_bin_edges(np.concatenate(values), bins=30)
            ax.hist(values[0], bins=bins, alpha=0.6, label="clean")
            ax.hist(values[1], bins=bins, alpha=0.6, label="adversarial")
            ax.set_title(f"{metric} / {labels.get('attacks', {}).get(attack, attack)}", fontsize=9)
            ax.set_xlabel(f"log10 {metric}" if log else metric, fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _as_image(x: np.ndarray) -> np.ndarray:
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))


def _plot_sensitivity(path: Path, sens: Mapping[str, Any], labels: Mapping[str, Any]) -> None:
    plt = _pyplot()
    n = len(sens["clean"])
    rows = [
        ("clean", sens["clean"], False),
        ("Fisher sensitivity (clean)", sens["clean_map"], True),
        ("adversarial", sens["adversarial"], False),
        ("Fisher sensitivity (adv.)", sens["adversarial_map"], True),
    ]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.7 * n, 1.8 * len(rows)), squeeze=False)
    for i, (title, images, is_map) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            if is_map:
                ax.imshow(np.abs(images[j]).sum(axis=0), cmap="inferno")
            else:
                ax.imshow(_as_image(images[j]), cmap="gray" if images[j].shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=7)
    attack = labels.get("attacks", {}).get(sens["attack"], sens["attack"])
    fig.suptitle(f"Fisher information sensitivity, {attack}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    output_dir: str | Path,
    *,
    table: Sequence[Mapping[str, Any]],
    attacks: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    timings: Mapping[str, float],
    curves: Mapping[str, Mapping[str, tuple]] | None = None,
    metric_scores: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    sensitivity: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``report.md`` and the plots into ``output_dir``.

    Parameters
    ----------
    output_dir : str or Path
        Existing or new folder.
    table, attacks, settings, timings
        As in :class:`art_fisher.evaluation.EvaluationResult`.
    curves : dict, optional
        ``curves[attack][detector] = (fpr, tpr, auc)``; ROC plot when given and non-empty.
    metric_scores : dict, optional
        ``metric_scores[metric][attack] = (clean_scores, adversarial_scores)``; histogram plot when given.
    sensitivity : dict, optional
        ``attack``, ``clean``, ``adversarial`` (N, C, H, W) and ``clean_map``, ``adversarial_map`` (same
        shape); sensitivity-map grid when given.

    Returns
    -------
    dict of str to Path
        ``results_json``, ``results_csv``, ``report_md`` and the plots that were drawn.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = settings.get("labels", {})
    plots: dict[str, Path] = {}
    if curves:
        plots["roc_curves"] = out / "roc_curves.png"
        _plot_roc(plots["roc_curves"], curves, labels)
    if metric_scores:
        plots["score_histograms"] = out / "score_histograms.png"
        _plot_histograms(plots["score_histograms"], metric_scores, labels)
    if sensitivity:
        plots["sensitivity_maps"] = out / "sensitivity_maps.png"
        _plot_sensitivity(plots["sensitivity_maps"], sensitivity, labels)
    paths = {"results_json": out / "results.json", "results_csv": out / "results.csv", "report_md": out / "report.md"}
    payload = {"settings": settings, "attacks": attacks, "table": table, "timings": timings}
    paths["results_json"].write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    _write_csv(paths["results_csv"], table, attacks)
    _write_markdown(
        paths["report_md"], table=table, attacks=attacks, settings=settings, timings=timings, plots=plots
    )
    logger.info("report written to %s", out)
    return {**paths, **plots}
