"""The trainable: one Tune trial runs one method's ``train_loop`` for one (config, seed).

``workers: 0`` runs the loop in the trial's own process (``run_context.TuneRun``); ``workers: N``
makes the trial the driver of a Ray Train run on N workers (``train_driver``). Both paths give the
loop the same ``RunContext`` and log to the trial's MLflow run.

A trial's config has two keys: ``variant`` (arm, method, stage, params, model, data) and ``seed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from raysel.cost import Stopwatch
from raysel.methods import get_method
from raysel.provenance import package_versions, recording_loads
from raysel.resources import DRIVER_MEMORY, worker_bundle
from raysel.run_context import TuneRun, enter_working_dir, pick_device, seed_everything
from raysel.spec import RESERVED_TRIAL_KEYS, DataSpec, ModelSpec, TrackingSpec
from raysel.stopping import check_not_stopping
from raysel.storage import Storage, trial_files
from raysel.tracking import NullLogger, TrackingInfo, TrialLogger, ensure_experiment, resolve_uri
from raysel.train_driver import fit_with_ray_train

if TYPE_CHECKING:
    from raysel.best_models import BestModelOffer
    from raysel.shared_files import RegistryShares

@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (fixed for the sweep, shipped with the trainable)."""

    tracking: TrackingInfo | None = None
    protocol: str = ""
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    extra_per_worker: dict[str, float] = field(default_factory=dict)  # memory, custom resources (raysel.resources)
    max_failures: int = 0
    storage_path: str = field(default_factory=lambda: str(Path("raysel_results").resolve()))
    # where `raysel sweep` started: relative paths in a spec (local data, kernel_cache) are relative
    # to it, while Ray starts each trial in its own trial directory
    working_dir: str = field(default_factory=os.getcwd)
    checkpoints: dict[str, Any] = field(default_factory=lambda: {"num_to_keep": 1})  # raysel.checkpoints
    shared_registry: str = ""  # the name of the sweep's raysel.shared_files registry actor ("": file locks)
    provenance: dict[str, str] = field(default_factory=dict)  # the driver's code and spec tags (raysel.provenance)
    system_metrics_s: float | None = None  # sample MLflow's system metrics this often (None: off)
    metric: str = ""  # the protocol's metric (the dashboard's per-trial objective)
    best_models: str = ""  # the name of the sweep's raysel.best_models board actor ("": not logged)

    def shared_files(self, trial_id: str) -> "RegistryShares | None":
        """Who builds the files the trials share: the sweep's registry, else a file lock (one machine)."""
        if not self.shared_registry:
            return None
        from raysel.shared_files import RegistryShares

        return RegistryShares(self.shared_registry, self.storage_path, trial_id)

    def best_model_offer(self, arm: str, trial_id: str) -> "BestModelOffer | None":
        """How a trial offers its trained model (tracking.log_best_model), else None."""
        if not self.best_models:
            return None
        from raysel.best_models import BestModelOffer

        return BestModelOffer(self.best_models, self.storage_path, arm, trial_id, self.metric)

    def worker_resources(self) -> dict[str, float]:
        """What each process running the loop reserves, as Ray names resources."""
        return worker_bundle(self.cpus_per_worker, self.gpus_per_worker, self.extra_per_worker)

    def resources(self) -> dict[str, float]:
        """Resources of the Tune trial itself (under Ray Train, the workers reserve their own)."""
        if self.workers == 0:
            return self.worker_resources()
        # the trial only drives the Train run: no CPU (its workers hold those), but Ray needs a
        # non-empty request, and the driver does need some memory
        return {"CPU": 0, "memory": DRIVER_MEMORY}


def trial_label(config: dict[str, Any], trial_id: str) -> str:
    """A trial's name wherever people look for it: its MLflow run, its Tune trial, its actor in Ray's
    dashboard — arm, stage, seed and trial id (e.g. ``lr-3e-4-search-seed0-1a2b3_00004``)."""
    variant = config["variant"]
    return "-".join(p for p in (variant["arm"], variant.get("stage"), f"seed{config['seed']}", trial_id) if p)


