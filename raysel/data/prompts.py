"""LM-BFF prompts: per task a template with one mask and the label words whose MLM scores are the
classifier's logits (prompt-based fine-tuning and the kernel method read the same ones).

Templates follow LM-BFF's manual prompts (../shared/specs/kernel.md, "LM-BFF prompts"); ``{s1}`` and
``{s2}`` are the example's sentences and ``{mask}`` the tokenizer's mask token.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from raysel.data.errors import DataError


@dataclass(frozen=True)
class Prompt:
    template: str  # uses {s1}, {s2} (pair tasks), {mask}
    label_words: tuple[str, ...]  # one word per label, in label order; each must be one token
    pair: bool = False  # NLI-style: s1 loses its last character, s2 starts lower-case (as LM-BFF)


SENTIMENT = Prompt("{s1} It was{mask}.", ("terrible", "great"))
NLI = Prompt("{s1}?{mask}, {s2}", ("No", "Yes", "Maybe"), pair=True)  # contradiction, entailment, neutral
PROMPTS: dict[str, Prompt] = {
    "sst-2": SENTIMENT, "mr": SENTIMENT, "cr": SENTIMENT, "mpqa": SENTIMENT,
    "sst-5": Prompt("{s1} It was{mask}.", ("terrible", "bad", "okay", "good", "great")),
    "subj": Prompt("{s1} This is{mask}.", ("subjective", "objective")),
    "trec": Prompt("{mask}: {s1}", ("Description", "Entity", "Expression", "Human", "Location", "Number")),
    "mnli": NLI, "snli": NLI,
    "qnli": Prompt(NLI.template, ("No", "Yes"), pair=True),  # not_entailment, entailment
    "rte": Prompt(NLI.template, ("No", "Yes"), pair=True),
    "mrpc": Prompt("{s1}{mask}, {s2}", ("No", "Yes")),  # paraphrase 0 / 1, no NLI trimming
    "qqp": Prompt("{s1}{mask}, {s2}", ("No", "Yes")),
    # the built-in task (raysel.data.topics.LABELS: text, network, concurrency, files, math)
    "pydocs-topics": Prompt("{s1} This is about{mask}.", ("text", "network", "concurrency", "files", "math")),
}
MAX_LENGTH = {"mnli": 256, "snli": 256, "rte": 256}  # LM-BFF's max_seq_length; 128 otherwise


def prompt_for(task: str) -> Prompt:
    """The task's prompt; the error lists the tasks that have one."""
    key = task.lower()
    if key not in PROMPTS:
        raise ValueError(f"no prompt for task {task!r}; tasks with a prompt: {', '.join(PROMPTS)}")
    return PROMPTS[key]


def task_of(data_name: str) -> str:
    """The prompt task a data set is: its built-in name, or an LM-BFF task directory's name
    (``data/k-shot/SST-2`` → ``sst-2``)."""
    return Path(data_name).name.lower()


def words_for(prompt: Prompt, labels: tuple[str, ...], source_labels: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The label words of ``labels``: the prompt's words are in the full task's label order
    (``source_labels`` when ``labels`` is a subset of it)."""
    full = source_labels or labels
    if len(full) != len(prompt.label_words):
        raise ValueError(f"the prompt has {len(prompt.label_words)} label words {list(prompt.label_words)} but the "
                         f"task has {len(full)} labels {list(full)}; give label_words")
    return tuple(prompt.label_words[full.index(label)] for label in labels)


def fill(prompt: Prompt, mask_token: str, s1: str, s2: str | None = None) -> str:
    """The prompt's text for one example (before tokenisation)."""
    if prompt.pair:
        if s2 is None:
            raise ValueError("this task's prompt needs a sentence pair (s1, s2)")
        s1, s2 = s1.rstrip()[:-1], s2[:1].lower() + s2[1:]
    return prompt.template.format(s1=s1, s2=s2 or "", mask=mask_token)


def label_word_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """One vocabulary id per label word, tokenised with a leading space as LM-BFF does (BPE
    vocabularies such as RoBERTa's have a distinct " great"); a word that is not one token is an error."""
    ids = []
    for word in words:
        for text in (" " + word, word):
            pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                ids.append(pieces[0])
                break
        else:
            raise ValueError(f"label word {word!r} is not a single token for {type(tokenizer).__name__} "
                             f"(it splits into {tokenizer.tokenize(' ' + word)}); choose another word")
    return ids


def prompt_ids(tokenizer, prompt: Prompt, s1: str, s2: str | None = None, max_length: int = 128
               ) -> tuple[list[int], int]:
    """One example's token ids in the prompt and the position of its mask.

    A sentence too long for ``max_length`` is cut from its end, never the template (the mask stays)."""
    ids = tokenizer(fill(prompt, tokenizer.mask_token, s1, s2))["input_ids"]
    while len(ids) > max_length and s1:  # shorten s1 in proportion until the prompt fits
        s1 = s1[: int(len(s1) * max_length / len(ids) * 0.9)]
        ids = tokenizer(fill(prompt, tokenizer.mask_token, s1, s2))["input_ids"]
    if len(ids) > max_length:
        raise ValueError(f"the prompt alone is longer than max_length={max_length} tokens")
    return ids, ids.index(tokenizer.mask_token_id)


def encode(tokenizer, prompt: Prompt, examples: list[tuple[str, str | None]], max_length: int = 128
           ) -> dict[str, torch.Tensor]:
    """Padded input ids, attention mask and each example's mask position (``mask_pos``)."""
    encoded = [prompt_ids(tokenizer, prompt, s1, s2, max_length) for s1, s2 in examples]
    batch = tokenizer.pad({"input_ids": [ids for ids, _ in encoded]}, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "mask_pos": torch.tensor([pos for _, pos in encoded], dtype=torch.long)}


def prompt_and_words(tokenizer, data_name: str, splits, *, task: str | None = None,
                     label_words: list[str] | None = None) -> tuple[Prompt, list[int]]:
    """The prompt of ``task`` (default: the data's task, ``task_of``) and the vocabulary ids of the
    label words of ``splits.labels`` (a LabeledSplits; ``label_words`` overrides the prompt's, one per
    label). A task without a prompt or a label word that is not one token is a DataError naming what
    is allowed."""
    labels, source_labels = splits.labels, splits.source_labels
    try:
        prompt = prompt_for(task or task_of(data_name))
        if label_words is not None:
            if len(label_words) != len(labels):
                raise ValueError(f"label_words has {len(label_words)} words for {len(labels)} labels {list(labels)}")
            words = tuple(label_words)
        else:
            words = words_for(prompt, labels, source_labels)
        return prompt, label_word_ids(tokenizer, words)
    except ValueError as err:
        raise DataError(f"prompt: {err}") from None
