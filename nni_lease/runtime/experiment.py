"""Launch LeaSE searches as NNI experiments (trials managed by the NNI manager, shown in its web UI).

:func:`run_multitrial` wraps :class:`nni.nas.experiment.NasExperiment` (and :func:`run_experiment` any
NNI experiment, e.g. the HPO one of :mod:`nni_lease.runtime.hpo`) with the checks NNI 3.0 leaves out: the ports
are checked (IPv4 and IPv6, a clear error) before anything starts; the NNI manager listens on
``127.0.0.1`` unless the caller chooses another ``host`` (with a warning: anyone who reaches the port
can run code as the user), and dies with the launching process even on SIGKILL (see
:mod:`nni_lease.runtime.manager`); experiments an earlier run left behind are reported; the experiment's records
go to a folder the caller chooses, and the experiment is stopped on every way out — normal end,
exception, Ctrl-C (SIGINT) or SIGTERM in the command line — so no NNI manager is left running.

Where things live
-----------------
* ``experiment_dir`` (NNI's ``experiment_working_directory``, default ``~/nni-experiments``): one folder
  per experiment id with the trial database, logs, trial outputs, NNI's checkpoint and
  ``lease_multitrial.json`` (the strategy's final state, written at stop).
* NNI's list of experiments (used by ``resume`` and ``nnictl``) is always
  ``$HOME/nni-experiments/.experiment``: NNI 3.0 derives it from ``HOME`` in both the Python and the
  Node.js side, so set ``HOME`` to move it too (the tests do).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nni.experiment import Experiment
from nni.experiment.config import utils as config_utils
from nni.nas.evaluator import Evaluator
from nni.nas.execution import ExecutionEngine, TrainingServiceExecutionEngine
from nni.nas.experiment import NasExperiment, NasExperimentConfig
from nni.nas.experiment.config import ExecutionEngineConfig, TrainingServiceEngineConfig
from nni.nas.nn.pytorch import ModelSpace
from nni.runtime.tuner_command_channel import TunerCommandChannel
from nni.runtime.tuner_command_channel.command_type import CommandType

from nni_lease.multitrial.strategy import LeaseMultiTrial
from nni_lease.runtime.manager import (
    DEFAULT_HOST,
    EXPOSED_WARNING,
    BindingGuard,
    PortInUseError,
    check_host,
    check_port_free,
    is_loopback,
    kill_listeners,
    manager_environment,
    manager_url,
    report_stale_experiments,
    wait_port_closed,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HOST",
    "PortInUseError",
    "MultiTrialResult",
    "check_port_free",
    "load_training_service",
    "build_config",
    "check_experiment_ports",
    "run_experiment",
    "run_multitrial",
    "sigterm_as_interrupt",
]

#: Training-service platforms whose NNI manager also needs ``port + 1`` (a websocket for the workers).
_WEBSOCKET_PLATFORMS = ("hybrid", "remote", "openpai", "kubeflow", "frameworkcontroller", "adl")

SUMMARY_FILE = "lease_multitrial.json"


@dataclass
class MultiTrialResult:
    """What :func:`run_multitrial` returns.

    Attributes
    ----------
    experiment_id : str
        NNI experiment id (pass it back as ``experiment_id`` with ``resume=True`` to continue).
    url : str
        Local address of the web UI while the experiment ran.
    record_dir : Path
        This experiment's folder under ``experiment_dir``.
    interrupted : bool
        Whether the search was stopped by Ctrl-C / SIGTERM before the strategy finished.
    strategy_state : dict
        The strategy's :meth:`~nni_lease.multitrial.strategy.LeaseMultiTrial.state_dict` at stop (plain Python).
    best_sample : dict
        The most probable architecture under the final policy.
    """

    experiment_id: str
    url: str
    record_dir: Path
    interrupted: bool
    strategy_state: dict = field(default_factory=dict)
    best_sample: dict = field(default_factory=dict)


def _check_port_number(port: Any, name: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{name} must be an int in [1, 65535]; got {port!r}.")
    return port


def load_training_service(spec: str | Path | dict | None) -> dict:
    """Read a training-service configuration: ``"local"`` (default) or a YAML / JSON file or mapping.

    The file is either NNI's own experiment config (its ``trainingService`` mapping is used; other keys
    are ignored because the NAS experiment sets them) or just that mapping, e.g.::

        platform: remote
        machineList:
          - host: 10.0.0.2
            user: lease
            sshKeyFile: ~/.ssh/id_ed25519

    Returns
    -------
    dict
        The mapping, with at least ``platform``.

    Raises
    ------
    ValueError
        If the file is missing or unreadable, is not a mapping, or names no known ``platform``.
    """
    if spec is None or spec == "local":
        return {"platform": "local"}
    if isinstance(spec, dict):
        mapping, source = spec, "training_service"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ValueError(f"training_service must be 'local' or an existing YAML/JSON file; got {str(spec)!r}.")
        try:
            mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"training_service file {str(path)!r} is not valid YAML/JSON: {exc}") from exc
        source = str(path)
    if isinstance(mapping, dict):
        for key in ("trainingService", "training_service"):
            if key in mapping:
                mapping = mapping[key]
                break
    if not isinstance(mapping, dict) or "platform" not in mapping:
        raise ValueError(f"training service config {source!r} must be a mapping with a 'platform' key "
                         f"(or an NNI config with 'trainingService'); got {type(mapping).__name__}.")
    try:
        config_utils.training_service_config_factory(mapping["platform"])
    except ValueError as exc:
        raise ValueError(f"training service config {source!r}: unknown platform {mapping['platform']!r}.") from exc
    return dict(mapping)


def build_config(
    *,
    max_trials: int,
    concurrency: int,
    training_service: str | Path | dict | None = "local",
    experiment_dir: str | Path | None = None,
    experiment_name: str = "lease-multitrial",
    max_duration: str | None = None,
) -> NasExperimentConfig:
    """The NAS experiment config (training-service engine, simplified model format), validated now.

    Parameters
    ----------
    max_trials : int
        Number of trials in the experiment (``maxTrialNumber``); counts earlier trials on resume.
    concurrency : int
        Trials run at the same time (``trialConcurrency``).
    training_service : str, Path, dict or None
        ``"local"`` or a file / mapping read by :func:`load_training_service`.
    experiment_dir : str, Path or None
        Where experiment records go (NNI's ``experiment_working_directory``); ``None``: ``~/nni-experiments``.
    experiment_name : str
        Name shown in the web UI.
    max_duration : str or None
        NNI duration such as ``"30m"`` or ``"2h"``; ``None``: unlimited.

    Raises
    ------
    ValueError
        For a bad argument or a config NNI rejects (with NNI's reason), before anything starts.
    """
    for name, value in [("max_trials", max_trials), ("concurrency", concurrency)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    ts = load_training_service(training_service)
    config = NasExperimentConfig("ts", "simplified", training_service=ts)
    config.max_trial_number = max_trials
    config.trial_concurrency = concurrency
    config.experiment_name = experiment_name
    if max_duration is not None:
        config.max_experiment_duration = max_duration
    if experiment_dir is not None:
        config.experiment_working_directory = str(Path(experiment_dir).expanduser().resolve())
    try:
        config.canonical_copy()  # runs NNI's validation (it uses assert for some checks)
    except (AssertionError, ValueError, TypeError) as exc:
        raise ValueError(f"NNI rejected the experiment config: {exc}") from exc
    return config


class _ResumableChannel(TunerCommandChannel):
    """NNI's NAS tuner channel, minus a crash on resume.

    On resume the NNI manager sends the earlier trials' data (``ImportData``, ``AddCustomizedTrialJob``)
    to the tuner. NNI 3.0's NAS channel only parses the commands NAS uses and raises
    ``ValueError('Unknown command type: CommandType.ImportData')`` in its listener thread, which dies:
    the resumed experiment then never gets trial requests, metrics or trial ends. NAS strategies restore
    their own state from the checkpoint, so these two commands are skipped here.
    """

    _SKIPPED = (CommandType.ImportData, CommandType.AddCustomizedTrialJob)

    def _receive(self):  # same contract as TunerCommandChannel._receive
        while True:
            command_type, data = super()._receive()
            if command_type not in self._SKIPPED:
                return command_type, data
            logger.debug("Skipping %s from the NNI manager (earlier trials; the strategy has its own state).",
                         command_type)


class _ResumableEngine(TrainingServiceExecutionEngine):
    """The training-service engine with :class:`_ResumableChannel` (set before it connects or listens)."""

    @property
    def _channel(self) -> TunerCommandChannel:
        return self.__dict__["_lease_channel"]

    @_channel.setter
    def _channel(self, channel: TunerCommandChannel) -> None:
        if type(channel) is TunerCommandChannel:
            channel.__class__ = _ResumableChannel
        self.__dict__["_lease_channel"] = channel


class _LeaseNasExperiment(NasExperiment):
    """:class:`NasExperiment` whose resume works in NNI 3.0 and can raise the trial budget."""

    def execution_engine_factory(self, config: ExecutionEngineConfig) -> ExecutionEngine:
        if not isinstance(config, TrainingServiceEngineConfig):
            return super().execution_engine_factory(config)
        if self._action == "resume":
            self._apply_budget_on_resume()
        return _ResumableEngine(self)

    def _apply_budget_on_resume(self) -> None:
        # A resumed NNI manager keeps the stored maxTrialNumber / trialConcurrency and reports DONE when
        # the old budget is used up; send the new ones and wait until it runs again, before the strategy
        # asks for budget (it ends at once on DONE).
        params = self.get_experiment_profile()["params"]
        if params.get("trialConcurrency") != self.config.trial_concurrency:
            self.update_trial_concurrency(self.config.trial_concurrency)
        if params.get("maxTrialNumber") != self.config.max_trial_number:
            self.update_max_trial_number(self.config.max_trial_number)
            n_done = len(self.list_trial_jobs())
            if n_done < self.config.max_trial_number:
                deadline = time.monotonic() + 60.0
                while self.get_status() == "DONE" and time.monotonic() < deadline:
                    time.sleep(0.5)
            else:
                logger.warning("max_trials=%d but the experiment already has %d trials: nothing left to run.",
                               self.config.max_trial_number, n_done)


def check_experiment_ports(config: Any, port: int, host: str = DEFAULT_HOST) -> None:
    """Check the ports an experiment with this config needs, and that its training service can reach the manager.

    The ports are ``port`` and, for remote-like training services, ``port + 1``; the manager listens on ``host``.

    Raises
    ------
    ValueError
        If ``port`` is not an int in ``[1, 65535]`` (or is 65535 where ``port + 1`` is needed), ``host`` is
        not allowed, or the training service's workers connect back to an address a manager on loopback
        does not serve.
    PortInUseError
        If one of the ports is taken (on any address, IPv4 or IPv6).
    """
    _check_port_number(port)
    check_host(host)
    training_service = config.training_service
    platform = getattr(training_service, "platform", "local")
    if platform != "local" and is_loopback(host):
        manager_ip = getattr(training_service, "nni_manager_ip", None) or getattr(config, "nni_manager_ip", None)
        if not isinstance(manager_ip, str) or not is_loopback(manager_ip):
            raise ValueError(
                f"the {platform!r} training service's workers connect back to the NNI manager "
                f"(nniManagerIp {manager_ip!r}, port {port}), but host {host!r} keeps the manager on this "
                "machine's loopback only. Pass --host 0.0.0.0 (host='0.0.0.0') and firewall the port to the "
                "worker machines (README, Security notes), or reach the workers through SSH tunnels and set "
                "nniManagerIp: 127.0.0.1."
            )
    check_port_free(port)
    if platform in _WEBSOCKET_PLATFORMS:
        if port == 65535:
            raise ValueError(f"port must be below 65535 for the {platform!r} training service (it also uses port + 1).")
        check_port_free(port + 1)


def _experiment_ports(config: Any, port: int) -> list[int]:
    platform = getattr(config.training_service, "platform", "local")
    return [port, port + 1] if platform in _WEBSOCKET_PLATFORMS else [port]


def run_experiment(
    exp: Experiment,
    *,
    port: int,
    host: str = DEFAULT_HOST,
    resume: bool = False,
    keep_open: bool = False,
    on_started: Callable[[str, str], None] | None = None,
    check_port: bool = True,
) -> bool:
    """Run an NNI experiment (HPO or NAS) to completion and always stop it; returns whether interrupted.

    Reports experiments earlier runs left behind and checks ``host`` and the ports (unless
    ``check_port`` is false because the caller just did both), warns if ``host`` is not loopback, calls
    ``on_started(url, experiment_id)``, then runs (or resumes) the experiment until it is done under
    :func:`nni_lease.runtime.manager.manager_environment` (the manager listens on ``host`` only and dies with
    this process) and a :class:`nni_lease.runtime.manager.BindingGuard` (if the ports listen anywhere else, the
    manager is killed and RuntimeError raised); with ``keep_open`` it then keeps the web UI until
    Ctrl-C / SIGTERM (use :func:`sigterm_as_interrupt`). Whatever happens (Ctrl-C, an exception), the
    experiment is stopped and the NNI manager's port is closed before this returns or raises.

    Parameters
    ----------
    host : str
        Where the manager listens: ``"127.0.0.1"`` (default, this machine only), ``"0.0.0.0"`` or ``"::"``
        (every interface: anyone who reaches the port can run code as this user).

    Raises
    ------
    PortInUseError, ValueError
        From the host and port checks, before anything starts.
    RuntimeError
        If the manager listened beyond ``host`` (it is killed at once).
    """
    if check_port:
        report_stale_experiments()
        check_experiment_ports(exp.config, port, host)
    else:
        check_host(host)
    url = manager_url(host, port)
    if is_loopback(host):
        logger.info("The NNI manager listens on %s port %d only (this machine).", host, port)
    else:
        logger.warning(EXPOSED_WARNING.format(host=host, port=port))
    if on_started is not None:
        on_started(url, exp.id)
    ports = _experiment_ports(exp.config, port)
    exposure: list[str] = []

    def stop_exposed(message: str) -> None:  # from the guard's thread
        exposure.append(message)
        logger.error("%s: killing the NNI manager now.", message)
        kill_listeners(ports)

    guard = BindingGuard(ports, host, stop_exposed)
    interrupted = False
    try:
        with manager_environment(host):
            guard.start()
            if resume:
                exp.resume(port=port, wait_completion=True)
            else:
                exp.run(port=port, wait_completion=True)
        # NNI catches Ctrl-C itself, stops the experiment and returns; a stopped experiment has no port.
        interrupted = exp.port is None
        if keep_open and not interrupted and not exposure:
            logger.warning("Search finished; the web UI stays at %s until Ctrl-C.", url)
            try:
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                logger.info("Ctrl-C: stopping the experiment.")
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("Interrupted: stopping the experiment.")
    except Exception as exc:
        if exposure:
            raise RuntimeError(f"{exposure[0]}; the NNI manager was killed.") from exc
        raise
    finally:
        guard.stop()
        if exp.port is not None:
            exp.stop()
        if not wait_port_closed(port):
            logger.error("port %d still answers after the experiment stopped.", port)
    if exposure:
        raise RuntimeError(f"{exposure[0]}; the NNI manager was killed.")
    return interrupted


def run_multitrial(
    model_space: ModelSpace,
    evaluator: Evaluator,
    strategy: LeaseMultiTrial,
    *,
    port: int = 8080,
    host: str = DEFAULT_HOST,
    max_trials: int = 10,
    concurrency: int = 1,
    training_service: str | Path | dict | None = "local",
    experiment_dir: str | Path | None = None,
    experiment_id: str | None = None,
    resume: bool = False,
    keep_open: bool = False,
    on_started: Callable[[str, str], None] | None = None,
) -> MultiTrialResult:
    """Run (or resume) a multi-trial LeaSE experiment under the NNI manager, then stop it.

    Blocks until the strategy has used up ``max_trials`` and the last trial ended (then, with
    ``keep_open``, until Ctrl-C / SIGTERM), and always stops the experiment before returning or raising.

    Parameters
    ----------
    model_space : nni.nas.nn.pytorch.ModelSpace
        The explainer's search space (e.g. :class:`nni_lease.spaces.LeaseCellSpace`).
    evaluator : nni.nas.evaluator.Evaluator
        Usually :func:`nni_lease.multitrial.trial.lease_evaluator`.
    strategy : LeaseMultiTrial
        A fresh strategy (its state is restored from NNI's checkpoint when ``resume`` is true).
    port : int
        Port of the NNI manager (web UI + REST API); checked free before anything starts.
    host : str
        Where the manager listens (see :func:`run_experiment`): ``"127.0.0.1"`` by default; ``"0.0.0.0"``
        or ``"::"`` expose it to the network (anyone who reaches the port can run code as this user).
    max_trials, concurrency, training_service, experiment_dir
        See :func:`build_config`.
    experiment_id : str or None
        Id of the new experiment (NNI makes one when ``None``), or of the one to resume.
    resume : bool
        Continue the stopped experiment ``experiment_id`` (trial count and strategy state continue).
    keep_open : bool
        After the search, keep the web UI up until Ctrl-C / SIGTERM.
    on_started : callable or None
        Called as ``on_started(url, experiment_id)`` right before the NNI manager starts.

    Returns
    -------
    MultiTrialResult

    Raises
    ------
    ValueError
        Bad arguments or config (nothing started).
    PortInUseError
        ``port`` (or ``port + 1`` for remote-like training services) is taken (nothing started).
    """
    if not isinstance(strategy, LeaseMultiTrial):
        raise ValueError(f"strategy must be a LeaseMultiTrial; got {type(strategy).__name__}.")
    if not isinstance(model_space, ModelSpace):
        raise ValueError(f"model_space must be an nni.nas.nn.pytorch.ModelSpace; got {type(model_space).__name__}.")
    if not isinstance(evaluator, Evaluator):
        raise ValueError(f"evaluator must be an nni.nas.evaluator.Evaluator; got {type(evaluator).__name__}.")
    if resume and not experiment_id:
        raise ValueError("experiment_id must name the experiment to resume when resume=True.")
    _check_port_number(port)
    config = build_config(max_trials=max_trials, concurrency=concurrency, training_service=training_service,
                          experiment_dir=experiment_dir)
    report_stale_experiments()
    check_experiment_ports(config, port, host)

    exp = _LeaseNasExperiment(model_space, evaluator, strategy, config=config, id=experiment_id)
    if resume and not exp.has_checkpoint():
        raise ValueError(f"no experiment {experiment_id!r} to resume in NNI's list "
                         f"({Path('~/nni-experiments/.experiment').expanduser()}); check HOME and the id.")
    record_dir = Path(config.canonical_copy().experiment_working_directory) / exp.id
    url, state, best = manager_url(host, port), {}, {}
    interrupted = True
    try:
        interrupted = run_experiment(exp, port=port, host=host, resume=resume, keep_open=keep_open,
                                     on_started=on_started, check_port=False)
    finally:
        state = strategy.state_dict() if strategy.logits else {}
        best = strategy.best_sample() if strategy.logits else {}
        if record_dir.is_dir():
            summary = {"experiment_id": exp.id, "url": url, "interrupted": interrupted,
                       "best_sample": best, "strategy_state": state}
            (record_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return MultiTrialResult(experiment_id=exp.id, url=url, record_dir=record_dir, interrupted=interrupted,
                            strategy_state=state, best_sample=best)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`KeyboardInterrupt` like Ctrl-C, so cleanup runs.

    Only installs the handler in the main thread (elsewhere it does nothing); restores the old one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
