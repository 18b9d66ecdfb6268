"""What a trial trains on: the ``model:`` and ``data:`` sections of a spec.

A leaf module: the spec (``raysel.spec``) and the methods both import it, and it imports neither.
"""
from __future__ import annotations

import pydantic
from pydantic import Field


class Strict(pydantic.BaseModel):
    """A spec section: unknown keys are errors."""

    model_config = pydantic.ConfigDict(extra="forbid")


class ModelSpec(Strict):
    name: str = "tiny-gpt2-random"  # built-in name (raysel list), hub name or local path


class DataSpec(Strict):
    name: str = "pydocs"  # built-in name, HF dataset name, or a local file/directory
    config: str | None = None  # HF dataset config, e.g. wikitext-103-raw-v1
    text_field: str = "text"  # column holding the text (HF datasets, JSONL, CSV)
    label_field: str = "label"  # column holding the label (classification)
    k: int | None = Field(None, gt=0)  # k-shot per label; the split's seed is the protocol seed
    max_examples: int | None = Field(None, gt=0)  # cap on training examples (fast tests)
    labels: list[str] | None = None  # classification: keep only these labels, in this order (a binary subset)
