"""Tests of the NNI experiment launcher: a real NNI manager on 127.0.0.1, a temporary HOME, always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import yaml

from nni_lease.multitrial._strategy import LeaseMultiTrial
from nni_lease.multitrial._trial import lease_evaluator
from nni_lease.runtime._config import build_config, check_experiment_ports, load_training_service
from nni_lease.runtime._experiment import SUMMARY_FILE, run_multitrial
from nni_lease.runtime._manager import PortInUseError, check_port_free, listening_addresses, report_stale_experiments
from tests.nni_lease._loopback import free_port as _free_port
from tests.nni_lease._loopback import has_ipv6, needs_ipv6
from tests.nni_lease._toy_space import DigitsToySpace

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _Driver:
    """One experiment process (tests/nni_lease/_experiment_driver.py) with its own HOME; stopped by SIGINT."""

    def __init__(self, home: Path, port: int, max_trials: int, resume_id: str | None = None) -> None:
        self.home, self.port = home, port
        self.log = home / f"driver-{max_trials}.log"
        env = {
            **os.environ,
            "HOME": str(home),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore",
        }
        args = [
            sys.executable,
            "-m",
            "tests.nni_lease._experiment_driver",
            str(port),
            str(home / "records"),
            str(max_trials),
        ]
        self.proc = subprocess.Popen(
            args + ([resume_id] if resume_id else []),
            cwd=ROOT,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def experiment_id(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith("ID "):
                    return line.split()[1]
            assert self.proc.poll() is None, self.output()[-3000:]
            time.sleep(0.5)
        raise AssertionError("the experiment did not start:\n" + self.output()[-3000:])

    def api(self, path: str):
        return requests.get(f"http://127.0.0.1:{self.port}/api/v1/nni{path}", timeout=10).json()

    def wait_succeeded(self, n: int, timeout: float = 300) -> tuple[list, list]:
        """Poll the REST API until n trials succeeded, each with intermediate and final metrics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                assert self.api("/check-status")["status"] in ("INITIALIZED", "RUNNING", "NO_MORE_TRIAL", "DONE")
                jobs, metrics = self.api("/trial-jobs"), self.api("/metric-data")
            except (requests.ConnectionError, requests.JSONDecodeError):  # down, or still INITIALIZING (text)
                jobs, metrics = [], []
            done = {j["trialJobId"] for j in jobs if j["status"] == "SUCCEEDED"}
            kinds = {t: {m["type"] for m in metrics if m["trialJobId"] == t} for t in done}
            if len(done) >= n and all(k >= {"PERIODICAL", "FINAL"} for k in kinds.values()):
                return jobs, metrics
            time.sleep(2)
        raise AssertionError(f"fewer than {n} trials succeeded in time:\n" + self.output()[-3000:])

    def wait_done(self, timeout: float = 300) -> list:
        """Poll until the NNI manager reports DONE (budget used, every trial ended); returns the trials."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                if self.api("/check-status")["status"] == "DONE":
                    return self.api("/trial-jobs")
            except (requests.ConnectionError, requests.JSONDecodeError):  # down, or still INITIALIZING (text)
                pass
            time.sleep(2)
        raise AssertionError("the experiment did not finish in time:\n" + self.output()[-3000:])

    def stop(self, timeout: float = 90) -> int:
        """Ctrl-C the driver; it must stop the experiment and exit 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def cleanup(self) -> None:
        """Finaliser: never leave the driver or an NNI manager (pids from the manifest in HOME) running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        manifest = self.home / "nni-experiments" / ".experiment"
        if manifest.is_file():
            for record in json.loads(manifest.read_text() or "{}").values():
                pid = record.get("pid")
                if isinstance(pid, int) and _pid_alive(pid):
                    os.killpg(pid, signal.SIGKILL)  # the manager runs in its own process group


@pytest.fixture
def launch(tmp_path):
    drivers: list[_Driver] = []

    def _launch(port: int, max_trials: int, resume_id: str | None = None) -> _Driver:
        driver = _Driver(tmp_path, port, max_trials, resume_id)
        drivers.append(driver)
        return driver

    yield _launch
    for driver in drivers:
        driver.cleanup()


def _summary(home: Path, experiment_id: str) -> dict:
    return json.loads((home / "records" / experiment_id / SUMMARY_FILE).read_text())


def _final(metrics: list, trial: str) -> dict:
    (data,) = [m["data"] for m in metrics if m["trialJobId"] == trial and m["type"] == "FINAL"]
    return json.loads(json.loads(data))


@pytest.mark.slow
@pytest.mark.serial
def test_multitrial_experiment_web_ui_stop_and_resume(launch, tmp_path):
    port = _free_port()
    first = launch(port, max_trials=8)  # more than will run: the search is stopped by Ctrl-C midway
    exp_id = first.experiment_id()
    jobs, metrics = first.wait_succeeded(3)

    # The manager, and everything in its process group (the trials), listens on 127.0.0.1 only.
    _assert_loopback_only(tmp_path, exp_id, port)

    # The web UI's index page is served while the experiment runs.
    index = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert index.status_code == 200 and "<title>Neural Network Intelligence</title>" in index.text
    succeeded = [j["trialJobId"] for j in jobs if j["status"] == "SUCCEEDED"]
    for trial in succeeded:
        final = _final(metrics, trial)
        assert set(final) >= {"default", "explainer_accuracy", "listener_accuracy"}
        assert final["default"] == pytest.approx(-(final["explainer_val_loss"] + final["listener_val_loss"]))
        assert sum(m["trialJobId"] == trial and m["type"] == "PERIODICAL" for m in metrics) == 2  # 2 epochs

    # Ctrl-C in the middle of the search stops the experiment and closes the port.
    assert first.stop() == 0, first.output()[-3000:]
    assert "interrupted=True" in first.output()
    assert not _port_open(port)
    manifest = json.loads((tmp_path / "nni-experiments" / ".experiment").read_text())
    assert manifest[exp_id]["status"] == "STOPPED"
    assert f"The NNI manager listens on 127.0.0.1 port {port} only" in first.output()

    # The policy moved toward the clearly better choice ("linear" beats the constant "dead" explainer).
    state = _summary(tmp_path, exp_id)["strategy_state"]
    history = [r for r in state["history"] if r["metric"] is not None]
    assert len(history) >= 3 and {r["sample"]["op"] for r in history} == {"dead", "linear"}
    mean = {op: np.mean([r["metric"] for r in history if r["sample"]["op"] == op]) for op in ("dead", "linear")}
    assert mean["linear"] > mean["dead"] + 0.5  # the metric is the negated objective: higher is better
    dead, linear = state["logits"]["op"]
    assert linear > dead

    # Resume with room for one more trial: the trial count and the strategy's state continue. (NNI also
    # re-runs the trials the stop interrupted, under their old ids; their results do not reach the new
    # strategy object, see README.)
    n_before = len(_jobs_in_db(tmp_path, exp_id))
    second = launch(port, max_trials=n_before + 1, resume_id=exp_id)
    assert second.experiment_id() == exp_id
    jobs = second.wait_done()
    assert len(jobs) == n_before + 1
    assert second.stop() == 0, second.output()[-3000:]
    assert not _port_open(port)
    resumed = _summary(tmp_path, exp_id)["strategy_state"]
    n = len(state["history"])
    assert resumed["history"][:n] == state["history"] and len(resumed["history"]) == n + 1
    assert resumed["n_submitted"] > state["n_submitted"]
    # The new result moved the logits from where the first run left them (REINFORCE step, baseline b).
    new = resumed["history"][n]
    logits = np.array(state["logits"]["op"])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    onehot = np.eye(2)[["dead", "linear"].index(new["sample"]["op"])]
    expected = logits + 0.5 * (new["metric"] - state["baseline"]) * (onehot - p)
    np.testing.assert_allclose(resumed["logits"]["op"], expected, rtol=1e-12)


def _manager_pid(home: Path, experiment_id: str) -> int:
    return json.loads((home / "nni-experiments" / ".experiment").read_text())[experiment_id]["pid"]


def _process_group(pgid: int) -> list[psutil.Process]:
    group = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                group.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return group


def _assert_loopback_only(home: Path, experiment_id: str, port: int) -> None:
    """psutil and `ss`: the port listens on 127.0.0.1 only, and so does every socket of the manager's group."""
    assert listening_addresses(port) == ["127.0.0.1"]
    manager = _manager_pid(home, experiment_id)
    group = _process_group(manager)
    assert manager in {p.pid for p in group}
    for proc in group:
        try:
            connections = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, FileNotFoundError):  # a trial that ended meanwhile listens nowhere
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                assert conn.laddr.ip == "127.0.0.1", (conn,)
    if shutil.which("ss"):
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
        assert [line.split()[3] for line in out.splitlines()] == [f"127.0.0.1:{port}"]
    if has_ipv6():
        with socket.socket(socket.AF_INET6) as probe:
            assert probe.connect_ex(("::1", port)) != 0


