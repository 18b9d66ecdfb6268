"""The search phases' persistent Optuna studies: Tune's trials in them one for one, a killed driver's sweep
resumed in the same study, the report and optuna-dashboard reading it, and bad storage URLs refused."""
from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
from sweep_helpers import DRIVER, finished_trials, interrupt_when

import raysel
from raysel import studies
from raysel.spec import SpecError
from raysel.tracking import ABANDONED_TAG


def search_spec(lm_spec, name: str, num_samples: int, **sections) -> dict:
    return lm_spec(name=name, params={"max_steps": 6, "eval_every": 3},
                   search_space={"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2}},
                   protocol={"kind": "search", "num_samples": num_samples, "metric": "test_perplexity",
                             "mode": "min", "sampler": {"n_startup_trials": 2}},
                   resources={"max_concurrent_trials": 1}, **sections)


def trial_runs(tracking_uri: str, parent_run_id: str) -> list:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], filter_string="tags.`raysel.role` = 'trial'")


def assert_one_for_one(study: optuna.Study, runs: list, num_samples: int) -> None:
    """The study's COMPLETE trials are the FINISHED MLflow runs, one each, with the same lr and objective; its
    abandoned trials (FAIL) are the KILLED runs tagged raysel.abandoned; no study trial is left RUNNING."""
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "FAIL"}, states
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == num_samples
    finished = {r.data.tags["raysel.trial_id"]: r for r in runs if r.info.status == "FINISHED"}
    assert sorted(finished) == sorted(t.user_attrs[studies.TRIAL_ID_ATTR] for t in complete), "one run per trial"
    for trial in complete:
        run = finished[trial.user_attrs[studies.TRIAL_ID_ATTR]]
        assert math.isclose(float(run.data.params["params.lr"]), trial.params["variant/params/lr"], rel_tol=1e-9)
        assert math.isclose(run.data.metrics["test_perplexity"], trial.value, rel_tol=1e-9)
    killed = sorted(r.data.tags["raysel.trial_id"] for r in runs if r.info.status != "FINISHED")
    assert all(r.info.status == "KILLED" and ABANDONED_TAG in r.data.tags for r in runs if r.info.status != "FINISHED")
    abandoned = sorted(t.user_attrs[studies.TRIAL_ID_ATTR] for t in study.trials if t.state.name == "FAIL")
    assert killed == abandoned


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_search_keeps_its_study_and_the_report_and_optuna_dashboard_read_it(lm_spec, tmp_path):
    result = raysel.run_sweep(search_spec(lm_spec, "study", 3), progress=False)

    url = f"sqlite:///{result.storage_path / studies.STUDY_FILE}"
    study = optuna.load_study(study_name="study/search-standard", storage=url)
    assert_one_for_one(study, trial_runs(result.tracking_uri, result.parent_run_id), 3)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert all(len(t.intermediate_values) >= 2 for t in study.trials)  # each evaluation, as it came
    report = result.report
    assert sorted(report.search["optuna_trial"]) == [0, 1, 2]
    assert set(report.search["optuna_state"]) == {"COMPLETE"}
    assert f"Optuna studies in {url}: standard 3 complete; browse them with: optuna-dashboard {url}" in report.notes

    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), url, "--host", "127.0.0.1",
                                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listed = get_json(f"http://127.0.0.1:{port}/api/studies", timeout_s=60)
        (summary,) = listed["study_summaries"]
        assert summary["study_name"] == "study/search-standard"
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout_s=10)
        assert len(detail["trials"]) == 3
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


@pytest.mark.slow
def test_a_killed_driver_resumes_in_the_same_study_without_duplicated_or_lost_trials(lm_spec, ray_session):
    """The driver SIGKILLed after two of five search trials have finished: `--resume` goes on in the same
    Optuna study; its COMPLETE trials are the MLflow runs one for one, nothing is left RUNNING."""
    spec = search_spec(lm_spec, "killed", 5, ray={"address": ray_session.get_runtime_context().gcs_address})
    sweep_dir = Path(spec["storage_path"]) / "killed"
    url = f"sqlite:///{sweep_dir / studies.STUDY_FILE}"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(spec=spec, resume=False)], start_new_session=True)

    # judged from Tune's files: a second process opening the SQLite file while the driver makes its tables
    # races it (both would create them)
    two_finished = lambda: finished_trials(sweep_dir, 6, phase="search-standard") >= 2  # noqa: E731
    assert interrupt_when(driver, two_finished, signal.SIGKILL) == -signal.SIGKILL
    before = optuna.load_study(study_name="killed/search-standard", storage=url).trials
    assert len([t for t in before if t.state.name == "COMPLETE"]) < 5, "the search finished before the kill"

    result = raysel.run_sweep(spec, resume=True, progress=False)

    assert result.num_errors == 0
    study = optuna.load_study(study_name="killed/search-standard", storage=url)
    assert optuna.get_all_study_names(url) == ["killed/search-standard"]
    assert_one_for_one(study, trial_runs(result.tracking_uri, result.parent_run_id), 5)
    for old in before:  # what the killed driver left stays in the study (finished) or is closed as abandoned
        now = study.trials[old.number]
        assert now.state.name == "COMPLETE" or (now.state.name == "FAIL" and studies.ABANDONED_ATTR in now.user_attrs)
    abandoned = [t for t in study.trials if t.state.name == "FAIL"]
    if abandoned:  # a trial started after Tune last saved its state (the kill's timing decides): named, left out
        assert any(f"{len(abandoned)} trial run(s) abandoned by a killed driver" in n for n in result.report.notes)
    assert len(result.report.search) == 5


