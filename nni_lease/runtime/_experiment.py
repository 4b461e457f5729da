"""Launch LeaSE searches as NNI experiments (trials managed by the NNI manager, shown in its web UI).

:func:`run_multitrial` wraps :class:`nni.nas.experiment.NasExperiment` (and :func:`run_experiment` any
NNI experiment, e.g. the HPO one of :mod:`nni_lease.runtime`) with the checks NNI 3.0 leaves out: the ports
are checked (IPv4 and IPv6, a clear error) before anything starts; the NNI manager listens on
``127.0.0.1`` unless the caller chooses another ``host`` (with a warning: anyone who reaches the port
can run code as the user), and dies with the launching process even on SIGKILL (see
:mod:`nni_lease.runtime`); experiments an earlier run left behind are reported; the experiment's records
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
import ipaddress
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from nni.experiment import Experiment
from nni.nas.evaluator import Evaluator
from nni.nas.execution import ExecutionEngine, TrainingServiceExecutionEngine
from nni.nas.experiment import NasExperiment
from nni.nas.experiment.config import ExecutionEngineConfig, TrainingServiceEngineConfig
from nni.nas.nn.pytorch import ModelSpace
from nni.runtime.tuner_command_channel import TunerCommandChannel
from nni.runtime.tuner_command_channel.command_type import CommandType

from art_fisher.utils import atomic_write
from nni_lease.multitrial._strategy import LeaseMultiTrial
from nni_lease.runtime._config import (
    build_config,
    check_experiment_ports,
    check_port_number,
    experiment_ports,
)
from nni_lease.runtime._manager import (
    DEFAULT_HOST,
    EXPOSED_WARNING,
    BindingGuard,
    check_host,
    is_loopback,
    kill_listeners,
    manager_environment,
    manager_url,
    report_stale_experiments,
    wait_port_closed,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "lease_multitrial.json"


class ManagerGoneError(RuntimeError):
    """The NNI manager stopped answering while the experiment ran (it died or was killed)."""


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
        The strategy's :meth:`~nni_lease.multitrial.LeaseMultiTrial.state_dict` at stop (plain Python).
    best_sample : dict
        The most probable architecture under the final policy.
    """

    experiment_id: str
    url: str
    record_dir: Path
    interrupted: bool
    strategy_state: dict = field(default_factory=dict)
    best_sample: dict = field(default_factory=dict)


class _ResumableChannel(TunerCommandChannel):
    """NNI's NAS tuner channel, minus a crash on resume and a traceback when the manager is gone.

    On resume the NNI manager sends the earlier trials' data (``ImportData``, ``AddCustomizedTrialJob``)
    to the tuner. NNI 3.0's NAS channel only parses the commands NAS uses and raises
    ``ValueError('Unknown command type: CommandType.ImportData')`` in its listener thread, which dies:
    the resumed experiment then never gets trial requests, metrics or trial ends. NAS strategies restore
    their own state from the checkpoint, so these two commands are skipped here.

    When the connection to the manager is lost (it died or was killed), the channel's listener thread
    ends as on a Terminate command instead of dying with a traceback; the launcher reports the lost
    manager once (:class:`ManagerGoneError`).
    """

    _SKIPPED = (CommandType.ImportData, CommandType.AddCustomizedTrialJob)

    def _receive(self):
        from websockets.exceptions import WebSocketException

        while True:
            try:
                command_type, data = super()._receive()
            except (OSError, WebSocketException) as exc:
                logger.debug(
                    "Lost the connection to the NNI manager (%s: %s); the channel stops.", type(exc).__name__, exc
                )
                return CommandType.Terminate, ""
            if command_type not in self._SKIPPED:
                return command_type, data
            logger.debug(
                "Skipping %s from the NNI manager (earlier trials; the strategy has its own state).", command_type
            )


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
                logger.warning(
                    "max_trials=%d but the experiment already has %d trials: nothing left to run.",
                    self.config.max_trial_number,
                    n_done,
                )


