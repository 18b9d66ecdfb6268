"""Standard fine-tuning: the baseline every selective method is compared with.

Causal LM (reports dev/test perplexity per step), sequence classification with a classifier head
(dev/test accuracy), or prompt-based classification (LM-BFF: a masked LM's scores of the label words
at the prompt's mask are the logits), through the shared loop of raysel.methods.loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Literal

import torch
from pydantic import Field

from raysel.data.batches import ClassificationBatches, TokenWindows
from raysel.data.prompts import prompt_and_words
from raysel.data.sources import classification_splits, lm_splits
from raysel.methods.base import Method, RunContext
from raysel.methods.loop import Batch, LoopParams, fine_tune, micro_batch_size
from raysel.metrics import accuracy, perplexity
from raysel import models
from raysel.models.prompt import PromptClassifier
from raysel.inputs import DataSpec, ModelSpec


class StandardParams(LoopParams):
    task: Literal["causal_lm", "classification", "prompt"] = "causal_lm"
    prompt_task: str | None = None  # task "prompt": whose LM-BFF template (default: the data's task)
    label_words: list[str] | None = None  # task "prompt": one word per label instead of the template's
    context_len: int = Field(32, gt=1)  # tokens per causal-LM context
    max_length: int = Field(128, gt=1)  # classification: truncate inputs to this many tokens
    eval_examples: int = Field(128, gt=0)  # LM: dev/test windows; classification: cap per eval split
    eval_batch_size: int = Field(64, gt=0)


MODEL_TASK = {"causal_lm": "causal_lm", "classification": "sequence_classification", "prompt": "masked_lm"}


class Standard(Method):
    """Standard fine-tuning (causal LM or classification): the baseline of every comparison."""

    name: ClassVar[str] = "standard"
    Params: ClassVar[type[StandardParams]] = StandardParams

    def preflight(self, params: StandardParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: the model can be found and the data loads (else ModelError/DataError)."""
        models.check_model(model.name, MODEL_TASK[params.task])
        if params.task == "causal_lm":
            lm_splits(data)
            return
        for seed in seeds if data.k else seeds[:1]:
            splits = classification_splits(data, seed=seed)
        if params.task == "prompt":
            _, tokenizer = models.load_model(model.name, "masked_lm")
            prompt_and_words(tokenizer, data.name, splits, task=params.prompt_task, label_words=params.label_words)

    def train_loop(self, params: StandardParams, run: RunContext) -> dict[str, float]:
        task = prepare(params, run)
        return fine_tune(task.model, params.loop(), run, task.next_batch, task.evaluate)


@dataclass
class Prepared:
    """One trial's model and data for the shared loop (methods that change the model build on it)."""

    model: torch.nn.Module
    next_batch: Callable[[int, int, torch.Generator], Batch]
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    train_size: int  # examples (classification) or non-overlapping windows (causal LM): one epoch's worth
    one_pass: Callable[[int], Iterator[Batch]]  # the training data once, in a fixed order, in batches of n
    examples: ClassificationBatches | None = None  # classification: the training split, batches by index


def prepare(params: StandardParams, run: RunContext) -> Prepared:
    """Load the model and data of a standard fine-tuning trial."""
    if params.task == "causal_lm":
        return _causal_lm(params, run)
    return _classification(params, run)


def _causal_lm(params: StandardParams, run: RunContext) -> Prepared:
    model, tokenizer = models.load_model(run.model.name, "causal_lm")
    splits = lm_splits(run.data)
    train = TokenWindows(tokenizer, splits["train"], params.context_len)
    dev = TokenWindows(tokenizer, splits["dev"], params.context_len).fixed(params.eval_examples, seed=0)
    test = TokenWindows(tokenizer, splits["test"], params.context_len).fixed(params.eval_examples, seed=1)
    per_micro = micro_batch_size(params, run.world_size)
    windows = sum(len(a) // params.context_len for a in train.articles)

    def next_batch(step: int, micro: int, generator: torch.Generator):
        ids = train.sample(per_micro, generator)
        return {"input_ids": ids, "labels": ids}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return {"dev_perplexity": perplexity(m, dev, params.eval_batch_size),
                "test_perplexity": perplexity(m, test, params.eval_batch_size)}

    def one_pass(n: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(run.seed)
        for start in range(0, windows, n):
            ids = train.sample(min(n, windows - start), generator)
            yield {"input_ids": ids, "labels": ids}

    return Prepared(model, next_batch, evaluate, windows, one_pass)


def _classification(params: StandardParams, run: RunContext) -> Prepared:
    data = classification_splits(run.data, seed=run.seed)
    prompt = None
    if params.task == "prompt":
        mlm, tokenizer = models.load_model(run.model.name, "masked_lm")
        prompt, word_ids = prompt_and_words(tokenizer, run.data.name, data, task=params.prompt_task,
                                           label_words=params.label_words)
        model = PromptClassifier(mlm, word_ids)
    else:
        model, tokenizer = models.load_model(run.model.name, "sequence_classification", num_labels=len(data.labels))
    train = ClassificationBatches(tokenizer, data.train, params.max_length, prompt)
    dev = ClassificationBatches(tokenizer, data.dev[:params.eval_examples], params.max_length, prompt)
    test = ClassificationBatches(tokenizer, data.test[:params.eval_examples], params.max_length, prompt)
    per_micro = micro_batch_size(params, run.world_size)

    def next_batch(step: int, micro: int, generator: torch.Generator):
        return train.sample(per_micro, generator)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return {f"{name}_accuracy": accuracy(split.predict(m, params.eval_batch_size), split.labels)
                for name, split in (("dev", dev), ("test", test))}

    def one_pass(n: int) -> Iterator[Batch]:
        for start in range(0, len(train), n):
            yield train.batch(range(start, min(start + n, len(train))))

    return Prepared(model, next_batch, evaluate, len(train), one_pass, train)
