"""Guard for the NNI manager process: which address it listens on, and that it dies with its launcher.

NNI 3.0 starts its manager (``node main.js``, the web UI and the REST API) with ``listen(port)``: on
every network interface, without authentication, and its REST API accepts trial parameters that
``nni.load`` decodes, so anyone who reaches the port can run code as the user. It also starts the
manager in its own process group, so a ``kill -9`` of the launching Python process leaves the manager
and its trials running. NNI has no option for either. This module fixes both from outside NNI:

* :func:`manager_environment` sets ``NODE_OPTIONS=--require <manager_preload.js>`` (shipped in this
  package) for the manager NNI starts within the block. The preload makes every port-only (or
  wildcard) ``listen`` bind to the chosen host, ``127.0.0.1`` by default, and runs a watchdog that
  stops the manager and kills its trials (their process group) once the launcher is gone, even after
  SIGKILL. It also refuses (403, before NNI sees them) HTTP requests and websocket upgrades whose
  ``Host`` is not ``localhost`` or an IP address with the manager's port (DNS rebinding: a web page
  under a name re-resolved to this machine), whose ``Origin`` is another origin, and state-changing
  requests whose ``Referer`` is another origin. NNI's own clients send neither header and pass.
* :class:`BindingGuard` checks, with :mod:`psutil`, what actually listens on the experiment's ports once
  the manager is up, and calls back (the caller stops the experiment) if anything listens beyond the
  chosen host, e.g. when the preload could not be loaded.
* :func:`check_port_free` checks a port before anything starts, on IPv4 and IPv6 alike.
* :func:`find_stale_experiments` lists experiments in NNI's list (``$HOME/nni-experiments/.experiment``)
  whose manager is gone without a stop (marked RUNNING, pid dead) or still running with no launcher.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from art_fisher.utils import check_int

logger = logging.getLogger(__name__)

#: Address the NNI manager listens on unless the caller asks for another.
DEFAULT_HOST = "127.0.0.1"
#: The addresses accepted as ``host``: loopback, or every interface (an explicit choice, with a warning).
#: NNI's own clients (the Python launcher, the tuner channel, local trials) reach the manager at
#: ``localhost``, so a manager bound to one non-loopback address would lose them.
ALLOWED_HOSTS = (DEFAULT_HOST, "0.0.0.0", "::")

#: The preload the manager's node process runs (package data of nni_lease).
PRELOAD = Path(__file__).resolve().with_name("manager_preload.js")

#: Logged (WARNING) when the manager is exposed beyond loopback; ``{host}`` and ``{port}`` are filled in.
EXPOSED_WARNING = (
    "The NNI manager (web UI and REST API) will listen on {host} port {port}, i.e. on EVERY network "
    "interface, without authentication: anyone who can reach this port can run code as this user (NNI's "
    "REST API accepts trial parameters that it decodes into Python calls). Only do this on a trusted "
    "network or with the port firewalled to the machines that need it (e.g. remote workers); to watch the "
    "web UI from another machine, keep the default --host 127.0.0.1 and use an SSH tunnel: "
    "`ssh -N -L {port}:127.0.0.1:{port} <this host>`."
)

_ENV_HOST = "NNI_LEASE_MANAGER_HOST"
_ENV_PARENT = "NNI_LEASE_MANAGER_PARENT"
_ENV_GRACE = "NNI_LEASE_MANAGER_GRACE_MS"
_ENV_NAMES = "NNI_LEASE_MANAGER_ALLOWED_NAMES"
_EXPERIMENT_LIST = Path("nni-experiments") / ".experiment"


class PortInUseError(RuntimeError):
    """The port asked for the NNI manager is already taken (raised before anything starts)."""


def check_host(host: str) -> str:
    """Return ``host`` if the NNI manager may listen on it, else raise ValueError.

    Raises
    ------
    ValueError
        If ``host`` is not one of :data:`ALLOWED_HOSTS` (``127.0.0.1``, ``0.0.0.0``, ``::``).
    """
    if host not in ALLOWED_HOSTS:
        raise ValueError(
            f"host must be one of {list(ALLOWED_HOSTS)} (127.0.0.1: this machine only; 0.0.0.0 / ::: every "
            f"interface, IPv4 / IPv4+IPv6); got {host!r}. NNI's own clients reach the manager at localhost, "
            "so it cannot listen on one other address only."
        )
    return host


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def manager_url(host: str, port: int) -> str:
    """The web UI's address as seen from this machine (``http://127.0.0.1:PORT`` for every allowed host)."""
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------- ports
def _probe_answers(family: int, address: str, port: int) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            return probe.connect_ex((address, port)) == 0
    except OSError:  # no IPv6 on this machine
        return False


