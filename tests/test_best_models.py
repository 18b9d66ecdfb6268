"""tracking.log_best_model: each arm's best trained model (by the protocol metric) in the parent run, from
save_pretrained, the other trials' weights never kept."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

import raysel
from raysel.best_models import TAG, BestModelBoard, load_best_model
from raysel.spec import SpecError


@pytest.mark.system
@pytest.mark.usefixtures("ray_session")
def test_each_arms_best_trial_model_is_logged_to_the_parent_run_and_nothing_else_is_kept(lm_spec, tmp_path):
    import json

    from raysel.models import load_model
    from raysel.run_context import CHECKPOINT_FILE

    params = {"task": "causal_lm", "max_steps": 4, "eval_every": 2, "context_len": 32, "batch_size": 8,
              "eval_examples": 16}
    spec = lm_spec(name="best", method=None, params=None, protocol={"seeds": [0, 1, 2]},
                   arms=[{"name": "fast", "method": "standard", "params": {**params, "lr": 3e-3}},
                         {"name": "slow", "method": "standard", "params": {**params, "lr": 1e-4}}],
                   tracking={"log_best_model": True}, checkpoints={"keep_finished": True},
                   resources={"max_concurrent_trials": 2})
    result = raysel.run_sweep(spec, progress=False)

    assert result.num_errors == 0
    tags = mlflow.MlflowClient(result.tracking_uri).get_run(result.parent_run_id).data.tags
    for arm, trials in result.trials.groupby("arm"):
        best = trials.sort_values("test_perplexity").iloc[0]
        record = json.loads(tags[TAG + arm])
        assert record["trial_id"] == best["trial_id"] and record["metric"] == "test_perplexity"
        assert record["value"] == pytest.approx(best["test_perplexity"], rel=1e-12)
        folder = load_best_model(result.tracking_uri, result.parent_run_id, arm, tmp_path / arm)
        logged, _ = load_model(str(folder), "causal_lm")
        # the logged model is the best trial's weights at its end (its final checkpoint, kept for this check)
        (checkpoint,) = sorted(Path(best["path"]).glob("checkpoint_*"))[-1:]
        final = torch.load(checkpoint / CHECKPOINT_FILE, weights_only=False)["model"]
        for name, tensor in logged.state_dict().items():
            assert torch.equal(tensor, final[name].to(tensor.dtype)), name
    assert not (result.storage_path / "best_models").exists(), "the staged models are deleted once logged"


def test_the_board_keeps_each_arms_best_offer_by_the_protocol_mode():
    board = BestModelBoard("min", {"a": {"trial_id": "old", "value": 2.0, "staged": True}})
    assert not board.offer("a", "t1", 3.0)  # worse than what an earlier run of the sweep logged
    assert board.offer("a", "t2", 1.5) and board.offer("b", "t3", 9.0)
    assert not board.offer("a", "t4", 1.5)  # a tie keeps the first
    board.staged("a", "t2")
    assert board.snapshot() == {"a": {"trial_id": "t2", "value": 1.5, "staged": True},
                                "b": {"trial_id": "t3", "value": 9.0, "staged": False}}
    highest = BestModelBoard("max")
    assert highest.offer("a", "t1", 0.5) and highest.offer("a", "t2", 0.7) and not highest.offer("a", "t3", 0.6)


def test_log_best_model_needs_tracking(lm_spec):
    with pytest.raises(SpecError, match="tracking.log_best_model: the best models are logged to MLflow"):
        raysel.load_spec(lm_spec(tracking={"enabled": False, "log_best_model": True}))