def _manager_names(config: Any) -> list[str]:
    """``nniManagerIp`` when it is a host name: remote workers send it as ``Host`` (IP addresses always pass)."""
    training_service = getattr(config, "training_service", None)
    manager_ip = getattr(training_service, "nni_manager_ip", None) or getattr(config, "nni_manager_ip", None)
    if not isinstance(manager_ip, str) or not manager_ip.strip():
        return []
    try:
        ipaddress.ip_address(manager_ip.strip().strip("[]"))
        return []
    except ValueError:
        return [manager_ip.strip()]


def _manager_gone_message(exp: Experiment, port: int) -> str:
    try:
        folder = Path(exp.config.canonical_copy().experiment_working_directory) / exp.id
    except Exception:  # noqa: BLE001 - only for the message
        folder = Path("~/nni-experiments").expanduser() / exp.id
    return (
        f"experiment {exp.id}: the NNI manager on port {port} stopped answering (it died or was killed); "
        f"see its log {folder / 'log' / 'nnimanager.log'}."
    )


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
    ``nni_lease.runtime._manager.manager_environment`` (the manager listens on ``host`` only and dies with
    this process) and a ``nni_lease.runtime._manager.BindingGuard`` (if the ports listen anywhere else, the
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
    ports = experiment_ports(exp.config, port)
    exposure: list[str] = []

    def stop_exposed(message: str) -> None:  # from the guard's thread
        exposure.append(message)
        logger.error("%s: killing the NNI manager now.", message)
        kill_listeners(ports)

    guard = BindingGuard(ports, host, stop_exposed)
    interrupted = False
    try:
        with manager_environment(host, allowed_names=_manager_names(exp.config)):
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
            raise RuntimeError(f"{exposure[0]}; the NNI manager was killed.") from None
        if isinstance(exc, requests.ConnectionError):
            raise ManagerGoneError(_manager_gone_message(exp, port)) from None
        raise
    finally:
        guard.stop()
        if exp.port is not None:
            with contextlib.suppress(requests.ConnectionError):  # a manager that died cannot be asked to stop
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
        The explainer's search space (e.g. :class:`nni_lease.LeaseCellSpace`).
    evaluator : nni.nas.evaluator.Evaluator
        Usually :func:`nni_lease.multitrial.lease_evaluator`.
    strategy : LeaseMultiTrial
        A fresh strategy (its state is restored from NNI's checkpoint when ``resume`` is true).
    port : int
        Port of the NNI manager (web UI + REST API); checked free before anything starts.
    host : str
        Where the manager listens (see :func:`run_experiment`): ``"127.0.0.1"`` by default; ``"0.0.0.0"``
        or ``"::"`` expose it to the network (anyone who reaches the port can run code as this user).
    max_trials, concurrency, training_service, experiment_dir
        See ``build_config``.
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
    check_port_number(port)
    config = build_config(
        max_trials=max_trials, concurrency=concurrency, training_service=training_service, experiment_dir=experiment_dir
    )
    report_stale_experiments()
    check_experiment_ports(config, port, host)

    exp = _LeaseNasExperiment(model_space, evaluator, strategy, config=config, id=experiment_id)
    if resume and not exp.has_checkpoint():
        raise ValueError(
            f"no experiment {experiment_id!r} to resume in NNI's list "
            f"({Path('~/nni-experiments/.experiment').expanduser()}); check HOME and the id."
        )
    record_dir = Path(config.canonical_copy().experiment_working_directory) / exp.id
    url, state, best = manager_url(host, port), {}, {}
    interrupted = True
    try:
        interrupted = run_experiment(
            exp, port=port, host=host, resume=resume, keep_open=keep_open, on_started=on_started, check_port=False
        )
    finally:
        state = strategy.state_dict() if strategy.logits else {}
        best = strategy.best_sample() if strategy.logits else {}
        if record_dir.is_dir():
            summary = {
                "experiment_id": exp.id,
                "url": url,
                "interrupted": interrupted,
                "best_sample": best,
                "strategy_state": state,
            }
            with atomic_write(record_dir / SUMMARY_FILE, text=True) as fh:
                fh.write(json.dumps(summary, indent=2, default=str))
    return MultiTrialResult(
        experiment_id=exp.id,
        url=url,
        record_dir=record_dir,
        interrupted=interrupted,
        strategy_state=state,
        best_sample=best,
    )


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