def test_a_trial_with_an_objective_optuna_refuses_is_told_failed_and_a_restore_closes_abandoned_trials(tmp_path):
    """NaN is no value for Optuna: the trial becomes FAIL, not RUNNING forever. A searcher restored from a
    state saved before it asked for a trial marks that trial FAIL with raysel.abandoned."""
    from ray import tune

    url = f"sqlite:///{tmp_path / studies.STUDY_FILE}"

    def searcher():
        search = studies.StudySearch(storage=studies.open_storage(url), study_name="s/search-a",
                                     sampler=optuna.samplers.RandomSampler(seed=0))
        search.set_search_properties("m", "min", {"lr": tune.uniform(0, 1)})
        return search

    search = searcher()
    search.suggest("t1")
    search.on_trial_result("t1", {"other": 1.0, "training_iteration": 1})  # a report without the metric
    search.on_trial_result("t1", {"m": 0.7, "training_iteration": 2})
    search.on_trial_complete("t1", {"m": float("nan")})
    search.suggest("t2")
    search.save(str(tmp_path / "state.pkl"))
    search.suggest("t3")  # asked after Tune's state was saved: the driver dies here
    restored = studies.StudySearch()
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_complete("t2", {"m": 0.5})

    trials = optuna.load_study(study_name="s/search-a", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "FAIL"]
    assert trials[0].intermediate_values == {2: 0.7}
    assert [t.user_attrs[studies.TRIAL_ID_ATTR] for t in trials] == ["t1", "t2", "t3"]
    assert studies.ABANDONED_ATTR in trials[2].user_attrs and studies.ABANDONED_ATTR not in trials[0].user_attrs


@pytest.mark.parametrize("url, expected", [
    ("not a url", "is not an SQLAlchemy URL"),
    ("sqlite://", "is not a SQLite file"),
    ("sqlite:////no/such/dir/optuna.db", "the directory /no/such/dir does not exist"),
    ("nosuchdb://host/db", "no database driver for it on this machine"),
    ("postgresql+psycopg2://u@127.0.0.1:1/db", "no database driver for it on this machine"),
])
def test_a_study_storage_that_cannot_hold_studies_is_named(url, expected):
    problem = studies.url_problem(url)
    assert problem is not None and expected in problem, problem


def test_study_storage_is_refused_where_no_study_is_kept_and_where_a_sweep_of_that_name_left_one(lm_spec, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with pytest.raises(SpecError, match="protocol.study_storage: only the Optuna searchers"):
        raysel.run_sweep(lm_spec(protocol={"study_storage": url}), progress=False)
    spec = search_spec(lm_spec, "taken", 2, storage_path=str(tmp_path / "elsewhere"))
    spec["protocol"]["study_storage"] = url
    optuna.create_study(study_name="taken/search-standard", storage=url)
    with pytest.raises(SpecError, match="already holds the study 'taken/search-standard' of an earlier sweep"):
        raysel.run_sweep(spec, progress=False)
    assert not (tmp_path / "elsewhere").exists(), "nothing created before the error"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout_s: float) -> dict:
    """GET ``url`` as JSON, retrying until the server answers (it is starting) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_killed_drivers_leftover_trial_runs_are_closed_as_abandoned_and_left_out_of_statistics(tmp_path):
    """Runs still RUNNING when a sweep ends (its killed driver's, unknown to Tune) end KILLED with
    raysel.abandoned; the report's statistics leave KILLED runs out, as they do FAILED ones."""
    import pandas as pd

    from raysel.report.stats import usable
    from raysel.tracking import close_abandoned_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("e")
    parent = client.create_run(experiment, tags={"raysel.role": "sweep"}).info.run_id
    runs = {}
    for trial_id in ("done", "left"):
        runs[trial_id] = client.create_run(experiment, tags={"raysel.role": "trial", "raysel.trial_id": trial_id,
                                                             "mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(runs["done"], "FINISHED")
    other = client.create_run(experiment, tags={"raysel.role": "trial", "raysel.trial_id": "elsewhere"}).info.run_id

    assert close_abandoned_runs(uri, experiment, parent) == ["left"]

    left = client.get_run(runs["left"])
    assert left.info.status == "KILLED" and ABANDONED_TAG in left.data.tags
    assert client.get_run(runs["done"]).info.status == "FINISHED"
    assert client.get_run(other).info.status == "RUNNING", "another sweep's run is not touched"
    frame = pd.DataFrame({"trial_id": ["done", "left", "failed"], "status": ["FINISHED", "KILLED", "FAILED"]})
    assert list(usable(frame)["trial_id"]) == ["done"]