def _jobs_in_db(home: Path, experiment_id: str) -> list[str]:
    """Final status of every trial, read from the stopped experiment's NNI database."""
    with sqlite3.connect(home / "records" / experiment_id / "db" / "nni.sqlite") as db:
        rows = db.execute("SELECT trialJobId, event FROM TrialJobEvent ORDER BY timestamp").fetchall()
    last: dict[str, str] = dict(rows)  # each trial's last event
    return list(last.values())


@pytest.mark.slow
@pytest.mark.serial
def test_sigkill_of_the_launcher_ends_the_manager_and_its_trials(launch, tmp_path):
    port = _free_port()
    driver = launch(port, max_trials=8)
    exp_id = driver.experiment_id()
    deadline = time.monotonic() + 240
    trials: list[psutil.Process] = []
    while not trials and time.monotonic() < deadline:
        assert driver.proc.poll() is None, driver.output()[-3000:]
        with contextlib.suppress(FileNotFoundError, KeyError, json.JSONDecodeError):
            manager = _manager_pid(tmp_path, exp_id)
            trials = [p for p in _process_group(manager) if p.pid != manager]
        time.sleep(0.5)
    assert trials, "no trial started:\n" + driver.output()[-3000:]
    group = [psutil.Process(manager), *trials]

    driver.proc.kill()  # SIGKILL: none of the launcher's cleanup runs
    driver.proc.wait()
    _gone, alive = psutil.wait_procs(group, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert not _port_open(port) and listening_addresses(port) == []
    assert "is gone; stopping the experiment and its trials" in driver.output()
    # The watchdog let NNI shut down properly: the record says STOPPED, nothing is stale for a later run.
    assert json.loads((tmp_path / "nni-experiments" / ".experiment").read_text())[exp_id]["status"] == "STOPPED"
    assert report_stale_experiments(tmp_path) == []


def test_port_in_use_is_a_clear_error_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} is not free"):
            check_port_free(port)
        with pytest.raises(PortInUseError, match=f"port {port}"):
            run_multitrial(
                DigitsToySpace(),
                lease_evaluator(),
                LeaseMultiTrial(),
                port=port,
                max_trials=1,
                experiment_dir=tmp_path / "records",
            )
    assert not (tmp_path / "records").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"max_trials": 0}, "max_trials"),
        ({"concurrency": 0}, "concurrency"),
        ({"training_service": "nope.yml"}, "training_service"),
        ({"resume": True}, "experiment_id"),
    ],
)
def test_bad_arguments_fail_before_anything_starts(kwargs, match, tmp_path):
    args = {"port": _free_port(), "max_trials": 1, "experiment_dir": tmp_path / "records", **kwargs}
    with pytest.raises(ValueError, match=match):
        run_multitrial(DigitsToySpace(), lease_evaluator(), LeaseMultiTrial(), **args)
    assert not (tmp_path / "records").exists()


