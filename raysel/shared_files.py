"""Which trial of a sweep builds a file the trials share (IGF's learner, kernels), when the nodes share
no filesystem: a registry actor the sweep's driver starts, and each trial's client of it.

A file lock cannot do it on object storage, so the registry decides: the first trial to claim an
entry builds it and keeps its claim alive (a heartbeat); the others wait until it is published (stored
in the sweep's storage, then marked ready) and fetch it to their node. A build that fails is
abandoned at once; one whose process died is given to the next trial once its heartbeat is
``stale_after_s`` old. An entry is the folder holding the file (IGF keeps its IG pairs beside the
learner); one already in the storage (a resumed sweep, an earlier phase) is fetched, not built.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from raysel.storage import Storage

HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
WAIT_MESSAGE_EVERY_S = 30.0


class SharedFileRegistry:
    """The sweep's record of its shared entries (a Ray actor): building by whom, or ready."""

    def __init__(self, stale_after_s: float = STALE_AFTER_S):
        self.stale_after_s = stale_after_s
        self.ready: dict[str, str] = {}  # entry -> the trial that built it
        self.building: dict[str, tuple[str, float]] = {}  # entry -> (trial, its last heartbeat)

    def claim(self, entry: str, trial: str) -> tuple[str, str]:
        """("build", trial) when ``trial`` is to build ``entry``; else ("ready" | "wait", the builder)."""
        if entry in self.ready:
            return "ready", self.ready[entry]
        holder, seen = self.building.get(entry, (trial, 0.0))
        if holder != trial and time.monotonic() - seen < self.stale_after_s:
            return "wait", holder
        self.building[entry] = (trial, time.monotonic())
        return "build", trial

    def renew(self, entry: str, trial: str) -> None:
        if self.building.get(entry, ("",))[0] == trial:
            self.building[entry] = (trial, time.monotonic())

    def publish(self, entry: str, trial: str) -> None:
        self.building.pop(entry, None)
        self.ready[entry] = trial

    def abandon(self, entry: str, trial: str) -> None:
        if self.building.get(entry, ("",))[0] == trial:
            del self.building[entry]


def start_registry(sweep: str, stale_after_s: float = STALE_AFTER_S) -> tuple[str, Any]:
    """A registry actor for one run of the sweep's driver (which owns it: ``ray.kill`` it at the end), and
    the name its trials find it by."""
    import uuid

    import ray

    name = f"raysel_shared_files:{sweep}:{uuid.uuid4().hex[:8]}"
    # one call at a time (Ray's default): a claim's check and its record are one step
    actor = ray.remote(num_cpus=0)(SharedFileRegistry).options(name=name).remote(stale_after_s)
    return name, actor


class RegistryShares:
    """SharedFiles for a trial of a scheduled sweep (raysel.methods.base.SharedFiles): claims go to the
    sweep's registry; entries under the sweep's storage travel through it (on a local or shared storage
    path that is a no-op), others (e.g. a ``kernel_cache`` mount) must be on a filesystem every node sees."""

    def __init__(self, registry: str, storage_path: str, trial: str, *, heartbeat_s: float = HEARTBEAT_S):
        import ray

        self.registry = ray.get_actor(registry)
        self.storage = Storage.parse(storage_path)
        self.trial, self.heartbeat_s = trial, heartbeat_s
        self._heartbeats: dict[str, threading.Event] = {}

    def claim(self, path: Path) -> bool:
        import ray

        entry, waited, said = self._entry(path), time.monotonic(), -WAIT_MESSAGE_EVERY_S  # the first line at once
        while not self.fetch(path):
            answer, builder = ray.get(self.registry.claim.remote(entry, self.trial))
            if answer == "build":
                self._keep_alive(entry)
                return True
            if answer == "ready":
                if not self.fetch(path):
                    raise FileNotFoundError(f"{path}: trial {builder} published it, but it is not in {self.storage}")
                break
            if time.monotonic() - waited >= said + WAIT_MESSAGE_EVERY_S:
                said = time.monotonic() - waited
                print(f"raysel: trial {self.trial} waiting for trial {builder} to build {entry} ({said:.0f} s)",
                      flush=True)
            time.sleep(1.0)
        return False

    def publish(self, path: Path) -> None:
        import ray

        entry = self._entry(path)
        self._stop(entry)
        if self._travels(path):  # the file itself last: a trial that finds it finds the rest too
            beside = [f"{entry}/{item.name}" for item in sorted(path.parent.iterdir()) if item != path]
            self.storage.upload(*beside, f"{entry}/{path.name}")
        ray.get(self.registry.publish.remote(entry, self.trial))

    def abandon(self, path: Path) -> None:
        import ray

        entry = self._entry(path)
        self._stop(entry)
        ray.get(self.registry.abandon.remote(entry, self.trial))

    def fetch(self, path: Path) -> bool:
        if not path.exists() and self._travels(path):
            self.storage.download(self._entry(path))
        return path.exists()

    def _travels(self, path: Path) -> bool:
        return not self.storage.is_local and path.is_relative_to(self.storage.local)

    def _entry(self, path: Path) -> str:
        """The folder holding ``path``: relative to the sweep's directory when under it."""
        folder = path.parent
        return folder.relative_to(self.storage.local).as_posix() if folder.is_relative_to(self.storage.local) else str(folder)

    def _keep_alive(self, entry: str) -> None:
        stop = self._heartbeats[entry] = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                self.registry.renew.remote(entry, self.trial)

        threading.Thread(target=beat, name=f"raysel-heartbeat-{entry}", daemon=True).start()

    def _stop(self, entry: str) -> None:
        if entry in self._heartbeats:
            self._heartbeats.pop(entry).set()
