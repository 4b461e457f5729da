"""The evaluation run: the files checked and the data loaded (:func:`prepare`), the stages (:func:`run_plan`).

Stages of :func:`run_plan`, in order:

1. the classifier: the given state dict, or a model trained here and cached;
2. ``n_samples`` correctly classified test images, seeded, split into the detector-train and the
   detector-test side;
3. each attack on every drawn image;
4. every detector fitted and scored as the protocol says (same attack, unseen attacks, clean-only);
5. with ``adaptive=True``, adaptive attacks on classifier and detector together;
6. the security curve, then the report (tables and plots), written atomically.

Everything is seeded: the same settings give the same numbers. :func:`evaluate` does both steps;
:class:`EvaluationPlan` holds what :func:`prepare` checked and loaded, :class:`EvaluationResult` what a run
gives.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from art_fisher._threads import check_threads
from art_fisher.data._loaders import Dataset, load_dataset
from art_fisher.data._npz import load_npz
from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.distributed import is_writer, world_size
from art_fisher.evaluation._attacks import (
    ADAPTIVE_ATTACKS,
    ATTACKS,
    adaptive_detectors,
    run_adaptive,
    run_attack,
)
from art_fisher.evaluation._config import DEFAULT_ARCH, DEFAULT_EPOCHS, EvaluationConfig, config_of, resolve_device
from art_fisher.evaluation._model import (
    ModelSource,
    attacked_classifier,
    cached_model,
    check_finite_scores,
    seed_everything,
)
from art_fisher.evaluation._protocol import score_detectors, split_sources
from art_fisher.evaluation._security_curve import security_curve_rows
from art_fisher.evaluation._user_inputs import layer_free_detectors, model_and_classifier, preserved, run_classifier
from art_fisher.evaluation.detectors._base import RunContext
from art_fisher.evaluation.detectors._registry import DETECTORS
from art_fisher.evaluation.report import _report
from art_fisher.metrics._top_mass import check_tau
from art_fisher.utils import check_output_dir


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    table : list of dict
        One row per detector × fit attack × test attack: ``detector``, ``fit_attack`` (the attack the
        detector was fitted on, or ``"clean"`` when it saw no adversarial example), ``attack`` (the test
        attack), ``roc_auc``, ``detection_accuracy``, ``tpr``, ``fpr`` (at the operating point: the
        threshold that flags ``target_fpr`` of held-out clean images (the operating point); ``fpr`` is
        the achieved rate), ``own_tpr``, ``own_fpr`` (the detector's own decision),
        ``seconds_per_sample``, ``fit_seconds``, ``n_train``, ``n_test``.
    attacks : list of dict
        One row per attack: ``attack``, ``success_rate``, ``n_attacked``, ``n_successful``, ``mean_l2``,
        ``mean_linf`` (of the successful perturbations), ``seconds``.
    fits : list of dict
        One row per detector × fit: ``detector``, ``fit_attack``, ``n_train``, ``fit_seconds``,
        ``detect_seconds``, ``n_detect``, ``seconds_per_sample``, ``clean_fpr`` (achieved FPR at the
        operating point on all clean detector-test images), ``own_clean_fpr``, ``threshold``,
        ``n_clean_test`` (see ``ProtocolResult``).
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
        (the adaptive stage): ``detector``, ``fit_attack``, ``attack``, ``norm``, ``eps``, ``steps``,
        ``n_attacked``, ``success_rate`` (against the classifier alone), ``evasion_rate`` (misclassified and
        not flagged at the operating point), ``flagged_successful``, ``clean_fpr`` (achieved), ``threshold``,
        ``roc_auc``, ``loss_start``, ``loss_half``,
        ``loss_final``, ``seconds``. Empty otherwise.
    security_curve : list of dict
        The detection-aware security curve : ``detector`` (``"none"``: the
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
    """Checked arguments, loaded data and (if given) the loaded model: everything :func:`run_plan` needs.

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
    #: The ``.npz`` file the data came from, or None.
    data_path: Path | None = None


