"""Where raysel keeps what it builds locally, and how it writes there.

Models (tokenizers, the pretrained tiny GPT-2, the converted SmolLM2), the pydocs corpus, the empty
MLflow store and the mirrors of object storage all live under one directory, :func:`cache_dir`.
This module imports nothing heavy: the data, storage and tracking modules use it too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$RAYSEL_CACHE`` if set, else ``~/.cache/raysel`` (not created here)."""
    env = os.environ.get("RAYSEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raysel"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it: a reader in another process sees
    the old file or the whole new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; a shared cache is read by every user's trials
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_or_build(path: Path, parse: Callable[[str], T], build: Callable[[], T], dump: Callable[[T], str],
                  what: str) -> T:
    """``parse`` of the file at ``path``; when it is missing or unreadable (not ours, cut short), ``build()``,
    written there for the next process. A cache that cannot be written is warned about, not an error."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except Exception as e:  # whatever parse makes of a file that is not what it wrote
        log.warning("ignoring the unreadable cached %s %s: %s", what, path, e)
    built = build()
    try:
        write_atomic(path, dump(built))
    except OSError as e:
        log.warning("could not cache the %s at %s: %s", what, path, e)
    return built
