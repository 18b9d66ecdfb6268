"""Thin layer over the transformers Auto classes: task → class, dtype, quiet loading, pad token."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from raysel.models.errors import ModelError

log = logging.getLogger("raysel.models")

AUTO_CLASSES: dict[str, Any] = {
    "causal_lm": AutoModelForCausalLM,
    "sequence_classification": AutoModelForSequenceClassification,
    "masked_lm": AutoModelForMaskedLM,
}
TASKS: tuple[str, ...] = tuple(AUTO_CLASSES)

DType = torch.dtype | str | None


def check_task_name(task: str) -> None:
    """Raise ModelError unless ``task`` is one of :data:`TASKS`."""
    if task not in AUTO_CLASSES:
        raise ModelError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def supported_tasks(config: PretrainedConfig) -> list[str]:
    """The tasks whose Auto class knows this config's architecture."""
    return [t for t, cls in AUTO_CLASSES.items() if type(config) in cls._model_mapping]


def check_task(config: PretrainedConfig, task: str, name: str) -> None:
    """Raise ModelError if the model ``name`` (with ``config``) cannot do ``task``."""
    ok = supported_tasks(config)
    if task not in ok:
        raise ModelError(
            f"model {name!r} ({config.model_type}) cannot do task {task!r}; "
            f"it supports: {', '.join(ok) or 'none of ' + ', '.join(TASKS)}"
        )


def resolve_dtype(dtype: DType) -> torch.dtype | str | None:
    """None, a torch floating dtype, its name ('bfloat16', 'torch.float16') or 'auto'."""
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str):
        d = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(d, torch.dtype) and d.is_floating_point:
            return d
    raise ModelError(f"dtype {dtype!r} is not a floating torch dtype (e.g. 'float32', 'bfloat16') or 'auto'")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' load reports, warnings and progress bars inside the block."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def ensure_pad_token(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token (eos for GPT-2 style) and tell the model its id."""
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "[PAD]"})
            if len(tok) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tok))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id


def load_pretrained(
    source: str | Path,
    task: str,
    *,
    label: str,
    num_labels: int | None = None,
    dtype: DType = None,
    local_files_only: bool = False,
    new_heads_expected: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``from_pretrained`` for ``task``; newly initialised weights are summarised in one log line.

    OSError (missing files, offline) propagates so the caller can explain where it looked.
    """
    from transformers import AutoConfig

    kw: dict[str, Any] = {"local_files_only": local_files_only}
    with quiet():
        config = AutoConfig.from_pretrained(str(source), **kw)
        check_task(config, task, label)
        if task == "sequence_classification":
            kw["num_labels"] = num_labels or 2
        if dtype is not None:
            kw["dtype"] = dtype
        try:
            model, info = AUTO_CLASSES[task].from_pretrained(str(source), output_loading_info=True, **kw)
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"could not load {label!r} for {task}: {e}") from e
        try:
            tok = AutoTokenizer.from_pretrained(str(source), local_files_only=local_files_only)
        except (OSError, ValueError) as e:
            raise ModelError(
                f"model {label!r} has no usable tokenizer (expected tokenizer.json or "
                f"tokenizer_config.json with vocabulary files next to the weights): {e}"
            ) from e
    new = sorted(info.get("missing_keys", ()))
    if new:
        level = logging.INFO if new_heads_expected else logging.WARNING
        log.log(level, "%s (%s): %d tensors newly initialised, train before use: %s",
                label, task, len(new), ", ".join(new))
    ensure_pad_token(model, tok)
    return model, tok

