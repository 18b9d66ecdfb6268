"""MLflow: one parent run per sweep, one child run per trial, logged from inside the trial.

Every MLflow call of raysel is in this module (the sweep, trials, the progress bar and the report
call the functions here).

One pattern only: the trial (rank 0 under Ray Train) logs its own run with the loop's global step.
Restarts and resumed sweeps find the trial's existing run by its Ray trial id instead of opening a
second one. Values of keys that look like secrets are replaced before anything is logged.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from raysel.cache import cache_dir

if TYPE_CHECKING:
    from raysel.provenance import Loaded

SYSTEM_METRICS_PREFIX = "system/"  # MLflow's system metrics: the machine's, not the loop's (no global step)
SECRET_KEY = re.compile(r"(token|passw(or)?d|secret|credential|api[_-]?key|access[_-]?key|private[_-]?key|(^|[._-])key)$",
                        re.IGNORECASE)
URI_PASSWORD = re.compile(r"(//[^/:@]+:)[^@/]+@")
REDACTED = "***"
STOPPED_BY_SCHEDULER = {"raysel.stopped_by_scheduler": "true"}  # a run its trial's scheduler ended early
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value


@dataclass(frozen=True)
class TrackingInfo:
    """What a trial needs to log into the sweep's MLflow experiment (picklable)."""

    uri: str
    experiment_id: str
    parent_run_id: str | None = None
    sweep: str = ""


def resolve_uri(uri: str, base: Path | None = None) -> str:
    """Make relative ``sqlite:///x.db`` URIs absolute (against ``base``, default the working directory),
    so trials in other directories share the store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(((base or Path.cwd()) / uri[len("sqlite:///"):]).resolve())
    return uri


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"params": {"lr": 1e-4}}`` → ``{"params.lr": 1e-4}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def redact(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Hide secret-looking values (by key) and passwords inside URIs."""
    out = {}
    for key, value in flat.items():
        if SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, ""):
            out[key] = REDACTED
        elif isinstance(value, str):
            out[key] = redact_uri(value)
        else:
            out[key] = value
    return out


def redact_uri(uri: str) -> str:
    """A URI without the password of its ``user:password@`` part (for anything shown or logged)."""
    return URI_PASSWORD.sub(rf"\1{REDACTED}@", uri)


def loggable_params(tree: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in redact(flatten(tree)).items()}


def _client(uri: str):
    import mlflow

    if uri.startswith("sqlite:///"):
        _new_sqlite_store(_sqlite_path(uri))
    return mlflow.MlflowClient(tracking_uri=uri)


def _sqlite_path(uri: str) -> Path:
    """The file of a ``sqlite:///`` store (a relative one against the working directory)."""
    return Path(resolve_uri(uri)[len("sqlite:///"):])


def _new_sqlite_store(path: Path) -> None:
    """Make a SQLite store that does not exist yet as a copy of an empty one already migrated: MLflow
    creates a store by running every schema migration (~2 s), once per MLflow version here (kept in
    raysel's cache without its Default experiment, which MLflow then adds with this store's artifact
    root). Anything in the way (no folder, a read-only cache): MLflow makes the store itself."""
    if path.exists() or not path.parent.is_dir():
        return
    import sqlite3

    import mlflow

    empty = cache_dir() / f"mlflow-{mlflow.__version__}-empty-store.db"
    try:
        if not empty.is_file():
            empty.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=empty.parent) as tmp:
                migrated = Path(tmp) / "store.db"
                mlflow.MlflowClient(tracking_uri=f"sqlite:///{migrated}").search_experiments()
                with contextlib.closing(sqlite3.connect(migrated)) as db, db:
                    db.execute("DELETE FROM experiment_tags")
                    db.execute("DELETE FROM experiments")
                os.replace(migrated, empty)
        copy = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}"
        shutil.copyfile(empty, copy)  # the mode MLflow's own file would have (the umask's)
        try:
            os.link(copy, path)  # never over a store another process just made
        except FileExistsError:
            pass
        finally:
            copy.unlink()
    except (OSError, sqlite3.Error):
        return


