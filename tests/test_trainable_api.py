"""raysel.trainable in users' own Ray Tune code: tune.Tuner and the legacy tune.run."""
from __future__ import annotations

import mlflow
import pytest
from ray import tune

import raysel

pytestmark = pytest.mark.usefixtures("ray_session")

FIXED = dict(max_steps=4, eval_every=2, context_len=32, batch_size=8, eval_examples=16)


def make(tmp_path, experiment: str):
    return raysel.trainable("standard", model="tiny-gpt2-random", data="pydocs",
                            tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": experiment},
                            storage_path=str(tmp_path / "artifacts"), **FIXED)


def logged_lrs(tmp_path, experiment: str) -> list[float]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(sorted(m.step for m in client.get_metric_history(r.info.run_id, "test_perplexity")) == [0, 2, 4]
               for r in runs)
    return sorted(float(r.data.params["params.lr"]) for r in runs)


def test_trainable_in_a_users_tuner(tmp_path):
    tuner = tune.Tuner(
        make(tmp_path, "users-tuner"),
        param_space={"lr": tune.grid_search([1e-4, 1e-3]), "seed": 7},
        tune_config=tune.TuneConfig(metric="test_perplexity", mode="min"),
        run_config=tune.RunConfig(name="users-tuner", storage_path=str(tmp_path / "ray"), verbose=0),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0 and len(grid) == 2
    assert all(r.metrics["step"] == 4 for r in grid)
    assert grid.get_best_result().config["lr"] in (1e-4, 1e-3)
    assert logged_lrs(tmp_path, "users-tuner") == [1e-4, 1e-3]


def test_trainable_in_legacy_tune_run(tmp_path):
    analysis = tune.run(
        make(tmp_path, "users-tune-run"),
        config={"lr": tune.grid_search([2e-4, 2e-3])},
        metric="test_perplexity", mode="min", storage_path=str(tmp_path / "ray"), name="users-tune-run",
        verbose=0,
    )
    assert len(analysis.trials) == 2 and all(t.status == "TERMINATED" for t in analysis.trials)
    assert analysis.best_config["lr"] in (2e-4, 2e-3)
    assert logged_lrs(tmp_path, "users-tune-run") == [2e-4, 2e-3]


def test_trainable_rejects_unknown_fixed_params():
    with pytest.raises(ValueError, match="no parameter"):
        raysel.trainable("standard", learning_rate=1e-4, tracking=False)


def test_trainable_refuses_more_workers_than_the_method_runs_on():
    with pytest.raises(ValueError, match=r"workers=2, but 'opf' runs on at most 1 worker\(s\) per trial"):
        raysel.trainable("opf", workers=2, tracking=False)


def test_a_trial_whose_params_break_a_rule_still_has_its_failed_run(tmp_path):
    """Params are checked inside the trial (a user's param_space is not a raysel spec): the failure is
    an MLflow run, FAILED, with the reason, not a trial missing from MLflow."""
    tuner = tune.Tuner(make(tmp_path, "bad-point"), param_space={"warmup_steps": 10, "seed": 0},
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=0)))
    (result,) = tuner.fit()
    assert result.error is not None
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("bad-point").experiment_id])
    assert run.info.status == "FAILED"
    assert "warmup_steps (10) must be below max_steps (4)" in run.data.tags["raysel.failure"]
