"""Offline byte-level BPE tokenizers for the built-in models.

Trained with the ``tokenizers`` library (deterministic, well under a second for the
built-in corpus), cached in memory and as JSON under ``cache_dir()/tokenizers``, and
wrapped as ``PreTrainedTokenizerFast`` with GPT-2 or BERT style special tokens.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import tokenizers as tk
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from raysel.cache import cache_dir, read_or_build, write_atomic


Style = Literal["gpt2", "bert"]
EOT = "<|endoftext|>"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
BUILTIN_VOCAB = 2000
MAX_LENGTH = 256


def builtin_corpus() -> list[str]:
    """The small fixed text the built-in tokenizers learn from: pydoc_data topics, sorted by key."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def corpus_sha256(texts: Iterable[str]) -> str:
    """Order-sensitive hash of a list of texts."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def train_bpe(texts: Sequence[str], vocab_size: int, style: Style) -> tk.Tokenizer:
    """Train a byte-level BPE (no unknown bytes) with the special tokens of ``style``."""
    specials = [EOT] if style == "gpt2" else list(BERT_SPECIALS)
    tok = tk.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    if style == "bert":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
    return tok


def wrap(tok: tk.Tokenizer, style: Style, max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``tok`` with the special tokens of ``style`` (pad set)."""
    if style == "gpt2":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=EOT,
            eos_token=EOT,
            unk_token=EOT,
            pad_token=EOT,
            model_max_length=max_length,
            model_input_names=["input_ids", "attention_mask"],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _cache_file(style: Style, vocab_size: int, sha: str) -> Path:
    return cache_dir() / "tokenizers" / f"builtin-{style}-bpe{vocab_size}-{sha[:16]}.json"


@functools.lru_cache(maxsize=None)
def _builtin_raw(style: Style, vocab_size: int) -> tk.Tokenizer:
    return read_or_build(_builtin_file(style, vocab_size), tk.Tokenizer.from_str,
                         lambda: train_bpe(builtin_corpus(), vocab_size, style), tk.Tokenizer.to_str, "tokenizer")


def _builtin_file(style: Style, vocab_size: int) -> Path:
    return _cache_file(style, vocab_size, _builtin_sha(style, vocab_size))  # under the cache_dir() of now


@functools.lru_cache(maxsize=None)
def _builtin_sha(style: Style, vocab_size: int) -> str:
    """What a built-in tokenizer is made of (once per process: it hashes the whole corpus)."""
    return corpus_sha256([style, str(vocab_size), tk.__version__, *builtin_corpus()])


def builtin_tokenizer(style: Style, vocab_size: int = BUILTIN_VOCAB) -> PreTrainedTokenizerFast:
    """The built-in ``style`` tokenizer (a fresh wrapper each call over a cached BPE)."""
    return wrap(_builtin_raw(style, vocab_size), style)


def builtin_tokenizer_path(style: Style, vocab_size: int = BUILTIN_VOCAB) -> Path:
    """Build (if needed) and return the cached JSON file of a built-in tokenizer."""
    tok = _builtin_raw(style, vocab_size)
    path = _builtin_file(style, vocab_size)
    if not path.is_file():  # the cache could not be written
        write_atomic(path, tok.to_str())
    return path
