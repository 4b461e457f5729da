"""Check in headless Chromium that the built documentation renders its maths with no network.

    sphinx-build -b html docs /tmp/html && python tests/check_docs_in_browser.py /tmp/html

Serves the site on 127.0.0.1, opens every page with formulas in Chromium (Debian's ``chromium`` package) behind a
proxy that does not exist, so any request to another host fails, and checks that MathJax typeset every
formula (``mjx-container`` elements, no ``data-mjx-error``, no raw ``\\(`` left). Not part of the test
suite: CI has no browser. Prints one line per page; exit status 1 if any page fails.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1", "--virtual-time-budget=15000",
]  # fmt: skip


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main(site: Path) -> int:
    pages = sorted(str(p.relative_to(site)) for p in site.rglob("*.html") if 'class="math' in p.read_text())
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    failed = 0
    with tempfile.TemporaryDirectory() as profile:
        for page in pages:
            url = f"http://127.0.0.1:{server.server_port}/{page}"
            dom = subprocess.run(["chromium", *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=180, check=False).stdout  # fmt: skip
            typeset, errors, raw = dom.count("<mjx-container"), dom.count("data-mjx-error"), dom.count("\\(")
            ok = typeset > 0 and errors == 0 and raw == 0
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {page}: {typeset} formulas typeset, {errors} errors, {raw} raw")
    server.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
