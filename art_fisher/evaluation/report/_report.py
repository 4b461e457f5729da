"""The evaluation report: tables as text / Markdown / CSV / JSON, the unseen-attack summary, and writing it all.

Rows are those of :attr:`art_fisher.evaluation.EvaluationResult.table` (one per detector × fit attack
× test attack). Three views of them:

- the **same-attack** table: rows whose detector was fitted on the attack it is scored on, or on clean
  inputs only (``fit_attack == "clean"``);
- the **unseen-attack summary** (:func:`unseen_summary`): per detector, the mean same-attack ROC-AUC and
  the mean (and minimum) ROC-AUC on attacks it was not fitted on; a detector fitted on clean inputs has
  seen no attack, so all its rows count as unseen;
- the **transfer matrix** of one detector (:func:`transfer_matrix`): ROC-AUC by fit and test attack.

:func:`write_report` writes ``results.json``, ``results.csv``, ``report.md`` and the plots
(:mod:`art_fisher.evaluation.report`), each atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from art_fisher.evaluation._attacks import ROW_KEYS, THREAT_MODEL
from art_fisher.evaluation.report import _plots as plots
from art_fisher.evaluation.report._plots import plot_security_curve
from art_fisher.evaluation.report._tables import cells_of as _cells
from art_fisher.evaluation.report._tables import fmt_cell as _fmt
from art_fisher.evaluation.report._tables import markdown_rows as _markdown
from art_fisher.evaluation.report._tables import text_table as _text
from art_fisher.utils import atomic_write

logger = logging.getLogger(__name__)

_CLEAN = "clean"
_COLUMNS = (  # (key, header, format) of the same-attack table
    ("attack", "attack", "{}"),
    ("success_rate", "success", "{:.3f}"),
    ("detector", "detector", "{}"),
    ("roc_auc", "ROC-AUC", "{:.3f}"),
    ("tpr", "TPR", "{:.3f}"),
    ("fpr", "FPR", "{:.3f}"),
    ("own_tpr", "own TPR", "{:.3f}"),
    ("own_fpr", "own FPR", "{:.3f}"),
    ("seconds_per_sample", "ms/sample", "{:.3f}"),
    ("n_test", "n_test", "{}"),
)
_SUMMARY_COLUMNS = (
    ("detector", "detector", "{}"),
    ("fitted_on", "fitted on", "{}"),
    ("same_attack_auc", "same-attack AUC", "{:.3f}"),
    ("unseen_auc", "unseen AUC", "{:.3f}"),
    ("min_unseen_auc", "min unseen", "{:.3f}"),
    ("unseen_tpr", "unseen TPR", "{:.3f}"),
    ("clean_fpr", "clean FPR", "{:.3f}"),
)
_CSV_KEYS = ("attack", "fit_attack", "attack_success_rate", "detector", "roc_auc", "detection_accuracy", "tpr",
             "fpr", "own_tpr", "own_fpr", "seconds_per_sample", "fit_seconds", "n_train", "n_test")  # fmt: skip


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def same_attack_rows(table: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows fitted on the attack they are scored on, or on clean inputs; grouped by test attack."""
    attacks = list(dict.fromkeys(r["attack"] for r in table))
    keep = [r for r in table if r.get("fit_attack") in (r["attack"], _CLEAN, None)]
    return sorted(keep, key=lambda r: attacks.index(r["attack"]))


