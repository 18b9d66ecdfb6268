"""Where a report's numbers come from: the sweep's MLflow runs (the source of truth), else Ray Tune's files.

A sweep is named by its storage directory (``storage_path/name``, holding ``sweep.json``), by its
MLflow parent run id, or by its MLflow experiment name (the newest sweep in it). Either source gives
the same long table: one row per trial × step, with the trial's identity, params, tags and the
metrics it reported *at that step* (NaN where it reported nothing new).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raysel import tracking
from raysel.results import SWEEP_FILE, TrialResult
from raysel.storage import Storage, is_uri

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ID_COLUMNS = ["trial_id", "run_id", "arm", "method", "stage", "seed", "status", "start_time"]


class ReportError(ValueError):
    """A sweep reference that names nothing usable, or a report option that does not fit the sweep."""


@dataclass
class SweepRecord:
    """A sweep found by reference: its spec (as run) and where its trials were recorded."""

    name: str
    spec: dict[str, Any]
    tracking_uri: str | None
    parent_run_id: str | None
    sweep_dir: Path | None  # the storage directory, when it exists on this machine (a URI's local mirror)
    storage_uri: str | None = None  # the sweep's storage URI, when it was read from one (the report goes back)


def resolve(sweep: "str | Path", tracking_uri: str | None = None) -> SweepRecord:
    """Find a sweep by storage directory (a local one, or a URI: its files are fetched into the local
    mirror, checkpoints left out), MLflow parent run id, or MLflow experiment name."""
    if is_uri(str(sweep)):
        stored = Storage.parse(str(sweep))
        if stored.read_text(SWEEP_FILE) is None:
            raise ReportError(f"{sweep} holds no sweep (no {SWEEP_FILE}); give the sweep's storage URI "
                              "(storage_path/name)")
        record = resolve(stored.download(skip=("checkpoint_",)), tracking_uri)
        return dataclasses.replace(record, storage_uri=stored.uri)
    path = Path(sweep).expanduser()
    if path.is_dir():
        state_file = path / SWEEP_FILE
        if not state_file.is_file():
            raise ReportError(f"{path} is a directory but not a sweep's (no {SWEEP_FILE}); give the sweep's "
                              "storage directory (storage_path/name), its MLflow parent run id or its experiment name")
        state = json.loads(state_file.read_text())
        return SweepRecord(state["name"], state["spec"], tracking_uri or state.get("tracking_uri"),
                           state.get("parent_run_id"), path.resolve())
    uri = _resolve_uri(tracking_uri)
    text = str(sweep)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():  # opening it would create it
        raise ReportError(f"{text!r} is not a sweep directory, and there is no MLflow store at {uri} to look it up "
                          "in; give storage_path/name, or a parent run id or experiment name with --tracking-uri "
                          "(or MLFLOW_TRACKING_URI)")
    if RUN_ID.match(text):
        return _record_from_run(uri, text)
    return _record_from_experiment(uri, text)


def _resolve_uri(tracking_uri: str | None) -> str:
    import os

    return tracking.resolve_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def _record_from_run(uri: str, run_id: str) -> SweepRecord:
    try:
        run = tracking.get_run(uri, run_id)
    except Exception as err:
        raise ReportError(f"no MLflow run {run_id} in {uri} ({type(err).__name__}); check the id and "
                          "--tracking-uri (or MLFLOW_TRACKING_URI)") from None
    role = run.data.tags.get("raysel.role")
    if role != "sweep":
        parent = run.data.tags.get("mlflow.parentRunId")
        hint = f"; its sweep's parent run is {parent}" if parent else ""
        raise ReportError(f"MLflow run {run_id} is not a raysel sweep's parent run (raysel.role={role!r}){hint}")
    return SweepRecord(run.data.tags.get("raysel.sweep", run.info.run_name), _spec_of(uri, run_id),
                       uri, run_id, None)


def _record_from_experiment(uri: str, name: str) -> SweepRecord:
    try:
        experiment, newest = tracking.newest_sweep_run(uri, name)
    except Exception as err:
        raise ReportError(f"cannot reach the MLflow store {uri} ({type(err).__name__}: {err})") from None
    if experiment is None:
        raise ReportError(f"{name!r} is neither a sweep directory, an MLflow run id, nor an experiment in {uri}; "
                          "give storage_path/name, a parent run id, or an experiment name "
                          "(with --tracking-uri or MLFLOW_TRACKING_URI for another store)")
    if newest is None:
        raise ReportError(f"experiment {name!r} in {uri} holds no raysel sweep (no run tagged raysel.role=sweep)")
    return _record_from_run(uri, newest.info.run_id)


def _spec_of(uri: str, run_id: str) -> dict[str, Any]:
    """The spec a sweep ran with, from its parent run's ``sweep.json`` artifact."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracking.download_artifact(uri, run_id, SWEEP_FILE, tmp)
        except Exception:
            raise ReportError(f"MLflow run {run_id} has no {SWEEP_FILE} artifact (a sweep from an older raysel?); "
                              "report it from its storage directory instead") from None
        return json.loads(Path(local).read_text())["spec"]


