"""raysel's own metrics for dashboards, exported with ``ray.util.metrics`` through every node's Ray
metrics agent to Ray's Prometheus endpoint (Ray prefixes the names with ``ray_``).

| metric (as Prometheus sees it)      | kind  | tags                  | from                                   |
|-------------------------------------|-------|-----------------------|----------------------------------------|
| ray_raysel_trials_running           | gauge | sweep                 | the sweep's driver (a Tune callback)   |
| ray_raysel_trials_finished          | gauge | sweep                 | "                                      |
| ray_raysel_trials_failed            | gauge | sweep                 | "                                      |
| ray_raysel_trial_step               | gauge | sweep, arm, trial_id  | each trial, at every report            |
| ray_raysel_trial_steps_per_second   | gauge | sweep, arm, trial_id  | "                                      |
| ray_raysel_igf_acceptance_rate      | gauge | sweep, arm, trial_id  | IGF trials (their acceptance_rate)     |
| ray_raysel_kernel_entries_per_second| gauge | sweep, arm, trial_id  | kernel trials (kernel_entries_per_s)   |

``dashboards/raysel-grafana.json`` plots them. Methods know nothing of this: the trial reads the
metrics they report.
"""
from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

TRIAL_TAGS = ("sweep", "arm", "trial_id")
# a reported metric → the gauge that carries it
METHOD_GAUGES = {"acceptance_rate": ("raysel_igf_acceptance_rate", "IGF: share of examined contexts accepted"),
                 "kernel_entries_per_s": ("raysel_kernel_entries_per_second", "kernel: eNTK entries computed per second")}


def _gauge(name: str, description: str, tag_keys: tuple[str, ...]):
    from ray.util.metrics import Gauge

    return Gauge(name, description=description, tag_keys=tag_keys)


class SweepMetrics(Callback):
    """On the driver: how many of the sweep's trials run, finished, failed (over all its phases)."""

    def __init__(self, sweep: str):
        self.tags = {"sweep": sweep}
        self.running = _gauge("raysel_trials_running", "trials of the sweep running now", ("sweep",))
        self.finished = _gauge("raysel_trials_finished", "trials of the sweep finished", ("sweep",))
        self.failed = _gauge("raysel_trials_failed", "trials of the sweep failed", ("sweep",))
        self.counts = {"running": 0, "finished": 0, "failed": 0}
        self._export()

    def _export(self) -> None:
        for name, gauge in (("running", self.running), ("finished", self.finished), ("failed", self.failed)):
            gauge.set(self.counts[name], tags=self.tags)

    def _count(self, trials: list[Any]) -> None:
        self.counts["running"] = sum(t.status == "RUNNING" for t in trials)
        self._export()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.counts["finished"] += 1
        self._count([t for t in trials if t is not trial])

    def on_trial_error(self, iteration, trials, trial, **info):
        self.counts["failed"] += 1
        self._count([t for t in trials if t is not trial])


class TrialMetrics:
    """In a trial: its step, steps per second since the previous report, and the method gauges."""

    def __init__(self, sweep: str, arm: str, trial_id: str):
        self.tags = {"sweep": sweep, "arm": arm, "trial_id": trial_id}
        self.step = _gauge("raysel_trial_step", "the trial's latest reported step", TRIAL_TAGS)
        self.speed = _gauge("raysel_trial_steps_per_second", "the trial's optimizer steps per second", TRIAL_TAGS)
        self.method = {key: _gauge(name, text, TRIAL_TAGS) for key, (name, text) in METHOD_GAUGES.items()}
        self._last: tuple[int, float] | None = None

    def record(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        self.step.set(step, tags=self.tags)
        if self._last is not None and step > self._last[0] and now > self._last[1]:
            self.speed.set((step - self._last[0]) / (now - self._last[1]), tags=self.tags)
        self._last = (step, now)
        for key, gauge in self.method.items():
            if key in metrics:
                gauge.set(metrics[key], tags=self.tags)