logger = logging.getLogger(__name__)
#: ``extra`` of the one log line per stage (model, attacks, detectors, ...): the command line shows these at
#: its default verbosity, the per-step lines (each attack, each detector fit, each epoch) only with --verbose.
STAGE = {"stage": True}


_N_BACKGROUND = 200
#: Training images the class-conditional Gaussians (Mahalanobis, stacked) are fitted on; Lee et al. use the
#: whole training set, and on digits 1,000 images against 200 raised the supervised Mahalanobis detector's
#: unseen-attack ROC-AUC (0.856 / 0.826 against 0.857 / 0.811, seeds 0 / 1) and the stacked one's
#: (0.910 / 0.875 against 0.881 / 0.858).
_N_REFERENCE = 1000


def prepare(config: EvaluationConfig | None = None, /, **settings: Any) -> EvaluationPlan:
    """Check the files, load the data and a given model; write nothing.

    Parameters
    ----------
    config : EvaluationConfig, optional
        The run's settings; ``settings`` (keywords of :class:`EvaluationConfig`) are applied on top, or
        build it alone.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        As :func:`evaluate`. After it returns, :func:`run_plan` does the work.
    """
    config = config_of(config, settings)
    dataset = config.data_name
    arch = DEFAULT_ARCH[dataset] if config.arch is None else config.arch
    detector_names = config.detector_names
    explicit = config.detectors is not None
    adaptive_names = tuple(adaptive_detectors(detector_names, explicit=explicit)) if config.adaptive else ()
    dev = resolve_device(config.device)
    model_path = None if config.model is None else Path(config.model)
    if model_path is not None and not model_path.is_file():
        what = (
            "is a folder"
            if model_path.is_dir()
            else "is not a regular file (a device, pipe or socket)"
            if model_path.exists()
            else "does not exist"
        )
        raise FileNotFoundError(f"model must be a state-dict or torch.export file; {model_path} {what}.")
    if config.classifier is not None and model_path is not None:
        raise ValueError("give either classifier or model, not both.")
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir)

    data = config.data
    if data is None:
        train = load_dataset(config.dataset, data_dir=config.data_dir, split="train")
        test = load_dataset(config.dataset, data_dir=config.data_dir, split="test")
    else:
        train, test = load_npz(data) if isinstance(data, str | Path) else data
    net, classifier, train, test = model_and_classifier(
        arch=arch, train=train, test=test, model_path=model_path, classifier=config.classifier, device=dev,
        clip_values=config.clip_values, mean=config.mean, std=config.std,
    )  # fmt: skip
    detector_names = layer_free_detectors(net, detector_names, explicit=explicit)
    adaptive_names = tuple(name for name in adaptive_names if name in detector_names)
    return EvaluationPlan(
        dataset=dataset, data_dir=config.data_dir, arch=arch, model_path=model_path, net=net, train=train,
        test=test, attacks=tuple(config.attacks), detectors=detector_names,
        eps=float(config.resolved_eps), n_samples=int(config.n_samples),
        seed=int(config.seed), device=dev, output_dir=output_dir,
        epochs=int(DEFAULT_EPOCHS[dataset] if config.epochs is None else config.epochs),
        batch_size=int(config.batch_size), target_fpr=float(config.target_fpr), progress=bool(config.progress),
        adaptive=adaptive_names, tau=check_tau(config.tau), classifier=classifier,
        data_path=Path(data) if isinstance(data, str | Path) else None,
    )  # fmt: skip


class _StepBar:
    """One tqdm bar over the run's steps (attacks, detector fits): each call names the next step.

    Disabled (no terminal, or ``progress=False``), it logs each step at INFO level instead.
    """

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.bar = tqdm(total=total, desc="art-fisher evaluate", unit="step", disable=not enabled)
        self.started = False
        self.enabled, self.total, self.done = enabled, total, 0

    def __call__(self, description: str) -> None:
        if self.started:
            self.bar.update(1)
            self.done += 1
        self.started = True
        self.bar.set_postfix_str(description)
        if not self.enabled:
            logger.info("step %d/%d: %s", self.done + 1, self.total, description)

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


