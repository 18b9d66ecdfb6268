"""A trial as the driver of a 2-worker Ray Train TorchTrainer (DDP over gloo on CPU)."""
from __future__ import annotations

import json
import math
from pathlib import Path

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


def test_two_ray_train_ranks_average_their_gradients(tmp_path):
    """Two real DDP ranks (gloo) each take a different half of the batch, in two accumulated micro-batches:
    after one step both hold the weights of one SGD step on the whole batch (their gradients were
    averaged), not of their own half, and they all-reduced once for the step, not once per micro-batch."""
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def _ddp_step(config):
        """On each Ray Train worker: one SGD step of the shared loop on this rank's 4 of 8 fixed examples."""
        import ray.train
        import torch
        import torch.distributed as dist

        from raysel.inputs import DataSpec, ModelSpec
        from raysel.methods.loop import LoopParams, fine_tune
        from raysel.run_context import TrainRun
        from raysel.tracking import NullLogger

        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        all_reduces = []

        class CountingRun(TrainRun):  # counts DDP's gradient all-reduces (one bucket: this model is small)
            def prepare_model(self, model):
                ddp = super().prepare_model(model)
                ddp.register_comm_hook(None, lambda group, bucket: all_reduces.append(1) or allreduce_hook(group, bucket))
                return ddp

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        run = CountingRun(seed=0, device=torch.device("cpu"), rank=rank, world_size=world, model=ModelSpec(),
                       data=DataSpec(), artifact_dir=Path(config["dir"]) / f"rank{rank}", logger=NullLogger())
        x = torch.arange(24, dtype=torch.float64).reshape(8, 3) / 10
        y = torch.linspace(-1, 1, 8, dtype=torch.float64)
        model = torch.nn.Linear(3, 1, dtype=torch.float64)
        torch.nn.init.constant_(model.weight, 0.5)
        torch.nn.init.zeros_(model.bias)

        class Loss(torch.nn.Module):  # forward(**batch).loss, like a transformers model
            def __init__(self):
                super().__init__()
                self.linear = model

            def forward(self, x, y):
                return type("Out", (), {"loss": ((self.linear(x).squeeze(-1) - y) ** 2).mean()})()

        def rows(micro):  # this rank's half of the batch, two examples per micro-batch
            return slice(4 * rank + 2 * micro, 4 * rank + 2 * micro + 2)

        params = LoopParams(optimizer="sgd", lr=0.1, max_steps=1, eval_every=1, batch_size=8, grad_accum=2,
                            max_grad_norm=None)
        fine_tune(Loss(), params, run, lambda step, micro, g: {"x": x[rows(micro)], "y": y[rows(micro)]},
                  lambda m: {})
        weights = [torch.zeros(4, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(weights, torch.cat([model.weight.detach().flatten(), model.bias.detach()]))
        if rank == 0:  # Ray Train's Result keeps only checkpointed reports' metrics
            (Path(config["dir"]) / "weights.json").write_text(json.dumps([w.tolist() for w in weights]))
            (Path(config["dir"]) / "all_reduces.json").write_text(json.dumps(len(all_reduces)))

    trainer = TorchTrainer(_ddp_step, train_loop_config={"dir": str(tmp_path)},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(name="ddp-average", storage_path=str(tmp_path / "train")))
    trainer.fit()
    rank0, rank1 = (torch.tensor(w, dtype=torch.float64) for w in json.loads((tmp_path / "weights.json").read_text()))

    x = torch.arange(24, dtype=torch.float64).reshape(8, 3) / 10
    y = torch.linspace(-1, 1, 8, dtype=torch.float64)
    weight = torch.full((1, 3), 0.5, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    ((x @ weight.T).squeeze(-1) + bias - y).pow(2).mean().backward()
    whole_batch_step = torch.cat([(weight - 0.1 * weight.grad).flatten(), bias - 0.1 * bias.grad]).detach()
    assert json.loads((tmp_path / "all_reduces.json").read_text()) == 1  # no all-reduce under no_sync
    assert torch.allclose(rank0, rank1, rtol=0, atol=1e-15)
    assert torch.allclose(rank0, whole_batch_step, rtol=1e-12, atol=0)
