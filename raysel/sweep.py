"""Running a sweep: its protocol's phases (raysel.protocols), each phase one Ray Tune ``Tuner``.

Every phase's trials are children of the sweep's MLflow parent run. A phase's Tune experiment is
named after the sweep and the phase, so ``resume=True`` restores unfinished phases and reuses
finished ones without re-running or re-logging them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pandas as pd

from raysel import best_models, studies
from raysel.methods import get_method
from raysel.protocols import Phase, expand
from raysel.provenance import code_and_spec_tags, package_versions
from raysel.resources import Cluster, Plan, describe_cluster, extra_per_worker, local_machine, plan, wait_for_nodes
from raysel.results import SWEEP_FILE, num_finished, table_row
from raysel.searchers import make_sampler, missing_package
from raysel.space import Categorical, IntRange, LogUniform, Uniform, is_distribution
from raysel.spec import SchedulerSpec, SpecError, SweepSpec, load_spec, parse_overrides
from raysel.stopping import clear_stop, stop_on_sigterm, stop_requested
from raysel.storage import Storage
from raysel.tracking import (TrackingInfo, check_reachable, close_abandoned_runs, end_run, ensure_experiment, get_run,
                             log_artifacts, redact_uri, reopen_run, resolve_uri, set_run_tags, start_parent_run)
from raysel.trial import TrialSettings, make_trainable, trial_label

if TYPE_CHECKING:
    from raysel.report import Report


def _tune_domain(dist: Any):
    from ray import tune

    if isinstance(dist, Uniform):
        return tune.uniform(dist.low, dist.high)
    if isinstance(dist, LogUniform):
        return tune.loguniform(dist.low, dist.high)
    if isinstance(dist, IntRange):
        if dist.log:
            return tune.lograndint(dist.low, dist.high + 1)
        return tune.qrandint(dist.low, dist.high, dist.step) if dist.step > 1 else tune.randint(dist.low, dist.high + 1)
    if isinstance(dist, Categorical):
        return tune.choice(dist.choices)
    raise TypeError(dist)


def param_space(phase: Phase) -> dict[str, Any]:
    from ray import tune

    if phase.asks_searcher:
        variant = phase.variants[0]
        params = {k: _tune_domain(v) if is_distribution(v) else v for k, v in variant["params"].items()}
        return {"variant": {**variant, "params": params}, "seed": phase.seeds[0]}
    return {"variant": tune.grid_search(phase.variants), "seed": tune.grid_search(phase.seeds)}


STRICT_METRICS = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
DRIVER_ENV = {
    STRICT_METRICS: "1",  # not every step reports every metric
    # with checkpoints.keep, Tune saves its experiment state after each trial's keep-th checkpoint (so that
    # the state never names a deleted one) and warns each time it does so often: expected here, not news
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


class SweepInterrupted(RuntimeError):
    """A phase ended before its trials did (Ctrl+C, SIGINT): Tune saved its state; --resume continues it."""


class SweepStopped(SweepInterrupted):
    """A graceful stop (raysel stop, SIGTERM): running trials finished, the others did not start."""


# ---------------------------------------------------------------- results
@dataclass
class SweepResult:
    """What a sweep produced: one row per trial, the best config(s), where everything lies."""

    name: str
    trials: pd.DataFrame
    best_config: dict[str, Any] | None  # the best search trial's params (single arm), else None
    best_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per arm, from search phases
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    storage_path: Path = Path(".")  # the sweep's directory on this machine (a URI's local mirror)
    storage_uri: str = ""  # where the sweep is stored: that directory, or its URI
    summary: pd.DataFrame | None = None
    report: "Report | None" = None  # tables and figures, written under storage_path/report

    @property
    def num_errors(self) -> int:
        return int(self.trials["error"].notna().sum()) if "error" in self.trials else 0


def trials_frame(result_grid, phase: Phase) -> pd.DataFrame:
    """Ray's result table with raysel's column names: arm, seed, stage, params.*, metrics."""
    rows = []
    for result in result_grid:
        config = result.config or {}
        variant = config.get("variant", {})
        row = {"phase": phase.label, "stage": variant.get("stage", phase.stage), "arm": variant.get("arm"),
               "method": variant.get("method"), "seed": config.get("seed"),
               "trial_id": (result.metrics or {}).get("trial_id"),
               "error": None if result.error is None else plain_text(f"{type(result.error).__name__}: {result.error}")}
        row.update({f"params.{k}": v for k, v in variant.get("params", {}).items()})
        row["model.name"] = variant.get("model", {}).get("name")
        row["data.name"] = variant.get("data", {}).get("name")
        row.update(table_row(result.metrics or {}))
        row["path"] = result.path
        rows.append(row)
    return pd.DataFrame(rows)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_text(text: str) -> str:
    """Ray's error messages without their terminal colour codes (for trials.csv and reports)."""
    return ANSI_ESCAPE.sub("", text)


