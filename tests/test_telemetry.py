"""raysel's metrics on Ray's Prometheus endpoint: a sweep with an IGF arm and a kernel arm runs in a
subprocess on a local Ray (metrics reported every second) while the test scrapes the endpoint;
every metric that dashboards/raysel-grafana.json queries must show up, with the sweep's tag."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import requests
from mlflow_helpers import free_port
from sweep_helpers import finished_trials, interrupt_when, tune_finished_trials

ROOT = Path(__file__).resolve().parents[1]
IGF = {"context_len": 16, "size_objective_set": 8, "min_len": 64, "ig_contexts": 48, "ig_chunk_size": 16,
       "secondary_learner_max_epochs": 3, "learner_lr": 1e-3, "eval_examples": 16, "max_batches": 6,
       "batch_size": 4, "eval_every": 2, "switch_step": 2, "threshold_units": "learner", "lr": 1e-3,
       "threshold_mode": "constant"}
KERNEL = {"label_words": ["string", "data", "time", "file", "number"], "max_length": 48}
# the driver waits after the sweep until the test has scraped everything it wants ("scraped" appears) or
# 120 s passed; a sweep that started its own Ray has shut it down, and the endpoint with it, by then
DRIVER = """
import pathlib, sys, time, raysel
from raysel.sweep import SweepInterrupted
if {ray_port!r} is not None:  # the driver's own Ray: its endpoint stays up after the sweep, until "scraped"
    import ray
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port={ray_port!r})
try:
    errors = raysel.run_sweep({spec!r}, progress=False, resume={resume!r}).num_errors
except SweepInterrupted:
    sys.exit(130)
pathlib.Path("swept").touch()
deadline = time.monotonic() + 120
while not pathlib.Path("scraped").exists() and time.monotonic() < deadline:
    time.sleep(0.2)
sys.exit(1 if errors else 0)
"""


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "dashboards" / "raysel-grafana.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {name for e in exprs for name in re.findall(r"\bray_raysel_\w+", e)}


Scrape = list[tuple[str, str, float]]  # raysel's metrics on the endpoint: (name, labels, value)


def scrape(port: int) -> Scrape | None:
    """raysel's metrics on the endpoint now; None while it is not up."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    return [(name, labels, float(value))
            for name, labels, value in re.findall(r"^(ray_raysel_\w+)\{([^}]*)\} (\S+)", text, flags=re.M)]


def scrape_until_swept(driver: subprocess.Popen, port: int, workdir: Path,
                       keep: Callable[[Scrape | None, bool], None], until: Callable[[], bool]) -> None:
    """Scrape every half second, handing ``keep`` each scrape and whether the sweep had ended by then, until the
    sweep has ended and ``until()`` holds (on the driver's own Ray, whose endpoint outlives the sweep; a sweep
    that started its own Ray shuts it down, and the endpoint with it, before it returns) or the driver gave up
    after 120 s; the driver must exit 0."""
    try:
        while driver.poll() is None and not ((workdir / "swept").exists() and until()):
            found = scrape(port)
            keep(found, (workdir / "swept").exists())  # not ended after the scrape: it was before the end
            time.sleep(0.5)
        (workdir / "scraped").touch()
        assert driver.wait(timeout=600) == 0
    finally:
        if driver.poll() is None:
            driver.kill()


@pytest.mark.system  # the sweep runs in a subprocess with a local Ray
def test_every_metric_the_grafana_dashboard_queries_is_on_rays_prometheus_endpoint(tmp_path):
    port = free_port()
    spec = {"name": "telemetry", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
            "arms": [{"name": "igf", "method": "igf", "params": IGF},
                     {"name": "kernel", "method": "kernel", "params": KERNEL, "model": {"name": "tiny-bert"},
                      "data": {"name": "pydocs-topics", "k": 4}}],
            "protocol": {"kind": "seeds", "seeds": [13], "metric": "test_perplexity", "mode": "min"},
            "resources": {"max_concurrent_trials": 2}, "ray": {"num_cpus": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}  # reports every second, not every 10
    # on the driver's own Ray, whose endpoint outlives the sweep until the final counts were scraped (a sweep's
    # own Ray ends when it returns, maybe before its last counts were exported; the spec's port on a sweep's own
    # Ray is the next test's)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=False, ray_port=port)], env=env,
                              cwd=tmp_path)
    seen: dict[str, set[str]] = {}  # metric → the sweep tags it carried
    values: dict[str, list[float]] = {}  # metric → every value scraped, in order
    present: list[set[tuple[str, str]]] = []  # per scrape before the sweep ended: the (metric, labels) on it
    wanted = dashboard_metrics()

    def keep(found: Scrape | None, swept: bool) -> None:
        for name, labels, value in found or []:
            seen.setdefault(name, set()).update(re.findall(r'sweep="([^"]*)"', labels))
            values.setdefault(name, []).append(value)
        if found is not None and not swept:
            present.append({(name, re.sub(r',?Component="[^"]*"|,?WorkerId="[^"]*"', "", labels))
                            for name, labels, _ in found})

    def final() -> bool:  # every wanted metric seen, and the final counts exported
        return wanted <= set(seen) and all(values[name][-1] == 2 for name in
                                           ("ray_raysel_trials_finished", "ray_raysel_phase_trials_done"))

    # while the sweep runs (gauges of running trials) and after it (the final counts)
    scrape_until_swept(driver, port, tmp_path, keep, until=final)
    assert len(wanted) == 12
    assert wanted <= set(seen), f"missing on the endpoint: {sorted(wanted - set(seen))}"
    assert all(seen[name] == {"telemetry"} for name in wanted)
    # the sweep counts reached their final values (2 trials, none failed), and never went backwards
    finished = values["ray_raysel_trials_finished"]
    assert finished[-1] == 2 and finished == sorted(finished)
    assert set(values["ray_raysel_trials_failed"]) == {0.0}
    assert set(values["ray_raysel_phase_trials_total"]) == {2.0} and values["ray_raysel_phase_trials_done"][-1] == 2
    assert all(v > 1 for v in values["ray_raysel_trial_metric"])  # IGF's test perplexity
    assert all(v > 0 for v in values["ray_raysel_trial_tokens_per_second"] + values["ray_raysel_trial_train_loss"])
    # no gaps: a series, once on the endpoint, stays there at every scrape until its last one (the sweep's
    # gauges and a trial's are set again every second or two, also while a trial reports nothing)
    series = set().union(*present)
    for one in series:
        scrapes = [i for i, found in enumerate(present) if one in found]
        assert scrapes == list(range(scrapes[0], scrapes[-1] + 1)), f"{one} missing from scrapes in between"
    assert len(present) >= 10 and any(len([f for f in present if one in f]) >= 6 for one in series)


