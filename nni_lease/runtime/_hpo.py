"""Tune LeaSE's hyper-parameters (γ, the explanation's ε and steps) in an NNI HPO experiment.

Each trial (``python -m nni_lease.runtime._hpo trial --config JSON``, the experiment's ``trialCommand``) takes
its tuned parameters from ``nni.get_next_parameter()``, runs the one-shot LeaSE search
(:func:`nni_lease.oneshot.search_oneshot`), retrains the exported architecture from scratch
(:func:`nni_lease.oneshot.retrain_architecture`), and reports to NNI (larger is better, NNI's convention):

* one intermediate result per search epoch (sent when the search has finished, read from its metrics):
  ``default`` = the explainer's validation accuracy at that epoch, plus every logged metric;
* the final result: ``default`` = the retrained architecture's **validation** accuracy (the tuner
  maximises it; the test accuracy is reported alongside but is not what is tuned), plus the test
  accuracy and the search's last LeaSE objective.

Accuracy, not the LeaSE objective, is the tuned metric here because the objective
``L_e^val + γ·L_a^val`` changes meaning with γ, one of the tuned parameters.

The fixed settings of every trial (:class:`~nni_lease.oneshot.SearchConfig`, the LeaSE settings that are
not tuned, :class:`~nni_lease.oneshot.RetrainConfig`) travel as one JSON argument. NNI runs the trial
command through ``bash`` (``eval``), so every part of it is quoted with :func:`shlex.quote`: paths with
quotes, spaces or ``$(...)`` reach the trial as they were written, never as shell code.

``SEARCH_SPACE`` is the space tuned; :func:`build_hpo_experiment` returns the
:class:`nni.experiment.Experiment` (``examples/hpo_experiment.py`` and ``examples/hpo_config.yml`` are
the same experiment through the Python API and as an ``nnictl`` config).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nni

from art_fisher.utils import check_int
from nni_lease._limits import MAX_CONCURRENCY, MAX_TRIALS
from nni_lease.core._config import LeaseConfig
from nni_lease.oneshot._config import RetrainConfig, SearchConfig
from nni_lease.oneshot._workflow import RETRAIN_FILE, retrain_architecture, search_oneshot
from nni_lease.runtime._config import check_experiment_dir, check_trial_code_directory, load_training_service

if TYPE_CHECKING:  # the trial process does not need NNI's experiment machinery (seconds of imports)
    from nni.experiment import Experiment

logger = logging.getLogger(__name__)

#: NNI search space of the tuned LeaSE settings (NNI's ``_type`` / ``_value`` format; ε is the L2 radius).
SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "gamma": {"_type": "uniform", "_value": [0.0, 2.0]},
    "pgd_epsilon": {"_type": "loguniform", "_value": [0.1, 2.0]},
    "pgd_steps": {"_type": "choice", "_value": [1, 2, 3, 5]},
}

#: Used for parameters the tuner did not send (e.g. when the trial runs outside NNI): LeaSE's defaults.
DEFAULT_PARAMETERS: dict[str, Any] = {name: getattr(LeaseConfig(), name) for name in SEARCH_SPACE}

#: Options that the tuner sets, so an HPO run cannot fix them (``pgd_step_size`` follows ε and steps).
TUNED_SETTINGS: tuple[str, ...] = (*SEARCH_SPACE, "pgd_step_size")


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """The fixed settings of every HPO trial (one JSON argument of the trial command).

    Parameters
    ----------
    search : SearchConfig
        The one-shot search's data, space and training settings.
    lease : dict
        LeaSE settings that are not tuned (any :class:`~nni_lease.core.LeaseConfig` setting except
        ``TUNED_SETTINGS`` and ``listener_optimizer``), e.g. ``{"hypergradient": "unrolled"}``.
    retrain : RetrainConfig
        How the searched architecture is retrained.

    Raises
    ------
    ValueError
        For a tuned, unknown or bad option.
    """

    search: SearchConfig = SearchConfig(epochs=2, limit_batches=10)
    lease: dict = dataclasses.field(default_factory=dict)
    retrain: RetrainConfig = RetrainConfig(epochs=3)

    def __post_init__(self) -> None:
        if not isinstance(self.search, SearchConfig) or not isinstance(self.retrain, RetrainConfig):
            raise ValueError("search must be a SearchConfig and retrain a RetrainConfig.")
        if not isinstance(self.lease, dict):
            raise TypeError(f"lease must be a dict of LeaSE settings; got {type(self.lease).__name__}.")
        tuned = sorted(set(self.lease) & {*TUNED_SETTINGS, "listener_optimizer"})
        if tuned:
            raise ValueError(
                f"LeaSE setting(s) {tuned} cannot be fixed in an HPO run: the tuner sets "
                f"{list(SEARCH_SPACE)} (and the listener's optimiser is Adam)."
            )
        LeaseConfig.from_settings(**self.lease)  # checks names and values

    def to_json(self) -> str:
        """One line of JSON (what the trial command carries)."""
        return json.dumps(
            {
                "search": dataclasses.asdict(self.search),
                "lease": self.lease,
                "retrain": dataclasses.asdict(self.retrain),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> TrialConfig:
        """Parse :meth:`to_json`'s output.

        Raises
        ------
        ValueError
            If ``text`` is not such a JSON object or a setting is bad.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or set(data) - {"search", "lease", "retrain"}:
            raise ValueError("--config must be a JSON object with the keys 'search', 'lease' and 'retrain'.")
        return cls(
            search=SearchConfig.from_dict(data.get("search", {})),
            lease=dict(data.get("lease", {})),
            retrain=RetrainConfig(**data.get("retrain", {})),
        )


