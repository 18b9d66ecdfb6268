"""The trainable: one Tune trial runs one method's ``train_loop`` for one (config, seed).

``workers: 0`` runs the loop in the trial's own process and reports through ``ray.tune``;
``workers: N`` makes the trial the driver of a Ray Train ``TorchTrainer`` whose N workers run the
same loop under DDP and report through ``ray.train`` (rank 0's metrics reach Tune through
``TuneReportCallback``). Both paths give the loop the same ``RunContext``.

A trial's config has two keys: ``variant`` (arm, method, stage, params, model, data) and ``seed``.
"""
from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from raysel.methods import get_method
from raysel.report.sources import FRESH_KEY
from raysel.spec import RESERVED_TRIAL_KEYS, DataSpec, ModelSpec, TrackingSpec
from raysel.tracking import NullLogger, TrackingInfo, TrialLogger, ensure_experiment, resolve_uri

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (fixed for the sweep, shipped with the trainable)."""

    tracking: TrackingInfo | None = None
    protocol: str = ""
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 0
    storage_path: str = field(default_factory=lambda: str(Path("raysel_results").resolve()))
    # where `raysel sweep` started: relative paths in a spec (local data, kernel_cache) are relative
    # to it, while Ray starts each trial in its own trial directory
    working_dir: str = field(default_factory=os.getcwd)

    def resources(self) -> dict[str, float]:
        """Resources of the Tune trial itself (under Ray Train, the workers reserve their own)."""
        if self.workers == 0:
            return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_worker}
        # the trial only drives the Train run: no CPU (its workers hold those), but Ray needs a
        # non-empty request, and the driver does need some memory
        return {"cpu": 0, "memory": 256 * 2**20}


# ---------------------------------------------------------------- the RunContext
class _Run:
    """The loop's view of its trial; subclasses say how metrics and checkpoints reach Ray."""

    def __init__(self, *, seed: int, device: torch.device, rank: int, world_size: int, model: ModelSpec,
                 data: DataSpec, artifact_dir: Path, logger: Any, shared_dir: Path | None = None):
        self.seed, self.device, self.rank, self.world_size = seed, device, rank, world_size
        self.model, self.data = model, data
        self.artifact_dir = artifact_dir
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        # beside the trials' own directories: storage_path/NAME/artifacts/shared
        self.shared_dir = shared_dir or artifact_dir.parent / "shared"
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        self._logger = logger
        self._pending_state: dict[str, Any] | None = None
        self._last: tuple[int, dict[str, float]] = (0, {})
        self._latest: dict[str, float] = {}
        self._logged_up_to = _last_logged_step(logger)
        self.telemetry: Any = None  # raysel.telemetry.TrialMetrics in a scheduled trial (rank 0)

    def checkpoint(self, state: dict[str, Any]) -> None:
        self._pending_state = state

    def report(self, step: int, **metrics: float) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.telemetry is not None:
            self.telemetry.record(step, metrics)
        if step > self._logged_up_to:  # a restarted trial does not log its replayed steps twice
            self._logger.log_metrics(step, metrics)
        self._last = (step, metrics)
        # Tune sees the latest value of every metric so far (searchers and ASHA need the objective in
        # every result, while evaluations come only every eval_every steps); MLflow gets what is new.
        self._latest.update(metrics)
        result = {**self._latest, "step": step, "mlflow_run_id": self._logger.run_id or "",
                  FRESH_KEY: ",".join(metrics)}  # what is new at this step (for reports from Tune's files)
        state, self._pending_state = self._pending_state, None
        if state is None or self.rank != 0:  # one copy of the state: rank 0's
            self._send(result, None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / STATE_FILE)
            from ray.tune import Checkpoint

            self._send(result, Checkpoint.from_directory(tmp))

    def finish(self, final: dict[str, float]) -> None:
        """Report the loop's returned metrics as the trial's last result."""
        step, last = self._last
        new = {k: v for k, v in (final or {}).items() if last.get(k) != v}
        if new or self._pending_state is not None or not last:
            self.report(step, **{**last, **new})

    def restore(self) -> dict[str, Any] | None:
        """The state of the trial's last checkpoint (None for a fresh trial)."""
        state = self._load_state()
        if state is None:
            return None
        self.set_tags(**{"raysel.restored_from_step": str(state.get("step", "unknown"))})
        # The results after a restart carry the checkpoint's evaluation until the next one: a searcher
        # (Optuna) reads the objective from every result, and the new process has reported nothing yet.
        self._latest.update({k: float(v) for k, v in (state.get("evaluation") or {}).items()})
        return state

    def _load_state(self) -> dict[str, Any] | None:
        checkpoint = self._get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)

    def set_tags(self, **tags: str) -> None:
        self._logger.set_tags(tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._logger.log_artifact(path, artifact_path)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def _send(self, result: dict[str, Any], checkpoint: Any) -> None:
        raise NotImplementedError

    def _get_checkpoint(self) -> Any:
        raise NotImplementedError


class TuneRun(_Run):
    """The loop runs in the Tune trial's process."""

    def _send(self, result, checkpoint):
        from ray import tune

        tune.report(result, checkpoint=checkpoint)

    def _get_checkpoint(self):
        from ray import tune

        return tune.get_checkpoint()


class TrainRun(_Run):
    """The loop runs on a Ray Train worker; every rank reports (it is a barrier), rank 0 logs."""

    def _send(self, result, checkpoint):
        import ray.train

        ray.train.report(result, checkpoint=checkpoint)

    def _get_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)


