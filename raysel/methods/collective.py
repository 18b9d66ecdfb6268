"""What a recipe needs when its trial runs on several Ray Train workers, and for the files the
sweep's trials share: one trial builds a cache entry while the others wait and then reuse it.

No Ray here (methods never import it): Ray Train has set up torch.distributed when world_size > 1.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from raysel.methods.base import RunContext


def distributed(run: RunContext) -> bool:
    """Whether this trial runs on several workers that can talk (torch.distributed is set up)."""
    import torch.distributed as dist

    return run.world_size > 1 and dist.is_available() and dist.is_initialized()


def from_rank0(run: RunContext, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a barrier when the trial runs on several workers)."""
    if not distributed(run):
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(run: RunContext, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank ([value] on one worker)."""
    if not distributed(run):
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * run.world_size
    dist.all_gather_object(values, value)
    return values


@contextlib.contextmanager
def build_once(run: RunContext, path: Path) -> Iterator[bool]:
    """Yields, on every rank, whether ``path`` is missing and this trial must build it.

    Rank 0 holds a file lock beside ``path`` for the whole block, so that of several trials that
    need the same file one builds it and the others wait and then find it."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    if run.rank == 0:
        lock.acquire()
    try:
        yield bool(from_rank0(run, not path.exists()))
        from_rank0(run, True)  # the others wait until rank 0 has saved it
    finally:
        if run.rank == 0:
            lock.release()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