def _check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULT_PARAMETERS))
    if unknown:
        raise ValueError(f"HPO parameters must be among {sorted(DEFAULT_PARAMETERS)}; got unknown {unknown}.")
    merged = {**DEFAULT_PARAMETERS, **params}
    if isinstance(merged["pgd_steps"], float) and merged["pgd_steps"].is_integer():
        merged["pgd_steps"] = int(merged["pgd_steps"])
    LeaseConfig(**merged)  # checks the values
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


def run_trial(params: dict[str, Any], *, output: str | Path, config: TrialConfig = TrialConfig()) -> dict[str, Any]:
    """One HPO trial: one-shot LeaSE search with ``params``, retrain, report to NNI.

    Parameters
    ----------
    params : dict
        ``gamma``, ``pgd_epsilon``, ``pgd_steps`` (missing ones take :data:`DEFAULT_PARAMETERS`).
    output : str or Path
        Folder for the search's and the retraining's files.
    config : TrialConfig
        The fixed settings.

    Returns
    -------
    dict
        The final result sent with ``nni.report_final_result``.

    Raises
    ------
    ValueError
        For bad ``params`` (before any work).
    """
    merged = _check_parameters(dict(params))
    lease = LeaseConfig.from_settings(**config.lease, **merged)
    out = Path(output)
    with _without_nni_reports():
        result = search_oneshot(out / "search", config=config.search, lease=lease)
    last: dict[str, float] = {}
    for row in result.rows:
        metrics = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "epoch"}
        metrics["epoch"] = int(row["epoch"]) + 1
        metrics["default"] = metrics.get("explainer/val_acc", float("nan"))
        nni.report_intermediate_result(metrics)
        last = metrics
    with _without_nni_reports():
        retrained = retrain_architecture(result.record, config=config.retrain, output=out / RETRAIN_FILE)
    final = {
        "default": float(retrained["val_accuracy"]),
        "test_accuracy": float(retrained["test_accuracy"]),
        "search_objective": float(last.get("lease/objective", float("nan"))),
        **{k: float(merged[k]) for k in ("gamma", "pgd_epsilon")},
        "pgd_steps": int(merged["pgd_steps"]),
    }
    nni.report_final_result(final)
    return final


def trial_command(config: TrialConfig, *, python: str | None = None) -> str:
    """The trial command line, every part quoted with :func:`shlex.quote` (NNI runs it with ``bash``)."""
    parts = [
        python or Path(sys.executable).as_posix(),
        "-m",
        "nni_lease.runtime._hpo",
        "trial",
        "--config",
        config.to_json(),
    ]
    return " ".join(shlex.quote(part) for part in parts)


