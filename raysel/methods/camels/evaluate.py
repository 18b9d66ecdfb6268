"""CaMeLS phase 3, ``phase: evaluate``: online adaptation. A seeded stream of ``downsample_to``
documents of each split in ``splits`` (val and test); the QA-tuned base is adapted with Adam at ``lr``,
batch 1, one pass, under a weighting (uniform, ssm, tfidf, camels), optionally light-tuned on QA
(``qa_lt_final``), then answers the stream's questions: ``{split}_f1``, ``{split}_em`` (exact),
``{split}_em_prefix`` (the reference's EM). Adaptation and light tuning run through the shared loop;
their training FLOPs over every split are the trial's ``train_flops_est``, and a camels weighting's
``selection_flops_est`` is what meta-training its weight model cost (when it was saved with it)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import torch

from raysel.cost import TrainingCost
from raysel.data.errors import DataError
from raysel.methods.base import RunContext
from raysel.methods.camels.algorithm import lm_labels, padded_denominator, weighted_lm_loss
from raysel.methods.camels.artifacts import (base_model_source, check_same_tokenizer, load_weight_model,
                                             meta_train_cost, weight_model_path)
from raysel.methods.camels.baselines import (TfidfScorer, apply_min_threshold, load_spacy, rule_based_spans,
                                             spacy_spans, span_weights, tfidf_corpus)
from raysel.methods.camels.params import CamelsParams
from raysel.methods.camels.qa import (answer_nll, encode_documents, encode_qa, generate_answers, question_pairs,
                                      sample_stream, score_answers)
from raysel.methods.loop import fine_tune
from raysel.metrics import target_answer
from raysel import models


def evaluate(params: CamelsParams, run: RunContext, splits: dict[str, list[dict]]) -> dict[str, float]:
    device = run.device
    source = base_model_source(params, run)
    base, tokenizer = models.load_model(source, "causal_lm")
    start_state = {k: v.clone() for k, v in base.state_dict().items()}
    weigh, detector = make_weigher(params, run, tokenizer, splits)
    run.set_tags(**{"camels.weighting": params.weighting, "camels.base_model": source,
                    **({"camels.ssm_detector": detector} if detector else {})})
    cost = TrainingCost(base)  # adaptation and light tuning, every split
    final: dict[str, float] = {}
    for split in params.splits:
        base.load_state_dict(start_state)
        base.to(device)
        stream = sample_stream(splits[split], params.downsample_to, run.seed)
        pairs = question_pairs(stream)
        before = _answer(base, tokenizer, pairs, params)
        losses = adapt(base, tokenizer, stream, weigh, params, run, cost)
        if params.qa_lt_final:
            final[f"{split}_qa_lt_steps"] = float(light_tune(base, tokenizer, splits["qa_train"], params, run, cost))
        after = _answer(base, tokenizer, pairs, params)
        final.update({f"{split}_{k}": v for k, v in after["scores"].items()})
        final.update({f"{split}_{k}_unadapted": v for k, v in before["scores"].items()})
        final[f"{split}_adapt_loss"] = sum(losses) / max(len(losses), 1)
        final[f"{split}_documents"] = float(len(stream))
        final[f"{split}_questions"] = float(len(pairs))
        path = run.artifact_dir / f"{split}-answers.csv"
        _write_answers(path, pairs, before["predictions"], after["predictions"])
        run.log_artifact(path, "answers")
    final.update(cost.metrics())
    selection = meta_train_cost(weight_model_path(params, run)) if params.weighting == "camels" else None
    if selection is not None:
        final["selection_flops_est"] = selection
    run.report(1, **final)
    return final


def _answer(model: torch.nn.Module, tokenizer, pairs: list[tuple[str, list[str]]], params: CamelsParams) -> dict:
    predictions = generate_answers(model, tokenizer, [q for q, _ in pairs], max_new_tokens=params.max_answer_tokens,
                                   num_beams=params.num_beams)
    scores = score_answers(predictions, [a for _, a in pairs], params.answer_scoring)
    targets = [(q, target_answer(a, params.answer_scoring)) for q, a in pairs]
    scores["answer_nll"] = answer_nll(model, tokenizer, targets)
    return {"predictions": predictions, "scores": scores}


def adapt(model: torch.nn.Module, tokenizer, stream: list[dict], weigh: Callable[[str, dict], torch.Tensor],
          params: CamelsParams, run: RunContext, cost: TrainingCost | None = None) -> list[float]:
    """One pass of Adam at ``lr`` over the stream through the shared loop (not tracked: no reports or
    checkpoints of its own), one document per step, weighted LM loss (weights computed without
    gradient; normalised per ``loss_normalization``). Dropout on, as in fine-tuning. The losses per step;
    what it trained on is added to ``cost``."""
    if not stream:
        return []
    losses: list[float] = []

    def next_batch(step: int, micro: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        text = stream[step - 1]["text"]
        batch = encode_documents(tokenizer, [text], params.max_doc_tokens)
        with torch.no_grad():
            weights = weigh(text, batch)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "weights": weights}

    def weighted_loss(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        loss = weighted_lm_loss(m(input_ids=ids, attention_mask=mask).logits, lm_labels(ids, mask), batch["weights"],
                                denominator=padded_denominator(1, params.padded_length))
        losses.append(float(loss.detach()))
        return loss

    fine_tune(model, params.loop("adapt", steps=len(stream)), run, next_batch, None, loss=weighted_loss, track=False,
              seed_dropout=False, cost=cost)
    model.eval()
    return losses


def make_weigher(params: CamelsParams, run: RunContext, tokenizer,
                 splits: dict[str, list[dict]]) -> tuple[Callable[[str, dict], torch.Tensor], str | None]:
    """The weighting's function from a document (its text and its encoding as a batch of one, with
    character offsets) to token weights [1, T], and for ssm which detector it uses. tfidf fits on the
    unique documents of every split and scores the document as truncated, as the reference does."""
    if params.weighting == "uniform":
        return (lambda text, batch: batch["attention_mask"].float()), None
    if params.weighting == "camels":
        path = weight_model_path(params, run)
        if not path.is_file():
            raise DataError(f"camels: no weight model at {path}: a phase 'meta_train' arm must run first "
                            "(list it in this arm's after:) or set from_sweep / weight_model")
        weight_model, weight_tokenizer = load_weight_model(path, run.device)
        check_same_tokenizer(tokenizer, weight_tokenizer, f"weight model {path}")
        return (lambda text, batch: weight_model(batch["input_ids"].to(run.device),
                                           batch["attention_mask"].to(run.device)).cpu()), None
    if params.weighting == "tfidf":
        scorer = TfidfScorer(tfidf_corpus(splits))

        def tfidf(text: str, batch: dict) -> torch.Tensor:
            weights = scorer.token_weights(text, batch["offset_mapping"][0])
            return apply_min_threshold(weights, params.min_threshold).unsqueeze(0)
        return tfidf, None
    nlp = load_spacy() if params.ssm_detector in ("auto", "spacy") else None
    detector = "spacy:en_core_web_sm" if nlp is not None else "rules"

    def ssm(text: str, batch: dict) -> torch.Tensor:
        spans = spacy_spans(text, nlp) if nlp is not None else rule_based_spans(text)
        return span_weights(batch["offset_mapping"][0], spans).unsqueeze(0)
    return ssm, detector


def light_tune(model: torch.nn.Module, tokenizer, documents: list[dict], params: CamelsParams,
               run: RunContext, cost: TrainingCost | None = None) -> int:
    """The uniform + qa_lt baseline's light QA re-tuning through the shared loop (not tracked): Adam at
    ``qa_lt_lr`` on batches of QA-train pairs, early stopping on the F1 of held-out QA-train questions
    (patience ``qa_lt_patience`` evaluations); the best weights are kept. Returns the steps taken; what
    it trained on is added to ``cost``."""
    rule = params.answer_scoring
    pairs = question_pairs(documents)
    held_out, train = pairs[:64], [(q, target_answer(a, rule)) for q, a in pairs[64:]]
    generator = torch.Generator().manual_seed(run.seed)  # one stream of batches, drawn in order
    device = next(model.parameters()).device
    taken = {"steps": 0, "waited": 0, "best": float("-inf"), "state": None}

    def next_batch(step: int, micro: int, _: torch.Generator) -> dict[str, torch.Tensor]:
        taken["steps"] = step
        rows = torch.randint(len(train), (params.qa_lt_batch_size,), generator=generator).tolist()
        return {k: v.to(device) for k, v in encode_qa(tokenizer, [train[i] for i in rows]).items()}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        if taken["steps"] % params.qa_lt_eval_every:  # the loop's extra evaluation at its last step: not one
            return {}
        predictions = generate_answers(m, tokenizer, [q for q, _ in held_out], max_new_tokens=params.max_answer_tokens)
        score = score_answers(predictions, [a for _, a in held_out], rule)["f1"]
        if score > taken["best"]:
            taken.update(best=score, state={k: v.clone() for k, v in m.state_dict().items()}, waited=0)
        else:
            taken["waited"] += 1
        return {"f1": score}

    fine_tune(model, params.loop("light_tune"), run, next_batch, evaluate, stop=lambda step, _: taken["waited"] >= params.qa_lt_patience,
              track=False, seed_dropout=False, cost=cost)
    model.load_state_dict(taken["state"])
    model.eval()
    return taken["steps"]


def _write_answers(path: Path, pairs: list[tuple[str, list[str]]], before: list[str], after: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answers", "prediction_unadapted", "prediction"])
        for (question, answers), b, a in zip(pairs, before, after):
            writer.writerow([question, "\\".join(answers), b, a])
