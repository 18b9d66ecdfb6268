"""A sweep driven in a subprocess (its own local Ray, or the one its spec names) and interrupted there,
as a user's Ctrl+C or a killed driver would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

# exit code: the number of failed trials, 130 when interrupted
DRIVER = """
import sys, raysel
from raysel.sweep import SweepInterrupted
try:
    sys.exit(raysel.run_sweep({spec!r}, progress=False, resume={resume!r}).num_errors)
except SweepInterrupted:
    sys.exit(130)
"""


def finished_trials(sweep_dir: Path, last_step: int, phase: str = "seeds") -> int:
    """Trials of a sweep on local storage whose last Tune result is at ``last_step`` (their max_steps)."""
    results = [path.read_text().splitlines() for path in sweep_dir.glob(f"{phase}/trial_*/result.json")]
    return sum(bool(lines) and json.loads(lines[-1]).get("step") == last_step for lines in results)


def a_trial_reported(sweep_dir: Path, phase: str = "seeds") -> bool:
    """Whether a trial of the sweep on local storage has reported to Tune (its result.json is not empty)."""
    return any(path.stat().st_size for path in sweep_dir.glob(f"{phase}/trial_*/result.json"))


def tune_finished_trials(sweep_dir: Path, phase: str = "seeds") -> int:
    """Trials that Tune's saved experiment state (on local storage) holds as TERMINATED: what --resume restores
    as finished. A trial that reported its last step but was interrupted before it returned is still RUNNING
    there (and runs again from its checkpoint)."""
    (state,) = sweep_dir.glob(f"{phase}/experiment_state-*.json")
    trials = [json.loads(config) if isinstance(config, str) else config
              for config, _ in json.loads(state.read_text())["trial_data"]]
    return sum(trial["status"] == "TERMINATED" for trial in trials)


def interrupt_when(driver: subprocess.Popen, ready: Callable[[], bool], stop: int = signal.SIGINT,
                   timeout: float = 400) -> int:
    """Once ``ready()`` holds, send ``stop`` to the driver's process group (started with
    ``start_new_session=True``) and return its exit code; the driver is killed if the test fails first."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert driver.poll() is None and time.monotonic() < deadline, "the sweep ended before the interrupt"
            time.sleep(0.5)
        os.killpg(driver.pid, stop)
        return driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
