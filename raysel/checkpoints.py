"""How many checkpoints a sweep leaves on disk (the spec's ``checkpoints:`` section).

A running trial keeps its ``keep`` latest checkpoints (or the ``keep`` best by ``keep_best_by``, and
the latest: a restart resumes from it), under Ray Tune (in-process trials) and Ray Train (trials on
workers) alike. A trial that finished keeps none unless ``keep_finished`` (by default only when
tracking is off): its metrics are in MLflow, and ``--resume`` never re-runs it. An errored trial
keeps its checkpoints: ``--resume`` restarts it from the latest. The finished trials' checkpoints
go when their phase ends (not when each trial ends: a sweep killed before the phase's state is saved
would look for them on ``--resume``).
"""
from __future__ import annotations

import posixpath
from typing import Any

import pyarrow.fs

from raysel.spec import SweepSpec

CHECKPOINT_PREFIX = "checkpoint_"  # how Ray Tune and Ray Train name a checkpoint's directory


def checkpoint_config(spec: SweepSpec) -> dict[str, Any]:
    """Keyword arguments of ``ray.tune.CheckpointConfig`` and ``ray.train.CheckpointConfig`` (the same).
    Under PBT every checkpoint stays while its phase runs: an exploit loads another trial's checkpoint,
    which that trial would otherwise delete when it writes its next one."""
    section = spec.checkpoints
    if spec.scheduler.kind == "pbt":
        return {"num_to_keep": None}
    if section.keep_best_by is None:
        return {"num_to_keep": section.keep}
    return {"num_to_keep": section.keep, "checkpoint_score_attribute": section.keep_best_by,
            "checkpoint_score_order": section.keep_best_mode or spec.protocol.mode}


def keeps_finished(spec: SweepSpec) -> bool:
    return spec.checkpoints.keep_finished if spec.checkpoints.keep_finished is not None else not spec.tracking.enabled


def train_run_name(trial_id: str) -> str:
    """The Ray Train run of a trial on workers, beside the phases in the sweep's directory."""
    return f"train-{trial_id}"


def delete_finished(grid) -> int:
    """Delete the checkpoints of every trial of a phase's ``ResultGrid`` that finished without error (in
    Tune's trial directory and, for a trial on Ray Train workers, in its Train run's), through the
    storage's own filesystem; the number deleted. Called once the phase's Tuner has returned: its saved
    experiment state then records these trials as finished, so that ``--resume`` never looks for them."""
    deleted = 0
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if result.error is not None or result.filesystem is None or not trial_id:
            continue
        sweep_dir = posixpath.dirname(posixpath.dirname(result.path))  # storage/NAME/PHASE/trial_x → storage/NAME
        for directory in (result.path, posixpath.join(sweep_dir, train_run_name(trial_id))):
            for entry in result.filesystem.get_file_info(pyarrow.fs.FileSelector(directory, allow_not_found=True)):
                if entry.type == pyarrow.fs.FileType.Directory and entry.base_name.startswith(CHECKPOINT_PREFIX):
                    result.filesystem.delete_dir(entry.path)
                    deleted += 1
    return deleted
