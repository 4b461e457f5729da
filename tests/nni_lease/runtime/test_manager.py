"""The NNI manager guard (nni_lease.runtime._manager): the node preload's bind and watchdog, port checks on IPv4 and
IPv6, the binding guard and stale-experiment records. No NNI manager is started here (see
test_experiment.py for the real one); node is NNI's own binary, every socket is on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import psutil
import pytest

from nni_lease.runtime import _manager as manager
from nni_lease.runtime._manager import (
    PRELOAD,
    BindingGuard,
    PortInUseError,
    check_host,
    check_port_free,
    find_stale_experiments,
    manager_environment,
)
from tests.nni_lease._loopback import free_port as _free_port
from tests.nni_lease._loopback import needs_ipv6

ROOT = Path(__file__).resolve().parents[3]


def _nni_node() -> tuple[str, str]:
    import nni_node

    folder = Path(nni_node.__path__[0])
    return str(folder / "node"), str(folder / "node_modules")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------------------------ packaging
def test_preload_ships_with_the_package():
    assert PRELOAD.is_file() and PRELOAD.parent == Path(manager.__file__).resolve().parent
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "manager_preload.js" in package_data["nni_lease.runtime"]


# -------------------------------------------------------------------------------- the preload: bind
_LISTEN_FORMS = textwrap.dedent("""
    const net = require('net'); const http = require('http');
    const express = require('express'); const ws = require('ws');
    const port = Number(process.argv[2]); const pipe = process.argv[3];
    const forms = [
      ['listen(port)', s => s.listen(port)],
      ['listen(port, cb)', s => s.listen(port, () => {})],
      ['listen(port, "0.0.0.0")', s => s.listen(port, '0.0.0.0')],
      ['listen(port, "::", backlog, cb)', s => s.listen(port, '::', 10, () => {})],
      ['listen(port, backlog)', s => s.listen(port, 5)],
      ['listen(port, undefined, undefined, cb)', s => s.listen(port, undefined, undefined, () => {})],
      ['listen("port")', s => s.listen(String(port))],
      ['listen({port})', s => s.listen({port})],
      ['listen({port, host: "::"})', s => s.listen({port, host: '::'})],
      ['listen()', s => s.listen()],
      ['listen(port, "127.0.0.1")', s => s.listen(port, '127.0.0.1')],
      ['listen(pipe)', s => s.listen(pipe)],
    ];
    function once(server) {
      return new Promise(resolve => {
        server.on('listening', () => { const a = server.address(); server.close(() => resolve(a)); });
        server.on('error', e => resolve('error ' + e.code));
      });
    }
    (async () => {
      const out = {};
      for (const [name, call] of forms) {
        const s = http.createServer(); const p = once(s); call(s); out[name] = await p;
      }
      const n = net.createServer(); let p = once(n); n.listen(port); out['net listen(port)'] = await p;
      const e = express().listen(port); out['express app.listen(port)'] = await once(e);
      const w = new ws.Server({port});  // NNI's reuse-mode channel on port + 1
      out['ws.Server({port})'] = await new Promise(
        r => w.on('listening', () => { const a = w.address(); w.close(); r(a); }));
      out.env = [process.env.NODE_OPTIONS, process.env.NNI_LEASE_MANAGER_HOST, process.env.NNI_LEASE_MANAGER_PARENT];
      console.log(JSON.stringify(out));
    })();
