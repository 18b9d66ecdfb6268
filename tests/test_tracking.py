"""MLflow helpers (flattening, secret redaction, URIs, run reuse) and the progress display."""
from __future__ import annotations

import io
from types import SimpleNamespace

import mlflow
import pytest
from rich.console import Console

from raysel.progress import SweepProgress
from raysel.tracking import (REDACTED, TrackingInfo, TrialLogger, ensure_experiment, flatten, loggable_params,
                             redact, resolve_uri)


def test_flatten_nested_params():
    assert flatten({"params": {"lr": 1e-4, "opt": {"eps": 1e-8}}, "seed": 3}) == \
        {"params.lr": 1e-4, "params.opt.eps": 1e-8, "seed": 3}


def test_secret_looking_values_are_never_logged():
    flat = redact({"params.hf_token": "hf_abc", "tracking.password": "pw", "api_key": "k", "data.key": "x",
                   "aws.secret": "s", "params.lr": 1e-4, "params.keyword": "kept", "params.monkey_count": 3,
                   "data.name": "https://user:hunter2@example.com/data.txt"})
    assert flat["params.hf_token"] == flat["tracking.password"] == flat["api_key"] == REDACTED
    assert flat["data.key"] == flat["aws.secret"] == REDACTED
    assert flat["params.lr"] == 1e-4 and flat["params.keyword"] == "kept" and flat["params.monkey_count"] == 3
    assert "hunter2" not in flat["data.name"] and "user:***@example.com" in flat["data.name"]
    assert all(isinstance(v, str) for v in loggable_params({"a": {"b": [1, 2]}}).values())


