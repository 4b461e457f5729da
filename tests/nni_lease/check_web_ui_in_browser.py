"""Headless-browser check of the NNI manager's origin guard: the web UI renders, its own (same-origin) PUT passes,
a page on another origin (a text/plain no-cors POST, like the probe's) is refused."""

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[2]
work = Path(sys.argv[1] if len(sys.argv) > 1 else "web-ui-check").resolve()
home = work / "home"
work.mkdir(exist_ok=True)
port, evil_port, cdp_port = 18801, 18802, 18803
env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
home.mkdir(exist_ok=True)
log = (work / "driver.log").open("w")
driver = subprocess.Popen(
    [sys.executable, "-m", "tests.nni_lease._experiment_driver", str(port), str(home / "records"), "4"],
    cwd=ROOT,
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
)
procs = [driver]


def status():
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/check-status", timeout=5).read())[
            "status"
        ]
    except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:  # not up yet: report why
        return repr(exc)


try:
    for _ in range(120):
        if status() == "RUNNING":
            break
        time.sleep(1)
    print("status", status())
    chrome = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    subprocess.run(
        [
            *chrome,
            "--window-size=1400,1000",
            "--virtual-time-budget=15000",
            f"--screenshot={work / 'webui.png'}",
            f"http://127.0.0.1:{port}/oview",
        ],
        check=False,
        capture_output=True,
        timeout=120,
    )
    print("screenshot", (work / "webui.png").stat().st_size)
    # A page on another origin posts like the probe did (text/plain, no-cors: no preflight).
    (work / "evil.html").write_text(f"""<html><body><script>
fetch('http://127.0.0.1:{port}/api/v1/nni/trial-jobs', {{method: 'POST', mode: 'no-cors',
  headers: {{'Content-Type': 'text/plain'}}, body: '{{"parameters": {{}}}}'}})
  .then(r => document.title = 'sent ' + r.type).catch(e => document.title = 'error ' + e);
</script></body></html>""")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(evil_port), "--bind", "127.0.0.1"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(server)
    time.sleep(1)
    out = subprocess.run(
        [*chrome, "--virtual-time-budget=8000", "--dump-dom", f"http://127.0.0.1:{evil_port}/evil.html"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(
        "evil page title:",
        out.stdout.split("<title>")[1].split("</title>")[0] if "<title>" in out.stdout else out.stdout[:200],
    )
    # The web UI's own origin: a same-origin PUT through Chrome (it sends Origin: http://127.0.0.1:PORT).
    cdp = subprocess.Popen(
        [*chrome, f"--remote-debugging-port={cdp_port}", f"http://127.0.0.1:{port}/oview"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(cdp)
    for _ in range(60):
        try:
            pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json", timeout=2).read())
            page = next(p for p in pages if p["type"] == "page" and str(port) in p["url"])
            break
        except (OSError, ValueError, KeyError, StopIteration, http.client.HTTPException):  # no page yet
            time.sleep(1)
    time.sleep(5)
    script = """(async () => {
      const profile = await (await fetch('/api/v1/nni/experiment')).json();
      const r = await fetch('/api/v1/nni/experiment?update_type=TRIAL_CONCURRENCY', {method: 'PUT',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(profile)});
      const g = await fetch('/api/v1/nni/trial-jobs');
      return 'PUT ' + r.status + ', GET trial-jobs ' + g.status + ', page ' + document.title;
    })()"""

    async def evaluate():
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            await ws.send(
                json.dumps(
                    {
                        "id": 1,
                        "method": "Runtime.evaluate",
                        "params": {"expression": script, "awaitPromise": True, "returnByValue": True},
                    }
                )
            )
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == 1:
                    return msg

    print("web UI origin:", asyncio.run(evaluate())["result"]["result"].get("value"))
finally:
    for p in procs[1:]:
        p.kill()
        p.wait()
    driver.send_signal(2)
    try:
        driver.wait(timeout=90)
    except subprocess.TimeoutExpired:
        driver.kill()
    log.close()
    print("driver rc", driver.returncode)
    print("refusals:", [line for line in (work / "driver.log").read_text().splitlines() if "refused" in line])
