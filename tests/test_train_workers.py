"""A trial as the driver of a 2-worker Ray Train TorchTrainer (DDP over gloo on CPU)."""
from __future__ import annotations

import math

import mlflow
import pytest

import raysel

pytestmark = pytest.mark.usefixtures("ray_session")


def test_two_worker_torchtrainer_trial_reports_through_tune_and_logs_once(lm_spec):
    spec = lm_spec(name="ddp", resources={"workers": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1},
                   protocol={"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"})
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0 and len(result.trials) == 1
    row = result.trials.iloc[0]
    assert row["step"] == 6 and math.isfinite(row["test_perplexity"])
    client = mlflow.MlflowClient(result.tracking_uri)
    (run,) = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                                filter_string="tags.`raysel.role` = 'trial'")
    assert run.data.tags["raysel.world_size"] == "2"  # really two DDP ranks
    assert run.info.status == "FINISHED"
    # only rank 0 logs: one value per step, at the loop's steps
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_perplexity")) == [0, 3, 6]
    train_runs = list(result.storage_path.glob("train-*"))
    assert train_runs and any(train_runs[0].glob("checkpoint_*"))  # Ray Train kept the trial's checkpoints