def _n_steps(plan: EvaluationPlan) -> int:
    fits = sum(len(plan.attacks) if DETECTORS[d].supervised else 1 for d in plan.detectors)
    return len(plan.attacks) + fits + len(ADAPTIVE_ATTACKS) * len(plan.adaptive)


def _model_source(p: EvaluationPlan) -> ModelSource:
    """The classifier's model: the one the plan holds (given or loaded by ``prepare``), else trained or cached."""
    if torch.device(p.device).type == "cpu":  # the run's start: warn about more torch threads than free cores
        check_threads("the evaluation")
    model = p.classifier.model if p.classifier is not None else p.net
    if model is not None:  # loaded by prepare from model_path, or handed over in memory
        return ModelSource(model, p.model_path, "given", 0.0)
    return cached_model(
        arch=p.arch, data=p.train, epochs=p.epochs, seed=p.seed, device=p.device, output_dir=p.output_dir,
        progress=p.progress,
    )  # fmt: skip


def _stage(name: str, detail: str, seconds: float) -> None:
    """The one INFO line of a finished stage, which the command line shows at its default verbosity."""
    logger.info("%s: %s (%.1f s)", name, detail, seconds, extra=STAGE)


def _run_attacks(
    p: EvaluationPlan, classifier: Any, x_src: np.ndarray, y_src: np.ndarray, side: np.ndarray,
    steps: _StepBar, timings: dict[str, float],
) -> list[Any]:  # fmt: skip
    """Every attack of the plan on the source images, each seeded by its position; their outcomes."""
    outcomes = []
    for a_i, name in enumerate(p.attacks):
        steps(f"attack {ATTACKS[name].label}")
        seed_everything(p.seed + 1000 * (a_i + 1))
        outcome = run_attack(name, classifier, x_src, y_src, eps=p.eps, batch_size=p.batch_size, progress=p.progress)
        timings[f"attack {name}"] = outcome.stats["seconds"]
        n_train, n_test = int((side & outcome.success).sum()), int((~side & outcome.success).sum())
        logger.info("%s: success rate %.3f", ATTACKS[name].label, outcome.stats["success_rate"])
        if min(n_train, n_test) < 2:
            logger.warning(
                "%s: too few successful examples on a side (%d / %d); its rows are n/a",
                ATTACKS[name].label, n_train, n_test,
            )  # fmt: skip
        outcomes.append(outcome)
    rates = ", ".join(
        f"{ATTACKS[n].label} {o.stats['success_rate']:.3f}" for n, o in zip(p.attacks, outcomes, strict=True)
    )
    seconds = sum(o.stats["seconds"] for o in outcomes)
    _stage("attacks", f"success rate {rates}", seconds)
    return outcomes


def _run_settings(
    p: EvaluationPlan, source: ModelSource, n_samples: int, side: np.ndarray, clean_accuracy: float
) -> dict[str, Any]:
    """The run's settings as the report records them."""
    settings = {
        "dataset": p.dataset, "data_dir": None if p.data_dir is None else str(p.data_dir), "arch": p.arch,
        "model": None if source.path is None else str(source.path), "model_status": source.status,
        "model_cached": source.status == "cached",
        "attacks": list(p.attacks), "eps": p.eps, "detectors": list(p.detectors), "n_samples": n_samples,
        "n_detector_train_images": int(side.sum()), "n_detector_test_images": int((~side).sum()),
        "seed": p.seed, "device": str(p.device), "epochs": p.epochs, "batch_size": p.batch_size,
        "target_fpr": p.target_fpr, "tau": p.tau, "clean_test_accuracy": clean_accuracy,
        "n_train_images": len(p.train.y), "n_test_images": len(p.test.y), "torch_threads": torch.get_num_threads(),
        "processes": world_size(), "data": None if p.data_path is None else str(p.data_path),
        "classifier": _classifier_settings(p.classifier),
        "versions": _versions(),
        "labels": {
            "attacks": {n: ATTACKS[n].label for n in p.attacks},
            "detectors": {n: DETECTORS[n].label for n in p.detectors},
        },
    }  # fmt: skip
    if p.adaptive:
        settings["adaptive_detectors"] = list(p.adaptive)
    return settings


