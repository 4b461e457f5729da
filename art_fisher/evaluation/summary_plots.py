"""Plots of aggregated results: a bar per detector with its spread, and the detection-aware security curve.

- ``unseen_auc.png`` (:func:`plot_mean_sd`): one bar per detector, mean over seeds, ± sd whiskers;
- ``security_curve.png`` (:func:`plot_security_curve`): robust accuracy of classifier + detector against
  the PGD budget ε, one line per detector (mean, ± sd band over seeds) and the classifier alone.

Written atomically with matplotlib's Agg backend, as :mod:`art_fisher.evaluation.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from art_fisher.evaluation.plots import _pyplot, _save

__all__ = ["plot_mean_sd", "plot_security_curve"]


def plot_mean_sd(path: Path, rows: Sequence[Mapping[str, Any]], metric: str, title: str) -> None:
    """One horizontal bar per row (``detector``): ``<metric>_mean`` with ``<metric>_sd`` whiskers."""
    plt = _pyplot()
    rows = [r for r in rows if np.isfinite(r.get(f"{metric}_mean", np.nan))]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(rows) + 1.2))
    y = np.arange(len(rows))
    means = np.array([r[f"{metric}_mean"] for r in rows])
    sds = np.array([r.get(f"{metric}_sd", 0.0) or 0.0 for r in rows])
    colors = ["tab:orange" if r["detector"].startswith("fisher") or r["detector"].startswith("stacked") else "tab:blue"
              for r in rows]  # fmt: skip
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