def check_reachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the tracking store at ``uri`` cannot be used, or None: an http(s) server must answer its
    ``/health`` (the MLflow client would otherwise retry for minutes); a sqlite file's folder must exist."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as err:
            return (f"no MLflow server answers at {redact_uri(uri)} ({type(err).__name__}); start one "
                    "(launch/mlflow-server.sh) or use a local store such as sqlite:///mlflow.db")
        if response.status_code >= 400:
            return f"{redact_uri(uri)}/health answered HTTP {response.status_code}: is this an MLflow server?"
    elif uri.startswith("sqlite:///"):
        folder = _sqlite_path(uri).parent
        if not folder.is_dir():
            return f"the folder of the SQLite store {uri!r} does not exist ({folder})"
    return None


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created if needed (concurrent creators tolerated)."""
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it between our two calls
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_parent_run(uri: str, experiment_id: str, sweep: str, tags: Mapping[str, str],
                     params: Mapping[str, Any]) -> str:
    client = _client(uri)
    run = client.create_run(experiment_id, run_name=sweep,
                            tags={"raysel.role": "sweep", "raysel.sweep": sweep, **tags})
    _log_params(client, run.info.run_id, loggable_params(params))
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


def log_inputs_once_more_on_a_race(client: Any, run_id: str, inputs: list) -> None:
    """``client.log_inputs``, again once if the store refused a dataset row another run inserted at the same
    moment: MLflow looks datasets up, then inserts the missing ones, so two trials logging the same split
    together can both insert it and one fails on the unique key (seen in CI on a shared MLflow server). The
    failed attempt is rolled back; the second finds the dataset and only links it to this run."""
    from mlflow.exceptions import MlflowException

    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as err:
        text = str(err).lower()
        if "unique constraint" not in text and "duplicate" not in text:
            raise
        client.log_inputs(run_id, datasets=inputs)


def set_run_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Tags on a run, passwords inside URIs redacted. Tag names are raysel's own, so the by-name rule of
    ``redact`` (for users' params) does not apply: it hid cache keys such as ``igf.learner_key``."""
    client = _client(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, redact_uri(str(value)))


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run running again (a resumed sweep's parent run), without its former stop's tag."""
    client = _client(uri)
    client.update_run(run_id, status="RUNNING")
    tags = client.get_run(run_id).data.tags
    for key in ("raysel.stopped", "raysel.interrupted"):
        if key in tags:
            client.delete_tag(run_id, key)


def end_run_if_running(uri: str, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
    """Close a trial's run that its process left open (a killed process cannot close its own run),
    with ``tags`` set first."""
    client = _client(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status=status)


ABANDONED_TAG = "raysel.abandoned"


def close_abandoned_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[str]:
    """At the end of a sweep, its trial runs still RUNNING: a killed driver's trials that Tune's saved state
    did not know (started after it last saved), so ``--resume`` never went on with them. They are ended
    KILLED with the tag ``raysel.abandoned`` (reports leave them out); their trial ids."""
    client = _client(uri)
    query = (f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`raysel.role` = 'trial' "
             "and attributes.status = 'RUNNING'")
    runs = client.search_runs([experiment_id], filter_string=query)
    for run in runs:
        client.set_tag(run.info.run_id, ABANDONED_TAG, "its driver was killed before Ray Tune saved this trial; "
                       "the resumed sweep did not continue it")
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.data.tags.get("raysel.trial_id", run.info.run_id) for run in runs]


def failure_reason(error: BaseException) -> str:
    """One line for a failed trial's ``raysel.failure`` tag and the report: the error's type and message."""
    message = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {message}"[:500]


# ---------------------------------------------------------------- reading a sweep back (the report)
def get_run(uri: str, run_id: str):
    """The MLflow run ``run_id`` (MLflow's exception when there is none)."""
    return _client(uri).get_run(run_id)


def newest_sweep_run(uri: str, experiment: str):
    """The newest sweep parent run in ``experiment``: (the experiment or None, the run or None)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None, None
    runs = client.search_runs([found.experiment_id], filter_string="tags.`raysel.role` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return found, (runs[0] if runs else None)


def download_artifact(uri: str, run_id: str, path: str, dst: str) -> str:
    """A run's artifact downloaded under ``dst``: its local path."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files: no bar
    return _client(uri).download_artifacts(run_id, path, dst)


def child_runs(uri: str, parent_run_id: str) -> list:
    """Every trial run of a sweep's parent run."""
    client = _client(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def metric_histories(uri: str, runs: list, threads: int = 8) -> list[dict[str, list]]:
    """Per run, every metric's full history ({key: [Metric]}) but the system metrics (sampled on their
    own clock, not at the loop's steps), fetched in parallel (one request per run × metric on a server)."""
    client = _client(uri)

    def histories(run) -> dict[str, list]:
        return {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics
                if not key.startswith(SYSTEM_METRICS_PREFIX)}

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(histories, runs))


TEXT_SUFFIXES = (".json", ".md", ".csv", ".txt", ".yaml", ".yml", ".log")


def log_artifacts(uri: str, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    client = _client(uri)
    for path in paths:
        _log_redacted(client, run_id, Path(path), artifact_path)


def _log_redacted(client, run_id: str, path: Path, artifact_path: str | None) -> None:
    """Log ``path``; a text file that holds a URI with a password (e.g. the spec's tracking.uri in
    sweep.json or report.md) is logged as a copy without it, under the same name."""
    if path.suffix in TEXT_SUFFIXES and path.is_file():
        text = path.read_text(errors="replace")
        if redact_uri(text) != text:
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / path.name
                copy.write_text(redact_uri(text))
                client.log_artifact(run_id, str(copy), artifact_path)
            return
    client.log_artifact(run_id, str(path), artifact_path)


def log_summary_metrics(uri: str, run_id: str, metrics: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if _is_number(v)]
    if items:
        _client(uri).log_batch(run_id, metrics=items)


def _log_params(client, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[start:start + 100])


def _is_number(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and float(value) == float(value)
    except (TypeError, ValueError):
        return False


class TrialLogger:
    """Logs one trial into its MLflow child run (reused if the trial restarts)."""

    def __init__(self, info: TrackingInfo, trial_id: str, run_name: str, tags: Mapping[str, str],
                 params: Mapping[str, Any]):
        self.uri = info.uri
        self.client = _client(info.uri)
        self.run_id = self._find_run(info, trial_id)
        if self.run_id is None:
            all_tags = {"raysel.role": "trial", "raysel.trial_id": trial_id, "raysel.sweep": info.sweep, **tags}
            if info.parent_run_id:
                all_tags["mlflow.parentRunId"] = info.parent_run_id
            run = self.client.create_run(info.experiment_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id
            _log_params(self.client, self.run_id, loggable_params(params))
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            self._note_changed_params(loggable_params(params))

    def _note_changed_params(self, params: Mapping[str, str]) -> None:
        """A restarted trial whose config changed (PBT perturbed it; MLflow's params cannot change): a tag
        at the last step it logged, ``raysel.params_changed_at.STEP``, with the old and new values."""
        logged = self.client.get_run(self.run_id).data.params
        changed = {k: (logged[k], str(v)) for k, v in params.items() if k in logged and logged[k] != str(v)}
        if changed:
            self.set_tags({f"raysel.params_changed_at.{max(0, self.last_logged_step())}":
                           "; ".join(f"{k}: {old} -> {new}" for k, (old, new) in sorted(changed.items()))})

    @classmethod
    def attach(cls, info: TrackingInfo, run_id: str) -> "TrialLogger":
        """A logger for a run another process opened (rank 0 of a Ray Train trial)."""
        logger = cls.__new__(cls)
        logger.uri, logger.client, logger.run_id = info.uri, _client(info.uri), run_id
        return logger

    def _find_run(self, info: TrackingInfo, trial_id: str) -> str | None:
        query = f"tags.`raysel.trial_id` = '{trial_id}'"
        if info.parent_run_id:
            query += f" and tags.`mlflow.parentRunId` = '{info.parent_run_id}'"
        runs = self.client.search_runs([info.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _is_number(v)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        set_run_tags(self.uri, self.run_id, tags)

    def log_artifact(self, path: "str | os.PathLike", artifact_path: str | None = None) -> None:
        _log_redacted(self.client, self.run_id, Path(path), artifact_path)

    def log_loads(self, loads: "Iterable[Loaded]") -> None:
        """The models and data the trial loaded (raysel.provenance): a digest tag each, and every data
        split as an MLflow dataset input (the run's Datasets, with the split as its context)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from raysel.provenance import load_tags

        loads = list(loads)
        if not loads:
            return
        self.set_tags(load_tags(loads))
        inputs = [DatasetInput(Dataset(name=item.name, digest=digest, source_type="raysel",
                                       source=json.dumps({"data": item.name, "split": split, "from": item.source}),
                                       profile=json.dumps({"num_rows": rows})),
                               tags=[InputTag("mlflow.data.context", split)])
                  for item in loads if item.kind == "data" for split, rows, digest in item.splits]
        if inputs:
            log_inputs_once_more_on_a_race(self.client, self.run_id, inputs)

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float | None) -> Iterator[None]:
        """MLflow's system-metrics monitor on this run while the block runs (nothing if ``interval_s`` is
        None): CPU, memory, disk, network, and GPU utilisation and memory where there is a GPU (pynvml),
        as ``system/*`` metrics. A last sample is taken and logged at the end, so that even a trial
        shorter than the interval has one."""
        if interval_s is None:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, samples_before_logging=1,
                                       resume_logging=True, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            try:
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
            except Exception as error:  # the trial's own outcome matters more than its last sample
                warnings.warn(f"raysel: the last system-metrics sample of run {self.run_id} was not logged: {error}")

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def last_logged_step(self) -> int:
        """The highest step already logged to this run (−1 for a fresh run): a restarted trial does
        not log its replayed steps twice."""
        keys = [k for k in self.client.get_run(self.run_id).data.metrics if k != "step"]
        if not keys:
            return -1
        return max(m.step for key in keys for m in self.client.get_metric_history(self.run_id, key))

    @contextlib.contextmanager
    def lifecycle(self) -> Iterator[None]:
        """The trial's body: its run ends FINISHED, or FAILED with the reason as a tag. Ray Tune ends a
        trial its scheduler stopped (ASHA, also at max_t) with SystemExit(0): a finished run, tagged
        (``STOPPED_BY_SCHEDULER``; the driver tags it too when it sees the stop first, see progress.py)."""
        try:
            yield
        except SystemExit as stop:
            if stop.code not in (0, None):
                self.finish("FAILED")
                raise
            self.set_tags(STOPPED_BY_SCHEDULER)
            self.finish("FINISHED")
            raise
        except BaseException as error:
            self.set_tags({"raysel.failure": failure_reason(error)})
            self.finish("FAILED")
            raise
        self.finish("FINISHED")


class NullLogger:
    """What non-zero ranks and untracked sweeps get: the same calls, nothing logged."""

    run_id = None

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, path: "str | os.PathLike", artifact_path: str | None = None) -> None: ...
    def log_loads(self, loads: "Iterable[Loaded]") -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float | None) -> Iterator[None]:
        yield

    def last_logged_step(self) -> int:
        return -1

    @contextlib.contextmanager
    def lifecycle(self) -> Iterator[None]:
        yield
