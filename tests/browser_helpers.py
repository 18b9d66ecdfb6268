"""Headless Debian Chromium for the UI tests (the MLflow UI, Ray's dashboard): page text and screenshots,
kept in test-artifacts/ for people to look at. Ray's dashboard wants the cluster's token: a small proxy
in front of it adds the Authorization header a logged-in browser would send."""
from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import requests

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def chromium(url: str, profile: Path, *output: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a page, after 20 s of (virtual) time for the UI's scripts to run."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000"]
    return subprocess.run([CHROMIUM, *flags, *output, url], capture_output=True, text=True, timeout=180)


@contextlib.contextmanager
def token_proxy(target: str, token: str) -> Iterator[str]:
    """http://127.0.0.1:PORT forwarding every GET to ``target`` with ``Authorization: Bearer <token>``."""

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            upstream = requests.get(target + self.path, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            self.send_response(upstream.status_code)
            for name in ("Content-Type", "Cache-Control"):
                if name in upstream.headers:
                    self.send_header(name, upstream.headers[name])
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