class LocalRun(_Run):
    """No Ray at all: results kept in ``self.results`` (tests, benchmarks, notebooks)."""

    def __init__(self, *, seed: int = 0, model: ModelSpec | None = None, data: DataSpec | None = None,
                 artifact_dir: "Path | None" = None, device: torch.device | None = None, logger: Any = None,
                 shared_dir: "Path | None" = None):
        artifact_dir = artifact_dir or Path(tempfile.mkdtemp(prefix="raysel-"))
        super().__init__(seed=seed, device=device or pick_device(True), rank=0, world_size=1,
                         model=model or ModelSpec(), data=data or DataSpec(), artifact_dir=artifact_dir,
                         logger=logger or NullLogger(), shared_dir=shared_dir or artifact_dir / "shared")
        self.results: list[dict[str, Any]] = []
        self.saved_state: dict[str, Any] | None = None

    def report(self, step: int, **metrics: float) -> None:
        if self._pending_state is not None:
            self.saved_state, self._pending_state = self._pending_state, None
        super().report(step, **metrics)

    def _send(self, result, checkpoint):
        self.results.append(result)

    def _load_state(self) -> dict[str, Any] | None:
        return self.saved_state


def _last_logged_step(logger: Any) -> int:
    """The highest step already logged to this run (−1 for a fresh run)."""
    if isinstance(logger, NullLogger) or logger.run_id is None:
        return -1
    run = logger.client.get_run(logger.run_id)
    keys = [k for k in run.data.metrics if k != "step"]
    if not keys:
        return -1
    return max(m.step for key in keys for m in logger.client.get_metric_history(logger.run_id, key))


# ---------------------------------------------------------------- running one trial
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def _run_name(variant: dict[str, Any], seed: int, trial_id: str) -> str:
    return f"{variant['arm']}-seed{seed}-{trial_id}"


def _tags(variant: dict[str, Any], seed: int, settings: TrialSettings) -> dict[str, str]:
    import ray

    return {"raysel.method": variant["method"], "raysel.arm": variant["arm"], "raysel.seed": str(seed),
            "raysel.stage": variant.get("stage", ""), "raysel.protocol": settings.protocol,
            "raysel.node_id": ray.get_runtime_context().get_node_id()}  # where the trial ran, on a cluster


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """The body of every raysel Tune trial."""
    from ray import tune

    _enter(settings.working_dir)
    variant, seed = config["variant"], int(config["seed"])
    method = get_method(variant["method"])
    params = method.Params.model_validate(variant["params"])
    trial_id = tune.get_context().get_trial_id()
    logger: Any = NullLogger()
    if settings.tracking is not None:
        logger = TrialLogger(settings.tracking, trial_id, _run_name(variant, seed, trial_id),
                             _tags(variant, seed, settings), {"seed": seed, **_loggable_variant(variant)})
    artifact_dir = Path(settings.storage_path) / "artifacts" / trial_id
    try:
        if settings.workers == 0:
            torch.set_num_threads(max(1, int(settings.cpus_per_worker)))
            seed_everything(seed)
            run = TuneRun(seed=seed, device=pick_device(settings.gpus_per_worker > 0), rank=0, world_size=1,
                          model=ModelSpec(**variant["model"]), data=DataSpec(**variant["data"]),
                          artifact_dir=artifact_dir, logger=logger)
            run.set_tags(**{"raysel.world_size": "1", "raysel.device": str(run.device)})
            run.telemetry = _trial_metrics(settings, variant, trial_id)
            run.finish(method.train_loop(params, run))
        else:
            _fit_with_ray_train(variant, seed, settings, trial_id, logger.run_id, artifact_dir)
    except SystemExit as stop:  # how Ray Tune ends a trial its scheduler stopped (ASHA, also at max_t)
        if stop.code not in (0, None):
            logger.finish("FAILED")
            raise
        logger.set_tags({"raysel.stopped_by_scheduler": "true"})
        logger.finish("FINISHED")
        raise
    except BaseException as error:
        logger.set_tags({"raysel.failure": failure_reason(error)})
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")


def _trial_metrics(settings: TrialSettings, variant: dict[str, Any], trial_id: str):
    from raysel.telemetry import TrialMetrics

    return TrialMetrics(sweep=Path(settings.storage_path).name, arm=variant["arm"], trial_id=trial_id)