""")


def _run_listen_forms(tmp_path: Path, env: dict[str, str]) -> dict:
    node, modules = _nni_node()
    script = tmp_path / "forms.js"
    script.write_text(_LISTEN_FORMS)
    out = subprocess.run(
        [node, str(script), str(_free_port()), str(tmp_path / "pipe.sock")],
        env={**env, "NODE_PATH": modules, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_preload_binds_every_listen_form_to_the_host(tmp_path, monkeypatch):
    monkeypatch.setenv("NODE_OPTIONS", "--max-old-space-size=512")  # kept after the preload's --require
    with manager_environment("127.0.0.1"):
        env = dict(os.environ)
        assert env["NODE_OPTIONS"].startswith("--require ") and env["NODE_OPTIONS"].endswith("--max-old-space-size=512")
    assert os.environ["NODE_OPTIONS"] == "--max-old-space-size=512" and "NNI_LEASE_MANAGER_HOST" not in os.environ
    out = _run_listen_forms(tmp_path, env)
    # The children of the manager (its trials) inherit neither the preload nor its variables.
    assert out.pop("env") == ["--max-old-space-size=512", None, None]
    assert out.pop("listen(pipe)") == str(tmp_path / "pipe.sock")  # a pipe is not a port: untouched
    assert len(out) == 14
    for form, address in out.items():
        assert address["address"] == "127.0.0.1", form


def test_without_the_preload_node_listens_everywhere(tmp_path):
    """The baseline the preload fixes: a port-only listen binds the IPv6 (dual-stack) wildcard."""
    out = _run_listen_forms(tmp_path, {})
    assert out["express app.listen(port)"]["address"] in ("::", "0.0.0.0")


def test_node_reads_the_preload_path_quoted(tmp_path):
    odd = tmp_path / 'dir with "quotes" and spaces'
    odd.mkdir()
    copy = odd / "preload.js"
    copy.write_text(PRELOAD.read_text())
    node, _ = _nni_node()
    env = {
        "NODE_OPTIONS": f"--require {manager._node_quoted(copy)}",
        "NNI_LEASE_MANAGER_HOST": "127.0.0.1",
        "PATH": os.environ["PATH"],
    }
    code = (
        "const s = require('net').createServer(); s.listen(0, () => { console.log(s.address().address); s.close(); })"
    )
    out = subprocess.run([node, "-e", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "127.0.0.1"


# ---------------------------------------------------------------------------- the preload: watchdog
_LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys, time
    node, script, grace = sys.argv[1:4]
    env = {"NODE_OPTIONS": "--require " + sys.argv[4], "NNI_LEASE_MANAGER_HOST": "127.0.0.1",
           "NNI_LEASE_MANAGER_PARENT": str(os.getpid()), "NNI_LEASE_MANAGER_GRACE_MS": grace,
           "PATH": os.environ["PATH"]}
    proc = subprocess.Popen([node, script], env=env, stdout=subprocess.PIPE, text=True,
                            preexec_fn=os.setpgrp)  # as NNI's launcher starts the manager
    print(proc.pid, proc.stdout.readline().strip(), flush=True)
    time.sleep(600)
""")

_MANAGER = textwrap.dedent("""
    // Stands in for NNI's manager: one "trial" child in its process group; on SIGTERM it either shuts
    // down like NNI (kills the trial, exits) or, with IGNORE_SIGTERM, hangs.
    const child = require('child_process').spawn('sleep', ['600'], {stdio: 'ignore'});
    process.on('SIGTERM', () => { if (!process.env.IGNORE) { child.kill('SIGINT'); process.exit(0); } });
    console.log(child.pid);
    setInterval(() => {}, 1000);
""")


@pytest.mark.slow
@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["graceful", "hung-shutdown"])
def test_watchdog_ends_manager_and_trials_when_the_launcher_is_sigkilled(tmp_path, ignore_sigterm):
    node, _ = _nni_node()
    (tmp_path / "launcher.py").write_text(_LAUNCHER)
    (tmp_path / "manager.js").write_text(_MANAGER.replace("process.env.IGNORE", "true" if ignore_sigterm else "false"))
    launcher = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "launcher.py"),
            node,
            str(tmp_path / "manager.js"),
            "1500",
            manager._node_quoted(PRELOAD),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        node_pid, trial_pid = map(int, launcher.stdout.readline().split())
        assert psutil.Process(node_pid).ppid() == launcher.pid and os.getpgid(trial_pid) == node_pid
        time.sleep(1.0)
        assert not _gone(node_pid) and not _gone(trial_pid)  # the watchdog leaves a live launcher alone
        start = time.monotonic()
        launcher.kill()  # SIGKILL: no cleanup code runs in the launcher
        launcher.wait()
        while time.monotonic() - start < 10 and not (_gone(node_pid) and _gone(trial_pid)):
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        assert _gone(node_pid) and _gone(trial_pid), f"still running after {elapsed:.1f} s"
        # graceful: within a poll interval or two; hung: after the 1.5 s grace, the process group is killed
        assert (elapsed >= 1.5) if ignore_sigterm else (elapsed < 1.5 + 1.0)
    finally:
        launcher.kill()
        for pid in locals().get("node_pid", None), locals().get("trial_pid", None):
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------ host
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::"])
def test_allowed_hosts(host):
    assert check_host(host) == host


