"""raysel's own metrics for dashboards, exported with ``ray.util.metrics`` through every node's Ray
metrics agent to Ray's Prometheus endpoint (Ray prefixes the names with ``ray_``).

| metric (as Prometheus sees it)      | kind  | tags                  | from                                   |
|-------------------------------------|-------|-----------------------|----------------------------------------|
| ray_raysel_trials_running           | gauge | sweep                 | the sweep's driver (a Tune callback)   |
| ray_raysel_trials_finished          | gauge | sweep                 | "                                      |
| ray_raysel_trials_failed            | gauge | sweep                 | "                                      |
| ray_raysel_phase_trials_done        | gauge | sweep, phase          | the driver: the phase's ended trials   |
| ray_raysel_phase_trials_total       | gauge | sweep, phase          | the driver: the trials the phase runs  |
| ray_raysel_trial_step               | gauge | sweep, arm, trial_id  | each trial, at every report            |
| ray_raysel_trial_steps_per_second   | gauge | sweep, arm, trial_id  | "                                      |
| ray_raysel_trial_tokens_per_second  | gauge | sweep, arm, trial_id  | " (train_tokens, raysel.cost)          |
| ray_raysel_trial_train_loss         | gauge | sweep, arm, trial_id  | " (train_loss)                         |
| ray_raysel_trial_metric             | gauge | + metric              | " (the protocol's metric)              |
| ray_raysel_igf_acceptance_rate      | gauge | sweep, arm, trial_id  | IGF trials (their acceptance_rate)     |
| ray_raysel_kernel_entries_per_second| gauge | sweep, arm, trial_id  | kernel trials (kernel_entries_per_s)   |

``dashboards/raysel-grafana.json`` plots them. Methods know nothing of this: the trial reads the
metrics they report.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ray.tune import Callback

from raysel.results import trial_status

TRIAL_TAGS = ("sweep", "arm", "trial_id")
# a reported metric → the gauge that carries it
METHOD_GAUGES = {"acceptance_rate": ("raysel_igf_acceptance_rate", "IGF: share of examined contexts accepted"),
                 "kernel_entries_per_s": ("raysel_kernel_entries_per_second", "kernel: eNTK entries computed per second")}


def _gauge(name: str, description: str, tag_keys: tuple[str, ...]):
    from ray.util.metrics import Gauge

    return Gauge(name, description=description, tag_keys=tag_keys)


class _SetAgain:
    """A daemon thread that calls ``export`` under ``lock`` every ``every_s`` seconds, from ``start()`` until
    ``close()``: Ray's metrics agent forgets a gauge that is not set for about two report intervals."""

    def __init__(self, export: Callable[[], None], every_s: float, name: str):
        self.lock = threading.Lock()  # the owner's updates and the thread's exports
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None
        self._export, self._every_s, self._name = export, every_s, name

    def start(self) -> None:
        if self.thread is None and not self.closed.is_set():
            self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self.thread.start()

    def close(self) -> None:
        self.closed.set()

    def _run(self) -> None:
        while not self.closed.wait(self._every_s):
            with self.lock:
                self._export()


