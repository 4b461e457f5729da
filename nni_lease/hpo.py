"""Tune LeaSE's hyper-parameters (γ, PGD ε and steps) in an NNI HPO experiment, one trial per setting.

Each trial (``python -m nni_lease.hpo trial ...``, the experiment's ``trialCommand``) takes its
parameters from ``nni.get_next_parameter()``, runs the one-shot LeaSE search
(``nni-lease search --mode oneshot``) and retrains the exported architecture from scratch
(``nni-lease retrain``), and reports to NNI:

* one intermediate result per search epoch (sent when the search has finished, read from its metrics
  file): ``default`` = the explainer's validation accuracy at that epoch, plus every logged metric;
* the final result: ``default`` = the retrained architecture's **validation** accuracy (the tuner
  maximises it; the test accuracy is reported alongside but is not what is tuned), plus the test
  accuracy and the search's last LeaSE objective.

Accuracy, not the LeaSE objective, is the tuned metric here because the objective
``L_e^val + γ·L_a^val`` changes meaning with γ, one of the tuned parameters. The one-shot search never
starts an NNI manager itself; run inside this experiment it shows in the web UI like any trial.

:data:`SEARCH_SPACE` is the space tuned; :func:`build_hpo_experiment` returns the
:class:`nni.experiment.Experiment` (``examples/hpo_experiment.py`` and ``examples/hpo_config.yml`` are
the same experiment through the Python API and as an ``nnictl`` config).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nni
from nni.experiment import Experiment, ExperimentConfig
from nni.experiment.config import AlgorithmConfig

from nni_lease.experiment import load_training_service

logger = logging.getLogger(__name__)

__all__ = ["SEARCH_SPACE", "DEFAULT_PARAMETERS", "build_hpo_experiment", "run_trial", "main"]

#: NNI search space of the tuned LeaSE hyper-parameters (NNI's ``_type`` / ``_value`` format).
SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "gamma": {"_type": "uniform", "_value": [0.0, 2.0]},
    "pgd_epsilon": {"_type": "loguniform", "_value": [0.01, 0.3]},
    "pgd_steps": {"_type": "choice", "_value": [1, 3, 5, 7]},
}

#: Used for parameters the tuner did not send (e.g. when the trial runs outside NNI).
DEFAULT_PARAMETERS: dict[str, Any] = {"gamma": 1.0, "pgd_epsilon": 8 / 255, "pgd_steps": 3}


def _check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULT_PARAMETERS))
    if unknown:
        raise ValueError(f"HPO parameters must be among {sorted(DEFAULT_PARAMETERS)}; got unknown {unknown}.")
    merged = {**DEFAULT_PARAMETERS, **params}
    if not isinstance(merged["gamma"], (int, float)) or merged["gamma"] < 0:
        raise ValueError(f"gamma must be a number >= 0; got {merged['gamma']!r}.")
    if not isinstance(merged["pgd_epsilon"], (int, float)) or merged["pgd_epsilon"] <= 0:
        raise ValueError(f"pgd_epsilon must be a number > 0; got {merged['pgd_epsilon']!r}.")
    if isinstance(merged["pgd_steps"], float) and merged["pgd_steps"].is_integer():
        merged["pgd_steps"] = int(merged["pgd_steps"])
    if not isinstance(merged["pgd_steps"], int) or merged["pgd_steps"] < 1:
        raise ValueError(f"pgd_steps must be an int >= 1; got {merged['pgd_steps']!r}.")
    return merged


@contextlib.contextmanager
def _without_nni_reports() -> Iterator[None]:
    """Mute ``nni.report_*`` inside the block (restored afterwards).

    The one-shot search trains through NNI's Lightning evaluator, which reports its own validation
    accuracy to NNI as the trial's intermediate and *final* results when it runs inside a trial. An HPO
    trial must send exactly one final result (what it tunes), so those reports are muted during the
    search and this module reports instead.
    """
    saved = nni.report_intermediate_result, nni.report_final_result
    nni.report_intermediate_result = nni.report_final_result = lambda *args, **kwargs: None
    try:
        yield
    finally:
        nni.report_intermediate_result, nni.report_final_result = saved


def run_trial(
    params: dict[str, Any],
    *,
    output: str | Path,
    search_args: Sequence[str] = (),
    retrain_args: Sequence[str] = (),
) -> dict[str, Any]:
    """One HPO trial: one-shot LeaSE search with ``params``, retrain, report to NNI.

    Parameters
    ----------
    params : dict
        ``gamma``, ``pgd_epsilon``, ``pgd_steps`` (missing ones take :data:`DEFAULT_PARAMETERS`).
    output : str or Path
        Folder for the search's and the retraining's files.
    search_args, retrain_args : sequence of str
        Extra options of ``nni-lease search --mode oneshot`` / ``nni-lease retrain`` (e.g.
        ``["--epochs", "2", "--limit-batches", "5"]``).

    Returns
    -------
    dict
        The final result sent with ``nni.report_final_result``.

    Raises
    ------
    ValueError
        For bad ``params``; RuntimeError if the search or the retraining fails.
    """
    from nni_lease import cli

    merged = _check_parameters(dict(params))
    out = Path(output)
    search_dir = out / "search"
    with _without_nni_reports():
        code = cli.main(["search", "--mode", "oneshot", "--output", str(search_dir),
                         "--gamma", repr(float(merged["gamma"])), "--pgd-epsilon", repr(float(merged["pgd_epsilon"])),
                         "--pgd-steps", str(merged["pgd_steps"]), *search_args])
    if code != 0:
        raise RuntimeError(f"the one-shot LeaSE search failed (exit code {code}).")
    rows = list(csv.DictReader((search_dir / cli.METRICS_FILE).open()))
    last: dict[str, float] = {}
    for row in rows:
        metrics = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "epoch"}
        metrics["epoch"] = int(row["epoch"]) + 1
        metrics["default"] = metrics.get("explainer/val_acc", float("nan"))
        nni.report_intermediate_result(metrics)
        last = metrics
    retrain_file = out / cli.RETRAIN_FILE
    with _without_nni_reports():
        code = cli.main(["retrain", str(search_dir / cli.ARCHITECTURE_FILE), "--output", str(retrain_file),
                         *retrain_args])
    if code != 0:
        raise RuntimeError(f"retraining the searched architecture failed (exit code {code}).")
    retrained = json.loads(retrain_file.read_text())
    final = {
        "default": float(retrained["val_accuracy"]),
        "test_accuracy": float(retrained["test_accuracy"]),
        "search_objective": float(last.get("lease/objective", float("nan"))),
        **{k: float(merged[k]) for k in ("gamma", "pgd_epsilon")},
        "pgd_steps": int(merged["pgd_steps"]),
    }
    nni.report_final_result(final)
    return final


def build_hpo_experiment(
    *,
    max_trials: int = 8,
    concurrency: int = 1,
    tuner: str = "TPE",
    search_args: Sequence[str] = ("--epochs", "2", "--limit-batches", "10"),
    retrain_args: Sequence[str] = ("--epochs", "3"),
    training_service: str | Path | dict | None = "local",
    experiment_dir: str | Path | None = None,
) -> Experiment:
    """The NNI HPO experiment over :data:`SEARCH_SPACE` (maximising retrained validation accuracy).

    Parameters
    ----------
    max_trials, concurrency : int
        ``maxTrialNumber`` and ``trialConcurrency``.
    tuner : str
        A built-in NNI tuner that handles uniform / loguniform / choice (``"TPE"``, ``"Random"``,
        ``"Anneal"``, ``"Evolution"``).
    search_args, retrain_args : sequence of str
        Passed to every trial's ``nni-lease search --mode oneshot`` / ``nni-lease retrain``.
    training_service, experiment_dir
        As in :func:`nni_lease.experiment.build_config`.

    Raises
    ------
    ValueError
        For a bad argument or a config NNI rejects.
    """
    for name, value in [("max_trials", max_trials), ("concurrency", concurrency)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    ts = load_training_service(training_service)
    # Locally the trials use this interpreter; on other machines the `python3` found through NNI's
    # `pythonPath` for that machine (see examples/remote_training_service.yml).
    python = Path(sys.executable).as_posix() if ts["platform"] == "local" else "python3"
    command = [python, "-m", "nni_lease.hpo", "trial"]
    if search_args:
        command += ["--search-args=" + " ".join(search_args)]
    if retrain_args:
        command += ["--retrain-args=" + " ".join(retrain_args)]
    exp = Experiment(ExperimentConfig(training_service=ts))
    exp.config.experiment_name = "lease-hpo"
    exp.config.trial_command = " ".join(f"'{part}'" if " " in part else part for part in command)
    exp.config.trial_code_directory = "."
    exp.config.search_space = SEARCH_SPACE
    exp.config.tuner = AlgorithmConfig(name=tuner, class_args={"optimize_mode": "maximize"})
    exp.config.max_trial_number = max_trials
    exp.config.trial_concurrency = concurrency
    if experiment_dir is not None:
        exp.config.experiment_working_directory = str(Path(experiment_dir).expanduser().resolve())
    try:
        exp.config.canonical_copy()
    except (AssertionError, ValueError, TypeError) as exc:
        raise ValueError(f"NNI rejected the HPO experiment config: {exc}") from exc
    return exp


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nni_lease.hpo trial [--search-args "..."] [--retrain-args "..."]``: one HPO trial."""
    parser = argparse.ArgumentParser(prog="python -m nni_lease.hpo", description="One LeaSE HPO trial (NNI).")
    sub = parser.add_subparsers(dest="command", required=True)
    trial = sub.add_parser("trial", help="run one trial with the parameters NNI sends")
    trial.add_argument("--search-args", default="", help="options for `nni-lease search --mode oneshot`")
    trial.add_argument("--retrain-args", default="", help="options for `nni-lease retrain`")
    trial.add_argument("--output", default=None, help="folder for the files (default: $NNI_OUTPUT_DIR)")
    args = parser.parse_args(argv)
    params = nni.get_next_parameter() or {}
    output = args.output or os.environ.get("NNI_OUTPUT_DIR") or tempfile.mkdtemp(prefix="lease-hpo-")
    run_trial(params, output=output, search_args=args.search_args.split(), retrain_args=args.retrain_args.split())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
