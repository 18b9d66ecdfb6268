"""Questions and documents as token batches, answers by generation, SQuAD scores: CaMeLS's QA plumbing.

A QA example is ``question`` → ``" " + answer + eos``; only the answer tokens (and eos) are targets. Of
several gold answers, ``raysel.metrics.target_answer`` picks the one trained on and a rule which are scored.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch

from raysel.methods.camels.algorithm import qa_nll
from raysel.metrics import AnswerRule, squad_em, squad_em_prefix, squad_f1

Batch = dict[str, torch.Tensor]


def encode_documents(tokenizer, texts: Sequence[str], max_tokens: int) -> Batch:
    """Documents right-padded to the longest: input_ids, attention_mask and character offsets [B, T, 2]."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=True, return_tensors="pt",
                    return_offsets_mapping=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "offset_mapping": enc["offset_mapping"]}


def encode_qa(tokenizer, pairs: Sequence[tuple[str, str]], max_tokens: int = 96) -> Batch:
    """(question, answer) pairs right-padded: input_ids, attention_mask, labels (-100 but on the answer)."""
    rows, labels = [], []
    for question, answer in pairs:
        prompt = tokenizer(question)["input_ids"]
        target = tokenizer(" " + answer.strip())["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + target)[:max_tokens]
        rows.append(ids)
        labels.append(([-100] * len(prompt) + target)[:max_tokens])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor([l + [-100] * (width - len(l)) for l in labels])}


def question_pairs(documents: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """Every (question, answers) of the documents, in order."""
    return [(q["question"], list(q["answers"])) for d in documents for q in d["questions"]]


def sample_stream(documents: Sequence[dict], size: int | None, seed: int) -> list[dict]:
    """A seeded stream of ``size`` documents drawn without replacement (all of them, shuffled, if None)."""
    order = list(documents)
    random.Random(seed).shuffle(order)
    return order if size is None else order[:size]


@torch.no_grad()
def answer_nll(model: torch.nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> float:
    """Mean NLL per answer token of the gold answers given the questions."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for start in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in encode_qa(tokenizer, pairs[start:start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = int((batch["labels"][:, 1:] != -100).sum())
        total += float(qa_nll(logits, batch["labels"])) * targets
        count += targets
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def generate_answers(model: torch.nn.Module, tokenizer, questions: Sequence[str], *, max_new_tokens: int = 16,
                     num_beams: int = 1, batch_size: int = 32) -> list[str]:
    """Answers by greedy decoding (or beam search with ``num_beams`` > 1) after each question, up to
    ``max_new_tokens`` tokens or eos; left-padded batches."""
    device = next(model.parameters()).device
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        for start in range(0, len(questions), batch_size):
            enc = tokenizer(list(questions[start:start + batch_size]), padding=True, return_tensors="pt").to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            answers += [a.strip() for a in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def score_answers(predictions: Sequence[str], answers: Sequence[Sequence[str]], rule: AnswerRule) -> dict[str, float]:
    """Mean SQuAD F1, exact match and the reference's prefix EM (prediction starts with an answer), in %,
    against the best of each question's answers ("best") or its shortest only ("shortest")."""
    n = max(len(predictions), 1)
    pairs = list(zip(predictions, answers))
    return {"f1": 100 * sum(squad_f1(p, a, rule=rule) for p, a in pairs) / n,
            "em": 100 * sum(squad_em(p, a, rule=rule) for p, a in pairs) / n,
            "em_prefix": 100 * sum(squad_em_prefix(p, a, rule=rule) for p, a in pairs) / n}