def _tags(variant: dict[str, Any], seed: int, settings: TrialSettings) -> dict[str, str]:
    import ray

    return {"raysel.method": variant["method"], "raysel.arm": variant["arm"], "raysel.seed": str(seed),
            "raysel.stage": variant.get("stage", ""), "raysel.protocol": settings.protocol,
            "raysel.node_id": ray.get_runtime_context().get_node_id(),  # where the trial ran, on a cluster
            **settings.provenance, **package_versions()}  # the packages of the environment it ran in


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """The body of every raysel Tune trial."""
    from ray import tune

    enter_working_dir(settings.working_dir)
    variant, seed = config["variant"], int(config["seed"])
    trial_id = tune.get_context().get_trial_id()
    check_not_stopping(settings.storage_path, trial_label(config, trial_id))  # before its run or any work
    logger: Any = NullLogger()
    if settings.tracking is not None:  # first: every trial that ran has its run, also one that fails at once
        logger = TrialLogger(settings.tracking, trial_id, trial_label(config, trial_id),
                             _tags(variant, seed, settings), {"seed": seed, **_loggable_variant(variant)})
    with logger.lifecycle():
        method = get_method(variant["method"])
        params = method.Params.model_validate(variant["params"])
        if settings.workers > 0:
            fit_with_ray_train(variant, seed, settings, trial_id, logger.run_id)
            return
        with trial_files(settings.storage_path, trial_id) as artifact_dir:
            torch.set_num_threads(max(1, int(settings.cpus_per_worker)))
            seed_everything(seed)
            run = TuneRun(seed=seed, device=pick_device(settings.gpus_per_worker > 0), rank=0, world_size=1,
                          model=ModelSpec(**variant["model"]), data=DataSpec(**variant["data"]),
                          artifact_dir=artifact_dir, logger=logger, shared_files=settings.shared_files(trial_id))
            run.set_tags(**{"raysel.world_size": "1", "raysel.device": str(run.device)})
            run.best_model = settings.best_model_offer(variant["arm"], trial_id)
            from raysel.telemetry import TrialMetrics

            run.telemetry = TrialMetrics(sweep=Storage.parse(settings.storage_path).name, arm=variant["arm"],
                                         trial_id=trial_id, metric=settings.metric)
            with logger.system_metrics(settings.system_metrics_s), recording_loads() as loads:
                try:
                    watch = Stopwatch()
                    run.finish({**(method.train_loop(params, run) or {}), **watch.metrics()})
                finally:
                    run.telemetry.close()
                    logger.log_loads(loads)


def _loggable_variant(variant: dict[str, Any]) -> dict[str, Any]:
    return {"params": variant["params"], "model": variant["model"], "data": variant["data"],
            "arm": variant["arm"], "method": variant["method"]}


def make_trainable(settings: TrialSettings) -> Callable[[dict[str, Any]], None]:
    """A Tune function trainable bound to a sweep's settings, with its resources attached."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory
    from ray.tune.trainable.function_trainable import wrap_function

    def raysel_trial(config: dict[str, Any]) -> None:
        run_trial(config, settings)

    class RayselTrial(wrap_function(raysel_trial)):
        """The trial's actor, as Ray's dashboard lists it: class RayselTrial, named after its trial."""

        @classmethod
        def default_resource_request(cls, config: dict[str, Any]):
            return resource_dict_to_pg_factory(settings.resources())

        def __repr__(self) -> str:  # Ray reads it once, when the actor is created
            config, trial_id = getattr(self, "config", None), getattr(self, "trial_id", "")
            return f"raysel_trial({trial_label(config, trial_id)})" if config and "variant" in config else "raysel_trial"

    RayselTrial.__qualname__ = RayselTrial.__name__  # the dashboard shows the qualified name
    return RayselTrial


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
    if recipe.max_workers is not None and workers > recipe.max_workers:
        raise ValueError(f"workers={workers}, but {method!r} runs on at most {recipe.max_workers} worker(s) per trial; "
                         f"allowed: 0 (the trial's own process) to {recipe.max_workers}")
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
                             gpus_per_worker=gpus_per_worker, storage_path=Storage.parse(storage_path).uri)

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
