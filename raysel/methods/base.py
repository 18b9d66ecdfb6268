"""The method contract: what every recipe in raysel/methods implements.

A method is a registry key, a pydantic ``Params`` model (every hyperparameter, validated) and a
``train_loop(params, run)``. The loop never imports Ray or MLflow: everything it needs from the
scheduler comes through the ``RunContext`` (seed, device, ranks, reporting, checkpoints).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import pydantic
import torch

from raysel.inputs import DataSpec, ModelSpec


def shared_dir_of(sweep_dir: Path) -> Path:
    """Where a sweep's trials share files (``RunContext.shared_dir``), beside their own artifact directories."""
    return sweep_dir / "artifacts" / "shared"


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite: the trial stops and is marked failed with this message."""


def check_finite(loss: float, step: int, what: str = "training loss") -> float:
    """``loss`` if it is finite, else NonFiniteLossError naming the step (diverged training, bad data)."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"{what} became {loss} at step {step}: the trial is stopped "
                                 "(a smaller learning rate, gradient clipping or checking the data usually helps)")
    return loss


class MethodParams(pydantic.BaseModel):
    """Base for a method's hyperparameters: unknown keys are errors, values are validated."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class SharedFiles(Protocol):
    """How the sweep's trials agree on which of them builds a file they share (used through
    ``raysel.methods.collective.shared_file``). On one machine a file lock decides; in a scheduled
    sweep a registry every node reaches does, and the built file travels through the sweep's storage."""

    def claim(self, path: Path) -> bool:
        """Wait until ``path`` is here (False) or this trial is the one to build it (True)."""

    def publish(self, path: Path) -> None:
        """The claimed ``path`` (and the files beside it) is built: hand it to the other trials."""

    def abandon(self, path: Path) -> None:
        """Building the claimed ``path`` failed: another trial may claim it."""

    def fetch(self, path: Path) -> bool:
        """Bring a published ``path`` to this node if it is not here; whether it is here now."""


@runtime_checkable
class RunContext(Protocol):
    """What a training loop sees of the trial running it (in-process or on Ray Train workers)."""

    seed: int  # the protocol seed (run seed for the 50-run protocol, data seed for the 5-seed one)
    device: torch.device
    rank: int
    world_size: int
    model: ModelSpec
    data: DataSpec
    artifact_dir: Path  # this trial's files
    shared_dir: Path  # files the sweep's trials share (caches one trial builds and the others reuse)
    shared_files: SharedFiles  # who builds a shared file (collective.shared_file uses it)

    def report(self, step: int, **metrics: float) -> None:
        """Record metrics at the loop's own global step (and attach a pending checkpoint)."""

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Hand a resumable state to the scheduler; it is saved with the next ``report``."""

    def restore(self) -> dict[str, Any] | None:
        """The last checkpointed state when the trial was restarted, else None."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device and wrap for data parallelism when running on several workers."""

    def set_tags(self, **tags: str) -> None:
        """Attach descriptive tags to the trial's tracking run (e.g. which detector ran)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Keep a file with the trial's tracking run (rank 0; a no-op when tracking is off)."""

    def offer_model(self, model: torch.nn.Module) -> None:
        """The trained model at the loop's end (a ``save_pretrained`` model): kept as its arm's best when the
        sweep logs best models and this trial's protocol metric is the arm's best so far; else a no-op."""


@dataclass(frozen=True)
class MethodFigure:
    """A figure a method asks ``raysel report`` to draw (methods return data; the report draws).

    ``kind`` names a drawing in ``raysel.report.figures.METHOD_FIGURES`` and ``data`` holds its
    arguments, e.g. ``MethodFigure("h_histogram", title, {"h": h, "runs": 10, "removed": (0,)})``."""

    kind: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """A fine-tuning recipe that raysel can schedule: every hook the sweep and the report call.

    Recipes subclass it (``class IGF(Method)``) and so inherit the defaults of the optional hooks."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    # The most Ray Train workers one trial may run on (None: any): the spec is refused before Ray
    # starts when ``resources.workers`` is larger. 1 = one process (``workers: 0`` or ``1``).
    max_workers: ClassVar[int | None] = None

    def train_loop(self, params: MethodParams, run: RunContext) -> dict[str, float]:
        """Train and evaluate; return the final metrics."""
        ...

    def preflight(self, params: MethodParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: raise ModelError / DataError for a model or data set that cannot be loaded
        (or a combination the method cannot run). The default checks nothing."""

    def report_figures(self, arms: list[Any], shared_dir: Path) -> "dict[str, MethodFigure | Any]":
        """For ``raysel report``: figures (``MethodFigure``) and tables (pandas DataFrames, written as
        ``<name>.csv``) of what the sweep's trials left in ``shared_dir``, by file stem. ``arms`` are the
        spec's resolved arms (``raysel.spec.ArmSpec``: name, method, params, model, data). Default: none."""
        return {}
