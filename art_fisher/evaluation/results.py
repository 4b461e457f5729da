"""What an evaluation run takes and gives.

:class:`EvaluationPlan` holds the checked arguments, loaded data and model (made by
:func:`~.workflow.prepare`); :class:`EvaluationResult` the tables, settings and artefacts (returned by
:func:`~.workflow.run` and :func:`~.workflow.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from art_fisher.data.loaders import Dataset
from art_fisher.evaluation import report as _report

__all__ = ["EvaluationPlan", "EvaluationResult"]


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    table : list of dict
        One row per detector × fit attack × test attack: ``detector``, ``fit_attack`` (the attack the
        detector was fitted on, or ``"clean"`` when it saw no adversarial example), ``attack`` (the test
        attack), ``roc_auc``, ``detection_accuracy``, ``tpr``, ``fpr`` (at the operating point: the
        threshold that flags ``target_fpr`` of held-out clean images, :mod:`.operating_point`; ``fpr`` is
        the achieved rate), ``own_tpr``, ``own_fpr`` (the detector's own decision),
        ``seconds_per_sample``, ``fit_seconds``, ``n_train``, ``n_test``.
    attacks : list of dict
        One row per attack: ``attack``, ``success_rate``, ``n_attacked``, ``n_successful``, ``mean_l2``,
        ``mean_linf`` (of the successful perturbations), ``seconds``.
    fits : list of dict
        One row per detector × fit: ``detector``, ``fit_attack``, ``n_train``, ``fit_seconds``,
        ``detect_seconds``, ``n_detect``, ``seconds_per_sample``, ``clean_fpr`` (achieved FPR at the
        operating point on all clean detector-test images), ``own_clean_fpr``, ``threshold``,
        ``n_clean_test`` (see :class:`~.protocol.ProtocolResult`).
    settings : dict
        The arguments, the resolved defaults, the clean test accuracy, the model's path and origin, and
        the package versions.
    paths : dict of str to Path
        Artefacts: ``results_json``, ``results_csv``, ``report_md``, the plots that could be drawn
        (``roc_curves``, ``transfer_auc``, ``score_histograms``, ``sensitivity_maps``,
        ``security_curve``) and ``model``.
    timings : dict of str to float
        Wall-clock seconds of the stages; ``detector <name>`` sums that detector's fits and ``detect``
        calls (the Fisher ones share metric values, so the first to need a value pays for it).
    adaptive : list of dict
        With ``adaptive=True``: one row per differentiable detector × adaptive attack
        (:mod:`.adaptive`): ``detector``, ``fit_attack``, ``attack``, ``norm``, ``eps``, ``steps``,
        ``n_attacked``, ``success_rate`` (against the classifier alone), ``evasion_rate`` (misclassified and
        not flagged at the operating point), ``flagged_successful``, ``clean_fpr`` (achieved), ``threshold``,
        ``roc_auc``, ``loss_start``, ``loss_half``,
        ``loss_final``, ``seconds``. Empty otherwise.
    security_curve : list of dict
        The detection-aware security curve (:mod:`.security_curve`): ``detector`` (``"none"``: the
        classifier alone), ``eps``, ``robust_accuracy``, ``flagged``; empty if the run has none of its
        detectors.
    """

    table: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    fits: list[dict[str, Any]]
    settings: dict[str, Any]
    paths: dict[str, Path]
    timings: dict[str, float]
    adaptive: list[dict[str, Any]] = field(default_factory=list)
    security_curve: list[dict[str, Any]] = field(default_factory=list)

    def format_table(self) -> str:
        """Same-attack and clean-fit rows as fixed-width text, the unseen-attack summary, the adaptive attacks."""
        return _report.format_console(self.table, self.attacks, self.fits, self.adaptive)

    def unseen_summary(self) -> list[dict[str, Any]]:
        """Per detector: mean same-attack ROC-AUC, mean and minimum ROC-AUC on unseen attacks, clean FPR."""
        return _report.unseen_summary(self.table, self.fits)

    def transfer_matrix(self, detector: str) -> np.ndarray:
        """ROC-AUC of ``detector``, rows = fit attack, columns = test attack (both in the run's attack order)."""
        return _report.transfer_matrix(self.table, detector, self.settings["attacks"])


@dataclass(frozen=True)
class EvaluationPlan:
    """Checked arguments, loaded data and (if given) the loaded model: everything :func:`run` needs.

    Made by :func:`prepare`; nothing has been written when it exists.
    """

    dataset: str
    data_dir: str | Path | None
    arch: str
    model_path: Path | None
    net: nn.Module | None
    train: Dataset
    test: Dataset
    attacks: tuple[str, ...]
    detectors: tuple[str, ...]
    eps: float
    n_samples: int
    seed: int
    device: torch.device
    output_dir: Path
    epochs: int
    batch_size: int
    target_fpr: float
    progress: bool
    adaptive: tuple[str, ...] = ()
    tau: float | None = None
    #: The user's ART classifier (Python API, or built from a model file with clip range and preprocessing):
    #: the run attacks a copy of its settings around the same model; None: the built-in one around ``net``.
    classifier: Any = None
    #: The ``.npz`` file the data came from (``data=FILE``), or None.
    data_path: Path | None = None
