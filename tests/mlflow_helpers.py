"""A real ``mlflow server`` for tests (started on 127.0.0.1:<free port>) and the few REST calls they make."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

SERVER_START_TIMEOUT_S = float(os.environ.get("RAYSEL_TEST_MLFLOW_START_TIMEOUT", "90"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_command() -> list[str]:
    binary = Path(sys.executable).with_name("mlflow")
    return [str(binary)] if binary.exists() else [sys.executable, "-m", "mlflow"]


def _log_tail(log_path: Path, chars: int = 6000) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
    return text[-chars:]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path):
        self.url, self.process, self.log_path = url, process, log_path

    def wait_healthy(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> str:
        """Block until ``/health`` answers 200; fail with the server's log otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.process.returncode} before answering /health:\n"
                            f"{_log_tail(self.log_path)}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {self.url}/health within {timeout_s:.0f} s:\n"
                            f"{_log_tail(self.log_path)}")
            time.sleep(0.5)


class Rest:
    """The few MLflow REST calls the test needs (no mlflow client: only what the server answers)."""

    def __init__(self, url: str):
        self.api = f"{url}/api/2.0/mlflow"

    def _check(self, response: requests.Response) -> dict:
        assert response.status_code == 200, f"{response.request.method} {response.url}: {response.status_code} {response.text[:500]}"
        return response.json()

    def experiment_by_name(self, name: str) -> dict:
        # GET in the REST API (a POST answers 405 Method Not Allowed)
        return self._check(requests.get(f"{self.api}/experiments/get-by-name",
                                        params={"experiment_name": name}, timeout=30))["experiment"]

    def search_runs(self, experiment_id: str, filter_string: str = "") -> list[dict]:
        runs, token = [], None
        while True:
            body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1000}
            if token:
                body["page_token"] = token
            page = self._check(requests.post(f"{self.api}/runs/search", json=body, timeout=30))
            runs += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return runs

    def metric_history(self, run_id: str, key: str) -> list[dict]:
        return self._check(requests.get(f"{self.api}/metrics/get-history",
                                        params={"run_id": run_id, "metric_key": key, "max_results": 25000},
                                        timeout=30)).get("metrics", [])


@contextlib.contextmanager
def serve_mlflow(root: Path, artifacts_destination: str, env: "dict[str, str] | os._Environ"):
    """``mlflow server`` with its SQLite store in ``root`` and its artifacts at ``artifacts_destination``
    (a folder, or e.g. s3://bucket/mlflow with the AWS variables in ``env``); stopped afterwards."""
    port = free_port()
    root.mkdir(parents=True)
    log_path = root / "server.log"
    command = mlflow_command() + [
        "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", artifacts_destination,
    ]
    env = {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        yield server
    finally:
        # uvicorn's worker is a child of the CLI process: stop the whole process group we started
        for signal_number, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, signal_number)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