@pytest.mark.parametrize("host", ["10.1.2.3", "localhost", "::1", "", "127.0.0.1 "])
def test_other_hosts_are_refused(host):
    with pytest.raises(ValueError, match=r"host must be one of .*127\.0\.0\.1"):
        check_host(host)
    with pytest.raises(ValueError, match="host must be one of"), manager_environment(host):
        pass


# ------------------------------------------------------------------------------------------ ports
@pytest.mark.parametrize(
    "address", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6), "0.0.0.0", pytest.param("::", marks=needs_ipv6)]
)
def test_a_port_held_on_any_address_is_not_free(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as busy:
        if family == socket.AF_INET6:
            busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        busy.bind((address, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"port {port} is not free for the NNI manager"):
            check_port_free(port)
    check_port_free(port)  # free again once closed


def test_port_numbers_are_checked():
    for bad in (0, 70000):
        with pytest.raises(ValueError, match=r"port must be an int in \[1, 65535\]"):
            check_port_free(bad)
    for bad in (True, "8080"):
        with pytest.raises(TypeError, match=r"port must be an int in \[1, 65535\]"):
            check_port_free(bad)


@needs_ipv6
def test_binding_guard_flags_a_listener_beyond_the_host():
    port = _free_port()
    seen: list[str] = []
    with socket.socket(socket.AF_INET6) as beyond, socket.socket() as ok:
        beyond.bind(("::1", port))  # not the chosen 127.0.0.1
        beyond.listen()
        ok.bind(("127.0.0.1", port + 1 if port < 65535 else port - 1))
        ok.listen()
        guard = BindingGuard([port, ok.getsockname()[1]], "127.0.0.1", seen.append, timeout=10).start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        guard.stop()
    assert seen and f"port {port} listens on [::1], beyond the chosen host 127.0.0.1" in seen[0]


def test_binding_guard_accepts_the_host():
    seen: list[str] = []
    with socket.socket() as ok:
        ok.bind(("127.0.0.1", 0))
        ok.listen()
        port = ok.getsockname()[1]
        guard = BindingGuard([port], "127.0.0.1", seen.append, timeout=10).start()
        deadline = time.monotonic() + 10
        while port not in guard.checked and time.monotonic() < deadline:
            time.sleep(0.05)
        guard.stop()
    assert guard.checked == {port: ["127.0.0.1"]} and not seen


# -------------------------------------------------------------------------------- stale records
def _write_list(home: Path, records: dict) -> Path:
    path = home / "nni-experiments" / ".experiment"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_experiments_are_found_reported_and_marked(tmp_path, caplog):
    """A record that says RUNNING whose manager is gone, and a manager nobody watches, are reported."""
    node, _ = _nni_node()
    fake = tmp_path / "main.js"  # looks like NNI's manager to the check: `node .../main.js ... <id>`
    fake.write_text("setInterval(() => {}, 1000);")
    # An orphan: started through a shell that exits at once, so its parent is no longer a Python launcher.
    orphan = subprocess.run(
        ["sh", "-c", f"'{node}' '{fake}' --experiment-id orphaned >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan_pid = int(orphan.stdout)
    watched = subprocess.Popen([node, str(fake), "--experiment-id", "watched"])  # its launcher (pytest) lives
    try:
        path = _write_list(
            tmp_path,
            {
                "crashed": {"id": "crashed", "port": 1, "status": "RUNNING", "pid": _dead_pid()},
                "stopped": {"id": "stopped", "port": 2, "status": "STOPPED", "pid": _dead_pid()},
                "orphaned": {"id": "orphaned", "port": 3, "status": "RUNNING", "pid": orphan_pid},
                "watched": {"id": "watched", "port": 4, "status": "RUNNING", "pid": watched.pid},
            },
        )
        with caplog.at_level("WARNING", logger="nni_lease.runtime._manager"):
            stale = manager.report_stale_experiments(tmp_path)
        assert {s.experiment_id: s.manager_running for s in stale} == {"crashed": False, "orphaned": True}
        assert "experiment crashed (port 1) was not stopped cleanly" in caplog.text
        assert f"experiment orphaned: its NNI manager (pid {orphan_pid}, port 3) is still running" in caplog.text
        records = json.loads(path.read_text())
        assert records["crashed"]["status"] == "STOPPED" and records["orphaned"]["status"] == "RUNNING"
        assert [s.experiment_id for s in find_stale_experiments(tmp_path)] == ["orphaned"]  # reported once
    finally:
        watched.kill()
        watched.wait()
        os.kill(orphan_pid, signal.SIGKILL)


def test_no_or_unreadable_experiment_list(tmp_path, caplog):
    assert find_stale_experiments(tmp_path) == []
    _write_list(tmp_path, {}).write_text("{not json")
    with caplog.at_level("WARNING", logger="nni_lease.runtime._manager"):
        assert find_stale_experiments(tmp_path) == []
    assert "cannot read NNI's experiment list" in caplog.text


def test_the_wheel_contains_the_preload(tmp_path):
    """Build the wheel from a copy of the sources (the checkout stays clean) and look inside."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    for name in ("art_fisher", "nni_lease"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("nni_lease/runtime/manager_preload.js") == PRELOAD.read_bytes()


# ------------------------------------------------------------------ the preload: only its own origin
_ECHO_SERVER = textwrap.dedent("""
    // Stands in for NNI's REST server (express app.listen(port)) and its workers' websocket (ws.Server):
    // every request that gets through is counted and answered 200.
    const express = require('express'); const ws = require('ws');
    let seen = 0;
    const app = express();
    app.all('*', (req, res) => { seen += 1; res.send('reached NNI ' + seen); });
    const server = app.listen(0, () => {
      const channel = new ws.Server({ server });
      channel.on('connection', socket => { seen += 1; socket.send('hello'); });
      console.log(server.address().port);
    });
""")


@pytest.fixture
def guarded_server(tmp_path):
    """A node HTTP server started as the manager is (the preload, host 127.0.0.1); yields its port."""
    node, modules = _nni_node()
    script = tmp_path / "server.js"
    script.write_text(_ECHO_SERVER)
    env = {
        "NODE_OPTIONS": f"--require {manager._node_quoted(PRELOAD)}",
        "NNI_LEASE_MANAGER_HOST": "127.0.0.1",
        "NNI_LEASE_MANAGER_ALLOWED_NAMES": "workers.example",
        "NODE_PATH": modules,
        "PATH": os.environ["PATH"],
    }
    proc = subprocess.Popen([node, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def _raw_request(port: int, method: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """Send exactly these headers (no Host added) to 127.0.0.1:port; returns (status, body)."""
    lines = [f"{method} /api/v1/nni/trial-jobs HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


_PAYLOAD = b'{"parameters": {"__symbol__": "path:os.system"}}'


def test_a_rebinding_host_is_refused_before_nni_sees_it(guarded_server):
    """A page under a name re-resolved to 127.0.0.1 sends its own name as Host, and a matching Origin."""
    port = guarded_server
    for host in (
        f"rebind.evil.example:{port}",
        "rebind.evil.example",
        f"localhost.evil.example:{port}",
        f"127.0.0.1:{port + 1}",
        "",
        "127.0.0.1:abc",
    ):
        origin = f"http://{host}"
        for method in ("POST", "GET"):
            status, body = _raw_request(
                port, method, {"Host": host, "Origin": origin, "Content-Type": "application/json"}, _PAYLOAD
            )
            assert status == 403 and b"Forbidden" in body and b"reached NNI" not in body, (host, method)
    status, _ = _raw_request(port, "GET", {})  # no Host at all
    assert status == 403


def test_a_cross_origin_simple_post_is_refused(guarded_server):
    """What a form or fetch(no-cors) on any other page sends: a right Host, a foreign (or null) Origin."""
    port = guarded_server
    for origin in (
        "http://evil.example",
        f"http://rebind.evil.example:{port}",
        "null",
        f"http://127.0.0.1:{port + 1}",
        f"https://127.0.0.1:{port}",
    ):
        for method in ("POST", "PUT", "DELETE", "PATCH", "GET"):
            status, body = _raw_request(
                port, method, {"Host": f"127.0.0.1:{port}", "Origin": origin, "Content-Type": "text/plain"}, _PAYLOAD
            )
            assert status == 403 and b"reached NNI" not in body, (origin, method)
    # An old browser that sends no Origin still sends the page's Referer.
    status, _ = _raw_request(port, "POST", {"Host": f"127.0.0.1:{port}", "Referer": "http://evil.example/page"})
    assert status == 403


def test_a_cross_site_websocket_is_refused(guarded_server):
    port = guarded_server
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    for headers in (
        {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example"},
        {"Host": f"rebind.evil.example:{port}"},
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                (
                    "GET /tuner HTTP/1.1\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in {**headers, **upgrade}.items())
                    + "\r\n"
                ).encode()
            )
            assert conn.recv(4096).startswith(b"HTTP/1.1 403 Forbidden")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:  # NNI's own clients send no Origin
        conn.sendall(
            (
                "GET /tuner HTTP/1.1\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"localhost:{port}", **upgrade}.items())
                + "\r\n"
            ).encode()
        )
        assert conn.recv(4096).startswith(b"HTTP/1.1 101 Switching Protocols")


def test_the_web_ui_and_nni_clients_still_reach_the_manager(guarded_server):
    """The plain path: same-origin browser requests, NNI's Python clients (no Origin), remote workers."""
    import requests

    port = guarded_server
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"LOCALHOST:{port}",
        f"[::1]:{port}",
        f"10.0.0.5:{port}",
        f"workers.example:{port}",
    ):
        same = f"http://{host.lower()}"
        for headers in ({"Origin": same}, {"Referer": same + "/oview"}, {}, {"Origin": same, "Referer": same + "/x"}):
            for method in ("GET", "POST", "PUT", "DELETE"):
                status, body = _raw_request(port, method, {"Host": host, **headers}, _PAYLOAD)
                assert status == 200 and body.startswith(b"reached NNI"), (host, headers, method)
    # NNI's own REST client is `requests` (nni.experiment.rest); it sends neither Origin nor Referer.
    reply = requests.post(f"http://localhost:{port}/api/v1/nni/experiment", json={"x": 1}, timeout=10)
    assert reply.status_code == 200 and reply.text.startswith("reached NNI")
    assert requests.get(f"http://127.0.0.1:{port}/oview", timeout=10).status_code == 200


def test_names_the_manager_answers_under(monkeypatch):
    from types import SimpleNamespace

    from nni_lease.runtime._experiment import _manager_names

    with manager_environment("0.0.0.0", allowed_names=["Head.Example"]):
        assert os.environ["NNI_LEASE_MANAGER_ALLOWED_NAMES"] == "head.example"
    assert "NNI_LEASE_MANAGER_ALLOWED_NAMES" not in os.environ
    for bad in ("evil:8080", "a,b", "", "x y"):
        with (
            pytest.raises(ValueError, match="allowed_names must be host names"),
            manager_environment("127.0.0.1", allowed_names=[bad]),
        ):
            pass
    remote = SimpleNamespace(training_service=SimpleNamespace(platform="remote", nni_manager_ip="head.example"))
    assert _manager_names(remote) == ["head.example"]
    remote.training_service.nni_manager_ip = "10.0.0.2"
    assert _manager_names(remote) == []  # IP addresses always pass
    assert _manager_names(SimpleNamespace(training_service=SimpleNamespace(platform="local"))) == []