def run_plan(plan: EvaluationPlan) -> EvaluationResult:
    """Run a checked plan (stages in the module docstring); writes the report into ``plan.output_dir``.

    A given model (``net``, or the user's classifier's) is evaluated in eval mode; its modes, ``requires_grad``
    flags and gradients come back as they were. Under ``torchrun`` only rank 0 writes.
    """
    t_all = time.perf_counter()
    if is_writer():
        plan.output_dir.mkdir(parents=True, exist_ok=True)
    source = _model_source(plan)
    if source.status != "given":
        return _run(plan, source, t_all)
    with preserved(source.model):
        return _run(plan, source, t_all)


def _run(p: EvaluationPlan, source: ModelSource, t_all: float) -> EvaluationResult:
    timings: dict[str, float] = {"training": source.seconds}
    if p.classifier is not None:
        classifier = run_classifier(p.classifier)
    else:
        classifier = attacked_classifier(
            source.model, input_shape=p.train.input_shape, nb_classes=p.train.n_classes, device=p.device
        )
    scores_test = classifier.predict(p.test.x, batch_size=p.batch_size)
    check_finite_scores(scores_test, f"model {source.path} ({source.status})", "clean test images")
    pred_test = np.argmax(scores_test, axis=1)
    clean_accuracy = float(np.mean(pred_test == p.test.y))
    _stage("model", f"{p.arch} {source.status}, clean test accuracy {clean_accuracy:.4f}", source.seconds)

    rng = np.random.default_rng(p.seed)
    correct = np.flatnonzero(pred_test == p.test.y)
    if len(correct) < p.n_samples:
        logger.warning("only %d correctly classified test images; using all of them", len(correct))
    chosen = np.sort(rng.permutation(correct)[: min(p.n_samples, len(correct))])
    x_src, y_src = p.test.x[chosen], p.test.y[chosen]
    side = split_sources(len(chosen), rng)
    train_order = rng.permutation(len(p.train.y))
    ctx = RunContext(
        classifier=classifier, model=source.model, x_background=p.train.x[train_order[:_N_BACKGROUND]],
        x_reference=p.train.x[train_order[:_N_REFERENCE]], seed=p.seed, device=p.device, batch_size=p.batch_size,
        target_fpr=p.target_fpr, progress=p.progress, tau=p.tau,
    )  # fmt: skip

    steps = _StepBar(_n_steps(p), enabled=p.progress)
    try:
        outcomes = _run_attacks(p, classifier, x_src, y_src, side, steps, timings)
        start = time.perf_counter()
        scored = score_detectors(ctx, x_src, side, outcomes, p.detectors, on_step=steps)
        timings["detectors"] = time.perf_counter() - start
        _stage("detectors", f"{len(scored.fits)} fits of {len(p.detectors)} detectors", timings["detectors"])
        adaptive_rows: list[dict[str, Any]] = []
        if p.adaptive:
            start = time.perf_counter()
            adaptive_rows = run_adaptive(
                ctx, x_src, y_src, side, scored.fitted, p.adaptive, eps=p.eps,
                fit_attack="pgd" if "pgd" in p.attacks else p.attacks[0], operating_points=scored.operating_points,
                folds=scored.folds, on_step=steps,
            )  # fmt: skip
            timings["adaptive attacks"] = time.perf_counter() - start
            _stage("adaptive attacks", f"{len(adaptive_rows)} rows", timings["adaptive attacks"])
        start = time.perf_counter()
        curve = security_curve_rows(
            ctx, x_src, y_src, side, scored, p.detectors, eps=p.eps,
            fit_attack="pgd" if "pgd" in p.attacks else p.attacks[0],
        )  # fmt: skip
        timings["security curve"] = time.perf_counter() - start
        _stage("security curve", f"{len(curve)} rows", timings["security curve"])
    finally:
        steps.close()
    for fit in scored.fits:
        key = f"detector {fit['detector']}"
        timings[key] = timings.get(key, 0.0) + fit["fit_seconds"] + fit["detect_seconds"]
    timings["total"] = time.perf_counter() - t_all
    settings = _run_settings(p, source, len(chosen), side, clean_accuracy)
    attack_rows = [o.stats for o in outcomes]
    if not is_writer():
        return EvaluationResult(scored.rows, attack_rows, scored.fits, settings, {}, timings, adaptive_rows, curve)
    paths = _report.write_report(
        p.output_dir, table=scored.rows, attacks=attack_rows, fits=scored.fits, settings=settings,
        timings=timings, curves=scored.curves, metric_scores=scored.metric_scores, adaptive=adaptive_rows,
        sensitivity=_sensitivity_examples(classifier, x_src, side, outcomes, p.batch_size), security_curve=curve,
    )  # fmt: skip
    if source.path is not None:
        paths["model"] = source.path
    return EvaluationResult(
        table=scored.rows,
        attacks=attack_rows,
        fits=scored.fits,
        settings=settings,
        paths=paths,
        timings=timings,
        adaptive=adaptive_rows,
        security_curve=curve,
    )


