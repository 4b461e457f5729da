"""An NNI experiment's configuration, checked before anything starts: training service, NAS config, ports.

Used by :mod:`nni_lease.runtime` (and re-exported there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from nni.experiment.config import utils as config_utils
from nni.nas.experiment import NasExperimentConfig

from art_fisher.utils import check_int, check_output_dir
from nni_lease._limits import MAX_CONCURRENCY, MAX_TRIALS
from nni_lease.runtime._manager import DEFAULT_HOST, check_host, check_port_free, is_loopback

#: Training-service platforms whose NNI manager also needs ``port + 1`` (a websocket for the workers).
_WEBSOCKET_PLATFORMS = ("hybrid", "remote", "openpai", "kubeflow", "frameworkcontroller", "adl")


def check_port_number(port: Any, name: str = "port") -> int:
    """``port`` if it is an int in ``[1, 65535]``; TypeError or ValueError naming ``name`` otherwise."""
    return check_int(port, name, low=1, high=65535)


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
        raise ValueError(
            f"training service config {source!r} must be a mapping with a 'platform' key "
            f"(or an NNI config with 'trainingService'); got {type(mapping).__name__}."
        )
    try:
        config_class = type(config_utils.training_service_config_factory(mapping["platform"]))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"training service config {source!r}: unknown platform {str(mapping['platform'])[:100]!r}."
        ) from exc
    try:
        config_class(**mapping)  # NNI's own field check (unknown keys, nested machine lists)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"training service config {source!r}: {str(exc)[:300]}.") from exc
    return dict(mapping)


def check_experiment_dir(experiment_dir: str | Path) -> Path:
    """The resolved ``experiment_dir``, checked (without creating anything) to be or become a writable folder.

    Raises
    ------
    ValueError
        If it or one of its parents is a file, or the deepest existing folder is not writable.
    """
    return check_output_dir(Path(experiment_dir).expanduser().resolve(), name="experiment_dir")


def check_trial_code_directory(config: Any) -> None:
    """Refuse an empty trial code folder for a training service that copies it to other machines.

    NNI packs ``trialCodeDirectory`` (default: the current folder) with ``tar`` for every platform but
    ``local``; an empty folder fails inside NNI (``tar: no files or directories specified``) after the
    manager started.

    Raises
    ------
    ValueError
        If the platform is not ``local`` and the folder is missing or empty.
    """
    platform = getattr(config.training_service, "platform", "local")
    if platform == "local":
        return
    folder = Path(str(getattr(config, "trial_code_directory", None) or ".")).expanduser().resolve()
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ValueError(
            f"the {platform!r} training service copies the trial code folder {folder} to its workers, "
            "but it is empty or missing; start from the folder that holds your project (the trials "
            "import it) or set trialCodeDirectory."
        )


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
    check_int(max_trials, "max_trials", low=1, high=MAX_TRIALS)
    check_int(concurrency, "concurrency", low=1, high=MAX_CONCURRENCY)
    ts = load_training_service(training_service)
    config = NasExperimentConfig("ts", "simplified", training_service=ts)
    config.max_trial_number = max_trials
    config.trial_concurrency = concurrency
    config.experiment_name = experiment_name
    if max_duration is not None:
        config.max_experiment_duration = max_duration
    if experiment_dir is not None:
        config.experiment_working_directory = str(check_experiment_dir(experiment_dir))
    try:
        config.canonical_copy()  # runs NNI's validation (it uses assert for some checks)
    except (AssertionError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"NNI rejected the experiment config: {str(exc)[:300]}") from exc
    check_trial_code_directory(config)
    return config


def check_experiment_ports(config: Any, port: int, host: str = DEFAULT_HOST) -> None:
    """Check the ports an experiment with this config needs and that its workers can reach the manager.

    The ports are ``port``, and ``port + 1`` for remote-like training services; the training service
    must be able to reach a manager listening on ``host``.

    Raises
    ------
    ValueError
        If ``port`` is not an int in ``[1, 65535]`` (or is 65535 where ``port + 1`` is needed), ``host`` is
        not allowed, or the training service's workers connect back to an address a manager on loopback
        does not serve.
    PortInUseError
        If one of the ports is taken (on any address, IPv4 or IPv6).
    """
    check_port_number(port)
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


def experiment_ports(config: Any, port: int) -> list[int]:
    """The ports the NNI manager of an experiment with this config listens on."""
    platform = getattr(config.training_service, "platform", "local")
    return [port, port + 1] if platform in _WEBSOCKET_PLATFORMS else [port]
