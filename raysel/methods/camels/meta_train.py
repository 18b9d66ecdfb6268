"""CaMeLS phase 2, ``phase: meta_train``: the weight model (encoder ``weight_encoder``, default the
spec's model) learns per-token loss weights through the shared loop. Each micro-step takes a batch of
``update_batch_size`` training documents, adapts the carried base by differentiable SGD steps on the
weighted LM loss, and backpropagates the outer loss (the adapted model's QA NLL on the documents'
questions + c_kl·KL on unrelated text + c_norm·weight norm) into the weight model; Adam every
``grad_acc_steps`` batches. The base carries over between batches and is reset every
``reset_base_freq`` documents. The best validation weight model → ``<artifacts>/weight-model.pt``."""
from __future__ import annotations

from typing import Any

import torch

from raysel.cost import CountedFlops, TrainingCost, forward_flops
from raysel.data.batches import TokenWindows
from raysel.data.sources import lm_splits
from raysel.inputs import DataSpec
from raysel.methods.base import RunContext
from raysel.methods.camels.algorithm import (TokenWeightModel, inner_loop, logits_of, meta_step, outer_loss, qa_nll,
                                             trainable_params)
from raysel.methods.camels.artifacts import (artifacts_dir, base_model_source, build_weight_model,
                                             check_same_tokenizer, encoder_layers, save_meta_train_cost,
                                             save_weight_model)
from raysel.methods.camels.params import WEIGHT_MODEL, CamelsParams
from raysel.methods.camels.qa import encode_documents, encode_qa
from raysel.methods.loop import fine_tune
from raysel.metrics import target_answer
from raysel import models


