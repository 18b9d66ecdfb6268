"""The CaMeLS recipe (Hu et al., EMNLP 2023) in three phases, each one trial (arms of a sweep):

``phase: qa_tune`` — QA pre-tuning of the base LM (the spec's model) on the question → answer pairs of
the ``qa_train`` split, through the shared fine-tuning loop; the best validation checkpoint (answer NLL,
or F1) is saved as ``<artifacts>/qa-model`` in the sweep's shared directory.

``phase: meta_train`` — the weight model (encoder ``weight_encoder``, default the spec's model) learns
per-token loss weights: per batch of ``update_batch_size`` training documents, the QA-tuned base is
adapted by differentiable SGD steps on the weighted LM loss, and the outer loss (the adapted model's QA
NLL on the documents' questions + c_kl·KL on unrelated text + c_norm·weight norm) is backpropagated into
the weight model; Adam every ``grad_acc_steps`` batches. The base carries over between batches and is
reset every ``reset_base_freq`` documents. The best validation weight model → ``<artifacts>/weight-model.pt``.

``phase: evaluate`` — online adaptation: a seeded stream of ``downsample_to`` documents of each split in
``splits`` (val and test); the QA-tuned base is adapted with Adam at ``lr``, batch 1, one pass, under a
weighting (uniform, ssm, tfidf, camels), optionally light-tuned on QA (``qa_lt_final``), then answers the
stream's questions: ``{split}_f1``, ``{split}_em`` (exact), ``{split}_em_prefix`` (the reference's EM).

With several gold answers per question, ``answer_scoring`` picks the one trained on (QA pre-tuning, the
outer loss, light tuning, answer NLL) and the ones scored, in every phase: "shortest" (the reference's)
the shortest answer for both; "best" (SQuAD's) the first answer for training, the best of all for scores.
``loss_normalization`` "padded" divides the weighted document loss by B·(max_doc_tokens − 1) as the
reference does (its documents are padded to 1024 tokens) instead of averaging over the real tokens.

Artifacts are read from this sweep's shared directory, or from another sweep's with ``from_sweep``
(e.g. the evaluation sweep reads what ``tune_configs/camels_train.yaml`` trained).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import pydantic
import torch
from pydantic import Field

from raysel.data.batches import TokenWindows
from raysel.data.errors import DataError
from raysel.data.sources import lm_splits, qa_splits
from raysel.methods.base import Method, MethodFigure, MethodParams, RunContext, check_finite, shared_dir_of
from raysel.methods.camels.algorithm import (TokenWeightModel, inner_loop, lm_labels, logits_of, meta_step,
                                             outer_loss, padded_denominator, qa_nll, trainable_params,
                                             weighted_lm_loss)
from raysel.methods.camels.baselines import (TfidfScorer, apply_min_threshold, load_spacy, rule_based_spans,
                                             spacy_spans, span_weights, tfidf_corpus)
from raysel.methods.camels.qa import (answer_nll, encode_documents, encode_qa, generate_answers, question_pairs,
                                      sample_stream, score_answers)
from raysel.methods.collective import atomic_save
from raysel.methods.loop import LoopParams, fine_tune
from raysel.metrics import target_answer
from raysel.models import check_model, load_model
from raysel.inputs import DataSpec, ModelSpec

QA_MODEL, WEIGHT_MODEL = "qa-model", "weight-model.pt"


class CamelsParams(MethodParams):
    phase: Literal["qa_tune", "meta_train", "evaluate"] = "evaluate"
    artifacts: str = Field("camels", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # name of the trained models' folder
    from_sweep: str | None = None  # read the artifacts of this sweep directory instead of this sweep's
    base_model: str | None = None  # meta_train / evaluate: instead of the artifacts' QA-tuned model
    weight_model: str | None = None  # evaluate (camels): a weight-model.pt instead of the artifacts'
    max_doc_tokens: int = Field(256, gt=8)  # documents are truncated to this many tokens
    answer_scoring: Literal["shortest", "best"] = "shortest"  # the shortest answer trained on and scored; best: SQuAD's
    loss_normalization: Literal["tokens", "padded"] = "tokens"  # mean over real targets; padded: the reference's
    # qa_tune: the shared loop on question → answer pairs
    qa_lr: float = Field(1e-4, gt=0)
    qa_steps: int = Field(300, gt=0)
    qa_batch_size: int = Field(16, gt=0)
    qa_eval_every: int = Field(50, gt=0)
    qa_select: Literal["nll", "f1"] = "nll"  # the reference keeps the lowest NLL for small models
    qa_eval_questions: int = Field(256, gt=0)
    # meta_train
    weight_encoder: str | None = None  # weight model's encoder (default: the spec's model), the base's tokenizer
    update_batch_size: int = Field(6, gt=0)
    sequential_update: bool = True  # one SGD step per document (a tape of update_batch_size steps)
    inner_lr: float = Field(5e-4, gt=0)
    outer_lr: float = Field(1e-5, gt=0)
    grad_acc_steps: int = Field(4, gt=0)
    reset_base_freq: int = Field(24, gt=0)  # documents
    c_kl: float = Field(0.1, ge=0)
    c_norm: float = Field(0.0, ge=0)
    norm_p: float = Field(2.0, gt=0)
    outer_steps: int = Field(100, gt=0)  # Adam steps of the weight model
    val_every: int = Field(10, gt=0)  # outer steps between validations
    val_batches: int = Field(8, gt=0)  # fixed validation batches of update_batch_size documents
    locality_data: str = "pydocs"  # unrelated text for the KL term (any LM corpus raysel loads)
    locality_tokens: int = Field(64, gt=1)
    max_grad_norm: float | None = Field(None, gt=0)
    # evaluate
    weighting: Literal["uniform", "ssm", "tfidf", "camels"] = "uniform"
    lr: float = Field(2.5e-5, gt=0)  # Adam, batch 1, one pass over the stream
    downsample_to: int | None = Field(100, gt=0)  # documents per stream (None: the whole split)
    splits: list[Literal["val", "test"]] = ["val", "test"]
    min_threshold: float = Field(0.0, ge=0, lt=1)  # tfidf: zero weights below this quantile of the non-zero ones
    ssm_detector: Literal["auto", "spacy", "rules"] = "auto"  # auto: spaCy when en_core_web_sm is installed
    qa_lt_final: bool = False  # light QA re-tuning after adaptation (the uniform + qa_lt baseline)
    qa_lt_lr: float = Field(2.5e-5, gt=0)
    qa_lt_batch_size: int = Field(16, gt=0)
    qa_lt_eval_every: int = Field(10, gt=0)
    qa_lt_patience: int = Field(3, gt=0)
    qa_lt_max_steps: int = Field(100, gt=0)
    num_beams: int = Field(1, gt=0)  # 1: greedy decoding
    max_answer_tokens: int = Field(16, gt=0)

    @pydantic.model_validator(mode="after")
    def _check(self) -> "CamelsParams":
        if self.phase == "evaluate" and not self.splits:
            raise ValueError("splits: give val, test or both")
        if self.weight_model and self.weighting != "camels":
            raise ValueError(f"weight_model is read by weighting 'camels' only (this arm's is {self.weighting!r})")
        return self

    @property
    def padded_length(self) -> int | None:
        """The document length the loss's denominator assumes ("padded"), or None (the real targets)."""
        return self.max_doc_tokens if self.loss_normalization == "padded" else None


