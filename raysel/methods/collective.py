"""What a recipe needs when its trial runs on several Ray Train workers, and for the files the
sweep's trials share: one trial builds a cache entry while the others wait and then reuse it.

No Ray here (methods never import it): Ray Train has set up torch.distributed when world_size > 1.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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


class FileLockShares:
    """SharedFiles on one machine (or a mount every node shares): a file lock beside the file decides
    who builds it; the others wait on the lock and then find it."""

    def __init__(self) -> None:
        self._held: dict[Path, Any] = {}

    def claim(self, path: Path) -> bool:
        from filelock import FileLock

        lock = FileLock(str(path.with_name(path.name + ".lock")))
        lock.acquire()
        if path.exists():
            lock.release()
            return False
        self._held[path] = lock
        return True

    def publish(self, path: Path) -> None:
        self._held.pop(path).release()

    def abandon(self, path: Path) -> None:
        self._held.pop(path).release()

    def fetch(self, path: Path) -> bool:
        return path.exists()


@contextlib.contextmanager
def build_once(run: RunContext, path: Path) -> Iterator[bool]:
    """Yields, on every rank, whether this trial must build ``path`` (no other trial has).

    Rank 0 claims it through ``run.shared_files`` (one trial of the sweep gets to build it, the others
    wait until it is published); after the block a claimed build is published, or abandoned when the
    block raised, and every rank finds the file on its own node."""
    path.parent.mkdir(parents=True, exist_ok=True)
    claimed = run.shared_files.claim(path) if run.rank == 0 else False
    try:
        missing = bool(from_rank0(run, claimed))
        yield missing
    except BaseException:
        if claimed:
            run.shared_files.abandon(path)
        raise
    if claimed:
        run.shared_files.publish(path)
    from_rank0(run, True)  # the other ranks wait until rank 0 has saved and published it
    if run.rank != 0 and not run.shared_files.fetch(path):
        raise FileNotFoundError(f"{path}: rank 0 of this trial had it, but it did not reach rank {run.rank}'s node")


@dataclass(frozen=True)
class SharedFile:
    """A file the sweep's trials share, as ``shared_file`` returns it."""

    contents: dict[str, Any]
    built_here: bool
    source: str  # "built", or "reused:<trial>" naming the trial that built it (for the trial's tags)


def shared_file(run: RunContext, path: Path, build: Callable[[], "dict[str, Any] | None"],
                map_location: "str | torch.device" = "cpu") -> SharedFile:
    """The contents of ``path``, built by this trial if no trial has built it yet.

    Of several trials (and their ranks) that need it, one builds it while the others wait
    (``run.shared_files`` decides): ``build`` runs on every rank of that trial and returns, on rank 0, the dict to
    save (its return value elsewhere is ignored); it is saved atomically with the building trial's
    name, and every rank then loads it."""
    with build_once(run, path) as missing:
        if missing:
            contents = build()
            if run.rank == 0:
                atomic_save({**contents, "built_by": run.artifact_dir.name}, path)
    saved = torch.load(path, map_location=map_location, weights_only=False)
    return SharedFile(saved, missing, "built" if missing else f"reused:{saved['built_by']}")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
