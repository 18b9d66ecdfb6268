"""A sweep logged to a real ``mlflow server`` (SQLite backend), checked only through its REST API.

This is the cluster set-up (trials log over HTTP, not into a shared SQLite file): the parent run
per sweep, one child run per trial, flattened params, and metric histories at the loop's own
global steps.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import raysel

SERVER_START_TIMEOUT_S = float(os.environ.get("RAYSEL_TEST_MLFLOW_START_TIMEOUT", "90"))
SEEDS = [0, 1]
PARAMS = {"max_steps": 6, "eval_every": 3, "context_len": 32, "batch_size": 8, "eval_examples": 32}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mlflow_command() -> list[str]:
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


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1:<free port>, started but not yet waited for (the test
    calls ``wait_healthy()`` after the other fixtures, so the server's ~30 s start-up overlaps them)."""
    port = _free_port()
    root = tmp_path / "mlflow-server"
    root.mkdir()
    log_path = root / "server.log"
    command = _mlflow_command() + [
        "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
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


def _kv(entries: list[dict] | None) -> dict[str, str]:
    return {e["key"]: e["value"] for e in entries or []}


def test_sweep_logs_parent_and_child_runs_to_mlflow_server(mlflow_server, ray_session, tmp_path):
    url = mlflow_server.wait_healthy()
    spec = {
        "name": "server-sweep",
        "method": "standard",
        "model": {"name": "tiny-gpt2-random"},
        "data": {"name": "pydocs"},
        "params": dict(PARAMS),
        "protocol": {"kind": "seeds", "seeds": SEEDS, "metric": "test_perplexity", "mode": "min"},
        "tracking": {"uri": url},
        "ray": {"num_cpus": 2},
        "storage_path": str(tmp_path / "results"),
    }
    result = raysel.run_sweep(spec, progress=False)
    assert result.num_errors == 0, result.trials.get("error")
    assert result.tracking_uri == url

    rest = Rest(url)
    experiment = rest.experiment_by_name("server-sweep")  # the sweep's name is the default experiment
    runs = rest.search_runs(experiment["experiment_id"])

    parents = [r for r in runs if _kv(r["data"].get("tags")).get("raysel.role") == "sweep"]
    assert len(parents) == 1, [r["info"]["run_id"] for r in runs]
    parent = parents[0]
    parent_id = parent["info"]["run_id"]
    assert parent_id == result.parent_run_id
    assert parent["info"]["status"] == "FINISHED"

    children = [r for r in runs if _kv(r["data"].get("tags")).get("mlflow.parentRunId") == parent_id]
    assert len(children) == len(SEEDS) == len(runs) - 1, [_kv(r["data"].get("tags")) for r in runs]
    by_seed = {}
    for child in children:
        tags = _kv(child["data"].get("tags"))
        for key in ("raysel.method", "raysel.arm", "raysel.seed", "raysel.stage", "raysel.trial_id"):
            assert tags.get(key), f"child run {child['info']['run_id']} lacks tag {key}: {tags}"
        assert tags["raysel.method"] == "standard" and tags["raysel.stage"] == "seeds"
        assert tags["raysel.role"] == "trial"
        assert child["info"]["status"] == "FINISHED", child["info"]
        by_seed[int(tags["raysel.seed"])] = child
    assert sorted(by_seed) == SEEDS  # one child per seed
    assert len({_kv(c["data"]["tags"])["raysel.trial_id"] for c in children}) == len(SEEDS)

    for seed, child in by_seed.items():
        run_id = child["info"]["run_id"]
        params = _kv(child["data"].get("params"))
        assert params["params.max_steps"] == "6"
        assert params["params.eval_every"] == "3"
        assert params["params.context_len"] == "32"
        assert params["model.name"] == "tiny-gpt2-random"
        assert params["data.name"] == "pydocs"
        assert params["seed"] == str(seed)
        assert not any(isinstance(v, str) and v.startswith("{") for k, v in params.items()
                       if k in ("params", "model", "data")), "nested dicts must be flattened"

        # steps are the loop's global optimizer steps, not the count of report calls
        test_ppl = rest.metric_history(run_id, "test_perplexity")
        assert sorted(m["step"] for m in test_ppl) == [0, 3, 6], test_ppl
        assert all(float(m["value"]) > 1 for m in test_ppl)
        train_loss = rest.metric_history(run_id, "train_loss")
        assert sorted(m["step"] for m in train_loss) == [1, 2, 3, 4, 5, 6], train_loss

    # the report is rebuilt from the tracking server alone, after the sweep's storage is gone
    import shutil

    from raysel import report

    summary = result.summary.set_index("arm")
    shutil.rmtree(tmp_path / "results")
    rebuilt = report.build(parent_id, tracking_uri=url, out_dir=tmp_path / "rebuilt")
    assert rebuilt.source == "mlflow" and rebuilt.frame["trial_id"].nunique() == len(SEEDS)
    again = rebuilt.summary.set_index("arm")
    assert again.loc["standard", "n"] == len(SEEDS)
    assert again.loc["standard", "mean"] == pytest.approx(summary.loc["standard", "mean"])
    assert set(rebuilt.figures) == {"curves", "box", "bars"}
    final = [float(max(rest.metric_history(c["info"]["run_id"], "test_perplexity"), key=lambda m: m["step"])["value"])
             for c in children]
    assert again.loc["standard", "mean"] == pytest.approx(sum(final) / len(final))
    by_name = report.load("server-sweep", tracking_uri=url)  # the experiment's newest sweep
    assert set(by_name["run_id"]) == {c["info"]["run_id"] for c in children}