def unseen_summary(table: Sequence[Mapping[str, Any]], fits: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Summarise, per detector, how well it detects attacks it was not fitted on.

    One row per detector (in table order): ``detector``, ``fitted_on`` (``"each attack"`` or ``"clean"``),
    ``same_attack_auc`` (mean of the diagonal), ``unseen_auc`` and ``min_unseen_auc`` (over rows whose fit
    attack differs from the test attack; for a clean fit, every row), ``same_attack_tpr`` and
    ``unseen_tpr`` (the same means of the TPR at the operating point), ``clean_fpr`` (mean achieved FPR on
    the clean detector-test images at the operating point, over its fits) and ``n_unseen`` (rows
    averaged).
    """
    out = []
    for det in dict.fromkeys(r["detector"] for r in table):
        rows = [r for r in table if r["detector"] == det]
        clean_fit = all(r["fit_attack"] == _CLEAN for r in rows)
        same = [r["roc_auc"] for r in rows if r["fit_attack"] == r["attack"]]
        unseen = [r["roc_auc"] for r in rows if r["fit_attack"] != r["attack"]]
        same_tpr = [r["tpr"] for r in rows if r["fit_attack"] == r["attack"]]
        unseen_tpr = [r["tpr"] for r in rows if r["fit_attack"] != r["attack"]]
        finite_unseen = [v for v in unseen if not math.isnan(v)]
        out.append({
            "detector": det,
            "fitted_on": _CLEAN if clean_fit else "each attack",
            "same_attack_auc": _nanmean(same),
            "unseen_auc": _nanmean(unseen),
            "min_unseen_auc": float(min(finite_unseen)) if finite_unseen else float("nan"),
            "same_attack_tpr": _nanmean(same_tpr),
            "unseen_tpr": _nanmean(unseen_tpr),
            "clean_fpr": _nanmean([f["clean_fpr"] for f in fits if f["detector"] == det]),
            "n_unseen": len(finite_unseen),
        })  # fmt: skip
    return out


def transfer_matrix(table: Sequence[Mapping[str, Any]], detector: str, attacks: Sequence[str]) -> np.ndarray:
    """ROC-AUC of ``detector``: shape (len(attacks), len(attacks)), rows = fit attack, columns = test attack.

    A detector fitted on clean inputs gives one row, shape (1, len(attacks)). NaN where not measured.
    """
    rows = [r for r in table if r["detector"] == detector]
    if not rows:
        raise ValueError(f"detector {detector!r} is not in the table.")
    fit_attacks = [_CLEAN] if all(r["fit_attack"] == _CLEAN for r in rows) else list(attacks)
    out = np.full((len(fit_attacks), len(attacks)), np.nan)
    for r in rows:
        if r["fit_attack"] in fit_attacks and r["attack"] in attacks:
            out[fit_attacks.index(r["fit_attack"]), list(attacks).index(r["attack"])] = r["roc_auc"]
    return out


def _same_attack(table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]):
    success = {"success_rate": {a["attack"]: a["success_rate"] for a in attacks}}
    headers = [h for _, h, _ in _COLUMNS]
    numeric = [k not in ("attack", "detector") for k, _, _ in _COLUMNS]
    return headers, _cells(same_attack_rows(table), _COLUMNS, success), numeric


def _summary(table: Sequence[Mapping[str, Any]], fits: Sequence[Mapping[str, Any]]):
    rows = unseen_summary(table, fits)
    for r in rows:
        if r["fitted_on"] == _CLEAN:
            r["same_attack_auc"] = None  # it has seen no attack
    headers = [h for _, h, _ in _SUMMARY_COLUMNS]
    numeric = [k not in ("detector", "fitted_on") for k, _, _ in _SUMMARY_COLUMNS]
    cells = [[_fmt(r[k], f, k) if r[k] is not None else "-" for k, _, f in _SUMMARY_COLUMNS] for r in rows]
    return headers, cells, numeric


def format_table(table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]) -> str:
    """The same-attack table as fixed-width text: one line per test attack × detector."""
    return _text(*_same_attack(table, attacks))


def markdown_table(table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]) -> str:
    """The same-attack table in GitHub Markdown."""
    return _markdown(*_same_attack(table, attacks))


def format_console(
    table: Sequence[Mapping[str, Any]],
    attacks: Sequence[Mapping[str, Any]],
    fits: Sequence[Mapping[str, Any]],
    adaptive: Sequence[Mapping[str, Any]] = (),
) -> str:
    """What ``art-fisher evaluate`` prints: the same-attack table, the unseen-attack summary, the adaptive attacks."""
    parts = [
        format_table(table, attacks), "",
        "Unseen attacks: mean ROC-AUC where the fit attack differs from the test attack (clean fits: every attack)",
        _text(*_summary(table, fits)),
    ]  # fmt: skip
    if adaptive:
        parts += [
            "",
            "Adaptive attacks (classifier + detector attacked together; evasion = misclassified and not flagged)",
        ]
        parts.append(_text(*_adaptive(adaptive)))
    return "\n".join(parts)


_ADAPTIVE_COLUMNS = (
    ("detector", "detector", "{}"),
    ("fit_attack", "fitted on", "{}"),
    ("attack", "attack", "{}"),
    ("eps", "eps", "{:.3g}"),
    ("success_rate", "success", "{:.3f}"),
    ("evasion_rate", "evasion", "{:.3f}"),
    ("flagged_successful", "flagged", "{:.3f}"),
    ("clean_fpr", "clean FPR", "{:.3f}"),
    ("threshold", "threshold", "{:.3g}"),
    ("roc_auc", "ROC-AUC", "{:.3f}"),
    ("steps", "steps", "{}"),
    ("loss_start", "loss 0", "{:.3f}"),
    ("loss_half", "loss 1/2", "{:.3f}"),
    ("loss_final", "loss end", "{:.3f}"),
    ("seconds", "s", "{:.1f}"),
)


def _adaptive(rows: Sequence[Mapping[str, Any]]):
    headers = [h for _, h, _ in _ADAPTIVE_COLUMNS]
    numeric = [k not in ("detector", "fit_attack", "attack") for k, _, _ in _ADAPTIVE_COLUMNS]
    return headers, [[_fmt(r.get(k), f, k) for k, _, f in _ADAPTIVE_COLUMNS] for r in rows], numeric


def _adaptive_section(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> list[str]:

    skipped = [d for d in settings.get("detectors", ()) if d not in settings.get("adaptive_detectors", ())]
    lines = ["## Adaptive attacks", "", f"Threat model: {THREAT_MODEL}", ""]
    lines += [
        (
            "*success*: share of attacked images the classifier misclassifies; *evasion*: misclassified and not "
            f"flagged at the operating point (target clean FPR {settings.get('target_fpr')}); *flagged*: share of "
            "the successful examples flagged; *clean FPR*: share of the clean versions of the attacked images "
            "flagged (the achieved FPR); *threshold*: the detector's threshold at the operating point; "
            "*ROC-AUC*: detector score, clean versions of the attacked images against the successful adaptive "
            "examples; *loss 0 / 1/2 / end*: the attacker's mean loss at the start, after half the steps and at "
            "the end (flat from 1/2 to end: converged)."
        ),
        "",
        _markdown(*_adaptive(rows)),
        "",
    ]
    if skipped:
        lines += [f"Not attacked (no input gradient): {', '.join(f'`{d}`' for d in skipped)}.", ""]
    return lines


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


def _csv_text(table: Sequence[Mapping[str, Any]], attacks: Sequence[Mapping[str, Any]]) -> str:
    success = {a["attack"]: a["success_rate"] for a in attacks}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(_CSV_KEYS), extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow({**row, "attack_success_rate": success.get(row["attack"])})
    return buffer.getvalue()


def _matrix_markdown(matrix: np.ndarray, fit_names: Sequence[str], test_names: Sequence[str]) -> str:
    headers = ["fitted on \\ test", *test_names]
    cells = [[fit, *(_fmt(float(v), "{:.3f}", "") for v in row)] for fit, row in zip(fit_names, matrix, strict=True)]
    return _markdown(headers, cells, [False, *([True] * len(test_names))])


def _markdown_report(
    *,
    table: Sequence[Mapping[str, Any]],
    attacks: Sequence[Mapping[str, Any]],
    fits: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    timings: Mapping[str, float],
    plots_written: Mapping[str, Path],
    adaptive: Sequence[Mapping[str, Any]] = (),
    security_curve: Sequence[Mapping[str, Any]] = (),
) -> str:
    labels = settings.get("labels", {})
    names = [a["attack"] for a in attacks]
    lines = ["# art-fisher evaluation report", "", "## Same-attack detection (detector-test side)", ""]
    lines += [markdown_table(table, attacks), ""]
    lines += [
        (
            f"ROC-AUC of each detector's continuous score; *TPR* and *FPR* at the operating point: the threshold "
            f"that flags target_fpr = {settings.get('target_fpr')} of clean images, set on clean detector-test "
            "images by two-fold cross-calibration (an image is judged at the threshold set on the other fold's "
            "clean images), *FPR* being the achieved rate on held-out clean images; *own TPR / FPR*: the "
            "detector's own yes/no decision, for reference; milliseconds of `detect` per sample (wall clock; for "
            "the Fisher detectors, whose metric values are computed once per input and shared, the measured "
            "cost of computing their metrics plus the rest of `detect`). Supervised detectors are fitted on "
            "the attack they are scored on; `*_clean` and `subset_scanning` never see an adversarial example. "
            "Only successful adversarial examples count; the clean and adversarial versions of a source image "
            "are on the same side, for every attack."
        ),
        "",
        "## Unseen attacks",
        "",
        (
            "Every supervised detector is fitted on each attack and scored on every attack. *Unseen AUC* is the "
            "mean ROC-AUC where the fit attack differs from the test attack; for detectors fitted on clean "
            "inputs every attack is unseen. *Unseen TPR*: the same mean of the TPR at the operating point. *Clean "
            "FPR*: the achieved FPR at the operating point on all clean detector-test images (mean over fits)."
        ),
        "",
        _markdown(*_summary(table, fits)),
        "",
    ]
    for det in dict.fromkeys(r["detector"] for r in table):
        matrix = transfer_matrix(table, det, names)
        if matrix.shape[0] > 1:
            lines += [f"### {labels.get('detectors', {}).get(det, det)} (`{det}`)", ""]
            lines += [_matrix_markdown(matrix, names, names), ""]
    lines += _clean_section(table, fits, settings, names)
    if adaptive:
        lines += _adaptive_section(adaptive, settings)
    if security_curve:
        lines += _curve_section(security_curve, settings)
    lines += [
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
    lines += [f"- {k}: `{v}`" for k, v in settings.items() if k not in ("versions", "labels")]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in settings.get("versions", {}).items()]
    lines += ["", "## Timings (seconds, wall clock)", ""]
    lines += [f"- {k}: {v:.2f}" for k, v in timings.items()]
    if plots_written:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({p.name})" for name, p in plots_written.items()]
    return "\n".join(lines) + "\n"


def _curve_section(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> list[str]:
    eps = sorted({r["eps"] for r in rows})
    lines = [
        "## Security curve (classifier + detector)", "",
        ("Robust accuracy under ART's PGD L∞ against the classifier (the detector unknown to the attacker) at each "
         "budget ε: an attacked image counts as robust when it is still classified correctly or flagged (caught); "
         "at ε = 0 a clean image counts when it is classified correctly and not flagged (a flagged clean image is "
         f"a false alarm). Flags at the operating point (target clean FPR {settings.get('target_fpr')}). `none`: "
         "the classifier alone (ART's SecurityCurve)."), "",
    ]  # fmt: skip
    cells = []
    for det in dict.fromkeys(r["detector"] for r in rows):
        acc = {r["eps"]: r["robust_accuracy"] for r in rows if r["detector"] == det}
        cells.append([det, *(_fmt(acc.get(e), "{:.3f}", "") for e in eps)])
    headers = ["detector", *(f"ε={e:.3g}" for e in eps)]
    return [*lines, _markdown(headers, cells, [False, *([True] * len(eps))]), ""]


def _clean_section(
    table: Sequence[Mapping[str, Any]],
    fits: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    names: Sequence[str],
) -> list[str]:
    clean_fits = [f for f in fits if f["fit_attack"] == _CLEAN]
    if not clean_fits:
        return []
    lines = [
        "## Clean-only calibration",
        "",
        (
            f"Detectors fitted on the {clean_fits[0]['n_train']} clean detector-train images alone (no adversarial "
            f"example); the `*_clean` ones aim at flagging `target_fpr` = {settings.get('target_fpr')} of clean "
            f"inputs on their own. FPR on the {clean_fits[0]['n_clean_test']} clean detector-test images; TPR on "
            "each attack's successful adversarial detector-test images; both at the operating point, and the "
            "detector's own clean FPR beside them."
        ),
        "",
    ]
    headers = ["detector", "clean FPR", "own clean FPR", *(f"TPR {a}" for a in names)]
    cells = []
    for fit in clean_fits:
        tpr = {r["attack"]: r["tpr"] for r in table if r["detector"] == fit["detector"]}
        cells.append([
            fit["detector"], _fmt(fit["clean_fpr"], "{:.3f}", ""), _fmt(fit.get("own_clean_fpr"), "{:.3f}", ""),
            *(_fmt(tpr.get(a), "{:.3f}", "") for a in names),
        ])  # fmt: skip
    return [*lines, _markdown(headers, cells, [False, *([True] * (len(headers) - 1))]), ""]


def write_report(
    output_dir: str | Path,
    *,
    table: Sequence[Mapping[str, Any]],
    attacks: Sequence[Mapping[str, Any]],
    fits: Sequence[Mapping[str, Any]] = (),
    settings: Mapping[str, Any],
    timings: Mapping[str, float],
    curves: Mapping[str, Mapping[str, tuple]] | None = None,
    metric_scores: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    sensitivity: Mapping[str, Any] | None = None,
    adaptive: Sequence[Mapping[str, Any]] = (),
    security_curve: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``report.md`` and the plots into ``output_dir``, atomically.

    Parameters
    ----------
    output_dir : str or Path
        Existing or new folder.
    table, attacks, fits, settings, timings
        As in :class:`art_fisher.evaluation.EvaluationResult`.
    curves : dict, optional
        ``curves[attack][detector] = (fpr, tpr, auc)``; ROC plot when given and non-empty.
    metric_scores : dict, optional
        ``metric_scores[metric][attack] = (clean_scores, adversarial_scores)``; histogram plot when given.
    sensitivity : dict, optional
        ``attack``, ``clean``, ``adversarial`` (N, C, H, W) and ``clean_map``, ``adversarial_map`` (same
        shape); sensitivity-map grid when given.
    security_curve : sequence of dict, optional
        Rows of ``art_fisher.evaluation._security_curve.security_curve_rows``; when given, the plot
        ``security_curve.png``, a table in ``report.md`` and the key ``security_curve`` of ``results.json``.
    adaptive : sequence of dict, optional
        Adaptive-attack rows (:class:`~art_fisher.evaluation.EvaluationResult`'s ``adaptive``); when given, also
        ``adaptive.csv``, a section of ``report.md`` and the key ``adaptive`` of ``results.json``.

    Returns
    -------
    dict of str to Path
        ``results_json``, ``results_csv``, ``report_md``, ``adaptive_csv`` (with adaptive rows) and the plots
        that were drawn.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = settings.get("labels", {})
    names = [a["attack"] for a in attacks]
    written: dict[str, Path] = {}
    if curves:
        written["roc_curves"] = out / "roc_curves.png"
        plots.plot_roc(written["roc_curves"], curves, labels)
    matrices = {d: m for d in dict.fromkeys(r["detector"] for r in table)
                if (m := transfer_matrix(table, d, names)).shape[0] > 1 and not np.all(np.isnan(m))}  # fmt: skip
    if matrices and len(names) > 1:
        written["transfer_auc"] = out / "transfer_auc.png"
        plots.plot_transfer(written["transfer_auc"], matrices, names, labels)
    if metric_scores:
        written["score_histograms"] = out / "score_histograms.png"
        plots.plot_histograms(written["score_histograms"], metric_scores, labels)
    if security_curve:
        written["security_curve"] = out / "security_curve.png"
        plot_security_curve(
            written["security_curve"],
            [{**r, "robust_accuracy_mean": r["robust_accuracy"]} for r in security_curve],
            settings.get("target_fpr", float("nan")),
        )
    if sensitivity:
        written["sensitivity_maps"] = out / "sensitivity_maps.png"
        plots.plot_sensitivity(written["sensitivity_maps"], sensitivity, labels)
    paths = {"results_json": out / "results.json", "results_csv": out / "results.csv", "report_md": out / "report.md"}
    payload = {
        "settings": settings, "attacks": attacks, "table": table, "fits": fits,
        "unseen_summary": unseen_summary(table, fits), "timings": timings,
    }  # fmt: skip
    if adaptive:
        payload["adaptive"] = list(adaptive)
    if security_curve:
        payload["security_curve"] = list(security_curve)
    texts = {
        "results_json": json.dumps(_jsonable(payload), indent=2) + "\n",
        "results_csv": _csv_text(table, attacks),
        "report_md": _markdown_report(
            table=table,
            attacks=attacks,
            fits=fits,
            settings=settings,
            timings=timings,
            plots_written=written,
            adaptive=adaptive,
            security_curve=security_curve,
        ),
    }
    if adaptive:
        paths["adaptive_csv"] = out / "adaptive.csv"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(ROW_KEYS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(adaptive)
        texts["adaptive_csv"] = buffer.getvalue()
    for key, text in texts.items():
        with atomic_write(paths[key], text=True) as fh:
            fh.write(text)
    logger.info("report: %s", out / "report.md", extra={"stage": True})
    return {**paths, **written}
