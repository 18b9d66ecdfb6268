"""Tiny random built-ins: every supported task runs forward, init is deterministic."""
from __future__ import annotations

import pytest
import torch

from raysel.models import BUILTIN_MODELS, TASKS, ModelError, is_builtin, load_model

TINY = [("tiny-gpt2-random", "causal_lm"), ("tiny-gpt2-random", "sequence_classification"),
        ("tiny-llama-random", "causal_lm"), ("tiny-llama-random", "sequence_classification"),
        ("tiny-bert", "sequence_classification"), ("tiny-bert", "masked_lm")]
TEXT = ["The for statement iterates over the items of a sequence.", "A short one."]


def test_registry():
    assert set(BUILTIN_MODELS) == {"tiny-gpt2-random", "tiny-llama-random", "tiny-bert", "tiny-gpt2", "minilm",
                                   "smollm2-135m"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in BUILTIN_MODELS.values())
    assert is_builtin("tiny-bert") and not is_builtin("gpt2")
    assert TASKS == ("causal_lm", "sequence_classification", "masked_lm")


@pytest.mark.parametrize("name,task", TINY)
def test_forward(name, task):
    model, tok = load_model(name, task, num_labels=3)
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    batch = tok(TEXT, return_tensors="pt", padding=True)
    n, length = batch["input_ids"].shape
    assert batch["attention_mask"][1].sum() < length  # the second row is padded
    if task == "sequence_classification":
        labels = torch.tensor([0, 2])
    else:
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    expected = (n, 3) if task == "sequence_classification" else (n, length, len(tok))
    assert out.logits.shape == expected
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_gpt2_pad_is_eos():
    _, tok = load_model("tiny-gpt2-random", "causal_lm")
    assert tok.pad_token == tok.eos_token == tok.bos_token == "<|endoftext|>"


@pytest.mark.parametrize("name,task", [TINY[0], TINY[3]])
def test_init_is_deterministic_and_leaves_global_rng_alone(name, task):
    torch.manual_seed(1)
    a, _ = load_model(name, task)
    after_a = torch.rand(3)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(2)
    b, _ = load_model(name, task)
    assert torch.equal(after_a, expected)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,task", [("tiny-gpt2-random", "masked_lm"), ("tiny-bert", "causal_lm"),
                                       ("minilm", "causal_lm")])
def test_unsupported_task(name, task):
    with pytest.raises(ModelError, match=rf"cannot do task '{task}'.*supports"):
        load_model(name, task)


def test_dtype():
    model, _ = load_model("tiny-bert", "masked_lm", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelError, match="dtype"):
        load_model("tiny-bert", "masked_lm", dtype="int8")