class SweepMetrics(Callback):
    """On the driver: how many of the sweep's trials run, finished, failed (over all its phases).

    The counts come from the trials' own statuses (so a resumed sweep counts the trials it restored: the
    gauges are first set once Tune has restored them, never 0 before; a phase finished before the
    interrupt counts when its restored experiment ends). Ray's metrics agent forgets a gauge that is not
    set for about two report intervals, so from the first count on a thread sets them again every
    ``RESET_EVERY_S`` until ``close()``, also while Tune's loop is busy (a callback logging to MLflow, a
    checkpoint written) and between phases."""

    RESET_EVERY_S = 1.0
    STATUSES = {"running": "RUNNING", "finished": "TERMINATED", "failed": "ERROR"}

    def __init__(self, sweep: str):
        self.tags = {"sweep": sweep}
        self.gauges = {name: _gauge(f"raysel_trials_{name}", f"trials of the sweep {name} now" if name == "running"
                                    else f"trials of the sweep {name}", ("sweep",)) for name in self.STATUSES}
        self.phase_gauges = {name: _gauge(f"raysel_phase_trials_{name}", text, ("sweep", "phase")) for name, text in
                             (("done", "trials of the phase that ended"), ("total", "trials the phase runs"))}
        self.status: dict[str, str] = {}  # trial id → its latest status, over every phase
        self.phase: tuple[str, int] | None = None  # the running phase's label and number of trials
        self.phase_trials: set[str] = set()
        self.again = _SetAgain(self._export, self.RESET_EVERY_S, "raysel-sweep-metrics")  # from the first count

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state: leave the thread and its lock behind
        return {k: v for k, v in self.__dict__.items() if k != "again"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.again = _SetAgain(self._export, self.RESET_EVERY_S, "raysel-sweep-metrics")

    def start_phase(self, label: str, total: int) -> None:
        """The driver starts a phase of ``total`` trials (its trials are the ones Tune reports from now)."""
        with self.again.lock:
            self.phase, self.phase_trials = (label, total), set()

    def close(self) -> None:
        """The sweep ended: its gauges are no longer set (the agent drops them)."""
        self.again.close()

    @property
    def counts(self) -> dict[str, int]:
        return {name: sum(s == status for s in self.status.values()) for name, status in self.STATUSES.items()}

    def _export(self) -> None:
        for name, count in self.counts.items():
            self.gauges[name].set(count, tags=self.tags)
        if self.phase is not None:
            label, total = self.phase
            done = sum(self.status.get(t) in ("TERMINATED", "ERROR") for t in self.phase_trials)
            tags = {**self.tags, "phase": label}
            self.phase_gauges["done"].set(done, tags=tags)
            self.phase_gauges["total"].set(total, tags=tags)

    def _update(self, trials: list[Any], ended: Any = None, status: str | None = None, export: bool = True) -> None:
        with self.again.lock:
            self.phase_trials.update(t.trial_id for t in trials)
            self.status.update({t.trial_id: trial_status(t) for t in trials})  # an interrupted trial: not finished
            if ended is not None:  # Tune calls back before it sets the ended trial's status
                self.status[ended.trial_id] = status
            if not export:
                return
            self._export()
            self.again.start()

    def on_step_begin(self, iteration, trials, **info):
        # the statuses Tune changes without calling back (a trial a scheduler paused): the thread sets them
        self._update(trials, export=self.again.thread is None)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trials, trial, "RUNNING")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trials, trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        self._update(trials)


class TrialMetrics:
    """In a trial: its step, steps per second since the previous report, and the method gauges.

    A thread sets the latest values again every ``RESET_EVERY_S`` until ``close()``: a step may take
    minutes (a kernel, IGF's learner), and Ray's metrics agent forgets a gauge not set for about two
    report intervals."""

    RESET_EVERY_S = 1.0

    def __init__(self, sweep: str, arm: str, trial_id: str, metric: str = ""):
        self.tags = {"sweep": sweep, "arm": arm, "trial_id": trial_id}
        self.metric = metric  # the protocol's metric, shown as this trial's objective
        self.step = _gauge("raysel_trial_step", "the trial's latest reported step", TRIAL_TAGS)
        self.speed = _gauge("raysel_trial_steps_per_second", "the trial's optimizer steps per second", TRIAL_TAGS)
        self.token_speed = _gauge("raysel_trial_tokens_per_second", "tokens the trial trained on per second",
                                  TRIAL_TAGS)
        self.method = {key: _gauge(name, text, TRIAL_TAGS) for key, (name, text) in METHOD_GAUGES.items()}
        self.method["train_loss"] = _gauge("raysel_trial_train_loss", "the trial's latest training loss", TRIAL_TAGS)
        self.objective = _gauge("raysel_trial_metric", "the trial's latest value of the protocol's metric",
                                (*TRIAL_TAGS, "metric"))
        self._last: tuple[int, float] | None = None
        self._tokens: tuple[float, float] | None = None  # (train_tokens, when) at the previous report
        self._values: dict[Any, float] = {}  # gauge → its latest value
        self.again = _SetAgain(lambda: self._set_all(self._values), self.RESET_EVERY_S, "raysel-trial-metrics")
        self.again.start()

    def record(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        values = {self.step: step}
        if self._last is not None and step > self._last[0] and now > self._last[1]:
            values[self.speed] = (step - self._last[0]) / (now - self._last[1])
        self._last = (step, now)
        tokens = metrics.get("train_tokens")
        if tokens is not None:
            if self._tokens is not None and tokens > self._tokens[0] and now > self._tokens[1]:
                values[self.token_speed] = (tokens - self._tokens[0]) / (now - self._tokens[1])
            self._tokens = (tokens, now)
        values.update({gauge: metrics[key] for key, gauge in self.method.items() if key in metrics})
        if self.metric in metrics:
            values[self.objective] = metrics[self.metric]
        with self.again.lock:
            self._values.update(values)
            self._set_all(values)

    def close(self) -> None:
        """The trial ended: its gauges are no longer set (the agent drops them)."""
        self.again.close()

    def _set_all(self, values: dict[Any, float]) -> None:
        for gauge, value in values.items():
            gauge.set(value, tags={**self.tags, "metric": self.metric} if gauge is self.objective else self.tags)
