"""prepare_tiny_gpt2: manifest, idempotence, loading; a slow run checks that it learns."""
from __future__ import annotations

import json

import pytest
import torch

from raysel.models import load_model, prepare_tiny_gpt2
from raysel.models.tiny_gpt2 import Recipe

FIELDS = {"corpus_sha256", "steps", "tokens_seen", "untrained_test_perplexity", "test_perplexity",
          "wall_time_s", "versions", "params", "recipe"}


def _topics_corpus() -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    return {"pretrain": texts[::2], "test": texts[1::2]}


def test_prepare_manifest_idempotent_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path))
    recipe = Recipe(batch_size=2, context=32, eval_windows=4, warmup=2)
    corpus = _topics_corpus()
    path = prepare_tiny_gpt2(steps=2, recipe=recipe, corpus=corpus, progress=False)
    assert path == tmp_path / "tiny-gpt2"
    manifest = json.loads((path / "manifest.json").read_text())
    assert FIELDS <= manifest.keys() and manifest["steps"] == 2 and manifest["tokens_seen"] == 2 * 2 * 32
    weights = (path / "model.safetensors").stat().st_mtime_ns
    assert prepare_tiny_gpt2(steps=2, recipe=recipe, corpus=corpus, progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == weights  # reused, not trained again
    assert json.loads((path / "manifest.json").read_text())["created"] == manifest["created"]
    model, tok = load_model("tiny-gpt2", "causal_lm")
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    batch = tok(["The import statement"], return_tensors="pt")
    assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)
    clf, _ = load_model("tiny-gpt2", "sequence_classification", num_labels=2)
    assert clf.config.pad_token_id == tok.pad_token_id


@pytest.mark.slow
def test_pretraining_lowers_test_perplexity(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path))
    path = prepare_tiny_gpt2(steps=120, progress=False)  # ~1-2 min on 2 cores; no time limit to race
    m = json.loads((path / "manifest.json").read_text())
    assert FIELDS <= m.keys()
    assert m["steps"] == 120
    assert m["tokens_seen"] == m["steps"] * 16 * 128
    assert m["test_perplexity"] < m["untrained_test_perplexity"] / 5
