"""Real faults: a trial process killed mid-run, a sweep interrupted and resumed."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from sweep_helpers import DRIVER, a_trial_reported, finished_trials, interrupt_when

import raysel

pytestmark = pytest.mark.usefixtures("ray_session")


def trial_pid(trial_dir: Path) -> int | None:
    """The PID of the actor running this trial, from Tune's own results (only this test's trial:
    other Ray sessions on the machine are left alone)."""
    lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").exists() else []
    return json.loads(lines[-1])["pid"] if lines else None


def kill_trial_after_checkpoint(sweep_dir: Path, killed: list[int], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for checkpoint in sweep_dir.glob("*/trial_*/checkpoint_*"):
            pid = trial_pid(checkpoint.parent)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.2)


def test_a_killed_trial_restarts_from_its_checkpoint_and_logs_no_duplicates(lm_spec):
    # an Optuna search: its searcher fails the sweep on a result without the objective in it
    spec = lm_spec(name="crash", params={"max_steps": 60, "eval_every": 10},
                   search_space={"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-3}},
                   protocol={"kind": "search", "num_samples": 1, "metric": "test_perplexity", "mode": "min"},
                   resources={"max_failures": 2, "max_concurrent_trials": 1})
    sweep_dir = Path(spec["storage_path"]) / "crash"
    killed: list[int] = []
    watcher = threading.Thread(target=kill_trial_after_checkpoint, args=(sweep_dir, killed), daemon=True)
    watcher.start()
    result = raysel.run_sweep(spec, progress=False)
    watcher.join(timeout=5)

    assert killed, "the trial finished before it could be killed"
    assert result.num_errors == 0 and result.trials.iloc[0]["step"] == 60
    (trial_dir,) = sweep_dir.glob("*/trial_*")
    results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    steps = [r["step"] for r in results]
    assert steps.count(0) <= 1 and steps[-1] == 60, "a restart from scratch would evaluate step 0 again"
    assert all("test_perplexity" in r for r in results), "a result after the restart lacks the objective"
    client = mlflow.MlflowClient(result.tracking_uri)
    runs = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                              filter_string="tags.`raysel.role` = 'trial'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, not a second one
    restored_from = int(runs[0].data.tags["raysel.restored_from_step"])
    assert restored_from >= 10 and restored_from % 10 == 0  # resumed from a checkpoint, not from step 0
    logged = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert sorted(logged) == list(range(1, 61))  # replayed steps are not logged twice


def four_trials_in_a_driver(lm_spec, ray_session, name: str) -> tuple[dict, Path, subprocess.Popen]:
    """A sweep of four 20-step trials, one at a time, driven by a subprocess on the test's Ray (its own
    process group, so that a signal reaches the driver alone): the spec, its directory, the driver."""
    spec = lm_spec(name=name, params={"max_steps": 20, "eval_every": 10},
                   protocol={"kind": "seeds", "seeds": [0, 1, 2, 3], "metric": "test_perplexity", "mode": "min"},
                   resources={"max_concurrent_trials": 1},
                   ray={"address": ray_session.get_runtime_context().gcs_address})
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=False)], start_new_session=True)
    return spec, Path(spec["storage_path"]) / name, driver


@pytest.mark.parametrize("stop, exit_code", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["ctrl-c", "driver-killed"])
def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(lm_spec, ray_session, stop, exit_code):
    """Ctrl-C, or the driver SIGKILLed mid-trial (no chance to save anything): `--resume` finishes the
    sweep, finished trials are not run again, and MLflow has exactly one run per trial, all FINISHED."""
    spec, sweep_dir, driver = four_trials_in_a_driver(lm_spec, ray_session, "resume")
    # SIGINT is what Ctrl-C does: Tune returns normally, and raysel must notice (or it would start the
    # next phase); SIGKILL ends the driver at once, in the middle of the next trial
    assert interrupt_when(driver, lambda: finished_trials(sweep_dir, 20) >= 2, stop) == exit_code
    before = finished_trials(sweep_dir, 20)
    assert before < 4, "the sweep finished before the interrupt"
    parent_before = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]

    result = raysel.run_sweep(spec, resume=True, progress=False)

    assert result.num_errors == 0 and sorted(result.trials["seed"]) == [0, 1, 2, 3]
    assert result.parent_run_id == parent_before
    client = mlflow.MlflowClient(result.tracking_uri)
    runs = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                              filter_string="tags.`raysel.role` = 'trial'")
    seeds = sorted(int(r.data.tags["raysel.seed"]) for r in runs)
    assert seeds == [0, 1, 2, 3], "one MLflow run per trial: finished trials were not run again"
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 21))


def test_ctrl_c_while_the_phases_last_trials_run_is_an_interrupt_not_a_finished_sweep(lm_spec, ray_session):
    """Ctrl-C with no trial pending: Tune marks the running trials it stops TERMINATED, as if they had finished;
    raysel counts only trials whose last result is done, so the sweep is interrupted (exit 130, parent run
    KILLED), not FINISHED with a trial cut short."""
    spec = lm_spec(name="last", params={"max_steps": 5000, "eval_every": 10},
                   protocol={"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"},
                   ray={"address": ray_session.get_runtime_context().gcs_address})
    sweep_dir = Path(spec["storage_path"]) / "last"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=False)], start_new_session=True)
    assert interrupt_when(driver, lambda: a_trial_reported(sweep_dir)) == 130
    state = json.loads((sweep_dir / "sweep.json").read_text())
    parent = mlflow.MlflowClient(state["tracking_uri"]).get_run(state["parent_run_id"])
    assert parent.info.status == "KILLED"
    assert "interrupted in phase seeds (0 of 1 trials ended)" in parent.data.tags["raysel.interrupted"]


@pytest.mark.parametrize("how", ["raysel-stop", "sigterm"])
def test_a_graceful_stop_lets_running_trials_finish_starts_no_new_one_and_resumes(lm_spec, ray_session, how):
    """`raysel stop` (or SIGTERM to the driver) once the first of four trials (one at a time) has reported:
    the running trial finishes, the later ones are deferred without an MLflow run, the parent run is KILLED
    and tagged; `--resume` runs exactly the deferred ones."""
    from raysel.cli import main
    from raysel.stopping import STOP_FILE

    spec, sweep_dir, driver = four_trials_in_a_driver(lm_spec, ray_session, "graceful")
    try:
        deadline = time.monotonic() + 400
        while not a_trial_reported(sweep_dir):
            assert driver.poll() is None and time.monotonic() < deadline, "the sweep ended before the stop"
            time.sleep(0.5)
        if how == "sigterm":
            os.kill(driver.pid, signal.SIGTERM)
        else:
            assert main(["stop", str(sweep_dir)]) == 0
        assert driver.wait(timeout=300) == 130
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    finished = finished_trials(sweep_dir, 20)
    assert 1 <= finished < 4, "the running trial finishes; the ones after it do not start"
    assert json.loads((sweep_dir / STOP_FILE).read_text())["requested_by"] == (
        "SIGTERM to the driver" if how == "sigterm" else "raysel stop")
    state = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow.MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "KILLED"
    assert f"{finished} trial(s) finished, {4 - finished} not started" in parent.data.tags["raysel.stopped"]
    runs = client.search_runs([parent.info.experiment_id], filter_string="tags.`raysel.role` = 'trial'")
    assert len(runs) == finished and all(r.info.status == "FINISHED" for r in runs)  # deferred: no run

    result = raysel.run_sweep(spec, resume=True, progress=False)

    assert result.num_errors == 0 and sorted(result.trials["seed"]) == [0, 1, 2, 3]
    assert not (sweep_dir / STOP_FILE).exists()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and "raysel.stopped" not in parent.data.tags
    runs = client.search_runs([parent.info.experiment_id], filter_string="tags.`raysel.role` = 'trial'")
    assert sorted(int(r.data.tags["raysel.seed"]) for r in runs) == [0, 1, 2, 3]  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_trial_whose_loss_diverges_fails_with_the_reason_and_the_sweep_goes_on(lm_spec):
    """SGD at lr 1e6 without clipping: the loss becomes inf/NaN within a few steps. That trial stops,
    is FAILED in MLflow with the reason as a tag, the other arm finishes, the report lists the failure."""
    params = {"task": "causal_lm", "max_steps": 6, "eval_every": 3, "context_len": 32, "batch_size": 8,
              "eval_examples": 32}
    spec = lm_spec(method=None, params=None, protocol={"seeds": [0]}, resources={"max_failures": 0},
                   arms=[{"name": "fine", "method": "standard", "params": params},
                         {"name": "diverges", "method": "standard",
                          "params": {**params, "optimizer": "sgd", "lr": 1e6, "max_grad_norm": None}}])
    result = raysel.run_sweep(spec, progress=False)
    trials = result.trials.set_index("arm")
    assert result.num_errors == 1 and "NonFiniteLossError" in trials.loc["diverges", "error"]
    assert trials.loc["fine", "test_perplexity"] > 0
    run = mlflow.MlflowClient(result.tracking_uri).get_run(trials.loc["diverges", "mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert re.match(r"NonFiniteLossError: training loss became (nan|inf) at step \d: the trial is stopped",
                    run.data.tags["raysel.failure"])
    notes = result.report.notes
    assert any("1 failed trial(s) left out of every statistic" in n and "diverges, seed 0: NonFiniteLossError" in n
               for n in notes), notes


def test_the_reason_of_a_failed_trial_from_its_tune_error_file(tmp_path):
    """Without MLflow the report reads the reason from Ray Tune's error.txt: its last exception line."""
    from raysel.report.sources import _error_line

    error = tmp_path / "error.txt"
    error.write_text("Failure # 1 (occurred at 2026-11-23_18-10-00)\nray::raysel_trial.train() (pid=1)\n"
                     "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                     "raysel.methods.base.NonFiniteLossError: training loss became nan at step 3: stopped\n")
    assert _error_line(error) == "raysel.methods.base.NonFiniteLossError: training loss became nan at step 3: stopped"
    error.write_text("no exception line here\n")
    assert _error_line(error) is None