def best_params(frame: pd.DataFrame, metric: str, mode: str) -> dict[str, dict[str, Any]]:
    """Per arm, the params of the trial with the best final ``metric``."""
    best = {}
    for arm, group in frame.dropna(subset=[metric]).groupby("arm", sort=False):
        row = group.sort_values(metric, ascending=(mode == "min")).iloc[0]
        best[arm] = {k[len("params."):]: _plain(v) for k, v in row.items() if k.startswith("params.") and _present(v)}
    return best


def _present(value: Any) -> bool:
    return not (isinstance(value, float) and value != value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------- running
def preflight(spec: SweepSpec) -> None:
    """Each arm's method checks that its model and data can be loaded, before anything starts."""
    for arm in spec.resolved_arms():
        method = get_method(arm.method)
        method.preflight(method.Params.model_validate(arm.params), arm.model, arm.data, spec.arm_seeds(arm))


def check_services(spec: SweepSpec, timeout_s: float = 5.0) -> None:
    """Before Ray starts: the tracking store and the Ray cluster the spec names can be reached, and the
    packages the spec's searcher and system metrics need are installed (SpecError naming the field
    otherwise, instead of minutes of retries and a traceback)."""
    problems = []
    if spec.tracking.enabled:
        why = check_reachable(spec.tracking.uri, timeout_s)
        if why:
            problems.append(f"tracking.uri: {why}")
        if spec.tracking.system_metrics and importlib.util.find_spec("psutil") is None:
            problems.append("tracking.system_metrics: needs psutil (and nvidia-ml-py for GPUs): "
                            "pip install 'raysel[system-metrics]'")
    missing = missing_package(spec.protocol.searcher) if spec.protocol.rules.searches else None
    if missing:
        problems.append(missing)
    if spec.protocol.study_storage:
        why = studies.url_problem(spec.protocol.study_storage)
        if why:
            problems.append(f"protocol.study_storage: {why}")
    address = ray_address(spec)
    if address and address not in ("auto", "local") and not address.startswith(("http://", "https://")):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        import socket

        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except (OSError, ValueError) as err:
            source = "ray.address" if spec.ray.address else "RAY_ADDRESS"
            problems.append(f"{source}: no Ray cluster answers at {address!r} ({type(err).__name__}: {err}); "
                            "give HOST:PORT of a running head (ray start --head), ray://HOST:PORT, or leave it "
                            "unset for a local Ray")
    if problems:
        raise SpecError(problems)


def check_new_studies(spec: SweepSpec, sweep_dir: Storage) -> None:
    """A new sweep's search phases must not fall into studies an earlier sweep left in a shared
    ``protocol.study_storage`` (Optuna would go on in them, their trials mixed with this sweep's)."""
    if not spec.protocol.study_storage:
        return  # the default storage lies in the sweep's own (new) directory
    url = studies.storage_url(spec.protocol.study_storage, sweep_dir.local)
    taken = [name for phase in expand(spec) if phase.asks_searcher
             if studies.load_study(url, name := studies.study_name(spec.name, phase.label)) is not None]
    if taken:
        raise SpecError([f"protocol.study_storage: {redact_uri(url)} already holds the stud{'ies' if len(taken) > 1 else 'y'} "
                         f"{', '.join(map(repr, taken))} of an earlier sweep named {spec.name!r}; continue that sweep "
                         "with --resume, or choose another name (--set name=...)"])


SUBMIT_DIR = "RAYSEL_SUBMIT_DIR"  # set by launch/submit.sh: the directory the user ran it in


def paths_base() -> Path:
    """Where a spec's relative storage_path and SQLite store resolve: the directory ``raysel sweep``
    runs in or, in a job of launch/submit.sh, the one the user ran submit.sh in (the job's own
    working directory is Ray's temporary copy of the project, deleted and re-extracted at will)."""
    submitted = os.environ.get(SUBMIT_DIR)
    if not submitted:
        return Path.cwd()
    if not Path(submitted).is_dir():
        raise SpecError([f"storage_path: relative paths resolve against the directory launch/submit.sh ran in "
                         f"({submitted}), which this node does not have; give storage_path and tracking.uri as "
                         "absolute paths every node sees (a shared mount) or a tracking server"])
    return Path(submitted)


def check_storage(storage: Storage) -> None:
    """Before Ray starts: the storage directory exists and is writable, or can be made (SpecError)."""
    import tempfile

    if not storage.is_local:
        why = storage.check_writable()
        if why:
            raise SpecError([f"storage_path: {storage} cannot be used ({why}); give a URI the filesystem's "
                             "credentials let this machine write to (e.g. s3://bucket/prefix), or a local path"])
        return
    existing = Path(storage.root)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    why = None if existing.is_dir() else f"{existing} is not a directory"
    if why is None:
        try:  # a directory made and removed again (permission bits do not tell root, or /proc, the truth)
            os.rmdir(tempfile.mkdtemp(prefix=".raysel-check-", dir=existing))
        except OSError as err:
            why = f"nothing can be created in {existing}: {err.strerror}"
    if why:
        raise SpecError([f"storage_path: {storage} cannot be used ({why}); give a writable directory "
                         "(a local path, or a mount every node shares)"])


def ray_address(spec: SweepSpec) -> str | None:
    """The Ray the sweep joins: the spec's address, else RAY_ADDRESS; None: a local Ray of its own."""
    return spec.ray.address or os.environ.get("RAY_ADDRESS")


def check_resources(spec: SweepSpec, cluster: Cluster) -> Plan:
    """Whether a trial fits the cluster (now, or after the autoscaler adds nodes); SpecError when it never
    can (Ray would wait for it forever), before anything is logged."""
    placement = plan(spec.resources, cluster)
    if placement.problem:
        raise SpecError([placement.problem])
    return placement


def _starts_local_ray(spec: SweepSpec) -> bool:
    import ray

    return not (ray_address(spec) or ray.is_initialized())


def _init_ray(spec: SweepSpec) -> bool:
    """Join the spec's (or RAY_ADDRESS's) cluster, or start a local one. True if we started it.

    Without an address the sweep always starts its own Ray ("local"): Ray's default would join
    whichever cluster a ``ray start`` on this machine last left behind."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_address(spec)
    kwargs: dict[str, Any] = {"address": address or "local", "log_to_driver": True}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # a submitted job has its metadata (launch/submit.sh)
        # job_name: the Name column of the dashboard's Jobs page
        kwargs["job_config"] = ray.job_config.JobConfig(metadata={"job_name": f"raysel {spec.name}",
                                                                  "raysel.sweep": spec.name})
    if not address:
        kwargs.update(num_cpus=spec.ray.num_cpus, object_store_memory=spec.ray.object_store_memory,
                      include_dashboard=spec.resources.workers > 0 or spec.ray.dashboard,
                      _metrics_export_port=spec.ray.metrics_export_port)
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        if not _wants_a_token(err):
            raise
        source = "ray.address" if spec.ray.address else "RAY_ADDRESS"
        raise SpecError([f"{source}: the Ray cluster at {address!r} wants its authentication token; export "
                         "RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)"]) from None
    return True


def _wants_a_token(err: BaseException | None) -> bool:
    """Whether joining a cluster failed on Ray's token authentication (the cause, a few levels down)."""
    from ray.exceptions import AuthenticationError

    while err is not None:
        if isinstance(err, AuthenticationError) or "InvalidAuthToken" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _tuner(spec: SweepSpec, phase: Phase, settings: TrialSettings, storage: Storage, callbacks: list, resume: bool):
    from ray import tune

    from raysel.checkpoints import checkpoint_config

    protocol = spec.protocol
    trainable = make_trainable(settings)
    path = (storage / spec.name / phase.label).uri
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, param_space=param_space(phase))
    scheduler = make_scheduler(spec.scheduler, phase)
    concurrency = spec.resources.max_concurrent_trials
    if spec.resources.workers > 0 and concurrency is None:
        concurrency = 1  # Train-in-Tune trials compete for CPUs with their own workers
    search = None
    if phase.asks_searcher and spec.scheduler.kind == "pbt":  # its population: Tune's own seeded random draws
        from ray.tune.search import BasicVariantGenerator

        search = BasicVariantGenerator(random_state=protocol.search_seed, max_concurrent=concurrency or 0)
        concurrency = None  # the generator limits it (Tune's own limit needs a Searcher)
    elif phase.asks_searcher:  # a persistent study (raysel.studies): optuna-dashboard shows it live
        url = studies.storage_url(protocol.study_storage, (storage / spec.name).local)
        name = studies.study_name(spec.name, phase.label)
        if resume and (earlier := studies.load_study(url, name)) is not None:
            studies.close_abandoned(earlier, known=set())  # Tune saved nothing of this phase: it starts afresh
        search = studies.StudySearch(sampler=make_sampler(protocol.searcher, protocol.sampler, protocol.search_seed),
                                     storage=studies.open_storage(url), study_name=name)
    return tune.Tuner(
        trainable,
        param_space=param_space(phase),
        tune_config=tune.TuneConfig(
            metric=protocol.metric, mode=protocol.mode,
            num_samples=phase.num_samples if phase.asks_searcher else 1,
            search_alg=search,
            scheduler=scheduler, max_concurrent_trials=concurrency, trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_name,
            # in-process trials reuse their actor: no fresh interpreter importing torch per trial
            reuse_actors=spec.resources.workers == 0),
        run_config=tune.RunConfig(
            name=f"{spec.name}/{phase.label}", storage_path=storage.uri,
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(**checkpoint_config(spec)),
            callbacks=callbacks, verbose=0 if callbacks else 1),
    )


