"""The IGF recipe: objective set → IG pairs → secondary learner → filtered fine-tuning.

One trial, top to bottom:
1. Tokenise the data's splits once: ``train`` is the pool of candidate contexts (for IG and for
   fine-tuning), ``dev`` holds the objective-set articles, ``test`` the held-out test windows (the
   reference measured test perplexity on objective-set articles: bug 3).
2. IGF arms get the secondary learner from the sweep's shared cache when a trial with the same
   model, data and IG settings built it already; otherwise this trial builds it (IG of
   ``ig_contexts`` pool contexts from θ0, z-scored, the CNN fit keeping its best held-out epoch),
   saves it for the others and logs the IG pairs and the learner as artifacts.
3. Fine-tuning is the shared loop (raysel.methods.loop.fine_tune) — the same AdamW, schedule,
   clipping and evaluation as every other method. Each batch is ``batch_size`` contexts that passed
   the learner's threshold, all of them in the step (the reference's zero_grad per context let only
   the 16th reach the step: bug 1). ``threshold_mode: none`` is standard fine-tuning on the same
   stream of contexts.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import pydantic
import torch
from pydantic import Field

from raysel.data.errors import DataError
from raysel.data.sources import lm_splits
from raysel.methods.base import Method, MethodParams, RunContext
from raysel.methods.collective import distributed, gather, shared_file
from raysel.methods.igf.algorithm import (SecondaryLearner, fill_batch, information_gain, information_gain_flops,
                                          objective_and_pool, objective_perplexity, predict, rank_correlation,
                                          sample_context, threshold_at, train_secondary_learner, zscore)
from raysel.methods.loop import LoopParams, fine_tune, micro_batch_size
from raysel.metrics import perplexity
from raysel import models
from raysel.inputs import DataSpec, ModelSpec

LEARNER_FILE = "learner.pt"
PAIRS_FILE = "ig_pairs.pt"
MAX_CANDIDATES_PER_CONTEXT = 1000  # a batch that needs more than this is a threshold nothing passes


class IGFParams(MethodParams):
    """Every IGF hyperparameter; the seed's flag names are accepted as aliases (in brackets)."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    # contexts and the objective set
    context_len: int = Field(32, gt=1)  # tokens per context
    size_objective_set: int = Field(100, gt=0, alias="number")  # objective contexts, one per article [number]
    min_len: int = Field(1026, ge=0)  # an objective article must be longer than this many tokens
    trim: bool = True  # objective context: a random window (True) or the article's first tokens
    eval_examples: int = Field(256, gt=0)  # held-out test windows (from the data's test split)
    eval_batch_size: int = Field(64, gt=0)
    # information gain (one optimizer step from θ0 per context)
    ig_contexts: int = Field(1000, ge=8, alias="max_steps")  # IG samples collected [max_steps]
    ig_lr: float = Field(5e-5, gt=0)
    ig_step: Literal["adamw", "sgd"] = "adamw"
    ig_engine: Literal["exact", "first_order"] = "exact"  # first_order: lr·<∇L_obj, update> (approximate)
    ig_check_contexts: int = Field(32, ge=2)  # first_order: exact IG of this many, for the rank correlation
    ig_seed: int = 3  # the reference's seed for the objective set and IG contexts
    ig_chunk_size: int = Field(8, gt=0)  # contexts per batched (torch.func) IG evaluation
    ig_compile: bool = False  # exact engine: the objective forward through torch.compile (1.14x on CPU for
    # tiny-gpt2, after tens of seconds of compiling: for hundreds of contexts; equal up to float rounding)
    recopy_model: bool = True  # every IG step starts from θ0 (the only correct choice; False is refused)
    # secondary learner
    secondary_learner_batch_size: int = Field(128, gt=0)
    secondary_learner_max_epochs: int = Field(15, gt=0)
    learner_lr: float = Field(1e-5, gt=0)
    learner_heldout: int = Field(512, gt=0)  # the first pairs held out (at most a quarter)
    learner_seed: int = 42
    learner_eval_every: int | None = Field(None, gt=0, alias="eval_freq")  # held-out check every N learner
    # batches too (default: at each epoch's end only); the best check's weights are kept [eval_freq]
    # filtering
    threshold_mode: Literal["none", "constant", "shifting"] = "shifting"  # none = standard fine-tuning
    threshold: float = 1.0  # constant mode, in std units of IG
    threshold_start: float = 1.0  # shifting mode: before switch_step batches ...
    threshold_end: float = -1.0  # ... and from then on
    switch_step: int = Field(10, ge=0, alias="eval_interval")  # [eval_interval: the seed's switch point]
    # "ig": thresholds compare the learner's raw score, an estimate of z(IG) (the paper); "learner": its score
    # standardised over the IG contexts, so +1 passes about the learner's top sixth even when its estimates
    # have shrunk towards the mean (a weak learner's scores can all sit within ±0.1 and never reach +1)
    threshold_units: Literal["ig", "learner"] = "ig"
    # fine-tuning (the shared loop's parameters; max_batches is its max_steps)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)
    max_batches: int = Field(60, gt=0)
    batch_size: int = Field(16, gt=0)
    max_grad_norm: float | None = Field(3.0, gt=0)
    eval_every: int = Field(1, gt=0)  # test perplexity every N batches (Figure 1 plots every batch)
    eval_objective: bool = True  # also the objective set's perplexity (dev_perplexity) at each evaluation

    @pydantic.model_validator(mode="after")
    def _check(self) -> "IGFParams":
        if not self.recopy_model:
            raise ValueError("recopy_model: false is not supported: IG is always measured from θ0 "
                             "(one step per context, then the original weights back)")
        self.loop()  # the shared loop's own checks (warmup below max_batches, ...)
        return self

    def loop(self) -> LoopParams:
        """The shared loop's parameters: IGF keeps its own names and defaults for them (the seed's
        flags: max_batches is the loop's max_steps, as max_steps names the IG contexts)."""
        return LoopParams(lr=self.lr, weight_decay=self.weight_decay, adam_eps=self.adam_eps,
                          warmup_steps=self.warmup_steps, max_steps=self.max_batches, batch_size=self.batch_size,
                          max_grad_norm=self.max_grad_norm, eval_every=self.eval_every)

    def learner_key(self, model: ModelSpec, data: DataSpec) -> str:
        """What the IG pairs and the learner depend on (trials that share it share the learner)."""
        fields = ["context_len", "size_objective_set", "min_len", "trim", "ig_contexts", "ig_lr", "ig_step",
                  "ig_engine", "ig_compile", "ig_seed", "max_grad_norm", "secondary_learner_batch_size",
                  "secondary_learner_max_epochs", "learner_lr", "learner_heldout", "learner_seed",
                  "learner_eval_every"]
        blob = json.dumps({"model": model.model_dump(), "data": data.model_dump(),
                           **{f: getattr(self, f) for f in fields}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SelectionCost(NamedTuple):
    """Estimated FLOPs of IGF's selection: building the learner (the IG of its contexts and its fit; shared
    by the sweep's trials, but what one IGF run needs), then scoring every candidate the filter examines."""

    learner: float
    per_candidate: float

    def flops(self, examined: int) -> float:
        return self.learner + self.per_candidate * examined


class FilterStats:
    """Candidates examined and accepted so far (checkpointed with the loop, so a restart keeps counting),
    and with a learner what selecting them cost."""

    def __init__(self, selection: SelectionCost | None = None) -> None:
        self.selection = selection
        self.examined = self.accepted = 0
        self.step_examined = self.step_accepted = 0

    def add(self, examined: int, accepted: int) -> None:
        self.examined += examined
        self.accepted += accepted
        self.step_examined += examined
        self.step_accepted += accepted

    def step_metrics(self, threshold: float | None) -> dict[str, float]:
        metrics = {"acceptance_rate": self.step_accepted / max(1, self.step_examined),
                   "contexts_consumed": float(self.examined)}
        if self.selection is not None:
            metrics["selection_flops_est"] = self.selection.flops(self.examined)
        if threshold is not None:
            metrics["threshold"] = threshold
        self.step_examined = self.step_accepted = 0
        return metrics

    def state_dict(self) -> dict[str, int]:
        return {"examined": self.examined, "accepted": self.accepted}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.examined, self.accepted = state["examined"], state["accepted"]


class IGF(Method):
    """Information Gain Filtration: fine-tune only on contexts a learned filter expects to be informative."""

    name: ClassVar[str] = "igf"
    Params: ClassVar[type[IGFParams]] = IGFParams

    def preflight(self, params: IGFParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: the model loads and the data has enough long articles for the objective set."""
        models.check_model(model.name, "causal_lm")
        _, tokenizer = models.load_model(model.name, "causal_lm")
        _split_articles(tokenizer, data, params)

    def train_loop(self, params: IGFParams, run: RunContext) -> dict[str, float]:
        model, tokenizer = models.load_model(run.model.name, "causal_lm")
        model = model.to(run.device)
        objective_articles, pool, test_articles = _split_articles(tokenizer, run.data, params)
        objective, _ = objective_and_pool(objective_articles, size=params.size_objective_set,
                                          context_len=params.context_len, min_len=params.min_len, trim=params.trim,
                                          generator=torch.Generator().manual_seed(params.ig_seed))
        test = _fixed_windows(test_articles, params.context_len, params.eval_examples, seed=1)
        score, selection = None, None
        if params.threshold_mode != "none":
            learner, learner_metrics, learner_flops = self._learner(params, run, model, objective, pool)
            score = _scorer(learner, params.threshold_units, learner_metrics)  # no LM forward for a candidate
            selection = SelectionCost(learner_flops, learner.forward_flops(params.context_len))
        loop = params.loop()
        per_micro = micro_batch_size(loop, run.world_size)
        stats = FilterStats(selection)
        thresholds: dict[int, float | None] = {}

        def next_batch(step: int, micro: int, generator: torch.Generator):
            # step counts from 1; the threshold for batch `step` depends on the steps already taken
            thresholds[step] = threshold_at(params.threshold_mode, step - 1, value=params.threshold,
                                            start=params.threshold_start, end=params.threshold_end,
                                            switch_step=params.switch_step)
            candidates = (sample_context(pool, params.context_len, generator) for _ in itertools.count())
            try:
                ids, examined = fill_batch(candidates, score, thresholds[step], per_micro,
                                           max_candidates=MAX_CANDIDATES_PER_CONTEXT * per_micro)
            except ValueError as err:
                raise ValueError(f"{err}: the secondary learner's scores rarely reach this threshold (see the "
                                 "trial's learner_q_* metrics); lower threshold / threshold_start, or train the "
                                 "learner longer (secondary_learner_max_epochs, learner_lr)") from None
            stats.add(examined, len(ids))
            return {"input_ids": ids, "labels": ids}

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            metrics = {"test_perplexity": perplexity(m, test, params.eval_batch_size)}
            if params.eval_objective:
                metrics["dev_perplexity"] = objective_perplexity(m, objective.to(run.device), params.eval_batch_size)
            return metrics

        return fine_tune(model, loop, run, next_batch, evaluate,
                         step_metrics=lambda step: stats.step_metrics(thresholds.get(step)), extra_state=stats)

    # ------------------------------------------------------------ the shared learner
    def _learner(self, params: IGFParams, run: RunContext, model: torch.nn.Module, objective: torch.Tensor,
                 pool: list[torch.Tensor]) -> tuple[SecondaryLearner, dict[str, float], float]:
        """The secondary learner (built by this trial's workers or by an earlier trial), its metrics and
        the estimated FLOPs of building it.

        When the learner must be built, every rank computes the IG of its share of the contexts
        (contexts[rank::world_size]) and rank 0 assembles them and fits it."""
        directory = run.shared_dir / f"igf-learner-{params.learner_key(run.model, run.data)}"
        shared = shared_file(run, directory / LEARNER_FILE,
                             lambda: self._build_learner(params, run, model, objective, pool, directory),
                             map_location=run.device)
        saved = shared.contents
        if shared.built_here and run.rank == 0:
            run.log_artifact(directory / PAIRS_FILE, "igf")
            run.log_artifact(directory / LEARNER_FILE, "igf")
        learner = _new_learner(model, params.learner_seed)
        learner.load_state_dict(saved["state"])
        run.set_tags(**{"igf.learner": shared.source, "igf.learner_key": directory.name})
        run.report(0, learner_heldout_mse=saved["info"]["heldout_mse"],
                   learner_heldout_spearman=saved["info"]["heldout_spearman"], ig_mean=saved["ig_mean"],
                   ig_std=saved["ig_std"], ig_seconds=saved["ig_seconds"], ig_workers=saved["ig_workers"],
                   **saved["metrics"])
        return learner, saved["metrics"], self._learner_flops(params, model, learner)

    @staticmethod
    def _learner_flops(params: IGFParams, model: torch.nn.Module, learner: SecondaryLearner) -> float:
        """Estimated FLOPs of the IG pairs and the learner's fit (see information_gain_flops)."""
        ig = information_gain_flops(model, params.ig_contexts, params.size_objective_set, params.context_len,
                                    engine=params.ig_engine, check_contexts=params.ig_check_contexts)
        fit = learner.fit_flops(params.ig_contexts, params.context_len, heldout=params.learner_heldout,
                                batch_size=params.secondary_learner_batch_size,
                                epochs=params.secondary_learner_max_epochs, eval_every=params.learner_eval_every)
        return ig + fit

    def _build_learner(self, params: IGFParams, run: RunContext, model: torch.nn.Module, objective: torch.Tensor,
                       pool: list[torch.Tensor], directory: Path) -> dict[str, Any] | None:
        """IG of the contexts (every rank its share), then on rank 0 the learner fitted to it: what to save."""
        generator = torch.Generator().manual_seed(params.ig_seed)  # every rank draws the same contexts
        contexts = torch.stack([sample_context(pool, params.context_len, generator)
                                for _ in range(params.ig_contexts)])
        started = time.perf_counter()
        rank, world = (run.rank, run.world_size) if distributed(run) else (0, 1)
        share = information_gain(model, contexts[rank::world].to(run.device), objective.to(run.device),
                                 lr=params.ig_lr, step=params.ig_step, max_grad_norm=params.max_grad_norm,
                                 engine=params.ig_engine, chunk_size=params.ig_chunk_size,
                                 compile=params.ig_compile).cpu()
        ig = _interleave(gather(run, share), len(contexts))
        ig_seconds = time.perf_counter() - started
        if rank != 0:
            return None
        check = _first_order_check(params, run, model, contexts, objective, ig)
        return self._fit(params, run, model, objective, contexts, ig, ig_seconds, world, directory, check)

    def _fit(self, params: IGFParams, run: RunContext, model: torch.nn.Module, objective: torch.Tensor,
             contexts: torch.Tensor, ig: torch.Tensor, ig_seconds: float, world: int,
             directory: Path, check: dict[str, float]) -> dict[str, Any]:
        """The secondary learner fitted to the IG z-scores (and the pairs saved beside it): what to save."""
        z, mean, std = zscore(ig)
        learner = _new_learner(model, params.learner_seed)
        state, info = train_secondary_learner(learner, contexts.to(run.device), z.float(),
                                              heldout=params.learner_heldout, lr=params.learner_lr,
                                              batch_size=params.secondary_learner_batch_size,
                                              epochs=params.secondary_learner_max_epochs,
                                              eval_every=params.learner_eval_every, seed=params.learner_seed)
        q = predict(learner, contexts.to(run.device)).double().cpu()  # the scores thresholds will see
        q_stats = {"learner_q_mean": float(q.mean()), "learner_q_std": float(q.std()),
                   "learner_q_above_1": float((q >= 1).double().mean()),
                   "learner_q_above_minus_1": float((q >= -1).double().mean())}
        torch.save({"contexts": contexts, "ig": ig, "z": z, "q": q, "objective": objective.cpu()},
                   directory / PAIRS_FILE)
        return {"state": {k: v.cpu() for k, v in state.items()}, "info": info, "ig_mean": mean, "ig_std": std,
                "ig_seconds": ig_seconds, "ig_workers": world, "metrics": {**q_stats, **check}}


def _first_order_check(params: IGFParams, run: RunContext, model: torch.nn.Module, contexts: torch.Tensor,
                       objective: torch.Tensor, ig: torch.Tensor) -> dict[str, float]:
    """With the first-order engine: its Spearman correlation with exact IG on the first contexts."""
    if params.ig_engine != "first_order":
        return {}
    sample = contexts[:params.ig_check_contexts].to(run.device)
    exact = information_gain(model, sample, objective.to(run.device), lr=params.ig_lr, step=params.ig_step,
                             max_grad_norm=params.max_grad_norm, engine="exact", chunk_size=params.ig_chunk_size)
    return {"ig_first_order_spearman": rank_correlation(ig[:len(sample)], exact.cpu())}


def _interleave(shares: list[torch.Tensor], total: int) -> torch.Tensor:
    """Reassemble values computed as ``items[rank::world_size]`` (rank order) into the items' order."""
    out = torch.empty(total, dtype=shares[0].dtype)
    for rank, part in enumerate(shares):
        out[rank::len(shares)] = part
    return out


def _new_learner(model: torch.nn.Module, seed: int) -> SecondaryLearner:
    """A learner with seeded initial weights (and the caller's random state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SecondaryLearner.from_model(model)


def _scorer(learner: SecondaryLearner, units: str, learner_metrics: dict[str, float]):
    """The score a candidate's threshold is compared with (see IGFParams.threshold_units)."""
    if units == "learner":
        mean, std = learner_metrics["learner_q_mean"], max(learner_metrics["learner_q_std"], 1e-12)
        return lambda ids: (predict(learner, ids) - mean) / std
    return lambda ids: predict(learner, ids)


def _split_articles(tokenizer, data: DataSpec, params: IGFParams):
    """Token arrays of the objective articles (dev split), the candidate pool (train) and the test
    articles; a DataError naming the numbers when the objective set cannot be filled."""
    splits = lm_splits(data)
    tokens = {name: [torch.tensor(ids, dtype=torch.long)
                     for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]
              for name, texts in splits.items()}
    long_enough = sum(len(a) > params.min_len and len(a) >= params.context_len for a in tokens["dev"])
    if long_enough <= params.size_objective_set:  # objective_and_pool keeps at least one article back
        raise DataError(f"igf: the dev split of data {data.name!r} has {long_enough} articles longer than "
                        f"min_len={params.min_len} tokens; size_objective_set={params.size_objective_set} needs "
                        "more than that many (one context each); lower min_len or size_objective_set")
    pool = [a for a in tokens["train"] if len(a) >= params.context_len]
    test = [a for a in tokens["test"] if len(a) >= params.context_len]
    for name, found in (("train", pool), ("test", test)):
        if not found:
            raise DataError(f"igf: no article of the {name} split of data {data.name!r} holds "
                            f"context_len={params.context_len} tokens")
    dev = [a for a in tokens["dev"] if len(a) > params.min_len and len(a) >= params.context_len]
    return dev, pool, test


def _fixed_windows(articles: list[torch.Tensor], context_len: int, n: int, seed: int) -> torch.Tensor:
    """``n`` held-out test windows, the same for every trial (a fixed generator)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([sample_context(articles, context_len, generator) for _ in range(n)])