def evaluate(config: EvaluationConfig | None = None, /, **settings: Any) -> EvaluationResult:
    """Attack a classifier with ART and measure how well each detector catches each attack, seen or unseen.

    See :mod:`art_fisher.evaluation` for the protocol. Writes ``results.json``, ``results.csv``,
    ``report.md`` and the plots (ROC curves per attack, the unseen-attack heatmap ``transfer_auc.png``,
    Fisher score histograms, sensitivity-map grid) to the config's ``output_dir``, each atomically.

    Parameters
    ----------
    config : EvaluationConfig, optional
        Every setting of the run.
    **settings
        Keywords of :class:`EvaluationConfig`, applied on top of ``config`` (or building it alone).

    Returns
    -------
    EvaluationResult
        The table (list of dicts), per-attack statistics, per-fit statistics, settings, artefact paths
        and timings.

    Raises
    ------
    ValueError, TypeError
        On an invalid setting (including an ``output_dir`` that is a file, lies under one or is not
        writable, and a ``model`` file that is not a state dict of ``arch``), before any work is done.
    FileNotFoundError
        If ``model`` or the data files are missing.
    """
    return run_plan(prepare(config, **settings))


def _classifier_settings(classifier: Any) -> dict[str, Any] | None:
    """The user's classifier as results.json records it (None: the built-in one, inputs in [0, 1])."""
    if classifier is None:
        return None
    clip = classifier.clip_values
    return {
        "nb_classes": int(classifier.nb_classes), "input_shape": list(classifier.input_shape),
        "clip_values": None if clip is None else [float(np.min(clip[0])), float(np.max(clip[1]))],
        "preprocessing": [type(op).__name__ for op in classifier.preprocessing_operations],
    }  # fmt: skip


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("art-fisher-lease", "torch", "adversarial-robustness-toolbox", "scikit-learn", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _sensitivity_examples(
    classifier: Any, x_src: np.ndarray, side: np.ndarray, outcomes: Sequence[Any], batch_size: int, n: int = 6
) -> dict[str, Any] | None:
    """Clean / adversarial test images of the first usable attack and their Fisher sensitivity maps."""
    for outcome in outcomes:
        te = np.flatnonzero(~side & outcome.success)
        if len(te) >= 2:
            break
    else:
        return None

    clean, adv = x_src[te[:n]], outcome.x_adv[te[:n]]
    maps = FisherInformationDetector(classifier, metrics=("sensitivity",), chunk_size=batch_size)
    return {
        "attack": outcome.name, "clean": clean, "adversarial": adv,
        "clean_map": maps.sensitivity_maps(clean), "adversarial_map": maps.sensitivity_maps(adv),
    }  # fmt: skip