def make_scheduler(settings: SchedulerSpec, phase: Phase):
    """Ray Tune's scheduler for ``scheduler:`` (None: FIFO); time is the loop's global step. PBT perturbs
    the phase's searched params (search phases; later phases run FIFO)."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, PopulationBasedTraining

    if settings.kind == "asha":
        return ASHAScheduler(time_attr="step", grace_period=settings.grace_period,
                             reduction_factor=settings.reduction_factor, max_t=settings.max_t or 10**9)
    if settings.kind == "median":
        return MedianStoppingRule(time_attr="step", grace_period=settings.grace_period,
                                  min_samples_required=settings.min_samples_required)
    if settings.kind == "pbt" and phase.asks_searcher:
        searched = {k: _tune_domain(v) for k, v in phase.variants[0]["params"].items() if is_distribution(v)}
        return PopulationBasedTraining(time_attr="step", perturbation_interval=settings.perturbation_interval,
                                       hyperparam_mutations={"variant": {"params": searched}},
                                       quantile_fraction=settings.quantile_fraction,
                                       resample_probability=settings.resample_probability, synch=settings.synch)
    return None


def trial_dirname(trial) -> str:
    """Short trial directories (Ray's default spells out the whole nested config)."""
    return f"trial_{trial.trial_id}"


def trial_name(trial) -> str:
    """Tune's name of a trial (its tables and logs): arm, stage, seed and trial id."""
    return trial_label(trial.config, trial.trial_id)


def run_sweep(spec_or_path: "SweepSpec | str | os.PathLike | dict", *, resume: bool = False,
              progress: bool = True, overrides: "list[str] | dict[str, Any] | None" = None,
              arms: list[str] | None = None, **more_overrides: Any) -> SweepResult:
    """Run a sweep (the API behind ``raysel sweep``); keyword overrides use ``__`` for dots.

    ``run_sweep("tune_configs/quickstart.yaml", protocol__num_samples=4)`` ==
    ``raysel sweep tune_configs/quickstart.yaml --set protocol.num_samples=4``; ``arms=["a", "b"]``
    == ``--arms a,b`` (only these arms of the spec).
    """
    merged = parse_overrides(overrides)
    merged.update({k.replace("__", "."): v for k, v in more_overrides.items()})
    spec = load_spec(spec_or_path, merged, arms=arms)
    base = paths_base()
    storage = Storage.parse(spec.storage_path, base)
    check_storage(storage)
    sweep_dir = storage / spec.name
    state = _read_state(sweep_dir) if resume else None
    if not resume and sweep_dir.holds_files():
        raise SpecError([f"storage_path: {sweep_dir} already holds a sweep named {spec.name!r}; "
                         "continue it with --resume, or choose another name (--set name=...) or storage_path"])
    # what depends on the working directory is fixed now (paths made absolute, the directory noted)
    working_dir = os.getcwd()
    spec = spec.model_copy(update={
        "tracking": spec.tracking.model_copy(update={"uri": resolve_uri(spec.tracking.uri, base)}),
        "protocol": spec.protocol.model_copy(update={"study_storage": spec.protocol.study_storage
                                                     and resolve_uri(spec.protocol.study_storage, base)})})
    preflight(spec)
    check_services(spec)
    if not resume:
        check_new_studies(spec, sweep_dir)
    if _starts_local_ray(spec):  # what a local Ray will have is known before it starts
        check_resources(spec, local_machine(spec.ray.num_cpus))
    with _driver_state(storage):
        started_ray = _init_ray(spec)
        try:
            placement = check_resources(spec, describe_cluster())
            return _run_phases(spec, storage, sweep_dir, state, resume, progress, working_dir,
                               placement.needs_scaling)
        finally:
            if started_ray:
                import ray

                ray.shutdown()


# the raysel modules the driver imports only once the sweep runs (after ray.init)
DRIVER_MODULES = ("raysel.checkpoints", "raysel.progress", "raysel.shared_files", "raysel.telemetry", "raysel.report",
                  "raysel.models.cache", "raysel.methods.base")


@contextlib.contextmanager
def _driver_state(storage: Storage) -> Iterator[None]:
    """What the driver process needs while the sweep runs, undone when it returns (the caller's
    environment and working directory are as they were)."""
    saved_env = {name: os.environ.get(name) for name in DRIVER_ENV}
    saved_cwd = os.getcwd()
    for name, value in DRIVER_ENV.items():
        os.environ.setdefault(name, value)
    if "working_dir" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""):
        # a `ray job submit --working-dir` driver: ray.init() may delete and re-extract the job's directory
        # under our feet (its first use on a node), so the driver waits outside it, with every raysel module
        # it imports later already imported (CI: "No such file or directory: .../raysel/checkpoints.py");
        # trials still start there
        for module in DRIVER_MODULES:
            importlib.import_module(module)
        storage.local.mkdir(parents=True, exist_ok=True)
        os.chdir(storage.local)
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if os.path.isdir(saved_cwd):
            os.chdir(saved_cwd)


