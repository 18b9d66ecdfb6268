"""A model saved with save_pretrained loads back by path, identical."""
from __future__ import annotations

import pytest
import torch

from raysel.models import load_model


@pytest.mark.parametrize("name,task", [("tiny-gpt2-random", "causal_lm"), ("tiny-bert", "masked_lm")])
def test_round_trip(tmp_path, name, task):
    model, tok = load_model(name, task)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path), task)
    assert type(again) is type(model)
    sa, sb = model.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = tok(["round trip"], return_tensors="pt")
    assert batch["input_ids"].tolist() == tok2(["round trip"], return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, again.eval()(**batch).logits)
    assert tok2.pad_token == tok.pad_token


def test_path_with_new_head(tmp_path):
    model, tok = load_model("tiny-gpt2-random", "causal_lm")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clf, _ = load_model(str(tmp_path), "sequence_classification", num_labels=4)
    assert clf.score.out_features == 4
    assert torch.equal(clf.transformer.wte.weight, model.transformer.wte.weight)
