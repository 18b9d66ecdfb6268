"""Models for raysel: load by built-in name, local path or hub name; build the offline built-ins.

Public API: :func:`load_model`, :func:`check_model`, :data:`BUILTIN_MODELS`, :func:`is_builtin`, :class:`ModelError`,
:func:`prepare_tiny_gpt2`, :func:`prepare_smollm2`, :func:`prepare_all`, :data:`OPTIONAL_BUILTINS`,
:func:`prepared_state`, :func:`cache_dir`, :data:`TASKS`, :func:`model_config` (an architecture without
its weights), :func:`transformer_layers`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysel.cache import cache_dir
from raysel.models.errors import ModelError

# The rest is imported on first use: it imports transformers (~2.5 s), which the CLI's commands that load
# no model (stop, validate: the methods call models.load_model at run time; list reads the catalog, which
# imports neither torch nor transformers) and anything that only catches ModelError should not wait for.
_LAZY = {"BUILTIN_MODELS": "catalog", "OPTIONAL_BUILTINS": "catalog", "is_builtin": "catalog",
         "prepared_state": "catalog", "TASKS": "hf", "check_model": "loading", "load_model": "loading",
         "model_config": "loading", "transformer_layers": "loading", "prepare_smollm2": "smollm2",
         "prepare_tiny_gpt2": "tiny_gpt2"}  # name → the module of raysel.models that defines it

if TYPE_CHECKING:
    from raysel.models.catalog import BUILTIN_MODELS, OPTIONAL_BUILTINS, is_builtin, prepared_state
    from raysel.models.hf import TASKS
    from raysel.models.loading import check_model, load_model, model_config, transformer_layers
    from raysel.models.smollm2 import prepare_smollm2
    from raysel.models.tiny_gpt2 import prepare_tiny_gpt2

__all__ = ["BUILTIN_MODELS", "OPTIONAL_BUILTINS", "TASKS", "ModelError", "cache_dir", "check_model", "is_builtin",
           "load_model", "model_config", "prepare_all", "prepare_smollm2", "prepare_tiny_gpt2", "prepared_state", "transformer_layers"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def prepare_all(progress: bool = True) -> dict[str, Path]:
    """Build and cache every built-in that needs it but the optional ones (they download:
    ``prepare_smollm2``); return where each one lives.

    The tiny random models' tokenizers are trained and cached (a second), tiny-gpt2 is
    pretrained (minutes, once; returns at once when cached), minilm is located in its package.
    """
    from raysel.models.builtin import minilm_dir
    from raysel.models.tiny_gpt2 import prepare_tiny_gpt2
    from raysel.models.tokenizers import builtin_tokenizer_path

    return {
        "tiny-gpt2-random": builtin_tokenizer_path("gpt2"),
        "tiny-llama-random": builtin_tokenizer_path("gpt2"),
        "tiny-bert": builtin_tokenizer_path("bert"),
        "tiny-gpt2": prepare_tiny_gpt2(progress=progress),
        "minilm": minilm_dir(),
    }
