"""Evaluation metrics: perplexity, accuracy, SQuAD-normalised F1 and exact match.

The SQuAD scores take a question's gold answers and a ``rule``: "best" (SQuAD's) scores the prediction
against every answer and keeps the best; "shortest" (the CaMeLS reference's) against the shortest only."""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Iterable, Literal, Sequence

import torch


@torch.no_grad()
def lm_loss_sum(model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 32,
                attention_mask: torch.Tensor | None = None) -> tuple[float, int]:
    """Summed next-token NLL over ``input_ids`` [N, T] (padding masked) and the token count."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(input_ids), batch_size):
        ids = input_ids[start:start + batch_size].to(device)
        mask = None if attention_mask is None else attention_mask[start:start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                reduction="none").view_as(targets)
        keep = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
        total += float(nll[keep].double().sum())
        count += int(keep.sum())
    model.train(was_training)
    return total, count


def perplexity(model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 32,
               attention_mask: torch.Tensor | None = None) -> float:
    """exp(mean next-token NLL) of a causal LM over a set of token windows."""
    total, count = lm_loss_sum(model, input_ids, batch_size, attention_mask)
    return math.exp(total / max(count, 1))


def accuracy(predictions: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    return float((predictions == labels).float().mean()) if len(labels) else float("nan")


def binary_f1(predictions: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP; 0 when nothing is
    predicted or labelled positive."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    accuracy(predictions, labels)  # the same shape checks
    true_positive = int(((predictions == 1) & (labels == 1)).sum())
    predicted, actual = int((predictions == 1).sum()), int((labels == 1).sum())
    return 2 * true_positive / (predicted + actual) if predicted + actual else 0.0


# ---------------------------------------------------------------- SQuAD F1 / EM
def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


AnswerRule = Literal["best", "shortest"]


def target_answer(answers: Sequence[str], rule: AnswerRule) -> str:
    """The one gold answer a model is trained on: the first ("best") or the shortest, the first of the
    shortest on ties ("shortest", the CaMeLS reference's ``min(answers, key=len)``)."""
    return min(answers, key=len) if rule == "shortest" else answers[0]


def scored_answers(answers: str | Iterable[str], rule: AnswerRule = "best") -> list[str]:
    """The gold answers a prediction is scored against: all of them ("best") or the target ("shortest")."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    return [target_answer(answers, rule)] if rule == "shortest" and answers else answers


def squad_f1(prediction: str, answers: str | Iterable[str], *, rule: AnswerRule = "best") -> float:
    """Token F1 against the best-matching scored gold answer."""
    return max((_token_f1(prediction, a) for a in scored_answers(answers, rule)), default=0.0)


def squad_em(prediction: str, answers: str | Iterable[str], *, rule: AnswerRule = "best") -> float:
    """Exact match after SQuAD normalisation (not the CaMeLS reference's prefix match)."""
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in scored_answers(answers, rule)))


def squad_em_prefix(prediction: str, answers: str | Iterable[str], *, rule: AnswerRule = "best") -> float:
    """The CaMeLS reference's "exact match": the normalised prediction starts with a normalised scored
    answer (so a correct answer followed by more text counts)."""
    predicted = normalize_answer(prediction)
    return float(any(gold and predicted.startswith(gold)
                     for gold in map(normalize_answer, scored_answers(answers, rule))))