def build_hpo_experiment(
    *,
    max_trials: int = 8,
    concurrency: int = 1,
    tuner: str = "TPE",
    config: TrialConfig = TrialConfig(),
    training_service: str | Path | dict | None = "local",
    experiment_dir: str | Path | None = None,
) -> Experiment:
    """The NNI HPO experiment over ``SEARCH_SPACE`` (maximising retrained validation accuracy).

    Parameters
    ----------
    max_trials, concurrency : int
        ``maxTrialNumber`` and ``trialConcurrency``.
    tuner : str
        A built-in NNI tuner that handles uniform / loguniform / choice (``"TPE"``, ``"Random"``,
        ``"Anneal"``, ``"Evolution"``).
    config : TrialConfig
        The fixed settings of every trial.
    training_service, experiment_dir
        As in ``build_config``.

    Raises
    ------
    ValueError
        For a bad argument or a config NNI rejects.
    """
    from nni.experiment import Experiment, ExperimentConfig
    from nni.experiment.config import AlgorithmConfig

    check_int(max_trials, "max_trials", low=1, high=MAX_TRIALS)
    check_int(concurrency, "concurrency", low=1, high=MAX_CONCURRENCY)
    if not isinstance(config, TrialConfig):
        raise TypeError(f"config must be a TrialConfig; got {type(config).__name__}.")
    ts = load_training_service(training_service)
    # Locally the trials use this interpreter; on other machines the `python3` found through NNI's
    # `pythonPath` for that machine (see examples/remote_training_service.yml).
    python = Path(sys.executable).as_posix() if ts["platform"] == "local" else "python3"
    exp = Experiment(ExperimentConfig(training_service=ts))
    exp.config.experiment_name = "lease-hpo"
    exp.config.trial_command = trial_command(config, python=python)
    exp.config.trial_code_directory = "."
    exp.config.search_space = SEARCH_SPACE
    exp.config.tuner = AlgorithmConfig(name=tuner, class_args={"optimize_mode": "maximize"})
    exp.config.max_trial_number = max_trials
    exp.config.trial_concurrency = concurrency
    if experiment_dir is not None:
        exp.config.experiment_working_directory = str(check_experiment_dir(experiment_dir))
    try:
        exp.config.canonical_copy()
    except (AssertionError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"NNI rejected the HPO experiment config: {str(exc)[:300]}") from exc
    check_trial_code_directory(exp.config)
    return exp


def check_resumable(exp: Experiment, experiment_id: str) -> None:
    """Point ``exp`` at the stopped experiment ``experiment_id``, or raise if NNI does not know it.

    Raises
    ------
    ValueError
        If ``experiment_id`` is not in NNI's list of experiments (``$HOME/nni-experiments/.experiment``).
    """
    exp.id = experiment_id
    if not exp.has_checkpoint():
        raise ValueError(
            f"no experiment {experiment_id!r} to resume in NNI's list "
            f"({Path('~/nni-experiments/.experiment').expanduser()}); check HOME and the id."
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nni_lease.runtime._hpo trial --config JSON [--output DIR] [--dry-run]``: one HPO trial."""
    parser = argparse.ArgumentParser(prog="python -m nni_lease.runtime._hpo", description="One LeaSE HPO trial (NNI).")
    sub = parser.add_subparsers(dest="command", required=True)
    trial = sub.add_parser("trial", help="run one trial with the parameters NNI sends")
    trial.add_argument("--config", default=None, help="the trial's fixed settings as JSON (TrialConfig.to_json)")
    trial.add_argument("--output", default=None, help="folder for the files (default: $NNI_OUTPUT_DIR)")
    trial.add_argument("--dry-run", action="store_true", help="check and print the settings as JSON, run nothing")
    args = parser.parse_args(argv)
    try:
        config = TrialConfig() if args.config is None else TrialConfig.from_json(args.config)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if args.dry_run:
        print(config.to_json())  # noqa: T201 - the trial command's --dry-run output
        return 0
    params = nni.get_next_parameter() or {}
    output = args.output or os.environ.get("NNI_OUTPUT_DIR") or tempfile.mkdtemp(prefix="lease-hpo-")
    run_trial(params, output=output, config=config)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