def failure_reason(error: BaseException) -> str:
    """One line for the trial's ``raysel.failure`` tag and the report: the error's type and message."""
    message = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {message}"[:500]


def _enter(working_dir: str) -> None:
    """Work where the sweep was started, when that directory exists on this node (on a cluster a
    ``ray job submit --working-dir`` job's directory does; a driver's local one may not)."""
    if os.path.isdir(working_dir):
        os.chdir(working_dir)


def _loggable_variant(variant: dict[str, Any]) -> dict[str, Any]:
    return {"params": variant["params"], "model": variant["model"], "data": variant["data"],
            "arm": variant["arm"], "method": variant["method"]}


def _fit_with_ray_train(variant, seed, settings: TrialSettings, trial_id, run_id, artifact_dir) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = settings.gpus_per_worker > 0
    resources = {"CPU": settings.cpus_per_worker, **({"GPU": settings.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"variant": variant, "seed": seed, "run_id": run_id, "settings": settings,
                           "artifact_dir": str(artifact_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        # a stable name: a restarted trial resumes the same Train run from its checkpoint
        run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=settings.storage_path,
                                       callbacks=[TuneReportCallback()],
                                       failure_config=ray.train.FailureConfig(max_failures=settings.max_failures)),
    )
    trainer.fit()


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    settings: TrialSettings = config["settings"]
    _enter(settings.working_dir)
    variant, seed = config["variant"], int(config["seed"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    logger: Any = NullLogger()
    if rank == 0 and settings.tracking is not None and config["run_id"]:
        logger = TrialLogger.attach(settings.tracking, config["run_id"])
    torch.set_num_threads(max(1, int(settings.cpus_per_worker)))
    seed_everything(seed)
    method = get_method(variant["method"])
    run = TrainRun(seed=seed, device=ray.train.torch.get_device(), rank=rank, world_size=world_size,
                   model=ModelSpec(**variant["model"]), data=DataSpec(**variant["data"]),
                   artifact_dir=Path(config["artifact_dir"]), logger=logger)
    run.set_tags(**{"raysel.world_size": str(world_size), "raysel.device": str(run.device)})
    if rank == 0:
        run.telemetry = _trial_metrics(settings, variant, Path(config["artifact_dir"]).name)
    run.finish(method.train_loop(method.Params.model_validate(variant["params"]), run))


def make_trainable(settings: TrialSettings) -> Callable[[dict[str, Any]], None]:
    """A Tune function trainable bound to a sweep's settings, with its resources attached."""
    from ray import tune

    def raysel_trial(config: dict[str, Any]) -> None:
        run_trial(config, settings)

    return tune.with_resources(raysel_trial, settings.resources())


# ---------------------------------------------------------------- for users' own Tune code
def trainable(method: str, *, model: "ModelSpec | dict | str | None" = None,
              data: "DataSpec | dict | str | None" = None, tracking: "TrackingSpec | dict | str | None" = None,
              workers: int = 0, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
              storage_path: str = "raysel_results", **fixed_params: Any) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune trainable running ``method``, for ``tune.Tuner(...)`` or ``tune.run(...)``.

    The trial's config holds the method's hyperparameters (merged over ``fixed_params``) and
    optionally ``seed`` and ``arm``. Trials log to MLflow as raysel sweeps do (pass
    ``tracking=False`` for none).
    """
    recipe = get_method(method)
    unknown = sorted(set(fixed_params) - set(recipe.Params.model_fields))
    if unknown:
        raise ValueError(f"{method!r} has no parameter(s) {unknown}; allowed: {', '.join(sorted(recipe.Params.model_fields))}")
    model_spec = _coerce(ModelSpec, model)
    data_spec = _coerce(DataSpec, data)
    info = None
    if tracking is not False:
        track = _coerce(TrackingSpec, tracking, field="uri")
        if track.enabled:
            uri = resolve_uri(track.uri)
            info = TrackingInfo(uri=uri, experiment_id=ensure_experiment(uri, track.experiment or "raysel"),
                                sweep=track.experiment or "raysel")
    settings = TrialSettings(tracking=info, protocol="user", workers=workers, cpus_per_worker=cpus_per_worker,
                             gpus_per_worker=gpus_per_worker, storage_path=str(Path(storage_path).resolve()))

    def raysel_trainable(config: dict[str, Any]) -> None:
        params = {**fixed_params, **{k: v for k, v in config.items() if k not in RESERVED_TRIAL_KEYS}}
        variant = {"arm": config.get("arm", method), "method": method, "stage": "user", "params": params,
                   "model": model_spec.model_dump(), "data": data_spec.model_dump()}
        run_trial({"variant": variant, "seed": config.get("seed", 0)}, settings)

    from ray import tune

    raysel_trainable.__name__ = f"raysel_{method}"
    return tune.with_resources(raysel_trainable, settings.resources())


def _coerce(cls, value, field: str = "name"):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return cls(**{field: value})
    return cls.model_validate(value)
