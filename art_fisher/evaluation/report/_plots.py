"""The evaluation report's plots, drawn with matplotlib's non-interactive Agg backend and written as PNG.

- ``roc_curves.png``: one panel per attack, one ROC curve per detector (same-attack or clean fit);
- ``transfer_auc.png``: one heatmap per supervised detector, ROC-AUC by fit attack (rows) and test
  attack (columns); the diagonal is the same-attack number, the rest are unseen attacks;
- ``score_histograms.png``: one row per Fisher metric, one panel per attack, clean vs adversarial scores;
- ``sensitivity_maps.png``: clean images, their Fisher information sensitivity maps, the adversarial
  versions and their maps.

Each file is written atomically (a temporary file, then a rename).

Plots of aggregated results: a bar per detector with its spread, and the detection-aware security curve.

- ``unseen_auc.png`` (:func:`plot_mean_sd`): one bar per detector, mean over seeds, ± sd whiskers;
- ``security_curve.png`` (:func:`plot_security_curve`): robust accuracy of classifier + detector against
  the PGD budget ε, one line per detector (mean, ± sd band over seeds) and the classifier alone.

Written atomically with matplotlib's Agg backend, as :mod:`art_fisher.evaluation.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from art_fisher.utils import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    plt.close(fig)


def plot_roc(path: Path, curves: Mapping[str, Mapping[str, tuple]], labels: Mapping[str, Any]) -> None:
    """``curves[attack][detector] = (fpr, tpr, auc)``."""
    plt = _pyplot()
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    for ax, (attack, by_det) in zip(axes[0], curves.items(), strict=True):
        for det, (fpr, tpr, auc) in by_det.items():
            ax.plot(fpr, tpr, label=f"{labels.get('detectors', {}).get(det, det)} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(labels.get("attacks", {}).get(attack, attack))
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=6, loc="lower right")
    _save(fig, path, 110)


def plot_transfer(
    path: Path, matrices: Mapping[str, np.ndarray], attacks: Sequence[str], labels: Mapping[str, Any]
) -> None:
    """``matrices[detector]``: ROC-AUC of shape (fit attacks, test attacks), NaN where not measured."""
    plt = _pyplot()
    names = [labels.get("attacks", {}).get(a, a) for a in attacks]
    n = len(matrices)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    size = 1.0 + 0.75 * len(attacks)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.0, size * rows + 0.4), squeeze=False)
    image = None
    fig.subplots_adjust(wspace=0.45, hspace=0.6)
    for k, (ax, (det, matrix)) in enumerate(zip(axes.flat, matrices.items(), strict=False)):
        image = ax.imshow(matrix, vmin=0.5, vmax=1.0, cmap="viridis")
        for (i, j), value in np.ndenumerate(matrix):
            if not math.isnan(value):
                color = "black" if value > 0.8 else "white"
                weight = "bold" if i == j else "normal"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color, fontweight=weight)
        ax.set_xticks(range(len(attacks)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(attacks)), names, fontsize=7)
        ax.set_title(det, fontsize=8)
        ax.set_xlabel("test attack", fontsize=7)
        if k % cols == 0:
            ax.set_ylabel("fitted on", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="ROC-AUC (0.5 = chance)")
    fig.suptitle("ROC-AUC by fit attack and test attack (diagonal: same attack)", fontsize=9)
    with atomic_write(path) as fh:  # no tight_layout: it does not handle a colorbar shared by panels
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_histograms(
    path: Path, metric_scores: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], labels: Mapping[str, Any]
) -> None:
    """``metric_scores[metric][attack] = (clean_scores, adversarial_scores)``, log10 axis when all positive."""
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
    _save(fig, path, 100)


def _as_image(x: np.ndarray) -> np.ndarray:
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))


def plot_sensitivity(path: Path, sens: Mapping[str, Any], labels: Mapping[str, Any]) -> None:
    """``sens``: ``attack``, ``clean``, ``adversarial`` (N, C, H, W), ``clean_map``, ``adversarial_map``."""
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
    _save(fig, path, 110)


def plot_mean_sd(path: Path, rows: Sequence[Mapping[str, Any]], metric: str, title: str) -> None:
    """One horizontal bar per row (``detector``): ``<metric>_mean`` with ``<metric>_sd`` whiskers."""
    plt = _pyplot()
    rows = [r for r in rows if np.isfinite(r.get(f"{metric}_mean", np.nan))]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(rows) + 1.2))
    y = np.arange(len(rows))
    means = np.array([r[f"{metric}_mean"] for r in rows])
    sds = np.array([r.get(f"{metric}_sd", 0.0) or 0.0 for r in rows])
    colors = [
        "tab:orange" if r["detector"].startswith("fisher") or r["detector"].startswith("stacked") else "tab:blue"
        for r in rows
    ]
    ax.barh(y, means, xerr=sds, color=colors, capsize=3)
    ax.set_yticks(y, [r["detector"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(max(0.0, float(np.min(means - sds, initial=1.0)) - 0.05), 1.0)
    ax.set_xlabel(title, fontsize=8)
    _save(fig, path, 110)


def plot_security_curve(path: Path, rows: Sequence[Mapping[str, Any]], target_fpr: float) -> None:
    """``rows``: ``detector`` (``"none"`` for the classifier alone), ``eps``, ``robust_accuracy_mean`` / ``_sd``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for det in dict.fromkeys(r["detector"] for r in rows):
        mine = sorted((r for r in rows if r["detector"] == det), key=lambda r: r["eps"])
        eps = np.array([r["eps"] for r in mine])
        mean = np.array([r["robust_accuracy_mean"] for r in mine])
        sd = np.nan_to_num(np.array([r.get("robust_accuracy_sd", 0.0) for r in mine], dtype=float))
        style = {"color": "black", "linestyle": "--"} if det == "none" else {}
        ax.plot(eps, mean, marker="o", markersize=3, label="classifier alone" if det == "none" else det, **style)
        ax.fill_between(eps, mean - sd, mean + sd, alpha=0.15, color=style.get("color"))
    ax.set_xlabel("PGD L∞ budget ε")
    ax.set_ylabel("robust accuracy (caught or correct)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Security curve, detector at {target_fpr:g} clean FPR", fontsize=9)
    ax.legend(fontsize=6)
    _save(fig, path, 110)