# ---------------------------------------------------------------- the long table
def load_frame(record: SweepRecord, source: str = "auto") -> tuple[pd.DataFrame, str]:
    """The sweep's trial × step table and the source it came from ("mlflow" or "tune")."""
    if source not in ("auto", "mlflow", "tune"):
        raise ReportError(f"source {source!r} is not one of: auto, mlflow, tune")
    mlflow_ok = record.tracking_uri is not None and record.parent_run_id is not None
    if source == "mlflow" and not mlflow_ok:
        raise ReportError(f"sweep {record.name!r} was not tracked in MLflow (tracking.enabled: false)")
    if source == "tune" or (source == "auto" and not mlflow_ok):
        if record.sweep_dir is None:
            raise ReportError(f"sweep {record.name!r}: no storage directory here to read Ray Tune's results from")
        return tune_frame(record.sweep_dir), "tune"
    return mlflow_frame(record.tracking_uri, record.parent_run_id), "mlflow"


def mlflow_frame(uri: str, parent_run_id: str, threads: int = 8) -> pd.DataFrame:
    """Every child run of the sweep's parent run, with each metric's full history."""
    runs = tracking.child_runs(uri, parent_run_id)
    all_histories = tracking.metric_histories(uri, runs, threads)
    rows = []
    for run, history in zip(runs, all_histories):
        tags = run.data.tags
        identity = {"trial_id": tags.get("raysel.trial_id"), "run_id": run.info.run_id,
                    "arm": tags.get("raysel.arm"), "method": tags.get("raysel.method"),
                    "stage": tags.get("raysel.stage"), "seed": _number(tags.get("raysel.seed")),
                    "status": run.info.status, "start_time": pd.to_datetime(run.info.start_time, unit="ms")}
        identity.update(_params(run.data.params))
        identity.update({f"tags.{k}": v for k, v in tags.items() if not k.startswith("mlflow.")})
        by_step: dict[int, dict[str, float]] = {}
        for key, points in history.items():
            for point in sorted(points, key=lambda p: (p.step, p.timestamp)):  # the latest value per step wins
                by_step.setdefault(int(point.step), {})[key] = point.value
        rows.extend({**identity, "step": step, **values} for step, values in by_step.items())
        if not by_step:  # a trial that never reported still counts (failed early)
            rows.append({**identity, "step": math.nan})
    if not rows:
        raise ReportError(f"the sweep's parent run {parent_run_id} in {uri} has no trial runs yet")
    return _ordered(pd.DataFrame(rows))


def tune_frame(sweep_dir: Path) -> pd.DataFrame:
    """The same table from Ray Tune's per-trial ``result.json`` files under the sweep's directory."""
    rows = []
    for result_file in sorted(sweep_dir.glob("*/trial_*/result.json")):
        trial_dir = result_file.parent
        failed = any((trial_dir / f).exists() for f in ("error.txt", "error.pkl"))
        reason = _error_line(trial_dir / "error.txt") if failed else None
        by_step: dict[int, dict[str, Any]] = {}
        identity: dict[str, Any] = {}
        for line in result_file.read_text().splitlines():
            if not line.strip():
                continue
            result = json.loads(line)
            if not identity:
                identity = _tune_identity(result, failed)
                if reason:
                    identity["tags.raysel.failure"] = reason
            record = TrialResult.from_tune(result)
            by_step.setdefault(record.step, {}).update(record.fresh_metrics())
        rows.extend({**identity, "step": step, **values} for step, values in by_step.items())
    if not rows:
        raise ReportError(f"no Ray Tune results under {sweep_dir} (no */trial_*/result.json yet)")
    return _ordered(pd.DataFrame(rows))


def _error_line(path: Path) -> str | None:
    """The last "SomeError: message" line of a Tune trial's error.txt (the exception that ended it)."""
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    found = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)(\([\w.]+\))?: ", line)]
    return found[-1][:500] if found else None


def _tune_identity(result: dict[str, Any], failed: bool) -> dict[str, Any]:
    config = result.get("config", {})
    variant = config.get("variant", {})
    identity = {"trial_id": result.get("trial_id"), "run_id": TrialResult.from_tune(result).run_id or None,
                "arm": variant.get("arm"), "method": variant.get("method"), "stage": variant.get("stage"),
                "seed": config.get("seed"), "status": "FAILED" if failed else "FINISHED",
                "start_time": pd.to_datetime(result.get("timestamp", 0), unit="s")}
    identity.update({f"params.{k}": v for k, v in variant.get("params", {}).items()})
    identity.update({"model.name": variant.get("model", {}).get("name"),
                     "data.name": variant.get("data", {}).get("name")})
    return identity


def _params(params: dict[str, str]) -> dict[str, Any]:
    """MLflow keeps params as strings: give numbers and booleans back their type."""
    keep = {k: v for k, v in params.items() if k.startswith(("params.", "model.", "data."))}
    return {k: _typed(v) for k, v in keep.items()}


def _typed(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    number = _number(text)
    return text if number is None else number


def _number(text: Any) -> Any:
    if text is None:
        return None
    try:
        return int(text)
    except (TypeError, ValueError):
        pass
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Identity, params, tags, step, then metrics; rows by arm, stage, seed, trial, step."""
    first = [c for c in ID_COLUMNS if c in frame]
    params = sorted(c for c in frame if c.startswith(("params.", "model.", "data.")))
    tags = sorted(c for c in frame if c.startswith("tags."))
    metrics = sorted(c for c in frame if c not in {*first, *params, *tags, "step"})
    frame = frame[first + params + tags + ["step"] + metrics]
    return frame.sort_values(["arm", "stage", "seed", "trial_id", "step"], kind="stable",
                             na_position="last").reset_index(drop=True)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a long table (everything after ``step``)."""
    columns = list(frame.columns)
    return columns[columns.index("step") + 1:] if "step" in columns else []