def _run_phases(spec: SweepSpec, storage: Storage, sweep_dir: Storage, state: dict | None, resume: bool,
                progress: bool, working_dir: str, wait_for_scaling: bool = False) -> SweepResult:
    from raysel.checkpoints import checkpoint_config, delete_finished, keeps_finished
    from raysel.progress import SweepProgress
    from raysel.shared_files import start_registry
    from raysel.telemetry import SweepMetrics

    provenance = code_and_spec_tags(spec.model_dump(mode="json"))
    tracking, parent = _open_tracking(spec, state, provenance)
    sweep_dir.local.mkdir(parents=True, exist_ok=True)
    # what `--resume` and `raysel report` need; the phases' own progress lives in their Tune experiments
    _write_state(sweep_dir, {"name": spec.name, "parent_run_id": parent, "spec": spec.model_dump(mode="json"),
                             "tracking_uri": tracking.uri if tracking else None})
    if tracking and parent:  # so that a report can be rebuilt from the tracking server alone
        log_artifacts(tracking.uri, parent, [sweep_dir.local / SWEEP_FILE])
    registry, registry_actor = start_registry(spec.name)  # which trial builds a shared file, on any node
    board, board_actor, best_logged = "", None, {}
    if spec.tracking.log_best_model:  # which trial's model is its arm's best so far (raysel.best_models)
        best_logged = best_models.logged_before(get_run(tracking.uri, parent).data.tags)
        board, board_actor = best_models.start_board(spec.name, spec.protocol.mode, best_logged)
    settings = TrialSettings(tracking=tracking, protocol=spec.protocol.kind, workers=spec.resources.workers,
                             cpus_per_worker=spec.resources.cpus_per_worker,
                             gpus_per_worker=spec.resources.gpus_per_worker,
                             extra_per_worker=extra_per_worker(spec.resources),
                             max_failures=spec.resources.max_failures, storage_path=sweep_dir.uri,
                             working_dir=working_dir, checkpoints=checkpoint_config(spec),
                             shared_registry=registry, provenance=provenance,
                             system_metrics_s=(spec.tracking.system_metrics_interval_s
                                               if spec.tracking.system_metrics else None),
                             metric=spec.protocol.metric, best_models=board)
    frames, best = [], {}
    metrics = SweepMetrics(spec.name)  # trials running / finished / failed, for the Grafana dashboard
    if resume:
        clear_stop(sweep_dir)  # a graceful stop's deferred trials run now
        if not (sweep_dir.local / studies.STUDY_FILE).exists():  # this machine's copy is the newest one
            sweep_dir.download(studies.STUDY_FILE)  # a URI storage's default study, into the local mirror

    def check_stop(phase: Phase, grid) -> None:
        """After a graceful stop was asked for: no phase starts, the one that ran says what it left."""
        asked = stop_requested(sweep_dir)
        if asked is None:
            return
        deferred = sum("TrialDeferred" in repr(r.error) for r in grid) if grid is not None else phase.num_trials
        finished = num_finished(grid) if grid is not None else 0
        raise SweepStopped(f"sweep {spec.name!r} stopped gracefully ({asked['requested_by']}) in phase {phase.label}: "
                           f"{finished} trial(s) finished, {deferred} not started; continue it with --resume")

    def run_phase(phase: Phase) -> None:
        check_stop(phase, None)
        metrics.start_phase(phase.label, phase.num_trials)
        reporter = SweepProgress(spec.name, phase.label, phase.num_trials, spec.protocol.metric, spec.protocol.mode,
                                 tracking_uri=tracking.uri if tracking else None, enabled=progress)
        with reporter:
            grid = _tuner(spec, phase, settings, storage, [reporter, metrics], resume).fit()
            reporter.count_results(grid)
        if phase.asks_searcher and not spec.protocol.study_storage:
            sweep_dir.upload(studies.STUDY_FILE)  # a URI storage's: the study kept in its local mirror
        check_stop(phase, grid)
        ended = num_finished(grid) + grid.num_errors
        if ended < phase.num_trials:  # Tune returns normally when interrupted: later phases must not start
            raise SweepInterrupted(f"sweep {spec.name!r} was interrupted in phase {phase.label} ({ended} of "
                                   f"{phase.num_trials} trials ended); continue it with --resume")
        frame = trials_frame(grid, phase)
        frames.append(frame)
        if not keeps_finished(spec):
            delete_finished(grid)
        if board_actor is not None:
            best_logged.update(best_models.log_staged(board_actor, sweep_dir, tracking.uri, parent,
                                                      spec.protocol.metric, best_logged))
        if phase.is_search:
            best.update(best_params(frame, spec.protocol.metric, spec.protocol.mode))

    status = "FAILED"
    try:
        with stop_on_sigterm(sweep_dir, spec.name):
            if wait_for_scaling:
                _wait_for_nodes(spec)
            for phase in expand(spec):
                run_phase(phase)
            for phase in spec.protocol.rules.next_phases(spec, best):
                run_phase(phase)
        if tracking and parent:
            close_abandoned_runs(tracking.uri, tracking.experiment_id, parent)
        status = "FINISHED"
    except SweepInterrupted as stop:
        status = "KILLED"
        if tracking and parent:
            set_run_tags(tracking.uri, parent, {"raysel.stopped": str(stop)} if isinstance(stop, SweepStopped)
                         else {"raysel.interrupted": str(stop)})
        raise
    finally:
        import ray

        metrics.close()
        ray.kill(registry_actor)
        if board_actor is not None:
            ray.kill(board_actor)
        if tracking and parent:
            end_run(tracking.uri, parent, status)
    trials = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    result = SweepResult(name=spec.name, trials=trials, best_configs=best,
                         best_config=next(iter(best.values())) if len(best) == 1 else None,
                         parent_run_id=parent, tracking_uri=tracking.uri if tracking else None,
                         storage_path=sweep_dir.local, storage_uri=sweep_dir.uri)
    _finish(result)
    sweep_dir.upload("trials.csv", "best_configs.json", "report")
    return result