class Camels(Method):
    """CaMeLS: meta-learned per-token loss weights for online adaptation, and its baselines."""

    name: ClassVar[str] = "camels"
    Params: ClassVar[type[CamelsParams]] = CamelsParams
    max_workers: ClassVar[int | None] = 1  # each phase trains and adapts in one process

    def preflight(self, params: CamelsParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: the models and data load; another sweep's artifacts exist."""
        check_model(model.name, "causal_lm")
        qa_splits(data)
        if params.base_model:
            check_model(params.base_model, "causal_lm")
        if params.phase == "meta_train":
            check_model(params.weight_encoder or model.name, "causal_lm")
            lm_splits(DataSpec(name=params.locality_data))
        for path in self._needed(params):
            if not path.exists():
                raise DataError(f"camels: {path} does not exist; run the sweep that trains it first "
                                "(raysel sweep tune_configs/camels_train.yaml) or set base_model / weight_model")
        if params.phase == "evaluate" and params.ssm_detector == "spacy" and load_spacy() is None:
            raise DataError("camels: ssm_detector 'spacy' needs spaCy with en_core_web_sm installed "
                            "(pip install spacy && python -m spacy download en_core_web_sm); or use 'auto'/'rules'")

    def _needed(self, params: CamelsParams) -> list[Path]:
        """Another sweep's files this arm reads (this sweep's come from its earlier arms, later)."""
        paths = []
        if params.phase != "qa_tune" and params.base_model is None and params.from_sweep:
            paths.append(artifacts_dir(params, None) / QA_MODEL)
        if params.phase == "evaluate" and params.weighting == "camels":
            if params.weight_model:
                paths.append(Path(params.weight_model).expanduser())
            elif params.from_sweep:
                paths.append(artifacts_dir(params, None) / WEIGHT_MODEL)
        return paths

    def train_loop(self, params: CamelsParams, run: RunContext) -> dict[str, float]:
        splits = qa_splits(run.data)
        run.set_tags(**run_tags(params))
        if params.phase == "qa_tune":
            return qa_tune(params, run, splits)
        if params.phase == "meta_train":
            return meta_train(params, run, splits)
        return evaluate(params, run, splits)

    def report_figures(self, arms: list[Any], shared_dir: Path) -> dict[str, Any]:
        """For ``raysel report``: the learned token weights on a few validation documents, for every
        meta-training arm whose weight model is in the sweep's shared directory."""
        drawn: dict[str, Any] = {}
        for arm in arms:
            params = CamelsParams.model_validate(arm.params) if arm.method == self.name else None
            if params is None or params.phase != "meta_train":
                continue
            path = shared_dir / "camels" / params.artifacts / WEIGHT_MODEL
            if not path.is_file():
                continue
            weight_model, tokenizer = load_weight_model(path, torch.device("cpu"))
            documents = [d["text"] for d in qa_splits(arm.data)["val"][:4]]
            tokens, weights = token_weights(weight_model, tokenizer, documents, params.max_doc_tokens)
            drawn[f"{arm.name}-token-weights"] = MethodFigure(
                "token_weights", f"{arm.name}: learned token weights on validation documents",
                {"documents": tokens, "weights": weights})
        return drawn


def run_tags(params: CamelsParams) -> dict[str, str]:
    """The tags every phase's trial carries: the phase and the rules that change its numbers."""
    return {"camels.phase": params.phase, "camels.answer_scoring": params.answer_scoring,
            "camels.loss_normalization": params.loss_normalization}


# ---------------------------------------------------------------- where the trained models are
def artifacts_dir(params: CamelsParams, run: RunContext | None) -> Path:
    """``<shared>/camels/<artifacts>`` of this sweep (``run``) or of ``from_sweep``."""
    shared = shared_dir_of(Path(params.from_sweep).expanduser().resolve()) if params.from_sweep else run.shared_dir
    return shared / "camels" / params.artifacts


def base_model_source(params: CamelsParams, run: RunContext) -> str:
    if params.base_model:
        return params.base_model
    path = artifacts_dir(params, run) / QA_MODEL
    if not path.is_dir():
        raise DataError(f"camels: no QA-tuned model at {path}: a phase 'qa_tune' arm must run first "
                        "(list it in this arm's after:) or set from_sweep / base_model")
    return str(path)


def save_weight_model(weight_model: TokenWeightModel, encoder_name: str, path: Path) -> None:
    atomic_save({"encoder": encoder_name, "hidden_size": weight_model.head[0].in_features,
                 "head_size": weight_model.head[0].out_features, "beta": weight_model.softplus.beta,
                 "state_dict": {k: v.detach().cpu() for k, v in weight_model.state_dict().items()}}, path)


def build_weight_model(encoder_name: str, head_size: int = 128, beta: float = 3.0):
    """A fresh weight model on ``encoder_name``'s transformer (the LM head dropped), and its tokenizer."""
    lm, tokenizer = load_model(encoder_name, "causal_lm")
    encoder = lm.base_model
    return TokenWeightModel(encoder, encoder.config.hidden_size, head_size, beta), tokenizer


def load_weight_model(path: Path, device: torch.device):
    saved = torch.load(path, map_location="cpu", weights_only=False)
    weight_model, tokenizer = build_weight_model(saved["encoder"], saved["head_size"], saved["beta"])
    weight_model.load_state_dict(saved["state_dict"])
    return weight_model.to(device).eval(), tokenizer


def check_same_tokenizer(base_tokenizer, weight_tokenizer, what: str) -> None:
    if base_tokenizer.get_vocab() != weight_tokenizer.get_vocab():
        raise DataError(f"camels: the {what} and the base model tokenize differently; token weights need "
                        "one tokenizer (e.g. distilgpt2 for a gpt2-xl base)")


@torch.no_grad()
def token_weights(weight_model: TokenWeightModel, tokenizer, texts: list[str], max_tokens: int):
    """Per document its tokens (strings) and learned weights."""
    device = next(weight_model.parameters()).device
    docs = encode_documents(tokenizer, texts, max_tokens)
    weights = weight_model(docs["input_ids"].to(device), docs["attention_mask"].to(device)).cpu()
    tokens, values = [], []
    for i in range(len(texts)):
        n = int(docs["attention_mask"][i].sum())
        tokens.append([tokenizer.decode([t]) for t in docs["input_ids"][i, :n].tolist()])
        values.append(weights[i, :n].tolist())
    return tokens, values


# ---------------------------------------------------------------- phase 1: QA pre-tuning
def qa_tune(params: CamelsParams, run: RunContext, splits: dict[str, list[dict]]) -> dict[str, float]:
    model, tokenizer = load_model(run.model.name, "causal_lm")
    rule = params.answer_scoring
    train = [(q, target_answer(answers, rule)) for q, answers in question_pairs(splits["qa_train"])]
    val = question_pairs(splits["val"])[:params.qa_eval_questions]
    seen = question_pairs(splits["qa_train"])[:params.qa_eval_questions]
    target = artifacts_dir(params, run) / QA_MODEL
    best = _Best(params.qa_select == "nll")
    loop = LoopParams(lr=params.qa_lr, max_steps=params.qa_steps, batch_size=params.qa_batch_size,
                      eval_every=params.qa_eval_every, warmup_steps=0)

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
    final = fine_tune(model, loop, run, next_batch, evaluate, extra_state=best)
    run.log_artifact(target / "config.json", "qa-model")
    return final


class _Best:
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


def save_pretrained_atomic(model: torch.nn.Module, tokenizer, target: Path) -> None:
    """save_pretrained into a fresh folder, then swapped in: a reader never sees half a model."""
    fresh = target.with_name(target.name + ".tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    model.save_pretrained(fresh)
    tokenizer.save_pretrained(fresh)
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.replace(old)
    fresh.replace(target)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- phase 2: meta-training
def meta_train(params: CamelsParams, run: RunContext, splits: dict[str, list[dict]]) -> dict[str, float]:
    device = run.device
    base, tokenizer = load_model(base_model_source(params, run), "causal_lm")
    base.to(device).eval()  # dropout off in the inner loop: the meta-gradient of a deterministic adaptation
    for p in base.parameters():
        p.requires_grad_(False)
    encoder_name = params.weight_encoder or run.model.name
    weight_model, weight_tokenizer = build_weight_model(encoder_name)
    check_same_tokenizer(tokenizer, weight_tokenizer, f"weight encoder {encoder_name!r}")
    weight_model.to(device).train()
    optimizer = torch.optim.Adam(weight_model.parameters(), lr=params.outer_lr)
    locality = TokenWindows(tokenizer, lm_splits(DataSpec(name=params.locality_data))["train"], params.locality_tokens)
    start = trainable_params(base)
    current, step, docs_seen = start, 0, 0
    best, evaluation = float("inf"), {}
    state = run.restore()
    if state is not None:
        weight_model.load_state_dict(state["weight_model"])
        optimizer.load_state_dict(state["optimizer"])
        current = {k: v.to(device).requires_grad_(True) for k, v in state["current"].items()}
        step, docs_seen, best, evaluation = state["step"], state["docs_seen"], state["best"], state["evaluation"]
    val_batches = [_meta_batch(splits["val"], tokenizer, locality, params, torch.Generator().manual_seed(10_000 + i),
                               device) for i in range(params.val_batches)]
    with torch.no_grad():  # the same every validation: the start and the batches are fixed
        unadapted = {"val_qa_nll_unadapted": sum(float(qa_nll(logits_of(base, start, questions), questions["labels"]))
                                                 for _, questions, _ in val_batches) / len(val_batches)}
    target = artifacts_dir(params, run) / WEIGHT_MODEL
    target.parent.mkdir(parents=True, exist_ok=True)
    if state is None:
        evaluation = {**_validate(base, weight_model, start, val_batches, params), **unadapted}
        best = evaluation["val_loss"]
        save_weight_model(weight_model, encoder_name, target)
        run.report(0, **evaluation, best_val_loss=best)
    run.set_tags(**{"camels.weight_model": str(target), "camels.weight_encoder": encoder_name})
    if state is not None and "rng" in state:  # the weight model's dropout continues where it was
        torch.set_rng_state(state["rng"])
    while step < params.outer_steps:
        step += 1
        parts: dict[str, list[float]] = {}
        for micro in range(params.grad_acc_steps):
            generator = torch.Generator().manual_seed((run.seed * 1_000_003 + step) * 101 + micro)
            documents, questions, unrelated = _meta_batch(splits["train"], tokenizer, locality, params, generator,
                                                          device)
            current, losses = meta_step(base, weight_model, current, documents, questions, unrelated,
                                        inner_lr=params.inner_lr, sequential=params.sequential_update,
                                        c_kl=params.c_kl, c_norm=params.c_norm, norm_p=params.norm_p,
                                        scale=1.0 / params.grad_acc_steps, padded_length=params.padded_length)
            check_finite(losses["loss"], step, "outer loss")
            for k, v in losses.items():
                parts.setdefault(k, []).append(v)
            docs_seen += len(documents["input_ids"])
            if docs_seen % params.reset_base_freq < len(documents["input_ids"]):  # crossed a multiple
                current = start
        if params.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(weight_model.parameters(), params.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {f"train_{k}": sum(v) / len(v) for k, v in parts.items()}
        if step % params.val_every == 0 or step == params.outer_steps:
            evaluation = {**_validate(base, weight_model, start, val_batches, params), **unadapted}
            if evaluation["val_loss"] < best:
                best = evaluation["val_loss"]
                save_weight_model(weight_model, encoder_name, target)
            evaluation["best_val_loss"] = best
            metrics.update(evaluation)
            run.checkpoint({"weight_model": weight_model.state_dict(), "optimizer": optimizer.state_dict(),
                            "current": {k: v.detach().cpu() for k, v in current.items()}, "step": step,
                            "docs_seen": docs_seen, "best": best, "evaluation": evaluation,
                            "rng": torch.get_rng_state()})
        run.report(step, **metrics)
    run.log_artifact(target, "camels")
    return dict(evaluation)


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


# ---------------------------------------------------------------- phase 3: online-adaptation evaluation
def evaluate(params: CamelsParams, run: RunContext, splits: dict[str, list[dict]]) -> dict[str, float]:
    device = run.device
    source = base_model_source(params, run)
    base, tokenizer = load_model(source, "causal_lm")
    start_state = {k: v.clone() for k, v in base.state_dict().items()}
    weigh, detector = make_weigher(params, run, tokenizer, splits)
    run.set_tags(**{"camels.weighting": params.weighting, "camels.base_model": source,
                    **({"camels.ssm_detector": detector} if detector else {})})
    final: dict[str, float] = {}
    for split in params.splits:
        base.load_state_dict(start_state)
        base.to(device)
        stream = sample_stream(splits[split], params.downsample_to, run.seed)
        pairs = question_pairs(stream)
        before = _answer(base, tokenizer, pairs, params)
        losses = adapt(base, tokenizer, stream, weigh, params, device)
        if params.qa_lt_final:
            final[f"{split}_qa_lt_steps"] = float(light_tune(base, tokenizer, splits["qa_train"], params, run.seed))
        after = _answer(base, tokenizer, pairs, params)
        final.update({f"{split}_{k}": v for k, v in after["scores"].items()})
        final.update({f"{split}_{k}_unadapted": v for k, v in before["scores"].items()})
        final[f"{split}_adapt_loss"] = sum(losses) / max(len(losses), 1)
        final[f"{split}_documents"] = float(len(stream))
        final[f"{split}_questions"] = float(len(pairs))
        path = run.artifact_dir / f"{split}-answers.csv"
        _write_answers(path, pairs, before["predictions"], after["predictions"])
        run.log_artifact(path, "answers")
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
          params: CamelsParams, device: torch.device) -> list[float]:
    """One pass of Adam at ``lr`` over the stream, one document per step, weighted LM loss (weights
    computed without gradient; normalised per ``loss_normalization``). Dropout on, as in fine-tuning."""
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    model.train()
    losses = []
    for step, doc in enumerate(stream, 1):
        batch = encode_documents(tokenizer, [doc["text"]], params.max_doc_tokens)
        with torch.no_grad():
            weights = weigh(doc["text"], batch).to(device)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        loss = weighted_lm_loss(model(input_ids=ids, attention_mask=mask).logits, lm_labels(ids, mask), weights,
                                denominator=padded_denominator(1, params.padded_length))
        check_finite(float(loss.detach()), step, "adaptation loss")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
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
        path = Path(params.weight_model) if params.weight_model else artifacts_dir(params, run) / WEIGHT_MODEL
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


def light_tune(model: torch.nn.Module, tokenizer, documents: list[dict], params: CamelsParams, seed: int) -> int:
    """The uniform + qa_lt baseline's light QA re-tuning: Adam at ``qa_lt_lr`` on batches of QA-train pairs,
    early stopping on the F1 of held-out QA-train questions (patience ``qa_lt_patience`` evaluations);
    the best weights are kept. Returns the steps taken."""
    rule = params.answer_scoring
    pairs = question_pairs(documents)
    held_out, train = pairs[:64], [(q, target_answer(a, rule)) for q, a in pairs[64:]]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.qa_lt_lr)

    def f1() -> float:
        predictions = generate_answers(model, tokenizer, [q for q, _ in held_out],
                                       max_new_tokens=params.max_answer_tokens)
        return score_answers(predictions, [a for _, a in held_out], rule)["f1"]

    best, best_state, waited, step = f1(), {k: v.clone() for k, v in model.state_dict().items()}, 0, 0
    device = next(model.parameters()).device
    while step < params.qa_lt_max_steps and waited < params.qa_lt_patience:
        model.train()
        rows = torch.randint(len(train), (params.qa_lt_batch_size,), generator=generator).tolist()
        batch = {k: v.to(device) for k, v in encode_qa(tokenizer, [train[i] for i in rows]).items()}
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % params.qa_lt_eval_every == 0:
            score = f1()
            if score > best:
                best, best_state, waited = score, {k: v.clone() for k, v in model.state_dict().items()}, 0
            else:
                waited += 1
    model.load_state_dict(best_state)
    model.eval()
    return step


def _write_answers(path: Path, pairs: list[tuple[str, list[str]]], before: list[str], after: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answers", "prediction_unadapted", "prediction"])
        for (question, answers), b, a in zip(pairs, before, after):
            writer.writerow([question, "\\".join(answers), b, a])
