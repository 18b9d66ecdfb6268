"""What trials and sweeps leave behind, in one place: the record a trial reports at each step, when a
trial counts as finished, and the sweep's state file.

A trial reports to Ray Tune at its own global steps. Each result carries the latest value of every
metric so far (Optuna and ASHA read the objective from every result, while evaluations come only
every ``eval_every`` steps), the names of the metrics that are new at this step (so that a report
built from Tune's files does not count a carried value twice), and the trial's MLflow run id.

    carry = LatestMetrics()
    record = carry.record(10, {"train_loss": 2.1}, run_id)   # -> TrialResult
    tune.report(record.to_tune())
    TrialResult.from_tune(result_dict).fresh_metrics()        # what the trial reported at that step

A leaf module: trials, the sweep, the progress bar and the report import it; it imports nothing of raysel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

SWEEP_FILE = "sweep.json"  # in storage_path/NAME and logged to the parent run: what --resume and a report need
STEP_KEY = "step"
RUN_ID_KEY = "mlflow_run_id"
FRESH_KEY = "raysel_fresh"  # the metrics reported at this step, comma-separated (the others are carried over)
# what Ray Tune adds to every result: not metrics of the method
TUNE_KEYS = frozenset({"timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
                       "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
                       "config", "time_since_restore", "iterations_since_restore", "experiment_tag"})
RECORD_KEYS = frozenset({STEP_KEY, RUN_ID_KEY, FRESH_KEY})


# A trial finished when its last result is done: it returned, or its scheduler or stopper stopped it. Tune marks
# the trials a Ctrl+C interrupted TERMINATED too (``ResultGrid.num_terminated`` counts them), but their last
# result is not done: --resume runs them again.
def num_finished(grid: Iterable[Any]) -> int:
    """The trials of a Tune ResultGrid that finished without error."""
    return sum(result.error is None and _is_done(result.metrics) for result in grid)


def trial_status(trial: Any) -> str:
    """A Tune trial's status, INTERRUPTED for a trial Tune stopped on a Ctrl+C (not TERMINATED)."""
    return "INTERRUPTED" if trial.status == "TERMINATED" and not _is_done(trial.last_result) else trial.status


def _is_done(result: dict[str, Any] | None) -> bool:
    return bool((result or {}).get("done"))


@dataclass(frozen=True)
class TrialResult:
    """One result of one trial: the latest value of every metric at ``step``, and which are new."""

    step: int
    latest: dict[str, float] = field(default_factory=dict)
    fresh: tuple[str, ...] = ()
    run_id: str = ""  # the trial's MLflow run ("" when tracking is off)

    def to_tune(self) -> dict[str, Any]:
        """The dict handed to ``tune.report`` / ``ray.train.report``."""
        return {**self.latest, STEP_KEY: self.step, RUN_ID_KEY: self.run_id, FRESH_KEY: ",".join(self.fresh)}

    @classmethod
    def from_tune(cls, result: dict[str, Any]) -> "TrialResult":
        """A result as Tune returns it (``Result.metrics``, a line of ``result.json``, ``trial.last_result``).

        Results without the fresh list (other trainables) count every metric as new."""
        latest = {k: v for k, v in result.items() if k not in TUNE_KEYS | RECORD_KEYS and _is_number(v)}
        fresh = result.get(FRESH_KEY)
        names = tuple(n for n in fresh.split(",") if n) if isinstance(fresh, str) else tuple(latest)
        step = result.get(STEP_KEY, result.get("training_iteration", 0))
        return cls(step=int(step or 0), latest=latest, fresh=names, run_id=result.get(RUN_ID_KEY) or "")

    def fresh_metrics(self) -> dict[str, float]:
        """The metrics the trial reported at this step."""
        return {k: self.latest[k] for k in self.fresh if k in self.latest}


class LatestMetrics:
    """The carry-over of a trial's metrics from step to step (one per trial process)."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def carry(self, metrics: dict[str, float]) -> None:
        """Values that hold until reported again (a restored checkpoint's last evaluation)."""
        self.latest.update({k: float(v) for k, v in metrics.items()})

    def record(self, step: int, metrics: dict[str, float], run_id: str = "") -> TrialResult:
        """The result of reporting ``metrics`` at ``step``."""
        self.carry(metrics)
        return TrialResult(step=step, latest=dict(self.latest), fresh=tuple(metrics), run_id=run_id)


def table_row(result: dict[str, Any]) -> dict[str, Any]:
    """A final Tune result as columns of ``trials.csv``: its metrics, step and run id, and Tune's own
    numbers (time, iterations); not the config or the fresh list."""
    return {k: v for k, v in result.items() if k not in ("config", "trial_id", FRESH_KEY) and not isinstance(v, dict)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