class MetaState:
    """What meta-training carries from step to step besides the weight model and its optimizer (and
    checkpoints with them): the adapted base, the documents seen since the start, the best validation."""

    def __init__(self, start: dict[str, torch.Tensor], device: torch.device):
        self.start, self.device = start, device
        self.current, self.docs_seen, self.best = start, 0, float("inf")

    def state_dict(self) -> dict[str, Any]:
        return {"current": {k: v.detach().cpu() for k, v in self.current.items()}, "docs_seen": self.docs_seen,
                "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = {k: v.to(self.device).requires_grad_(True) for k, v in state["current"].items()}
        self.docs_seen, self.best = state["docs_seen"], state["best"]


def meta_train(params: CamelsParams, run: RunContext, splits: dict[str, list[dict]]) -> dict[str, float]:
    device = run.device
    base, tokenizer = models.load_model(base_model_source(params, run), "causal_lm")
    base.to(device).eval()  # dropout off in the inner loop: the meta-gradient of a deterministic adaptation
    for p in base.parameters():
        p.requires_grad_(False)
    encoder_name = params.weight_encoder or run.model.name
    weight_model, weight_tokenizer = build_weight_model(encoder_name, layers=params.weight_encoder_layers)
    check_same_tokenizer(tokenizer, weight_tokenizer, f"weight encoder {encoder_name!r}")
    weight_model.to(device).train()
    locality = TokenWindows(tokenizer, lm_splits(DataSpec(name=params.locality_data))["train"], params.locality_tokens)
    carried = MetaState(trainable_params(base), device)
    val_batches = [_meta_batch(splits["val"], tokenizer, locality, params, torch.Generator().manual_seed(10_000 + i),
                               device) for i in range(params.val_batches)]
    with torch.no_grad():  # the same every validation: the start and the batches are fixed
        unadapted = {"val_qa_nll_unadapted": sum(float(qa_nll(logits_of(base, carried.start, questions),
                                                              questions["labels"]))
                                                 for _, questions, _ in val_batches) / len(val_batches)}
    target = artifacts_dir(params, run) / WEIGHT_MODEL
    target.parent.mkdir(parents=True, exist_ok=True)
    run.set_tags(**{"camels.weight_model": str(target), "camels.weight_encoder": encoder_name,
                    "camels.weight_encoder_layers": str(encoder_layers(weight_model.encoder)[1])})

    # the meta step's FLOPs (second order, through the inner loop): counted by torch on the first step,
    # scaled by the forward estimate of its batches on the others
    counted, cost = CountedFlops(), TrainingCost(weight_model)

    def micro_step(step: int, micro: int, _: torch.Generator) -> dict[str, float]:
        generator = torch.Generator().manual_seed((run.seed * 1_000_003 + step) * 101 + micro)
        documents, questions, unrelated = _meta_batch(splits["train"], tokenizer, locality, params, generator, device)
        (carried.current, losses), flops = counted.run(
            lambda: meta_step(base, weight_model, carried.current, documents, questions, unrelated,
                              inner_lr=params.inner_lr, sequential=params.sequential_update, c_kl=params.c_kl,
                              c_norm=params.c_norm, norm_p=params.norm_p, scale=1.0 / params.grad_acc_steps,
                              padded_length=params.padded_length),
            size=_meta_step_size(base, weight_model, documents, questions, unrelated))
        cost.add_flops(flops, len(documents["input_ids"]), int(documents["attention_mask"].sum()))
        carried.docs_seen += len(documents["input_ids"])
        if carried.docs_seen % params.reset_base_freq < len(documents["input_ids"]):  # crossed a multiple
            carried.current = carried.start
        return losses

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        evaluation = {**_validate(base, model, carried.start, val_batches, params), **unadapted}
        if evaluation["val_loss"] < carried.best:
            carried.best = evaluation["val_loss"]
            save_weight_model(model, encoder_name, target)
        return {**evaluation, "best_val_loss": carried.best}

    final = fine_tune(weight_model, params.loop("meta_train"), run, None, evaluate, micro_step=micro_step,
                      extra_state=carried, seed_dropout=False, cost=cost)
    save_meta_train_cost(target, cost.flops)
    run.log_artifact(target, "camels")
    return final


def _meta_step_size(base: torch.nn.Module, weight_model: TokenWeightModel, documents: dict, questions: dict,
                    unrelated: dict) -> float:
    """A number proportional to a meta step's work: the forward FLOP estimates of its batches."""
    def forward(model: torch.nn.Module, batch: dict) -> float:
        return forward_flops(model, *batch["input_ids"].shape)

    return (forward(weight_model, documents) + forward(base, documents) + forward(base, questions)
            + forward(base, unrelated))


def _meta_batch(documents: list[dict], tokenizer, locality: TokenWindows, params: CamelsParams,
                generator: torch.Generator, device: torch.device):
    """``update_batch_size`` documents, one of each one's questions (with its target answer), and unrelated text."""
    rows = torch.randperm(len(documents), generator=generator)[:params.update_batch_size].tolist()
    picked = [documents[i] for i in rows]
    pairs = []
    for doc in picked:
        qa = doc["questions"][int(torch.randint(len(doc["questions"]), (1,), generator=generator))]
        pairs.append((qa["question"], target_answer(qa["answers"], params.answer_scoring)))
    docs = encode_documents(tokenizer, [d["text"] for d in picked], params.max_doc_tokens)
    docs = {k: v.to(device) for k, v in docs.items() if k != "offset_mapping"}
    questions = {k: v.to(device) for k, v in encode_qa(tokenizer, pairs).items()}
    ids = locality.sample(params.update_batch_size, generator).to(device)
    return docs, questions, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _validate(base: torch.nn.Module, weight_model: TokenWeightModel, start: dict[str, torch.Tensor],
              batches: list, params: CamelsParams) -> dict[str, float]:
    """The outer loss on fixed validation batches, each adapted from the QA-tuned start."""
    was_training = weight_model.training
    weight_model.eval()
    totals: dict[str, float] = {}
    for documents, questions, unrelated in batches:
        with torch.no_grad():
            weights = weight_model(documents["input_ids"], documents["attention_mask"])
        adapted = inner_loop(base, start, documents, weights, params.inner_lr, sequential=params.sequential_update,
                             create_graph=False, padded_length=params.padded_length)
        with torch.no_grad():
            parts = outer_loss(base, start, adapted, questions, unrelated, weights, documents["attention_mask"],
                               c_kl=params.c_kl, c_norm=params.c_norm, norm_p=params.norm_p)
            real = documents["attention_mask"].bool()
            parts["weight_mean"] = weights[real].mean()
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
    weight_model.train(was_training)
    return {f"val_{k}": v for k, v in totals.items()}
