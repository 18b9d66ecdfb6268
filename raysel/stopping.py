"""A graceful stop: running trials finish, no new one starts, the sweep stays resumable.

``raysel stop SWEEP`` (or SIGTERM to the driver of ``raysel sweep``) writes ``STOP_FILE`` into the sweep's
storage directory, where every trial looks before it starts: a trial that starts after it is deferred
(it ends at once with ``TrialDeferred``, before any MLflow run or work, and Tune keeps it as an errored
trial that ``--resume`` runs). The driver starts no later phase and marks the parent run KILLED with a
``raysel.stopped`` tag; ``--resume`` removes the file and goes on. Ctrl+C still stops at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Iterator

from raysel.storage import Storage

STOP_FILE = "stop-requested.json"


class TrialDeferred(RuntimeError):
    """A trial that did not start because its sweep is stopping; ``--resume`` runs it."""


def stop_sweep(sweep: str, by: str = "raysel stop") -> Storage:
    """Ask a running sweep to stop gracefully (the API behind ``raysel stop``): ``sweep`` is its storage
    directory (a path or URI) or its spec file. Returns the sweep's directory; SpecError if none is there."""
    from pathlib import Path

    from raysel.results import SWEEP_FILE
    from raysel.spec import SpecError, load_spec

    if Path(sweep).suffix in (".yaml", ".yml") and Path(sweep).is_file():
        spec = load_spec(sweep)
        sweep_dir = Storage.parse(spec.storage_path) / spec.name
    else:
        sweep_dir = Storage.parse(sweep)
    if sweep_dir.read_text(SWEEP_FILE) is None:
        raise SpecError([f"no sweep at {sweep_dir} (no {SWEEP_FILE}); give a sweep's storage directory "
                         "(storage_path/name) or its spec"])
    request_stop(sweep_dir, by)
    return sweep_dir


def request_stop(sweep_dir: Storage, by: str) -> None:
    """Ask the sweep stored at ``sweep_dir`` to stop gracefully (idempotent)."""
    note = json.dumps({"requested_by": by, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    fs, path = sweep_dir.filesystem()
    with fs.open_output_stream(f"{path}/{STOP_FILE}") as stream:
        stream.write(note.encode())


def stop_requested(sweep_dir: Storage) -> dict | None:
    """Who asked the sweep to stop (``requested_by``, ``host``, ``time``), or None."""
    text = sweep_dir.read_text(STOP_FILE)
    return json.loads(text) if text else None


def clear_stop(sweep_dir: Storage) -> None:
    fs, path = sweep_dir.filesystem()
    target = f"{path}/{STOP_FILE}"
    if sweep_dir.read_text(STOP_FILE) is not None:
        fs.delete_file(target)


def check_not_stopping(storage_path: str, trial_label: str) -> None:
    """Raise ``TrialDeferred`` when the sweep is stopping (called by a trial before it starts)."""
    asked = stop_requested(Storage.parse(storage_path))
    if asked is not None:
        raise TrialDeferred(f"trial {trial_label} not started: the sweep is stopping ({asked['requested_by']}); "
                            "`raysel sweep SPEC --resume` runs it")


@contextlib.contextmanager
def stop_on_sigterm(sweep_dir: Storage, name: str) -> Iterator[None]:
    """While the block runs, SIGTERM to this (main-thread) driver asks for a graceful stop instead of
    ending the process; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame) -> None:
        request_stop(sweep_dir, "SIGTERM to the driver")
        print(f"{name}: SIGTERM: running trials finish, no new one starts; continue later with --resume",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
