"""A trial on several workers: the trial process drives a Ray Train ``TorchTrainer`` whose N workers
run the method's loop under DDP and report through ``ray.train`` (rank 0's metrics reach Tune
through ``TuneReportCallback``; rank 0 logs to the trial's MLflow run).
"""
from __future__ import annotations

import contextlib

from typing import TYPE_CHECKING, Any

import torch

from raysel.cost import Stopwatch
from raysel.inputs import DataSpec, ModelSpec
from raysel.methods import get_method
from raysel.provenance import recording_loads
from raysel.run_context import TrainRun, enter_working_dir, seed_everything
from raysel.storage import Storage, trial_files
from raysel.tracking import NullLogger, TrialLogger

if TYPE_CHECKING:
    from raysel.trial import TrialSettings


def fit_with_ray_train(variant: dict[str, Any], seed: int, settings: "TrialSettings", trial_id: str,
                       run_id: str | None) -> None:
    """Run the trial's loop on ``settings.workers`` Ray Train workers (a restarted trial resumes its Train run)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysel.checkpoints import train_run_name

    use_gpu = settings.gpus_per_worker > 0
    resources = settings.worker_resources()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"variant": variant, "seed": seed, "run_id": run_id, "settings": settings,
                           "trial_id": trial_id},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        # a stable name: a restarted trial resumes the same Train run from its checkpoint
        run_config=ray.train.RunConfig(name=train_run_name(trial_id), storage_path=settings.storage_path,
                                       callbacks=[TuneReportCallback()],
                                       checkpoint_config=ray.train.CheckpointConfig(**settings.checkpoints),
                                       failure_config=ray.train.FailureConfig(max_failures=settings.max_failures)),
    )
    trainer.fit()


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    settings: "TrialSettings" = config["settings"]
    enter_working_dir(settings.working_dir)
    variant, seed = config["variant"], int(config["seed"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    logger: Any = NullLogger()
    if rank == 0 and settings.tracking is not None and config["run_id"]:
        logger = TrialLogger.attach(settings.tracking, config["run_id"])
    torch.set_num_threads(max(1, int(settings.cpus_per_worker)))
    seed_everything(seed)
    method = get_method(variant["method"])
    with trial_files(settings.storage_path, config["trial_id"], store=rank == 0) as artifact_dir:
        run = TrainRun(seed=seed, device=ray.train.torch.get_device(), rank=rank, world_size=world_size,
                       model=ModelSpec(**variant["model"]), data=DataSpec(**variant["data"]),
                       artifact_dir=artifact_dir, logger=logger,
                       shared_files=settings.shared_files(config["trial_id"]))
        run.set_tags(**{"raysel.world_size": str(world_size), "raysel.device": str(run.device)})
        if rank == 0:
            from raysel.telemetry import TrialMetrics

            run.best_model = settings.best_model_offer(variant["arm"], config["trial_id"])

            run.telemetry = TrialMetrics(sweep=Storage.parse(settings.storage_path).name, arm=variant["arm"],
                                         trial_id=config["trial_id"], metric=settings.metric)
        recording = recording_loads() if rank == 0 else contextlib.nullcontext([])  # only rank 0 logs them
        with logger.system_metrics(settings.system_metrics_s), recording as loads:
            try:
                watch = Stopwatch()
                final = method.train_loop(method.Params.model_validate(variant["params"]), run)
                run.finish({**(final or {}), **watch.metrics(world_size)})
            finally:
                if run.telemetry is not None:
                    run.telemetry.close()
                logger.log_loads(loads)  # rank 0's (the others' logger logs nothing)
