"""The OPF recipe: standard fine-tuning in which the most important matrices train in MPO form.

At the start of the scheduled epochs (all at epoch 0 when ``split_num`` is 1) the empirical Fisher of
the matrices not yet decomposed is measured over one pass of the training data (dropout on, each
gradient clipped on its own, as the reference does), the ``top_n // split_num`` best layers of each
matrix of each weight type are decomposed exactly (MPOLinear, cores in the reference's balanced
gauge), and the optimizer is
rebuilt so that the new cores train, at ``mpo_lr`` (the reference built it once, before decomposing:
its cores never trained). After training every MPO layer is multiplied back into a plain layer and
the model is saved as an ordinary transformers checkpoint, whose inference costs what the original
model's does. An epoch is ``ceil(train_size / batch_size)`` optimizer steps.
"""
from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Literal

import pydantic
import torch
from pydantic import Field

from raysel.data.errors import DataError
from raysel.data.sources import classification_splits
from raysel.methods.base import Method, RunContext
from raysel.methods.loop import eval_mode, fine_tune
from raysel.methods.opf.algorithm import (WEIGHT_TYPES, MPOLinear, auto_shapes, decompose, decomposition_rounds,
                                          fisher_scores, layer_dims, matrix_candidates, merge_all, select_top)
from raysel.methods.standard import MODEL_TASK, Standard, StandardParams, prepare
from raysel import models
from raysel.models import ModelError
from raysel.inputs import DataSpec, ModelSpec


