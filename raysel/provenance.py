"""Where a run's numbers came from, as MLflow tags: the code (git commit and a dirty flag of the checkout
raysel runs from, raysel's and the key packages' versions), the spec (its hash), and the models and data a
trial loaded (their digests; the data also as MLflow dataset inputs, logged by ``raysel.tracking``).

The sweep's driver computes the code and spec part once (worker nodes of a cluster need not have git) and
ships it to the trials; each trial adds the packages of the environment it really ran in and what it
loaded. Loads are recorded by ``recording_loads`` around a trial's loop: ``raysel.models.load_model`` and
the data sources call ``record_load``; outside a recording nothing is kept.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Literal

KEY_PACKAGES = ("torch", "transformers", "ray", "optuna", "mlflow", "numpy", "scipy", "pandas", "tokenizers",
                "pydantic")
SOURCE_NAME = "raysel sweep"


def package_versions() -> dict[str, str]:
    """Tags ``raysel.version``, ``raysel.pkg.python`` and ``raysel.pkg.<name>`` for the key packages
    installed in this process's environment."""
    tags = {"raysel.version": _version("raysel") or "unknown", "raysel.pkg.python": platform.python_version()}
    for name in KEY_PACKAGES:
        version = _version(name)
        if version:
            tags[f"raysel.pkg.{name}"] = version
    return tags


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    """The commit of the git checkout holding ``path`` (default: raysel's own source) and whether its
    tracked files differ from it; (None, None) outside a checkout (a pip-installed raysel) or without git."""
    where = path or Path(__file__).resolve().parent
    try:
        # the source itself must be tracked: a raysel installed in a venv inside some project's checkout is not
        tracked = subprocess.run(["git", "-C", str(where), "ls-files", "--error-unmatch", "."], capture_output=True,
                                 text=True, timeout=10)
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if tracked.returncode != 0 or commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def spec_sha256(spec_json: dict[str, Any]) -> str:
    """The hash of a resolved spec (its JSON with sorted keys): two runs with the same hash ran the same spec."""
    return hashlib.sha256(json.dumps(spec_json, sort_keys=True, default=str).encode()).hexdigest()


def code_and_spec_tags(spec_json: dict[str, Any]) -> dict[str, str]:
    """What the driver knows: MLflow's own source tags (``mlflow.source.git.commit`` links the run to its
    commit in the UI), the dirty flag, and the spec's hash."""
    commit, dirty = git_state()
    tags = {"mlflow.source.name": SOURCE_NAME, "mlflow.source.type": "LOCAL", "raysel.spec_sha256": spec_sha256(spec_json)}
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["raysel.git.dirty"] = "unknown" if dirty is None else str(dirty).lower()
    else:
        tags["raysel.git.commit"] = "none (not a git checkout)"
    return tags


# ---------------------------------------------------------------- what a trial loaded
@dataclass(frozen=True)
class Loaded:
    """One model or dataset a trial loaded: its name in the spec, a digest of its content, where it came
    from, and for data each split's (name, rows, digest)."""

    kind: Literal["model", "data"]
    name: str
    digest: str
    source: str  # a directory, a file, "built-in", "hub"
    splits: tuple[tuple[str, int, str], ...] = ()


def loaded_data(name: str, source: str, splits: dict[str, Any]) -> Loaded:
    """The record of a dataset loaded as ``splits`` (split name → rows)."""
    parts = tuple((split, len(rows), content_digest(rows)) for split, rows in splits.items())
    return Loaded("data", name, content_digest([d for _, _, d in parts]), source, parts)


_recording: contextvars.ContextVar[list[Loaded] | None] = contextvars.ContextVar("raysel_loads", default=None)


@contextlib.contextmanager
def recording_loads() -> Iterator[list[Loaded]]:
    """Collect what ``record_load`` sees inside the block (each model or dataset once)."""
    loads: list[Loaded] = []
    token = _recording.set(loads)
    try:
        yield loads
    finally:
        _recording.reset(token)


def is_recording() -> bool:
    """Whether a digest computed now would be kept (loaders skip hashing otherwise)."""
    return _recording.get() is not None


def record_load(item: Loaded) -> None:
    loads = _recording.get()
    if loads is not None and item not in loads:
        loads.append(item)


def content_digest(value: Any) -> str:
    """sha256 of a JSON-able value (texts, labels, question sets), the first 16 hex digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → sha256: a process hashes a file once


def directory_digest(path: Path) -> str:
    """sha256 over the files of a model directory (names and contents), the first 16 hex digits."""
    blob = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        stat = file.stat()
        key = (str(file), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_DIGESTS:
            digest = hashlib.sha256()
            with file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
            _FILE_DIGESTS[key] = digest.hexdigest()
        blob.update(f"{file.relative_to(path)}:{_FILE_DIGESTS[key]}\n".encode())
    return blob.hexdigest()[:16]


def load_tags(loads: list[Loaded]) -> dict[str, str]:
    """``raysel.model.<name>`` / ``raysel.data.<name>`` → digest (and source), one tag per load."""
    tags = {}
    for item in loads:
        tags[f"raysel.{item.kind}.{_tag_safe(item.name)}"] = f"{item.digest} ({item.source})"
    return tags


def _tag_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_./ " else "_" for c in name)[:200]
