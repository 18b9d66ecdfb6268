"""Prepared models in raysel's cache (the pretrained tiny GPT-2, the converted SmolLM2): their manifests, their
installation, the lock held while one is built. Where the cache is: :func:`raysel.cache.cache_dir`."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator


def prepared_manifest(directory: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of a model raysel prepared in ``directory``, or None if it is not
    (completely) prepared: the manifest unreadable or the weights missing."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if (directory / "model.safetensors").is_file() else None


def install_prepared(built: Path, manifest: dict[str, Any], final: Path) -> None:
    """Write ``manifest`` into the freshly built model directory ``built`` and swap it in as ``final``
    (readable by everyone: mkdtemp and safetensors make owner-only files)."""
    (built / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for f in built.iterdir():
        f.chmod(0o644)
    built.chmod(0o755)
    if final.exists():
        shutil.rmtree(final)
    built.rename(final)


@contextlib.contextmanager
def preparing(final: Path, name: str) -> Iterator[None]:
    """Hold the lock beside ``final`` while ``name`` is built; a line on stderr when another process
    holds it (this one then waits, and finds the model that process made)."""
    from filelock import FileLock, Timeout

    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final.parent / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"{name}: another process is preparing it ({lock.lock_file}); waiting for it", file=sys.stderr,
              flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
