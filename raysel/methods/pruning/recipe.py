"""The pruning recipe: phase 1 scores the training examples, phase 2 fine-tunes on a subset.

``phase: score`` — one scoring run (an arm on the paper's six seeds makes the S parallel runs):
``epochs`` epochs over the training split in the fixed order ``randperm(N)`` of the run's seed,
recording for every example the outcome of its own training forward pass (dropout on, before that
step's update; no extra pass). The records go to the sweep's shared directory (and the trial's
artifacts), under ``records``.

``phase: train`` — fine-tuning from scratch on a subset chosen from the S runs' records: ``full``,
``remove`` (drop every example whose H-score is in ``remove_h``; default the winning ticket {0, S}),
or the equal-size baselines ``random`` (the first examples of the run's order) and ``ambiguous`` (the
most variable, Dataset Cartography), whose size is that of the ``remove_h`` subset. Its order is the
run's permutation minus the removed examples; an epoch is ``ceil(subset / batch_size)`` steps.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import pydantic
import torch
from pydantic import Field

from raysel.cost import TrainingCost
from raysel.data.errors import DataError
from raysel.methods.base import Method, MethodFigure, RunContext
from raysel.methods.collective import atomic_save
from raysel.methods.loop import LoopParams, fine_tune
from raysel.methods.pruning.algorithm import (ambiguous_subset, cartography, el2n_scores, forgetting_events,
                                              h_scores, keep_mask, ordered_subset, permutation, random_subset,
                                              record_step, winning_ticket)
from raysel.methods.standard import Standard, StandardParams, prepare
from raysel.inputs import DataSpec, ModelSpec

SCORING_SEEDS = [342, 4827, 1215, 98, 8128, 828]  # the reference's phase-1 seeds
RECORDS_DIR = "pruning"  # under the sweep's shared directory


class PruningParams(StandardParams):
    """The standard classification parameters (the loop counts ``epochs``, not max_steps) and pruning's."""

    task: Literal["classification", "prompt"] = "classification"
    phase: Literal["score", "train"] = "train"  # 1: scoring runs; 2: a subset
    epochs: int = Field(3, gt=0)  # E: passes over the (sub)set, in the run's fixed order
    max_steps: int | None = None  # derived: epochs × ceil(subset / batch_size); leave unset
    eval_every: int | None = Field(None, gt=0)  # None: at the end of every epoch
    records: str = Field("scores", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the scoring runs' shared name
    score_runs: int = Field(6, ge=2)  # phase train: S, the scoring runs it waits for
    subset: Literal["full", "remove", "random", "ambiguous"] = "full"
    remove_h: list[int] | None = None  # H values removed (remove), or whose removal sets the size (baselines)
    el2n_epochs: int = Field(1, gt=0)  # EL2N: averaged over the runs' first epochs

    @pydantic.model_validator(mode="after")
    def _check_schedule(self) -> "PruningParams":  # replaces the loop's: max_steps is derived here
        if self.max_steps is not None:
            raise ValueError("pruning trains for `epochs` passes over its (sub)set; set epochs, not max_steps")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if self.remove_h is not None:
            outside = [h for h in self.remove_h if not 0 <= h <= self.score_runs]
            if outside or not self.remove_h:
                raise ValueError(f"remove_h {self.remove_h}: give H values in 0..score_runs ({self.score_runs})")
            if len(set(self.remove_h)) == self.score_runs + 1:
                raise ValueError(f"remove_h {self.remove_h} removes every H value: nothing would be left")
        if self.phase == "score" and (self.subset != "full" or self.remove_h is not None):
            raise ValueError("phase 'score' trains on the full split; subset and remove_h are for phase 'train'")
        return self

    def loop(self, steps_per_epoch: int) -> LoopParams:  # type: ignore[override]
        """The shared loop's parameters for ``epochs`` passes of ``steps_per_epoch`` steps (validated:
        e.g. warmup_steps below the steps this makes)."""
        return super().loop(max_steps=self.epochs * steps_per_epoch, eval_every=self.eval_every or steps_per_epoch)

    @property
    def removal(self) -> tuple[int, ...]:
        return tuple(self.remove_h) if self.remove_h is not None else winning_ticket(self.score_runs)


@dataclass
class Records:
    """S scoring runs' training-time records, each [S, E, N], and what they were taken on."""

    seeds: list[int]
    correct: torch.Tensor
    gold_prob: torch.Tensor
    el2n: torch.Tensor
    examples_digest: str
    train_flops: float | None = None  # the scoring runs' training FLOPs together (None: records that predate it)

    def scores(self, el2n_epochs: int = 1) -> pd.DataFrame:
        """One row per training example: H and the related scores."""
        return pd.DataFrame({"h": h_scores(self.correct).numpy(),
                             **{k: v.numpy() for k, v in cartography(self.gold_prob, self.correct).items()},
                             "forgetting": forgetting_events(self.correct).numpy(),
                             "el2n": el2n_scores(self.el2n, el2n_epochs).numpy()})


def records_dir(shared_dir: Path, name: str) -> Path:
    return shared_dir / RECORDS_DIR / name


def load_records(directory: Path, runs: int | None = None) -> Records:
    """The scoring runs' records in ``directory``; a clear error when there are not ``runs`` of them."""
    files = sorted(directory.glob("seed-*.pt")) if directory.is_dir() else []
    if not files or (runs is not None and len(files) != runs):
        found = ", ".join(f.stem for f in files) or "none"
        raise DataError(f"pruning: {runs or 'some'} scoring runs' records expected in {directory}, found {found}; "
                        "the phase 'score' arm (same records name) must run first: list it in this arm's after:")
    runs_ = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    digests = {r["examples_digest"] for r in runs_}
    shapes = {tuple(r["correct"].shape) for r in runs_}
    if len(digests) > 1 or len(shapes) > 1:
        raise DataError(f"pruning: the records in {directory} come from different training sets or epochs")
    return Records(seeds=[r["seed"] for r in runs_], correct=torch.stack([r["correct"] for r in runs_]),
                   gold_prob=torch.stack([r["gold_prob"] for r in runs_]),
                   el2n=torch.stack([r["el2n"] for r in runs_]), examples_digest=digests.pop(),
                   train_flops=(sum(r["train_flops"] for r in runs_) if all("train_flops" in r for r in runs_)
                                else None))


class Recorder:
    """Per (epoch, example) the outcome of its training forward pass; checkpointed with the model."""

    def __init__(self, epochs: int, n: int):
        self.epoch = 0
        self.correct = torch.zeros(epochs, n, dtype=torch.bool)
        self.gold_prob = torch.zeros(epochs, n)
        self.el2n = torch.zeros(epochs, n)
        self.seen = torch.zeros(epochs, n, dtype=torch.int32)

    def add(self, ids: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        correct, gold, el2n = (t.cpu() for t in record_step(logits, labels))
        ids = ids.cpu()
        self.correct[self.epoch, ids] = correct
        self.gold_prob[self.epoch, ids] = gold
        self.el2n[self.epoch, ids] = el2n
        self.seen[self.epoch, ids] += 1

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("epoch", "correct", "gold_prob", "el2n", "seen")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Recording(torch.nn.Module):
    """The model, noting each training forward pass's logits for the batch's ``example_ids``."""

    def __init__(self, model: torch.nn.Module, recorder: Recorder):
        super().__init__()
        self.model, self.recorder = model, recorder

    def forward(self, example_ids: torch.Tensor | None = None, **batch: torch.Tensor):
        out = self.model(**batch)
        if self.training and example_ids is not None:
            self.recorder.add(example_ids, out.logits, batch["labels"])
        return out


class Pruning(Method):
    """Dataset pruning by H-score: scoring runs (phase score), then fine-tuning on subsets (phase train)."""

    name: ClassVar[str] = "pruning"
    Params: ClassVar[type[PruningParams]] = PruningParams
    max_workers: ClassVar[int | None] = 1  # it records every example's training pass in one process

    def preflight(self, params: PruningParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: the model and the data load (the records come from the score arm later)."""
        if data.k:
            raise DataError("pruning scores the full training split: leave data.k unset")
        Standard().preflight(params, model, data, seeds[:1])

    def train_loop(self, params: PruningParams, run: RunContext) -> dict[str, float]:
        """One scoring run (phase score) or one fine-tuning run on a subset (phase train)."""
        task = prepare(params, run)
        examples = task.examples
        digest = _digest(examples.encoded, examples.labels, run.model.name)
        n = len(examples)
        order = permutation(n, run.seed)
        selection: dict[str, float] = {}
        if params.phase == "score":  # every example, every epoch, its training pass recorded
            recorder: Recorder | None = Recorder(params.epochs, n)
            rows, model, info = order, Recording(task.model, recorder), {}
        else:
            recorder, model = None, task.model
            rows, info, selection = self._subset(params, run, order, digest)
        cost = TrainingCost(model)  # the loop's count; a scoring run's goes into its record
        steps_per_epoch = math.ceil(len(rows) / params.batch_size)
        loop = params.loop(steps_per_epoch)
        per_micro = params.batch_size // params.grad_accum

        def next_batch(step: int, micro: int, generator: torch.Generator):
            epoch, index = divmod(step - 1, steps_per_epoch)
            start = index * params.batch_size + micro * per_micro
            ids = rows[start:min(start + per_micro, (index + 1) * params.batch_size)]
            if len(ids) == 0:
                return None
            batch = examples.batch(ids.tolist())
            if recorder is not None:
                recorder.epoch = epoch
                batch["example_ids"] = ids
            return batch

        run.set_tags(**{"pruning.phase": params.phase, "pruning.steps_per_epoch": str(steps_per_epoch),
                        **{f"pruning.{k}": str(v) for k, v in info.items()}})
        final = fine_tune(model, loop, run, next_batch, task.evaluate, extra_state=recorder, cost=cost)
        if recorder is not None:
            final.update(self._save_records(recorder, params, run, digest, cost.flops))
        return {**final, **{k: float(v) for k, v in info.items() if isinstance(v, (int, float))}, **selection}

    def report_figures(self, arms: list[Any], shared_dir: Path) -> dict[str, Any]:
        """For ``raysel report``: per scoring arm its H histogram and cartography map and its
        per-example scores (``<arm>-scores.csv``), from the records in the sweep's shared directory."""
        drawn: dict[str, Any] = {}
        for arm in arms:
            params = PruningParams.model_validate(arm.params) if arm.method == self.name else None
            directory = records_dir(shared_dir, params.records) if params else None
            if params is None or params.phase != "score" or not any(directory.glob("seed-*.pt")):
                continue
            records = load_records(directory)
            scores = records.scores(params.el2n_epochs)
            runs = len(records.seeds)
            drawn[f"{arm.name}-scores"] = scores.rename_axis("example")
            drawn[f"{arm.name}-h-histogram"] = MethodFigure(
                "h_histogram", f"{arm.name}: H-scores of {len(scores)} training examples ({runs} runs × "
                f"{records.correct.shape[1]} epochs)",
                {"h": scores["h"].to_numpy(), "runs": runs, "removed": winning_ticket(runs)})
            drawn[f"{arm.name}-cartography"] = MethodFigure(
                "cartography_map", f"{arm.name}: data map of the training set", {"scores": scores})
        return drawn

    def _subset(self, params: PruningParams, run: RunContext, order: torch.Tensor,
                digest: str) -> tuple[torch.Tensor, dict[str, Any], dict[str, float]]:
        """The phase-2 examples in training order, numbers about them, and what choosing them cost: the
        scoring runs' training FLOPs for subsets chosen by their scores (remove, ambiguous); none for
        full and random (random takes the ticket's size, which needs no scoring run in principle)."""
        n = len(order)
        if params.subset == "full":
            return order, {"subset_size": n, "subset_percent": 100.0}, {}
        records = load_records(records_dir(run.shared_dir, params.records), params.score_runs)
        if records.examples_digest != digest:
            raise DataError(f"pruning: the records {params.records!r} were taken on another training set or "
                            "model than this trial's; score and train arms need the same model and data")
        keep = keep_mask(h_scores(records.correct), params.removal)
        size = int(keep.sum())
        if params.subset == "remove":
            rows = ordered_subset(order, keep)
        elif params.subset == "random":
            rows = random_subset(order, size)
        else:
            rows = ambiguous_subset(cartography(records.gold_prob, records.correct)["variability"], order, size)
        if len(rows) == 0:
            raise DataError(f"pruning: removing H in {list(params.removal)} leaves no example")
        info = {"subset_size": len(rows), "subset_percent": 100.0 * len(rows) / n,
                "removed_h": ",".join(map(str, params.removal))}
        scored = params.subset in ("remove", "ambiguous") and records.train_flops is not None
        return rows, info, ({"selection_flops_est": records.train_flops} if scored else {})

    def _save_records(self, recorder: Recorder, params: PruningParams, run: RunContext,
                      digest: str, train_flops: float) -> dict[str, float]:
        if not bool((recorder.seen == 1).all()):
            raise RuntimeError("pruning: not every example was recorded exactly once per epoch")
        record = {"seed": run.seed, "examples_digest": digest, "model": run.model.name, "train_flops": train_flops,
                  **{k: getattr(recorder, k) for k in ("correct", "gold_prob", "el2n")}}
        local = run.artifact_dir / f"seed-{run.seed}.pt"
        torch.save(record, local)
        run.log_artifact(local, "pruning")
        shared = records_dir(run.shared_dir, params.records)
        shared.mkdir(parents=True, exist_ok=True)
        atomic_save(record, shared / local.name)
        always = recorder.correct.all(0).float().mean()
        return {"train_accuracy_last_epoch": float(recorder.correct[-1].float().mean()),
                "correct_every_epoch_percent": 100.0 * float(always)}


def _digest(encoded: list[list[int]], labels: torch.Tensor, model_name: str) -> str:
    """What the records depend on: the tokenised training split, its labels, the model."""
    blob = hashlib.sha256(model_name.encode())
    for ids in encoded:
        blob.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes() + b"|")
    blob.update(labels.numpy().tobytes())
    return blob.hexdigest()[:16]