class MPOShape(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    in_shape: list[int] = Field(min_length=1, alias="in")  # factors of in_features
    out_shape: list[int] = Field(min_length=1, alias="out")  # factors of out_features


class OPFParams(StandardParams):
    """The standard method's parameters (task, data, loop) and OPF's: what to decompose, when, how."""

    task: Literal["causal_lm", "classification", "prompt"] = "classification"
    weight_types: list[str] = Field(default_factory=lambda: list(WEIGHT_TYPES), min_length=1)
    top_n: int = Field(3, ge=0)  # the reference's --topN: layers per weight type to over-parameterize
    split_num: int = Field(1, ge=1)  # 1: static selection; s: top_n // s more every ceil(epochs / s) epochs
    mpo_lr: float = Field(2.8e-6, gt=0)  # the cores' learning rate (the rest trains at lr)
    middle_cores: int = Field(13, ge=0)  # automatic shapes [a, 1 × middle, b] (BERT-base: 8.88x)
    shapes: dict[str, MPOShape] = Field(default_factory=dict)  # per weight type, instead of automatic
    gauge: Literal["balanced", "left", "centre"] = "balanced"  # where the cores' norm sits (mpo_decompose)
    mpo_mode: Literal["contract", "cores"] = "contract"  # MPOLinear's forward (see bench/opf.py)
    selection: Literal["per_matrix", "per_layer"] = "per_matrix"  # per_layer: a layer's matrices go together
    fisher_max_grad_norm: float | None = Field(1.0, gt=0)
    fisher_clip: Literal["per_parameter", "global"] = "per_parameter"  # each matrix's gradient clipped alone
    fisher_dropout: bool = True  # the reference scores in train mode (seeded from the trial's seed)
    save_merged: bool = True  # save (and log) the merged plain checkpoint

    @pydantic.model_validator(mode="after")
    def _check_opf(self) -> "OPFParams":
        unknown = sorted(set(self.weight_types) - set(WEIGHT_TYPES))
        if unknown:
            raise ValueError(f"weight_types {unknown}: choose from {', '.join(WEIGHT_TYPES)}")
        if self.top_n % self.split_num:
            raise ValueError(f"top_n ({self.top_n}) must be divisible by split_num ({self.split_num})")
        extra = sorted(set(self.shapes) - set(self.weight_types))
        if extra:
            raise ValueError(f"shapes for {extra}, which are not in weight_types {self.weight_types}")
        return self


class OPF(Method):
    """Over-parameterized fine-tuning (MPO decomposition of the chosen matrices, merged back after)."""

    name: ClassVar[str] = "opf"
    Params: ClassVar[type[OPFParams]] = OPFParams
    max_workers: ClassVar[int | None] = 1  # it changes the model while it trains

    def preflight(self, params: OPFParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: model and data load; the weight types exist; given shapes fit their matrices;
        the epochs that max_steps makes allow split_num decomposition rounds (classification)."""
        Standard().preflight(params, model, data, seeds)
        if params.task != "causal_lm":
            for seed in seeds if data.k else seeds[:1]:
                epochs = math.ceil(params.max_steps / math.ceil(len(classification_splits(data, seed=seed).train)
                                                                / params.batch_size))
                try:
                    decomposition_rounds(params.top_n, params.split_num, epochs)
                except ValueError as err:
                    raise DataError(f"opf (seed {seed}): {err}; max_steps {params.max_steps} is {epochs} "
                                    "epoch(s) of this training set") from None
        loaded, _ = models.load_model(model.name, MODEL_TASK[params.task], num_labels=2)
        candidates = matrix_candidates(loaded, params.weight_types)
        for kind, shape in params.shapes.items():
            name = next(iter(candidates[kind].values()))[0]
            rows, cols = layer_dims(loaded.get_submodule(name))
            if math.prod(shape.in_shape) != rows or math.prod(shape.out_shape) != cols:
                raise ModelError(f"shapes.{kind}: in {shape.in_shape} × out {shape.out_shape} must multiply to "
                                 f"{rows} × {cols} ({name})")

    def train_loop(self, params: OPFParams, run: RunContext) -> dict[str, float]:
        task = prepare(params, run)
        model = task.model
        steps_per_epoch = math.ceil(task.train_size / params.batch_size)
        epochs = math.ceil(params.max_steps / steps_per_epoch)
        rounds = decomposition_rounds(params.top_n, params.split_num, epochs)
        candidates = matrix_candidates(model, params.weight_types)
        shape_of = _shapes(model, params, candidates)
        done = Decomposed(model, shape_of, params)

        def before_step(step: int) -> bool:
            epoch, first = divmod(step - 1, steps_per_epoch)
            names = [n for n in shape_of if n not in done.names]
            if first != 0 or epoch not in rounds or not names:
                return False
            started = time.perf_counter()
            with torch.enable_grad():
                scores = fisher_scores(model, ({k: v.to(run.device) for k, v in b.items()}
                                               for b in task.one_pass(params.batch_size)),
                                       names, max_grad_norm=params.fisher_max_grad_norm, clip=params.fisher_clip,
                                       dropout=params.fisher_dropout, seed=run.seed * 1000 + epoch)
            chosen = select_top(candidates, scores, rounds[epoch], exclude=done.names, selection=params.selection)
            done.add(chosen)
            print(f"opf: epoch {epoch}: decomposed {len(chosen)} matrices "
                  f"({time.perf_counter() - started:.1f} s with the Fisher pass)", flush=True)
            return bool(chosen)

        def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
            cores = [p for mod in m.modules() if isinstance(mod, MPOLinear) for p in mod.cores]
            core_ids = {id(p) for p in cores}
            rest = [p for p in m.parameters() if id(p) not in core_ids]
            return [{"params": rest, "lr": params.lr}, {"params": cores, "lr": params.mpo_lr}]

        def step_metrics(step: int) -> dict[str, float]:
            return {"mpo_matrices": float(len(done.names)), "mpo_parameters": float(done.mpo_parameters())}

        run.set_tags(**{"opf.rounds": ",".join(f"{e}:{n}" for e, n in sorted(rounds.items())),
                        "opf.steps_per_epoch": str(steps_per_epoch)})
        final = fine_tune(model, params.loop(), run, task.next_batch, task.evaluate, step_metrics=step_metrics,
                          extra_state=done, param_groups=groups, before_step=before_step, offer_model=False)
        final.update(self._merge(model, task, params, run, done))
        run.offer_model(model)  # merged back: a plain checkpoint of the original architecture
        run.set_tags(**{"opf.decomposed": ",".join(done.names)[:4000]})
        return final

    def _merge(self, model: torch.nn.Module, task, params: OPFParams, run: RunContext,
               done: "Decomposed") -> dict[str, float]:
        """Merge back; check the outputs did not move; time inference against the original model."""
        batch = {k: v.to(run.device) for k, v in next(task.one_pass(min(16, params.batch_size))).items()}
        with torch.no_grad(), eval_mode(model):
            before = model(**batch).logits
            ratio = done.mpo_parameters() / max(1.0, done.dense_parameters())
            merged = merge_all(model)
            after = model(**batch).logits
        metrics = {"mpo_matrices": float(merged), "over_parameterization": ratio,
                   "merge_max_abs_diff": float((after - before).abs().max())}
        original = prepare(params, run).model.to(run.device)
        merged_s, original_s = _latency(model, batch), _latency(original, batch)
        metrics.update(latency_ms_merged=1e3 * merged_s, latency_ms_original=1e3 * original_s,
                       latency_ratio_merged_vs_original=merged_s / original_s)
        if params.save_merged:
            out = run.artifact_dir / "merged"
            model.save_pretrained(out)
            for path in sorted(out.iterdir()):
                run.log_artifact(path, "merged")
        return metrics


@torch.no_grad()
def _latency(model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int = 5) -> float:
    with eval_mode(model):
        model(**batch)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(**batch)
    return (time.perf_counter() - started) / repeats


def _shapes(model: torch.nn.Module, params: OPFParams,
            candidates: dict[str, dict[int, list[str]]]) -> dict[str, tuple[list[int], list[int]]]:
    """Per module name its (in, out) factors: the spec's for its weight type, else ``auto_shapes``."""
    out = {}
    for kind, layers in candidates.items():
        for name in (n for names in layers.values() for n in names):
            if kind in params.shapes:
                out[name] = (params.shapes[kind].in_shape, params.shapes[kind].out_shape)
            else:
                out[name] = auto_shapes(*layer_dims(model.get_submodule(name)), params.middle_cores)
    return out


class Decomposed:
    """The matrices in MPO form so far (checkpointed: a restarted trial decomposes the same ones
    before its trained weights load)."""

    def __init__(self, model: torch.nn.Module, shapes: dict[str, tuple[list[int], list[int]]], params: OPFParams):
        self.model, self.shapes, self.params = model, shapes, params
        self.names: list[str] = []
        self.report: dict[str, dict[str, float]] = {}

    def add(self, names: list[str]) -> None:
        self.report.update(decompose(self.model, names, {n: self.shapes[n] for n in names},
                                     gauge=self.params.gauge, mode=self.params.mpo_mode))
        self.names += names

    def mpo_parameters(self) -> float:
        return sum(r["mpo"] for r in self.report.values())

    def dense_parameters(self) -> float:
        return sum(r["dense"] for r in self.report.values())

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.add([n for n in state["names"] if n not in self.names])