def _wait_for_nodes(spec: SweepSpec) -> None:
    """Until the autoscaler has added the nodes a trial needs (a message on stderr; Ctrl+C stops the sweep)."""
    try:
        wait_for_nodes(spec.resources, spec.resources.scale_timeout_s,
                       lambda line: print(f"{spec.name}: {line}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        raise SweepInterrupted(f"sweep {spec.name!r} was interrupted while waiting for the cluster to scale up; "
                               "continue it with --resume") from None


def _open_tracking(spec: SweepSpec, state: dict | None,
                   provenance: dict[str, str]) -> tuple[TrackingInfo | None, str | None]:
    if not spec.tracking.enabled:
        return None, None
    uri = spec.tracking.uri  # made absolute by run_sweep
    experiment = spec.tracking.experiment or spec.name
    experiment_id = ensure_experiment(uri, experiment)
    parent = (state or {}).get("parent_run_id")
    if parent is None:
        parent = start_parent_run(uri, experiment_id, spec.name,
                                  {"raysel.protocol": spec.protocol.kind, **provenance, **package_versions()},
                                  {"protocol": spec.protocol.model_dump(mode="json"),
                                   "arms": ",".join(a.name for a in spec.resolved_arms())})
    else:
        reopen_run(uri, parent)
    return TrackingInfo(uri=uri, experiment_id=experiment_id, parent_run_id=parent, sweep=spec.name), parent


def _finish(result: SweepResult) -> None:
    """The per-trial table and best configs as files; the report (tables, figures) written and logged."""
    from raysel.report import build

    result.trials.to_csv(result.storage_path / "trials.csv", index=False)
    (result.storage_path / "best_configs.json").write_text(json.dumps(result.best_configs, indent=2, default=str))
    if result.parent_run_id and result.tracking_uri:
        files = [result.storage_path / n for n in ("trials.csv", "best_configs.json")]
        log_artifacts(result.tracking_uri, result.parent_run_id, files, "report")
    result.report = build(result.storage_path, log=True)
    result.summary = result.report.summary


def _read_state(sweep_dir: Storage) -> dict | None:
    text = sweep_dir.read_text(SWEEP_FILE)
    return json.loads(text) if text is not None else None


def _write_state(sweep_dir: Storage, state: dict) -> None:
    (sweep_dir.local / SWEEP_FILE).write_text(json.dumps(state, indent=2, default=str))
    sweep_dir.upload(SWEEP_FILE)
