"""Where raysel keeps what it builds locally (tokenizers, the pretrained tiny GPT-2, the converted SmolLM2)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """``$RAYSEL_CACHE`` if set, else ``~/.cache/raysel`` (not created here)."""
    env = os.environ.get("RAYSEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raysel"


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