def test_training_service_files(tmp_path, monkeypatch):
    assert load_training_service(None) == {"platform": "local"} == load_training_service("local")
    bad = tmp_path / "bad.yml"
    bad.write_text("platform: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_training_service(bad)
    bad.write_text("platform: nowhere\n")
    with pytest.raises(ValueError, match="unknown platform 'nowhere'"):
        load_training_service(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="'platform' key"):
        load_training_service(bad)

    # The remote example parses into NNI's remote config; NNI checks the SSH key file exists.
    monkeypatch.setenv("HOME", str(tmp_path))
    remote = EXAMPLES / "remote_training_service.yml"
    with pytest.raises(ValueError, match="SSH key file"):
        build_config(max_trials=4, concurrency=2, training_service=remote)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("not a real key\n")
    config = build_config(max_trials=4, concurrency=2, training_service=remote, experiment_dir=tmp_path / "r")
    assert config.training_service.platform == "remote"
    assert [m.host for m in config.training_service.machine_list] == ["192.0.2.10", "192.0.2.11"]
    assert config.experiment_working_directory == str((tmp_path / "r").resolve())


def _fake_ssh_key(home: Path) -> None:
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519").write_text("not a real key\n")


def test_remote_service_needs_the_next_port_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _fake_ssh_key(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1] - 1
        if _port_open(port):
            pytest.skip("port - 1 happens to be in use")
        with pytest.raises(PortInUseError, match=f"port {port + 1}"):
            run_multitrial(
                DigitsToySpace(),
                lease_evaluator(),
                LeaseMultiTrial(),
                port=port,
                host="0.0.0.0",
                max_trials=1,
                training_service=EXAMPLES / "remote_training_service.yml",
                experiment_dir=tmp_path / "records",
            )
    assert not (tmp_path / "records").exists()


def test_remote_workers_cannot_reach_a_loopback_manager(tmp_path, monkeypatch):
    """Remote workers connect back to nniManagerIp:PORT: with the default host that is refused up front."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _fake_ssh_key(tmp_path)
    remote = EXAMPLES / "remote_training_service.yml"
    args = {"max_trials": 1, "experiment_dir": tmp_path / "records", "port": _free_port()}
    with pytest.raises(ValueError, match=r"nniManagerIp '192\.0\.2\.1'.*Pass --host 0\.0\.0\.0"):
        run_multitrial(DigitsToySpace(), lease_evaluator(), LeaseMultiTrial(), training_service=remote, **args)
    config = build_config(max_trials=1, concurrency=1, training_service=remote)
    check_experiment_ports(config, args["port"], "0.0.0.0")  # explicit exposure: accepted
    local_workers = yaml.safe_load(remote.read_text()) | {"nniManagerIp": "127.0.0.1"}
    config = build_config(max_trials=1, concurrency=1, training_service=local_workers)
    check_experiment_ports(config, args["port"], "127.0.0.1")  # workers on this machine / SSH tunnels
    assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("host", ["10.0.0.1", "localhost"])
def test_bad_host_fails_before_anything_starts(host, tmp_path):
    with pytest.raises(ValueError, match="host must be one of"):
        run_multitrial(
            DigitsToySpace(),
            lease_evaluator(),
            LeaseMultiTrial(),
            port=_free_port(),
            host=host,
            max_trials=1,
            experiment_dir=tmp_path / "records",
        )
    assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("address", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_cli_multitrial_port_in_use_exits_2_before_starting(address, tmp_path, capsys):
    """Also a port held only by an IPv6 [::1] listener (NNI's own check misses it, then fails deep inside)."""
    from nni_lease.cli import main

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as busy:
        busy.bind((address, 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(
            [
                "search",
                "--mode",
                "multi-trial",
                "--port",
                str(port),
                "--max-trials",
                "1",
                "--experiment-dir",
                str(tmp_path / "records"),
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port} is not free for the NNI manager" in err and "Traceback" not in err
    assert not (tmp_path / "records").exists()


@needs_ipv6
def test_cli_port_plus_one_held_on_ipv6_exits_2(tmp_path, capsys, monkeypatch):
    from nni_lease.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    _fake_ssh_key(tmp_path)
    with socket.socket(socket.AF_INET6) as busy:
        busy.bind(("::1", 0))
        busy.listen()
        port = busy.getsockname()[1] - 1
        if _port_open(port):
            pytest.skip("port - 1 happens to be in use")
        code = main(
            [
                "search",
                "--mode",
                "hpo",
                "--port",
                str(port),
                "--host",
                "0.0.0.0",
                "--max-trials",
                "1",
                "--training-service",
                str(EXAMPLES / "remote_training_service.yml"),
                "--experiment-dir",
                str(tmp_path / "records"),
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port + 1} is not free for the NNI manager: something answers on [::1]:{port + 1}" in err
    assert not (tmp_path / "records").exists()


def test_cli_reports_an_experiment_an_earlier_run_left_behind(tmp_path, capsys, monkeypatch):
    """A record still marked RUNNING whose manager is gone (e.g. the manager was killed with -9)."""
    from nni_lease.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    manifest = tmp_path / "nni-experiments" / ".experiment"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"old1": {"id": "old1", "port": 8080, "status": "RUNNING", "pid": dead.pid}}))
    with socket.socket() as busy:  # the search itself stops at the port check: nothing starts
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(
            [
                "search",
                "--mode",
                "multi-trial",
                "--port",
                str(busy.getsockname()[1]),
                "--max-trials",
                "1",
                "--experiment-dir",
                str(tmp_path / "records"),
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"experiment old1 (port 8080) was not stopped cleanly: NNI's list says RUNNING but its manager (pid "
        f"{dead.pid}) is gone; marked STOPPED"
    ) in err
    assert json.loads(manifest.read_text())["old1"]["status"] == "STOPPED"


def test_resumable_channel_skips_the_resume_data_nni_3_cannot_parse():
    """NNI 3.0's NAS tuner channel raises on ImportData (sent on resume); ours skips it and goes on."""
    from nni.runtime.tuner_command_channel import TunerCommandChannel
    from nni.runtime.tuner_command_channel.command_type import RequestTrialJobs

    from nni_lease.runtime._experiment import _ResumableChannel

    class _FakeWire:
        def __init__(self, commands):
            self.commands = list(commands)

        def receive(self):
            return self.commands.pop(0)

    resume_traffic = [
        {"type": "FD", "content": json.dumps([{"parameter_id": 0, "value": 1.0}])},
        {"type": "AD", "content": json.dumps([])},
        {"type": "GE", "content": "2"},
    ]
    plain = TunerCommandChannel("ws://localhost:1/tuner")
    plain._channel = _FakeWire(resume_traffic)
    with pytest.raises(ValueError, match="Unknown command type: CommandType.ImportData"):
        plain.receive()
    ours = _ResumableChannel("ws://localhost:1/tuner")
    ours._channel = _FakeWire(resume_traffic)
    assert ours.receive() == RequestTrialJobs(2)


_REBIND = """
// A user's own NODE_OPTIONS preload (after nni_lease's) that re-binds every port-only listen to another
// address; nni_lease's preload keeps an explicit specific host, so the binding guard has to catch it.
const net = require('net'); const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number') {
    const callbacks = args.slice(1).filter(a => typeof a === 'function');
    return listen.call(this, {port: args[0], host: '127.0.0.2'}, ...callbacks);
  }
  return listen.apply(this, args);
};
"""


@pytest.mark.slow
@pytest.mark.serial
def test_a_rebound_manager_killed_by_the_guard_is_one_error(tmp_path):
    port = _free_port()
    (tmp_path / "rebind.js").write_text(_REBIND)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "NODE_OPTIONS": f"--require {tmp_path / 'rebind.js'}",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nni_lease",
            "search",
            "--mode",
            "multi-trial",
            "--port",
            str(port),
            "--experiment-dir",
            str(tmp_path / "records"),
            "--max-trials",
            "2",
            "--epochs",
            "1",
            "--limit",
            "64",
            "--limit-batches",
            "2",
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    assert len(errors) == 2 and errors[1].startswith(
        f"nni-lease search: error: port {port} listens on 127.0.0.2, beyond the chosen host 127.0.0.1"
    ), proc.stderr[-3000:]
    assert errors[1].endswith("the NNI manager was killed.") and not _port_open(port)


@pytest.mark.slow
@pytest.mark.serial
def test_a_manager_killed_under_the_cli_is_one_error_naming_the_experiment_and_its_log(tmp_path):
    from nni_lease.runtime._manager import listeners

    port = _free_port()
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    err_path = tmp_path / "stderr.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nni_lease",
            "search",
            "--mode",
            "multi-trial",
            "--port",
            str(port),
            "--experiment-dir",
            str(tmp_path / "records"),
            "--max-trials",
            "20",
            "--epochs",
            "1",
            "--limit",
            "64",
            "--limit-batches",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=err_path.open("w"),
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert "web UI at" in first, first + err_path.read_text()[-3000:]
        exp_id = first.split()[1].rstrip(":")
        deadline = time.monotonic() + 120
        while not (pids := [pid for _, pid in listeners(port) if pid]) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # the strategy is running
        os.kill(pids[0], signal.SIGKILL)
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err_path.read_text()
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-5000:]
    assert errors == [
        (
            f"nni-lease search: error: experiment {exp_id}: the NNI manager on port {port} stopped "
            "answering (it died or was killed); see its log "
            f"{tmp_path / 'records' / exp_id / 'log' / 'nnimanager.log'}."
        )
    ], err[-3000:]
