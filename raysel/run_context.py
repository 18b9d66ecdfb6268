"""The RunContext implementations: a training loop's view of its trial (raysel.methods.base.RunContext).

``TuneRun``: the loop runs in the Tune trial's process; ``TrainRun``: on a Ray Train worker (every
rank reports, rank 0 logs); ``LocalRun``: no Ray at all (tests, benchmarks, notebooks). They differ
only in how results and checkpoints reach Ray.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysel.inputs import DataSpec, ModelSpec
from raysel.methods.base import SharedFiles
from raysel.methods.collective import FileLockShares
from raysel.results import LatestMetrics
from raysel.tracking import NullLogger

CHECKPOINT_FILE = "state.pt"  # the loop's state inside a Ray checkpoint directory
WRITER_KEY = "written_by_run"  # in a checkpoint's state: the MLflow run of the trial that saved it


class _Run:
    """The loop's view of its trial; subclasses say how metrics and checkpoints reach Ray."""

    def __init__(self, *, seed: int, device: torch.device, rank: int, world_size: int, model: ModelSpec,
                 data: DataSpec, artifact_dir: Path, logger: Any, shared_dir: Path | None = None,
                 shared_files: SharedFiles | None = None):
        self.seed, self.device, self.rank, self.world_size = seed, device, rank, world_size
        self.model, self.data = model, data
        self.artifact_dir = artifact_dir
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        # beside the trials' own directories: storage_path/NAME/artifacts/shared
        self.shared_dir = shared_dir or artifact_dir.parent / "shared"
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        # who builds a shared file: a file lock on one machine; the sweep's registry (raysel.shared_files)
        self.shared_files = shared_files or FileLockShares()
        self._logger = logger
        self._pending_state: dict[str, Any] | None = None
        self._last: tuple[int, dict[str, float]] = (0, {})
        self._carry = LatestMetrics()
        self._logged_up_to = logger.last_logged_step()
        self.telemetry: Any = None  # raysel.telemetry.TrialMetrics in a scheduled trial (rank 0)
        self.best_model: Any = None  # raysel.best_models.BestModelOffer when the sweep logs best models (rank 0)

    def checkpoint(self, state: dict[str, Any]) -> None:
        self._pending_state = state

    def report(self, step: int, **metrics: float) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.telemetry is not None:
            self.telemetry.record(step, metrics)
        if step > self._logged_up_to:  # a restarted trial does not log its replayed steps twice
            self._logger.log_metrics(step, metrics)
        self._last = (step, metrics)
        # Tune sees the latest value of every metric so far, MLflow only what is new (raysel.results)
        result = self._carry.record(step, metrics, self._logger.run_id or "").to_tune()
        state, self._pending_state = self._pending_state, None
        if state is None or self.rank != 0:  # one copy of the state: rank 0's
            self._send(result, None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            # whose state it is: a trial that restores another's (PBT's exploit) says so in its run
            torch.save({**state, WRITER_KEY: self._logger.run_id}, Path(tmp) / CHECKPOINT_FILE)
            from ray.tune import Checkpoint

            self._send(result, Checkpoint.from_directory(tmp))

    def finish(self, final: dict[str, float]) -> None:
        """Report the loop's returned metrics as the trial's last result: at the last step, only what
        is new (e.g. the trial's wall and CPU seconds), so nothing is logged twice at that step; Tune's
        result carries every metric's latest value anyway."""
        step, last = self._last
        new = {k: v for k, v in (final or {}).items() if last.get(k) != v}
        if new or self._pending_state is not None or not last:
            self.report(step, **(new if last else dict(final or {})))

    def restore(self) -> dict[str, Any] | None:
        """The state of the trial's last checkpoint (None for a fresh trial)."""
        state = self._load_state()
        if state is None:
            return None
        step = state.get("step", "unknown")
        writer = state.get(WRITER_KEY)
        if writer and self._logger.run_id and writer != self._logger.run_id:  # PBT: another trial's checkpoint
            self.set_tags(**{f"raysel.exploited_at.{max(0, self._logged_up_to)}":
                             f"took the checkpoint of run {writer} at step {step}"})
        else:
            self.set_tags(**{"raysel.restored_from_step": str(step)})
        # a trial restored from its last checkpoint may have no step left to run: finish() reports there
        self._last = (int(state.get("step", 0)), {})
        # The results after a restart carry the checkpoint's evaluation until the next one: a searcher
        # (Optuna) reads the objective from every result, and the new process has reported nothing yet.
        self._carry.carry(state.get("evaluation") or {})
        return state

    def _load_state(self) -> dict[str, Any] | None:
        checkpoint = self._get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)

    def set_tags(self, **tags: str) -> None:
        self._logger.set_tags(tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._logger.log_artifact(path, artifact_path)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def offer_model(self, model: torch.nn.Module) -> None:
        if self.best_model is not None and self.rank == 0:
            self.best_model.offer(model, self._carry.latest.get(self.best_model.metric))

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
                 shared_dir: "Path | None" = None, shared_files: "SharedFiles | None" = None):
        artifact_dir = artifact_dir or Path(tempfile.mkdtemp(prefix="raysel-"))
        super().__init__(seed=seed, device=device or pick_device(True), rank=0, world_size=1,
                         model=model or ModelSpec(), data=data or DataSpec(), artifact_dir=artifact_dir,
                         logger=logger or NullLogger(), shared_dir=shared_dir or artifact_dir / "shared",
                         shared_files=shared_files)
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


# ---------------------------------------------------------------- a trial process
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def enter_working_dir(working_dir: str) -> None:
    """Work where the sweep was started, when that directory exists on this node (on a cluster a
    ``ray job submit --working-dir`` job's directory does; a driver's local one may not)."""
    if os.path.isdir(working_dir):
        os.chdir(working_dir)
