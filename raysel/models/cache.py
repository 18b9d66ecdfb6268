"""Where raysel keeps what it builds locally (tokenizers, the pretrained tiny GPT-2)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$RAYSEL_CACHE`` if set, else ``~/.cache/raysel`` (not created here)."""
    env = os.environ.get("RAYSEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raysel"