@pytest.mark.system
def test_the_finished_count_survives_resume(tmp_path):
    """A sweep of 4 trials is interrupted (Ctrl+C) after 2 finished; resumed, its finished gauge starts from
    those and ends at 4, never lower than before the interrupt (not from 0), and none failed."""
    spec = {"name": "counts", "method": "standard", "model": {"name": "tiny-gpt2-random"},
            "data": {"name": "pydocs"},
            "params": {"max_steps": 4, "eval_every": 2, "context_len": 32, "batch_size": 8, "eval_examples": 32},
            "protocol": {"kind": "seeds", "seeds": [0, 1, 2, 3], "metric": "test_perplexity", "mode": "min"},
            "resources": {"max_concurrent_trials": 1}, "ray": {"num_cpus": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}
    first = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=False, ray_port=None)], cwd=tmp_path,
                             start_new_session=True)
    assert interrupt_when(first, lambda: finished_trials(tmp_path / "results" / "counts", 4) >= 2) == 130
    before = tune_finished_trials(tmp_path / "results" / "counts")  # what --resume restores as finished
    assert 1 <= before < 4

    port = free_port()
    spec["ray"]["metrics_export_port"] = port
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    # on the driver's own Ray, so that the endpoint outlives the sweep until the final count was scraped (a sweep's
    # own Ray, and its endpoint, end when it returns: the last count could go before it was exported)
    resumed = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=True, ray_port=port)], env=env,
                               cwd=tmp_path)
    values: dict[str, list[float]] = {}

    def keep(found: Scrape | None, swept: bool) -> None:
        for name, _, value in found or []:
            if name in ("ray_raysel_trials_finished", "ray_raysel_trials_failed"):
                values.setdefault(name, []).append(value)

    scrape_until_swept(resumed, port, tmp_path, keep,
                       until=lambda: values.get("ray_raysel_trials_finished", [None])[-1] == 4)
    finished = values["ray_raysel_trials_finished"]
    assert finished[-1] == 4 and finished == sorted(finished)
    assert min(finished) >= before, f"counted from 0 again after --resume: {finished}"
    assert set(values["ray_raysel_trials_failed"]) == {0.0}


@pytest.mark.system
def test_a_sweep_that_starts_its_own_ray_serves_its_metrics_on_the_specs_port(tmp_path):
    """spec.ray.metrics_export_port: the local Ray a sweep starts serves the endpoint there while the sweep runs."""
    port = free_port()
    spec = {"name": "own", "method": "standard", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
            "params": {"max_steps": 2000, "eval_every": 1000, "context_len": 32, "batch_size": 8, "eval_examples": 32},
            "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"},
            "ray": {"num_cpus": 2, "metrics_export_port": port},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=False, ray_port=None)], env=env,
                              cwd=tmp_path, start_new_session=True)
    running: list[str] = []  # the sweep tags of a running trial's count on the endpoint

    def a_trial_runs() -> bool:
        running.extend(tag for name, labels, value in scrape(port) or [] if name == "ray_raysel_trials_running"
                       and value == 1 for tag in re.findall(r'sweep="([^"]*)"', labels))
        return bool(running)

    # the trial runs for minutes: it is interrupted once seen, and the sweep ending first is a failure
    assert interrupt_when(driver, a_trial_runs) == 130
    assert set(running) == {"own"}


