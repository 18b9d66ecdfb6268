"""The spec's ``checkpoints:`` section: what a trial keeps while it runs and after it finished, for
in-process trials (Ray Tune's checkpoints) and trials on Ray Train workers (the Train run's)."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

import raysel

pytestmark = pytest.mark.usefixtures("ray_session")

# checkpoints at steps 2, 4, 6 and 8
PARAMS = {"task": "causal_lm", "max_steps": 8, "eval_every": 2, "context_len": 32, "batch_size": 8,
          "eval_examples": 16}


def _checkpoints(directory: Path) -> set[str]:
    return {p.name for p in directory.rglob("checkpoint_*") if p.is_dir()}


def _checkpointed_results(trial_dir: Path) -> list[dict]:
    """Tune's results that came with a checkpoint, in order (each names its checkpoint directory)."""
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    return [r for r in rows if r.get("should_checkpoint") or r.get("checkpoint_dir_name")]


def test_a_finished_trial_keeps_no_checkpoint_when_its_results_are_logged(lm_spec):
    result = raysel.run_sweep(lm_spec(params=PARAMS, protocol={"seeds": [0]}), progress=False)
    assert result.num_errors == 0 and result.trials.iloc[0]["step"] == 8
    assert _checkpoints(result.storage_path) == set()
    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.trials.iloc[0]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test_perplexity" in run.data.metrics


def test_keep_the_best_by_a_metric_and_the_latest(lm_spec):
    spec = lm_spec(params=PARAMS, protocol={"seeds": [0]},
                   checkpoints={"keep": 1, "keep_best_by": "test_perplexity", "keep_finished": True})
    result = raysel.run_sweep(spec, progress=False)
    (trial_dir,) = result.storage_path.glob("seeds/trial_*")
    saved = [r for r in _checkpointed_results(trial_dir) if r.get("checkpoint_dir_name")]
    assert [r["step"] for r in saved] == [2, 4, 6, 8]
    best = min(saved, key=lambda r: r["test_perplexity"])
    assert _checkpoints(trial_dir) == {best["checkpoint_dir_name"], saved[-1]["checkpoint_dir_name"]}


def test_a_ray_train_trial_keeps_its_latest_checkpoint_only(lm_spec):
    """Ray Train's own checkpoints (not Tune's) obey the section too: one kept while the trial runs,
    and none after it finished unless keep_finished."""
    resources = {"workers": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1}
    kept = raysel.run_sweep(lm_spec(name="kept", params=PARAMS, protocol={"seeds": [0]}, resources=resources,
                                    checkpoints={"keep_finished": True}), progress=False)
    (train_run,) = kept.storage_path.glob("train-*")
    (checkpoint,) = [p for p in train_run.glob("checkpoint_*") if p.is_dir()]
    assert kept.num_errors == 0 and torch.load(checkpoint / "state.pt", weights_only=False)["step"] == 8  # the latest
    assert _checkpoints(kept.storage_path) == {checkpoint.name}  # and Tune holds no copy

    cleaned = raysel.run_sweep(lm_spec(name="cleaned", params=PARAMS, protocol={"seeds": [0]},
                                       resources=resources), progress=False)
    assert cleaned.num_errors == 0 and cleaned.trials.iloc[0]["step"] == 8
    assert list(cleaned.storage_path.glob("train-*")) and _checkpoints(cleaned.storage_path) == set()
