"""Cheap checks that a model can be loaded, for a sweep's preflight (before Ray starts)."""
from __future__ import annotations

from pathlib import Path

from raysel.models.builtin import BUILTINS, is_builtin
from raysel.models.errors import ModelError
from raysel.models.hf import check_task_name
from raysel.models.loading import _check_local_dir, _hub_error, _looks_like_path, hub_offline
from raysel.models.tiny_gpt2 import read_manifest


def check_model(name: str, task: str) -> None:
    """Raise ModelError unless ``name`` can be loaded for ``task`` (no weights are loaded)."""
    check_task_name(task)
    if is_builtin(name):
        if task not in BUILTINS[name].tasks:
            raise ModelError(f"built-in {name!r} cannot do {task!r}; it does: {', '.join(BUILTINS[name].tasks)}")
        if name == "tiny-gpt2" and read_manifest() is None:
            raise ModelError("built-in 'tiny-gpt2' is not prepared yet: run `raysel prepare` (a few minutes, once)")
        return
    path = Path(name).expanduser()
    if path.exists():
        _check_local_dir(path, name)
        return
    if _looks_like_path(name):
        raise ModelError(f"model path {name!r} does not exist (and it is not a built-in: {', '.join(BUILTINS)})")
    from transformers import AutoConfig

    offline = hub_offline()
    try:
        AutoConfig.from_pretrained(name, local_files_only=offline)
    except OSError as err:
        raise _hub_error(name, offline, err) from err
