"""Built-in byte-level BPE tokenizers: round trip, special tokens, determinism, disk cache."""
from __future__ import annotations

import os

import pytest

from raysel.models import tokenizers as toks

ENGLISH = "Hello, world! The quick brown fox jumps over the lazy dog — naïve café, 3.14 ≤ π.\n\tIndented."


@pytest.mark.parametrize("style", ["gpt2", "bert"])
def test_round_trip(style):
    tok = toks.builtin_tokenizer(style)
    ids = tok(ENGLISH)["input_ids"]
    assert len(tok) == toks.BUILTIN_VOCAB
    assert len(ids) < len(ENGLISH)  # merges were learned
    assert tok.decode(ids, skip_special_tokens=True) == ENGLISH
    assert tok.pad_token is not None


def test_bert_special_tokens():
    tok = toks.builtin_tokenizer("bert")
    ids = tok("some text")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token] == list(toks.BERT_SPECIALS)
    assert tok.convert_tokens_to_ids(list(toks.BERT_SPECIALS)) == [0, 1, 2, 3, 4]
    pair = tok("first", "second")
    assert pair["input_ids"].count(tok.sep_token_id) == 2 and set(pair["token_type_ids"]) == {0, 1}


def test_gpt2_style_no_added_tokens():
    tok = toks.builtin_tokenizer("gpt2")
    assert tok("abc")["input_ids"] == tok.encode("abc")
    assert tok.eos_token_id not in tok("abc")["input_ids"]


def test_training_is_deterministic():  # its speed is bench/'s business, not a test's
    texts = toks.builtin_corpus()
    a = toks.train_bpe(texts, toks.BUILTIN_VOCAB, "bert")
    b = toks.train_bpe(texts, toks.BUILTIN_VOCAB, "bert")
    assert a.to_str() == b.to_str()


def test_cached_on_disk(models_cache):
    path = toks.builtin_tokenizer_path("gpt2")
    assert path.is_file() and str(path).startswith(models_cache)
    assert os.path.basename(os.path.dirname(path)) == "tokenizers"


def test_an_unreadable_cached_tokenizer_is_trained_again_and_rewritten(caplog):
    path = toks.builtin_tokenizer_path("bert")
    whole = path.read_text()
    path.write_text(whole[: len(whole) // 2])  # cut short, as by a full disk
    toks._builtin_raw.cache_clear()
    assert toks.builtin_tokenizer("bert").convert_tokens_to_ids(list(toks.BERT_SPECIALS)) == [0, 1, 2, 3, 4]
    assert "ignoring the unreadable cached tokenizer" in caplog.text
    assert path.read_text() == whole  # trained again, identically, and written back