def _probe_bind(family: int, address: str, port: int) -> OSError | None:
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if family == socket.AF_INET6 and exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return None  # no IPv6 at all: nothing can listen there
        return exc
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                return None  # IPv6 present but no address configured
            return exc
    return None


def check_port_free(port: int) -> None:
    """Raise :class:`PortInUseError` if anything listens on ``port``, on any address, IPv4 or IPv6.

    Probes, in order: a connection to ``127.0.0.1`` and to ``[::1]`` (something answering), then a bind
    of the IPv4 and of the IPv6 wildcard address with ``SO_REUSEADDR`` (which fails while any socket
    listens on the port on an address of that family, e.g. ``[::1]``, ``127.0.0.1``, ``0.0.0.0`` or
    ``[::]``; connections in TIME_WAIT do not count).

    Raises
    ------
    TypeError
        If ``port`` is not an int.
    ValueError
        If ``port`` is not in ``[1, 65535]``.
    PortInUseError
        If the port is taken; the message says where.
    """
    check_int(port, "port", low=1, high=65535)
    why = None
    for family, address, shown in ((socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")):
        if _probe_answers(family, address, port):
            why = f"something answers on {shown}:{port}"
            break
    bind_error = None
    if why is None:
        for family, address, shown in ((socket.AF_INET, "0.0.0.0", "IPv4"), (socket.AF_INET6, "::", "IPv6")):
            bind_error = _probe_bind(family, address, port)
            if bind_error is not None:
                why = f"it cannot be bound on {shown} ({bind_error.strerror or bind_error})"
                break
    if why is not None:
        hint = " (ports below 1024 need root)" if bind_error is not None and bind_error.errno == errno.EACCES else ""
        raise PortInUseError(
            f"port {port} is not free for the NNI manager: {why}{hint}. Choose another port "
            f"(e.g. --port {port + 2 if port < 65533 else 8080}) or stop what uses it "
            f"(`ss -ltnp 'sport = :{port}'` shows it; `nnictl stop --all` stops NNI experiments)."
        )


def listeners(port: int) -> list[tuple[str, int | None]]:
    """``(address, pid)`` of every TCP socket on this machine that listens on ``port``.

    IPv6 addresses come in brackets (``[::1]``); ``pid`` is None for other users' processes.
    """
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            ip = conn.laddr.ip
            found.add((f"[{ip}]" if ":" in ip else ip, conn.pid))
    return sorted(found, key=lambda item: (item[0], item[1] or 0))


def listening_addresses(port: int) -> list[str]:
    """Local addresses of every TCP socket on this machine that listens on ``port`` (IPv6 in brackets)."""
    return sorted({address for address, _ in listeners(port)})


def kill_listeners(ports: Iterable[int]) -> None:
    """SIGKILL the process group of every process of this user (not this one) listening on ``ports``.

    Used when an NNI manager is found listening beyond its host: it leads its own process group (NNI
    starts it with ``setpgrp``), so its trials go with it.
    """
    for port in ports:
        for _, pid in listeners(port):
            if pid is not None and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)


def wait_port_closed(port: int, timeout: float = 10.0) -> bool:
    """Wait until nothing listens on ``port`` (any address); returns False if it still does after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not listeners(port):
            return True
        time.sleep(0.2)
    return False


def _allowed_addresses(host: str) -> set[str]:
    if host == "::":
        return {"[::]", "0.0.0.0"}
    return {f"[{host}]" if ":" in host else host}


# ---------------------------------------------------------------------------------- launch guard
def preload_path() -> Path:
    """The preload file, checked present (it is package data; a broken install lacks it)."""
    if not PRELOAD.is_file():
        raise RuntimeError(f"{PRELOAD} is missing: reinstall art-fisher-lease (the file is package data of nni_lease).")
    return PRELOAD


def _node_quoted(path: Path) -> str:
    # NODE_OPTIONS reads double-quoted strings with backslash escapes; the preload removes exactly this
    # text (JSON.stringify of its own path) from the environment its children get.
    return json.dumps(str(path), ensure_ascii=False)


@contextlib.contextmanager
def manager_environment(
    host: str = DEFAULT_HOST, *, grace_seconds: float = 10.0, allowed_names: Iterable[str] = ()
) -> Iterator[None]:
    """Within the block, an NNI manager started by this process binds ``host`` and dies with this process.

    Sets ``NODE_OPTIONS`` (prepending ``--require <PRELOAD>`` to any value already there) and the
    preload's variables in ``os.environ``, which NNI's launcher passes to the node process; restores
    them afterwards. The preload removes them again from what the manager's own children (the trials)
    inherit.

    Parameters
    ----------
    host : str
        One of :data:`ALLOWED_HOSTS`.
    grace_seconds : float
        After the launcher is gone, how long NNI's own shutdown may take before the manager's process
        group (the manager and its trials) is killed.
    allowed_names : iterable of str
        Host names, besides ``localhost`` and IP addresses, under which the manager answers (e.g. an
        ``nniManagerIp`` given as a name, which remote workers send as ``Host``).

    Raises
    ------
    ValueError
        For a bad ``host``, ``grace_seconds`` or name.
    """
    check_host(host)
    if not grace_seconds > 0:
        raise ValueError(f"grace_seconds must be > 0; got {grace_seconds!r}.")
    allowed = [str(name).strip().lower() for name in allowed_names]
    for name in allowed:
        if not name or any(c in name for c in ",:/[] \t") or len(name) > 253:
            raise ValueError(f"allowed_names must be host names (no port, comma or space); got {name[:100]!r}.")
    names = ("NODE_OPTIONS", _ENV_HOST, _ENV_PARENT, _ENV_GRACE, _ENV_NAMES)
    saved = {name: os.environ.get(name) for name in names}
    require = f"--require {_node_quoted(preload_path())}"
    os.environ["NODE_OPTIONS"] = f"{require} {saved['NODE_OPTIONS']}" if saved["NODE_OPTIONS"] else require
    os.environ[_ENV_HOST] = host
    os.environ[_ENV_PARENT] = str(os.getpid())
    os.environ[_ENV_GRACE] = str(int(grace_seconds * 1000))
    os.environ[_ENV_NAMES] = ",".join(allowed)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class BindingGuard:
    """Watch the experiment's ports from a thread; call ``on_exposed`` if they listen beyond ``host``.

    Each of ``ports`` is checked once something listens on it (within ``timeout`` seconds of
    :meth:`start`); every listening address must be ``host`` (``0.0.0.0`` and ``[::]`` for ``::``).

    Parameters
    ----------
    ports : iterable of int
        The manager's port (and ``port + 1`` for remote-like training services).
    host : str
        The address they must listen on.
    on_exposed : callable
        Called once, from the guard's thread, with a message naming the exposed addresses.
    timeout : float
        Seconds to wait for the ports to listen.
    """

    def __init__(
        self,
        ports: Iterable[int],
        host: str,
        on_exposed: Callable[[str], None],
        *,
        timeout: float = 180.0,
        interval: float = 0.2,
    ) -> None:
        self.ports = list(ports)
        self.allowed = _allowed_addresses(host)
        self.on_exposed = on_exposed
        self.timeout, self.interval = timeout, interval
        self.checked: dict[int, list[str]] = {}
        self.exposed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nni-lease-binding-guard", daemon=True)

    def start(self) -> BindingGuard:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.checked) < len(self.ports):
            for port in self.ports:
                if port in self.checked:
                    continue
                addresses = listening_addresses(port)
                if not addresses:
                    continue
                self.checked[port] = addresses
                beyond = [a for a in addresses if a not in self.allowed]
                if beyond:
                    self.exposed = (
                        f"port {port} listens on {', '.join(beyond)}, beyond the chosen host "
                        f"{' / '.join(sorted(self.allowed))}"
                    )
                    self.on_exposed(self.exposed)
                    return
                logger.debug("port %d listens on %s only", port, addresses)
            self._stop.wait(self.interval)


# -------------------------------------------------------------------------------- stale records
@dataclass(frozen=True)
class StaleExperiment:
    """An experiment in NNI's list that was not stopped cleanly.

    Attributes
    ----------
    experiment_id : str
    port : int or None
    pid : int or None
        The manager's pid as NNI recorded it.
    manager_running : bool
        True: that pid is still an NNI manager (``main.js``) for this experiment, which nothing stops;
        False: the manager is gone but the record still says it runs.
    status : str
        The status in NNI's list.
    """

    experiment_id: str
    port: int | None
    pid: int | None
    manager_running: bool
    status: str

    def describe(self) -> str:
        """One line for the user."""
        where = f"port {self.port}" if self.port else "unknown port"
        if self.manager_running:
            return (
                f"experiment {self.experiment_id}: its NNI manager (pid {self.pid}, {where}) is still "
                f"running; stop it with `nnictl stop {self.experiment_id}` or `kill {self.pid}`."
            )
        return (
            f"experiment {self.experiment_id} ({where}) was not stopped cleanly: NNI's list says "
            f"{self.status} but its manager (pid {self.pid}) is gone; marked STOPPED (it can be resumed)."
        )


def _is_manager_of(pid: int, experiment_id: str) -> bool:
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(part.endswith("main.js") for part in cmdline) and experiment_id in cmdline


def _has_launcher(pid: int) -> bool:
    """Whether the manager ``pid`` still has the Python process that started it as its parent."""
    try:
        parent = psutil.Process(pid).parent()
        return parent is not None and parent.pid != 1 and "python" in " ".join(parent.cmdline()[:1]).lower()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def find_stale_experiments(home: str | Path | None = None, *, mark_stopped: bool = True) -> list[StaleExperiment]:
    """Experiments in NNI's list whose manager died without a stop, or that still run with nobody watching.

    An experiment whose manager runs while a live process still watches it (its launcher) is not stale;
    one is reported when its record says it runs but the manager's pid is gone (or is another program),
    or when the manager runs but its launcher is gone (a manager started before this guard existed, or
    by ``nnictl``, shows like this: it is reported, not stopped).

    Parameters
    ----------
    home : str, Path or None
        The home folder whose ``nni-experiments/.experiment`` is read (default: ``$HOME``).
    mark_stopped : bool
        Mark the records whose manager is gone as STOPPED in NNI's list (through NNI's own, locked
        writer), so that they are reported once and can be resumed.
    """
    path = Path(home if home is not None else Path.home()) / _EXPERIMENT_LIST
    try:
        records = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError) as exc:
        if path.exists():
            logger.warning("cannot read NNI's experiment list %s (%s); no stale-experiment check.", path, exc)
        return []
    if not isinstance(records, dict):
        return []
    stale = []
    for exp_id, record in records.items():
        if not isinstance(record, dict) or record.get("status") == "STOPPED":
            continue
        pid = record.get("pid") if isinstance(record.get("pid"), int) else None
        port = record.get("port") if isinstance(record.get("port"), int) else None
        running = pid is not None and _is_manager_of(pid, exp_id)
        if pid is not None and running and _has_launcher(pid):
            continue  # a live experiment of another run
        stale.append(StaleExperiment(exp_id, port, pid, running, str(record.get("status"))))
    if mark_stopped and any(not s.manager_running for s in stale):
        from nni.tools.nnictl.config_utils import Experiments

        experiments = Experiments(home_dir=str(path.parent))
        for entry in stale:
            if not entry.manager_running:
                experiments.update_experiment(entry.experiment_id, "status", "STOPPED")
    return stale


def report_stale_experiments(home: str | Path | None = None) -> list[StaleExperiment]:
    """Log (WARNING) each experiment :func:`find_stale_experiments` finds, and return them."""
    stale = find_stale_experiments(home)
    for entry in stale:
        logger.warning("%s", entry.describe())
    return stale
