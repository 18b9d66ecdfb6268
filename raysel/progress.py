"""Live sweep progress in the terminal (a Ray Tune callback on the driver).

Shows trials done / running / failed and the best metric so far, prints one line per finished
trial, and closes the MLflow run of a trial that ended without closing its own run (a killed
process: ``tracking.end_run_if_running``).
"""
from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from raysel.results import TrialResult, num_finished, trial_status


class SweepProgress(Callback):
    def __init__(self, sweep: str, phase: str, total: int, metric: str, mode: str, *,
                 tracking_uri: str | None = None, enabled: bool = True, console: Console | None = None):
        self.sweep, self.phase, self.total, self.metric, self.mode = sweep, phase, total, metric, mode
        self.tracking_uri, self.enabled = tracking_uri, enabled
        self.console = console or Console(stderr=True)
        self.running: set[str] = set()
        self.done = self.failed = 0
        self.best: float | None = None
        self._counted = False
        self._progress: Progress | None = None
        self._task = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state: leave the live display behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_progress", "_task", "console")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _progress=None, _task=None, console=Console(stderr=True), _counted=False)

    def count_results(self, grid: Any) -> None:
        """The phase's final counts and best value from its results. A restored Tuner calls back the
        copy of this callback it saved, not this one, so a resumed phase's bar learns its end here."""
        self.running = set()
        self.done, self.failed = num_finished(grid), grid.num_errors
        for result in grid:
            self._consider(TrialResult.from_tune(result.metrics or {}).latest.get(self.metric))
        self._refresh()

    # -- context manager: the bar lives for one phase
    def __enter__(self) -> "SweepProgress":
        if self.enabled:
            self._progress = Progress(TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("sweep", total=self.total, label=f"{self.sweep}/{self.phase}",
                                                 status=self._status())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()

    def _status(self) -> str:
        best = "–" if self.best is None else f"{self.best:.4g}"
        return f"running {len(self.running)} · failed {self.failed} · best {self.metric} {best}"

    def _refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done + self.failed, status=self._status())

    def _log(self, text: str) -> None:
        if self.enabled:
            self.console.log(text)

    def _count(self, trials: list[Any], ended: Any = None, status: str | None = None) -> None:
        """Running, done and failed from the trials' own statuses, and the best of their last results:
        right also for a resumed phase, whose restored trials end without callbacks."""
        statuses = {t.trial_id: trial_status(t) for t in trials}
        if ended is not None:  # Tune calls back before it sets the ended trial's status
            statuses[ended.trial_id] = status
        self.running = {i for i, s in statuses.items() if s == "RUNNING"}
        self.done = sum(s == "TERMINATED" for s in statuses.values())
        self.failed = sum(s == "ERROR" for s in statuses.values())
        for trial in trials:
            self._consider(TrialResult.from_tune(trial.last_result or {}).latest.get(self.metric))
        self._refresh()

    def _consider(self, value: Any) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
                self.best = float(value)

    # -- Tune callback hooks
    def on_step_begin(self, iteration, trials, **info):
        if not self._counted:  # the first turn of Tune's loop: trials a resumed phase restored
            self._counted = True
            self._count(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count(trials, trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._consider(result.get(self.metric))
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count(trials, trial, "TERMINATED")
        last = TrialResult.from_tune(trial.last_result or {})
        # A trial that ran to its end closed its run before its function returned; a run still open was
        # stopped (its scheduler, a stopper): Tune may end the actor before the trial's own SystemExit
        # handler tags and closes it, so the driver does both.
        self._close_run(last.run_id, "FINISHED", stopped=True)
        value = last.latest.get(self.metric)
        shown = f"{value:.4g}" if value is not None else "–"
        step = last.step if trial.last_result else "–"
        self._log(f"trial {trial.trial_id} done: {self.metric}={shown} at step {step}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial, "ERROR")
        self._close_run(TrialResult.from_tune(trial.last_result or {}).run_id, "FAILED")
        self._log(f"[red]trial {trial.trial_id} failed[/red] (see {trial.path})")

    def _close_run(self, run_id: str | None, status: str, stopped: bool = False) -> None:
        """End a run its trial left open, as ``status`` (tagged as the scheduler's stop when ``stopped``)."""
        if self.tracking_uri and run_id:
            from raysel.tracking import STOPPED_BY_SCHEDULER, end_run_if_running

            end_run_if_running(self.tracking_uri, run_id, status, STOPPED_BY_SCHEDULER if stopped else None)