class _Gauge:
    """Records what is set (the unit test of the counts; the tests above read Ray's real endpoint)."""

    def __init__(self, *args) -> None:
        self.values: list[float] = []

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values.append(value)


def test_the_sweep_counts_are_first_set_from_the_restored_trials_never_0_before(monkeypatch):
    from types import SimpleNamespace

    from raysel import telemetry

    monkeypatch.setattr(telemetry, "_gauge", _Gauge)
    monkeypatch.setattr(telemetry.SweepMetrics, "RESET_EVERY_S", 3600.0)  # only the callbacks set them here
    metrics = telemetry.SweepMetrics("s")
    assert all(not g.values for g in metrics.gauges.values())  # nothing until Tune has restored the trials
    restored = [SimpleNamespace(trial_id=str(i), status="TERMINATED", last_result={"done": True}) for i in range(3)]
    metrics.on_experiment_end(restored)  # a phase finished before the interrupt, restored
    metrics.on_trial_start(0, restored + [SimpleNamespace(trial_id="3", status="PENDING", last_result={})],
                           SimpleNamespace(trial_id="3"))
    assert metrics.gauges["finished"].values == [3, 3] and metrics.gauges["running"].values == [0, 1]
    # Ctrl+C: Tune marks the running trial it stops TERMINATED, but its last result is not done
    metrics.on_experiment_end(restored + [SimpleNamespace(trial_id="3", status="TERMINATED", last_result={"step": 2})])
    assert metrics.gauges["finished"].values[-1] == 3 and metrics.gauges["running"].values[-1] == 0


def test_a_trials_tokens_per_second_loss_and_objective_and_a_phases_progress(monkeypatch):
    from types import SimpleNamespace

    from raysel import telemetry

    monkeypatch.setattr(telemetry, "_gauge", _Gauge)
    trial = telemetry.TrialMetrics("s", "a", "t1", metric="test_perplexity")
    trial.record(1, {"train_tokens": 100.0, "train_loss": 2.5, "test_perplexity": 40.0})
    trial.record(2, {"train_tokens": 300.0, "train_loss": 2.0})
    trial.close()
    assert trial.method["train_loss"].values[-1] == 2.0 and trial.objective.values[-1] == 40.0
    assert len(trial.token_speed.values) >= 1 and trial.token_speed.values[-1] > 0  # 200 tokens since the last report

    monkeypatch.setattr(telemetry.SweepMetrics, "RESET_EVERY_S", 3600.0)  # only the callbacks set them here
    sweep = telemetry.SweepMetrics("s")
    sweep.start_phase("search-a", 3)
    running = [SimpleNamespace(trial_id=str(i), status="RUNNING") for i in range(2)]
    sweep.on_trial_complete(0, running, running[0])
    assert sweep.phase_gauges["done"].values[-1] == 1 and sweep.phase_gauges["total"].values[-1] == 3
    sweep.start_phase("seeds", 5)  # the next phase counts its own trials
    sweep.on_trial_start(0, [SimpleNamespace(trial_id="9", status="PENDING")], SimpleNamespace(trial_id="9"))
    assert sweep.phase_gauges["done"].values[-1] == 0 and sweep.phase_gauges["total"].values[-1] == 5


def test_the_sweep_counts_are_set_again_while_tunes_loop_is_busy_until_the_sweep_closes_them(monkeypatch):
    """No callback for a while (Tune's loop busy in a callback, a checkpoint, between phases): a thread sets
    the latest counts again; close() stops it; a pickled copy (Tune saves its callbacks) holds no thread."""
    import pickle
    import threading
    from types import SimpleNamespace

    from raysel import telemetry

    class _SignallingGauge(_Gauge):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            self.set_again = threading.Event()

        def set(self, value: float, tags: dict[str, str]) -> None:
            super().set(value, tags)
            if len(self.values) >= 3:
                self.set_again.set()

    monkeypatch.setattr(telemetry, "_gauge", _SignallingGauge)
    monkeypatch.setattr(telemetry.SweepMetrics, "RESET_EVERY_S", 0.01)
    sweep = telemetry.SweepMetrics("s")
    assert sweep.again.thread is None  # nothing set, nothing running, before the first count
    sweep.start_phase("seeds", 2)
    trials = [SimpleNamespace(trial_id="1", status="RUNNING"), SimpleNamespace(trial_id="2", status="PENDING")]
    sweep.on_trial_start(0, trials, trials[0])
    assert sweep.gauges["running"].set_again.wait(timeout=60)  # set twice more with no callback in between
    assert set(sweep.gauges["running"].values) == {1} and set(sweep.phase_gauges["total"].values) == {2}
    sweep.close()
    sweep.again.thread.join(timeout=60)
    assert not sweep.again.thread.is_alive()

    monkeypatch.setattr(telemetry, "_gauge", _Gauge)
    running = telemetry.SweepMetrics("s")
    running.on_trial_start(0, trials, trials[0])
    copy = pickle.loads(pickle.dumps(running))
    running.close()
    assert copy.again.thread is None and copy.status == running.status and not copy.again.closed.is_set()