def test_relative_sqlite_uris_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_restarted_trial_reuses_its_run_and_secrets_stay_out(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    info = TrackingInfo(uri=uri, experiment_id=ensure_experiment(uri, "e"), sweep="s")
    first = TrialLogger(info, "trial-1", "run", {"raysel.arm": "a"}, {"params": {"lr": 0.1, "hub_token": "xyz"}})
    first.log_metrics(3, {"loss": 1.5, "note": "not a number"})
    first.finish("FAILED")
    again = TrialLogger(info, "trial-1", "run", {"raysel.arm": "a"}, {"params": {"lr": 0.1}})
    assert again.run_id == first.run_id
    run = mlflow.MlflowClient(uri).get_run(again.run_id)
    assert run.info.status == "RUNNING" and run.data.params["params.hub_token"] == REDACTED
    assert run.data.metrics == {"loss": 1.5}
    other = TrialLogger(info, "trial-2", "run", {}, {})
    assert other.run_id != first.run_id
    # raysel's own tags keep their values (a cache key is no secret); a URI's password is still hidden
    again.set_tags({"igf.learner_key": "igf-learner-0123abcd", "raysel.store": "https://u:hunter2@host/x"})
    tags = mlflow.MlflowClient(uri).get_run(again.run_id).data.tags
    assert tags["igf.learner_key"] == "igf-learner-0123abcd" and tags["raysel.store"] == "https://u:***@host/x"


def test_a_new_sqlite_store_is_a_copy_of_an_empty_migrated_one(tmp_path, monkeypatch):
    """MLflow migrates a new store's schema (~2 s); raysel does that once into its cache and copies the
    empty store: the same schema, the Default experiment at this store's artifact root, the file's
    mode; an existing store is never replaced."""
    import os
    import sqlite3

    from mlflow.store.db import utils

    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").mkdir()
    mlflow.MlflowClient(tracking_uri="sqlite:///plain/mlflow.db").search_experiments()  # MLflow's own
    ensure_experiment("sqlite:///first.db", "e")  # migrated once, into the cache
    assert (tmp_path / "cache" / f"mlflow-{mlflow.__version__}-empty-store.db").is_file()

    def no_migrations(*args, **kwargs):
        raise AssertionError("the store should be a copy: MLflow migrated it")
    monkeypatch.setattr(utils, "_initialize_tables", no_migrations)
    experiment_id = ensure_experiment("sqlite:///second.db", "e")
    client = mlflow.MlflowClient(tracking_uri="sqlite:///second.db")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 1.5}

    def schema(path):  # tables, indexes, each definition's lines (MLflow's migrations order constraints at random)
        with sqlite3.connect(path) as db:
            return (sorted((kind, name, sorted(line.strip(" ,") for line in (sql or "").splitlines()))
                           for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master")),
                    db.execute("SELECT * FROM alembic_version").fetchall())
    assert schema(tmp_path / "second.db") == schema(tmp_path / "plain" / "mlflow.db")
    default = client.get_experiment("0")
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
    assert os.stat(tmp_path / "second.db").st_mode == os.stat(tmp_path / "plain" / "mlflow.db").st_mode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no copy left behind
    (tmp_path / "third.db").write_bytes(b"")  # a store another process just made: not replaced
    from raysel import tracking
    tracking._new_sqlite_store(tmp_path / "third.db")
    assert (tmp_path / "third.db").read_bytes() == b""


def test_progress_counts_trials_and_tracks_the_best_metric():
    out = io.StringIO()
    progress = SweepProgress("s", "seeds", 3, "test_perplexity", "min", console=Console(file=out, width=120))
    # Tune's trials, as its callbacks see them: a trial's status changes after the callback of its event
    trials = [SimpleNamespace(trial_id=f"t{i}", last_result={}, path=f"/tmp/t{i}", status="PENDING") for i in range(3)]
    with progress:
        for trial in trials:
            progress.on_trial_start(0, trials, trial)
            trial.status = "RUNNING"
        progress.on_trial_result(0, trials, trials[0], {"test_perplexity": 50.0})
        progress.on_trial_result(0, trials, trials[1], {"test_perplexity": 40.0})
        progress.on_trial_result(0, trials, trials[1], {"test_perplexity": float("nan")})
        trials[0].last_result = {"test_perplexity": 50.0, "step": 6, "done": True}
        progress.on_trial_complete(0, trials, trials[0])
        trials[0].status = "TERMINATED"
        progress.on_trial_error(0, trials, trials[2])
        trials[2].status = "ERROR"
    assert progress.best == 40.0 and progress.done == 1 and progress.failed == 1 and progress.running == {"t1"}
    text = out.getvalue()
    assert "trial t0 done: test_perplexity=50" in text and "trial t2 failed" in text
    assert "best test_perplexity 40" in text


def test_the_driver_closes_a_stopped_trials_open_run_tagged_and_leaves_a_closed_one_as_it_is(tmp_path):
    """Tune can end a stopped trial's actor before the trial's own SystemExit handler tags and closes
    its run (seen in CI: ASHA- and median-stopped runs FINISHED untagged; Tune marks a stopped trial's
    last result done=True like a finished one's). A trial that ran to its end closed its run before
    returning, so a run still open when Tune completes the trial was stopped: the driver tags and
    closes it; a closed run keeps its own status and tags."""
    from raysel.results import RUN_ID_KEY

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = ensure_experiment(uri, "e")
    stopped, finished, tagged = (client.create_run(experiment).info.run_id for _ in range(3))
    client.set_terminated(finished, status="FINISHED")  # ran to its end: closed by its trial, untagged
    client.set_tag(tagged, "raysel.stopped_by_scheduler", "true")  # stopped: its own handler was first
    client.set_terminated(tagged, status="FINISHED")
    progress = SweepProgress("s", "search", 3, "dev_perplexity", "min", tracking_uri=uri,
                             console=Console(file=io.StringIO()))
    trials = [SimpleNamespace(trial_id=f"t{i}", path="", status="RUNNING",
                              last_result={"dev_perplexity": 9.0, "step": 2, RUN_ID_KEY: run, "done": True})
              for i, run in enumerate((stopped, finished, tagged))]
    with progress:
        for trial in trials:
            progress.on_trial_complete(0, trials, trial)
    runs = {run: client.get_run(run) for run in (stopped, finished, tagged)}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[stopped].data.tags.get("raysel.stopped_by_scheduler") == "true"
    assert runs[tagged].data.tags.get("raysel.stopped_by_scheduler") == "true"
    assert "raysel.stopped_by_scheduler" not in runs[finished].data.tags


class _RacingClient:
    """log_inputs as a store answers when another run inserted the same dataset row at the same moment
    (the first call fails on the unique key, as MLflow's server did in CI), then as it answers after."""

    def __init__(self, error: str):
        self.error, self.calls = error, 0

    def log_inputs(self, run_id, datasets):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls == 1:
            raise MlflowException(self.error)


def test_dataset_inputs_are_logged_again_once_when_another_run_inserted_the_same_dataset():
    from mlflow.exceptions import MlflowException

    from raysel.tracking import log_inputs_once_more_on_a_race

    racing = _RacingClient("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
    log_inputs_once_more_on_a_race(racing, "r", [])
    assert racing.calls == 2
    other = _RacingClient("RESOURCE_DOES_NOT_EXIST: run r")
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        log_inputs_once_more_on_a_race(other, "r", [])
    assert other.calls == 1
