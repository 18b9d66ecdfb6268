"""``load_model``: a built-in name, a local directory, or a Hugging Face hub name."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from raysel.models.builtin import RANDOM_SEED, builtin_config, builtin_dir, check_builtin, load_builtin
from raysel.models.catalog import BUILTINS, is_builtin
from raysel.models.errors import ModelError
from raysel.models.hf import DType, check_task_name, load_pretrained, resolve_dtype
from raysel.provenance import Loaded, content_digest, directory_digest, is_recording, record_load

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    now = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
              for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return now or bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(name: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else that does not exist is a bad path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def _check_local_dir(path: Path, name: str) -> None:
    if not path.is_dir():
        raise ModelError(f"model path {name!r} is a file; expected a directory written by save_pretrained")
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {name!r} has no config.json; expected a directory written by "
                         f"save_pretrained with config.json and weights ({' or '.join(WEIGHT_FILES)})")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(f"model directory {name!r} has no weights; expected one of: {', '.join(WEIGHT_FILES)}")


def _hub_error(name: str, offline: bool, err: Exception) -> ModelError:
    from huggingface_hub import constants

    where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    how = (f"download it once where there is network (`hf download {name}`, with HF_HUB_OFFLINE unset) "
           f"or pass a local directory written by save_pretrained")
    close = difflib.get_close_matches(name, list(BUILTINS), n=1, cutoff=0.75) if "/" not in name else []
    hint = f"unknown built-in {name!r} (did you mean {close[0]!r}?); " if close else ""
    head = (f"{hint}model {name!r} is not a built-in ({', '.join(BUILTINS)}), not a local directory, "
            f"and not in {where}")
    if offline:
        return ModelError(f"{head}; HF_HUB_OFFLINE is set, so nothing is downloaded. To get it: {how}.")
    return ModelError(f"{head}, and the hub could not provide it ({type(err).__name__}: {err}). "
                      f"Check the name and your network, or {how}.")


def load_model(
    name: str,
    task: str,
    *,
    num_labels: int | None = None,
    dtype: DType = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer for ``task`` ("causal_lm", "sequence_classification", "masked_lm").

    ``name`` is a built-in (:data:`BUILTIN_MODELS`), a local directory written by
    ``save_pretrained``, or a Hugging Face hub name (local cache only under HF_HUB_OFFLINE).
    ``num_labels`` (default 2) only applies to sequence_classification; ``dtype`` is a torch
    floating dtype, its name, or "auto". The tokenizer always has a pad token (eos for GPT-2
    style models) and ``model.config.pad_token_id`` matches it. Raises :class:`ModelError`.
    """
    check_task_name(task)
    dt = resolve_dtype(dtype)
    if num_labels is not None and num_labels < 1:
        raise ModelError(f"num_labels must be a positive integer, got {num_labels}")
    kind = locate(name)
    if kind == "builtin":
        loaded = load_builtin(name, task, num_labels=num_labels, dtype=dt)
    elif kind == "local":
        loaded = load_pretrained(Path(name).expanduser(), task, label=name, num_labels=num_labels, dtype=dt,
                                 local_files_only=True)
    else:
        offline = hub_offline()
        try:
            loaded = load_pretrained(name, task, label=name, num_labels=num_labels, dtype=dt,
                                     local_files_only=offline)
        except OSError as e:
            raise _hub_error(name, offline, e) from e
    if is_recording():
        record_load(_model_record(name, kind, loaded[0]))
    return loaded


def _model_record(name: str, kind: str, model: PreTrainedModel) -> Loaded:
    """What a trial's provenance says of a model it loaded: a digest of its files (a built-in's directory,
    a local directory), the hub's commit, or a random built-in's config and seed."""
    if kind == "hub":
        return Loaded("model", name, getattr(model.config, "_commit_hash", None) or "unknown", "hub")
    folder = Path(name).expanduser() if kind == "local" else builtin_dir(name)
    if folder is None:
        return Loaded("model", name, content_digest({"config": model.config.to_json_string(), "seed": RANDOM_SEED}),
                      "built-in, random init")
    return Loaded("model", name, directory_digest(folder), str(folder))


def locate(name: str) -> str:
    """"builtin", "local" (a checked save_pretrained directory) or "hub"; ModelError for a bad path."""
    if is_builtin(name):
        return "builtin"
    path = Path(name).expanduser()
    if path.exists():
        _check_local_dir(path, name)
        return "local"
    if _looks_like_path(name):
        raise ModelError(f"model path {name!r} does not exist (and it is not a built-in: {', '.join(BUILTINS)})")
    return "hub"


def check_model(name: str, task: str) -> None:
    """What ``load_model`` would reject, without loading weights (a sweep's preflight, before Ray)."""
    check_task_name(task)
    kind = locate(name)
    if kind == "builtin":
        check_builtin(name, task)
    elif kind == "hub":
        from transformers import AutoConfig

        offline = hub_offline()
        try:
            AutoConfig.from_pretrained(name, local_files_only=offline)
        except OSError as e:
            raise _hub_error(name, offline, e) from e


def model_config(name: str) -> PretrainedConfig:
    """The architecture of model ``name`` (built-in, local directory or hub cache) without its weights."""
    from transformers import AutoConfig

    kind = locate(name)
    if kind == "builtin":
        return builtin_config(name)
    if kind == "local":
        return AutoConfig.from_pretrained(Path(name).expanduser(), local_files_only=True)
    offline = hub_offline()
    try:
        return AutoConfig.from_pretrained(name, local_files_only=offline)
    except OSError as e:
        raise _hub_error(name, offline, e) from e


def transformer_layers(config: PretrainedConfig) -> int | None:
    """How many transformer blocks a config describes (None when it does not say)."""
    for field in ("num_hidden_layers", "n_layer"):
        if isinstance(getattr(config, field, None), int):
            return getattr(config, field)
    return None
