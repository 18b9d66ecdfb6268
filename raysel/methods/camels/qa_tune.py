"""CaMeLS phase 1, ``phase: qa_tune``: QA pre-tuning of the base LM on the question → answer pairs of
the ``qa_train`` split through the shared loop; the best validation checkpoint (answer NLL, or F1) is
saved as ``<artifacts>/qa-model``."""
from __future__ import annotations

from typing import Any

import torch

from raysel.methods.base import RunContext
from raysel.methods.camels.artifacts import artifacts_dir, save_pretrained_atomic
from raysel.methods.camels.params import QA_MODEL, CamelsParams
from raysel.methods.camels.qa import answer_nll, encode_qa, generate_answers, question_pairs, score_answers
from raysel.methods.loop import fine_tune
from raysel.metrics import target_answer
from raysel import models


def qa_tune(params: CamelsParams, run: RunContext, splits: dict[str, list[dict]]) -> dict[str, float]:
    model, tokenizer = models.load_model(run.model.name, "causal_lm")
    rule = params.answer_scoring
    train = [(q, target_answer(answers, rule)) for q, answers in question_pairs(splits["qa_train"])]
    val = question_pairs(splits["val"])[:params.qa_eval_questions]
    seen = question_pairs(splits["qa_train"])[:params.qa_eval_questions]
    target = artifacts_dir(params, run) / QA_MODEL
    best = Best(params.qa_select == "nll")

    def next_batch(step: int, micro: int, generator: torch.Generator):
        rows = torch.randint(len(train), (params.qa_batch_size,), generator=generator).tolist()
        return encode_qa(tokenizer, [train[i] for i in rows])

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        metrics = {"val_answer_nll": answer_nll(m, tokenizer, [(q, target_answer(a, rule)) for q, a in val])}
        for name, pairs in (("val", val), ("qa_train", seen)):
            predictions = generate_answers(m, tokenizer, [q for q, _ in pairs], max_new_tokens=params.max_answer_tokens)
            scores = score_answers(predictions, [a for _, a in pairs], rule)
            metrics.update({f"{name}_{k}": v for k, v in scores.items()})
        if best.improves(metrics["val_answer_nll"] if best.lower else metrics["val_f1"]):
            save_pretrained_atomic(m, tokenizer, target)
        return {**metrics, "best_val_answer_nll" if best.lower else "best_val_f1": best.value}

    run.set_tags(**{"camels.qa_model": str(target)})
    final = fine_tune(model, params.loop("qa_tune"), run, next_batch, evaluate, extra_state=best)
    run.log_artifact(target / "config.json", "qa-model")
    return final


class Best:
    """The best validation value so far (checkpointed with the loop)."""

    def __init__(self, lower: bool):
        self.lower, self.value = lower, float("inf") if lower else float("-inf")

    def improves(self, value: float) -> bool:
        better = value < self.value if self.lower else value > self.value
        if better:
            self.value = value
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
