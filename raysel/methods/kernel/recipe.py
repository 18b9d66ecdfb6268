"""The kernel recipe: k-shot data → eNTK kernels at θ0 (cached) → kernel solver → dev/test accuracy.

One trial, top to bottom:
1. The data seed's split (``run.seed``: LM-BFF's k-shot split of that seed), each example in the
   task's prompt (prompt mode) or as plain text for a classifier head.
2. The kernels train × train and train × (dev + test), and the model's logits at θ0 (for the f0
   residual), from the cache when a trial with the same model, data, seed and kernel settings built
   them already — a per-seed solver grid computes each kernel once — else built here, the blocks
   split across the trial's workers (``workers: N``), and logged as artifacts when small.
3. The solver on the train kernel, predictions for dev and test: ``dev_accuracy`` selects the
   solver settings per seed (protocol ``per_seed_grid``), ``test_accuracy`` is what the table shows.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
import torch
from pydantic import Field
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from raysel.data.errors import DataError
from raysel.data.loaders import LabeledSplits
from raysel.data.prompts import MAX_LENGTH, encode, prompt_and_words, task_of
from raysel.data.sources import classification_splits
from raysel.methods.base import Method, MethodParams, RunContext
from raysel.methods.collective import distributed, gather, shared_file
from raysel.methods.kernel.algorithm import (binary, classifier_logits_fn, is_causal, linear_probe_classifier,
                                             ntk, prompt_logits_fn, select_params, solve)
from raysel.methods.loop import eval_mode
from raysel.metrics import accuracy, binary_f1
from raysel import models
from raysel.models import ModelError
from raysel.inputs import DataSpec, ModelSpec

KERNELS_FILE = "kernels.pt"
ARTIFACT_LIMIT_BYTES = 64 * 2**20  # kernels larger than this stay in the cache only, not in MLflow
F1_TASKS = ("mrpc", "qqp")  # LM-BFF reports F1 for these


# The solver settings and the solvers that read them; one set for another solver is refused (see _check).
SOLVER_SETTINGS: dict[str, tuple[str, ...]] = {
    "kernel_lambda": ("asym",),
    "kernel_gamma": ("asym",),
    "sklearn_c": ("logistic", "svc", "svr"),  # logistic: the plain one only (logistic_cv: 0)
    "logistic_cv": ("logistic",),
    "adjust_for_init": ("lstsq", "svr", "asym"),
    "f0_scaling": ("lstsq", "svr", "asym"),
    "class_layout": ("logistic", "svc", "svr"),
}


class KernelParams(MethodParams):
    """Every hyperparameter of the kernel method: what the logits are, the kernel, the solver.

    The defaults are the reference's (princeton-nlp/LM-Kernel-FT; see raysel.methods.kernel.algorithm
    for what is reproduced and what differs); ``decoder: tied``, ``classifier_head: model``,
    ``class_layout: per_class`` and ``logistic_cv: 0`` are raysel's former behaviour, kept as options.
    A setting that the chosen solver (or logits) does not read is refused, not ignored."""

    # logits
    prompt: bool = True  # MLM scores of the label words at the prompt's mask; False: a classifier
    decoder: Literal["separate", "tied"] = "separate"  # prompt: the MLM decoder weight its own parameter (the
    #   reference's untied prompt model) or transformers' tied input embeddings standing for both (cross terms)
    classifier_head: Literal["linear_probe", "model"] = "linear_probe"  # prompt false: a Linear on the first
    #   token's final hidden state fitted as a logistic-regression probe (the reference's --from_linearhead),
    #   or the sequence classifier's own head, new and random (the reference's default without that flag)
    prompt_task: str | None = None  # whose LM-BFF template (default: the data's task)
    label_words: list[str] | None = None  # one word per label instead of the template's
    binary_classification: bool = False  # f = logit1 − logit0 (C = 1); two labels only
    max_length: int | None = Field(None, gt=1)  # default: LM-BFF's 128 tokens (256 for MNLI, SNLI, RTE)
    eval_examples: int = Field(1000, gt=0)  # test (and dev) capped at this many (LM-BFF's k-shot-1k-test)
    # kernel
    formula: Literal["sgd", "signgd", "asymmetric_signgd"] = "sgd"
    subset: Literal["all", "exclude_embeddings", "exclude_head", "only_biases"] = "all"  # names with "embed"
    #   dropped / with "head" dropped / only those with "bias", on full dotted names (the reference's rules)
    chunk_size: int = Field(8, gt=0)  # eval examples whose Jacobians are held at once
    row_chunk_size: int | None = Field(None, gt=0)  # train examples held at once (default chunk_size)
    kernel_cache: str | None = None  # a directory for kernels shared across sweeps (default: this sweep's)
    # solver: every one fits the [N·C, N·C] kernel with flattened targets, as the reference (algorithm.solve)
    solver: Literal["lstsq", "logistic", "svc", "svr", "asym"] = "lstsq"
    reg: float = Field(0.0, ge=0)  # every solver: K + reg·σ_max(K)·I on the train kernel (asym: its pass 0)
    adjust_for_init: bool = False  # lstsq / svr / asym: fit Y − f0/s, predict K·α + f0/s (f0: logits at θ0)
    f0_scaling: float = Field(1.0, gt=0)  # lstsq / svr / asym: s
    kernel_lambda: float = Field(0.5, ge=0, le=1)  # asym: weight of the train-side pass
    kernel_gamma: float = Field(1.0, gt=0)  # asym: γ
    logistic_cv: int = Field(5, ge=0)  # logistic: LogisticRegressionCV folds (the reference's 5, Cs=10,
    #   max_iter 10000, random_state 0); 0: a plain LogisticRegression(C=sklearn_c)
    sklearn_c: float = Field(1.0, gt=0)  # svc / svr / plain logistic (logistic_cv: 0): sklearn's C
    class_layout: Literal["flattened", "per_class"] = "flattened"  # logistic / svc / svr with C > 1: the
    #   reference's one flattened problem, or raysel's former per-class layout (see algorithm.solve)

    @pydantic.model_validator(mode="after")
    def _check(self) -> "KernelParams":
        asymmetric = self.formula == "asymmetric_signgd"
        if asymmetric != (self.solver == "asym"):
            raise ValueError("formula asymmetric_signgd goes with solver asym (its kernels have two passes), "
                             f"and only with it; got formula {self.formula!r} with solver {self.solver!r}")
        if asymmetric and not self.binary_classification:
            raise ValueError("formula asymmetric_signgd is for binary classification: set binary_classification: "
                             "true (and two labels, e.g. data.labels)")
        unused = []  # (field, why): settings given explicitly that nothing reads; defaults are never refused
        given = self.model_fields_set
        for field, solvers in SOLVER_SETTINGS.items():
            if field in given and self.solver not in solvers:
                unused.append((field, f"{field} is read by solver {' / '.join(solvers)} only, and the solver is "
                                      f"{self.solver!r}: remove it (or give it an arm with such a solver)"))
        if "sklearn_c" in given and self.solver == "logistic" and self.logistic_cv:
            unused.append(("sklearn_c", f"sklearn_c is not read by logistic with logistic_cv: {self.logistic_cv} "
                                        "(cross-validation picks C): remove it, or set logistic_cv: 0 for a plain "
                                        "LogisticRegression(C=sklearn_c)"))
        if "decoder" in given and not self.prompt:
            unused.append(("decoder", "decoder is read with prompt: true only (the masked LM's decoder); remove it"))
        if "classifier_head" in given and self.prompt:
            unused.append(("classifier_head", "classifier_head is read with prompt: false only; remove it"))
        if unused:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("unused_setting", why), loc=(field,),
                                 input=getattr(self, field)) for field, why in unused])
        return self

    def kernel_key(self, model: ModelSpec, data: DataSpec, seed: int, examples: Any = None) -> str:
        """What the kernels depend on (trials that differ only in solver settings share them).

        ``examples`` (the split's rows) go into the key too, so that a cache filled where the data
        differ — the built-ins are read from the running Python's standard library — is not used."""
        fields = ["prompt", "decoder", "classifier_head", "prompt_task", "label_words", "binary_classification",
                  "max_length", "eval_examples", "formula", "subset"]
        blob = json.dumps({"model": model.model_dump(), "data": data.model_dump(), "seed": seed,
                           **{f: getattr(self, f) for f in fields}}, sort_keys=True)
        if examples is not None:
            blob += hashlib.sha256(json.dumps(examples).encode()).hexdigest()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Kernel(Method):
    """Kernel regression with the eNTK of a pretrained model at θ0 instead of fine-tuning it."""

    name: ClassVar[str] = "kernel"
    Params: ClassVar[type[KernelParams]] = KernelParams

    def preflight(self, params: KernelParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: the model loads, every seed's split loads, the prompt and label words fit."""
        models.check_model(model.name, "masked_lm" if params.prompt else "sequence_classification")
        for seed in seeds if data.k else seeds[:1]:
            splits = classification_splits(data, seed=seed)
        _check_labels(params, splits)
        if not params.prompt and params.classifier_head == "linear_probe":
            classifier, _ = models.load_model(model.name, "sequence_classification", num_labels=len(splits.labels))
            if is_causal(classifier):
                raise ModelError(f"kernel: classifier_head linear_probe reads the first token's final hidden state, "
                                 f"which the causal model {model.name!r} computes from that token alone; set "
                                 "classifier_head: model (its own head) or use a bidirectional model")
        if params.prompt:
            _, tokenizer = models.load_model(model.name, "masked_lm")
            prompt_and_words(tokenizer, data.name, splits, task=params.prompt_task, label_words=params.label_words)

    def train_loop(self, params: KernelParams, run: RunContext) -> dict[str, float]:
        splits = classification_splits(run.data, seed=run.seed)
        _check_labels(params, splits)
        dev, test = splits.dev[:params.eval_examples], splits.test[:params.eval_examples]
        key = params.kernel_key(run.model, run.data, run.seed, examples=[splits.train, dev, test])
        path = Path(params.kernel_cache or run.shared_dir) / f"kernel-{key}"
        shared = shared_file(run, path / KERNELS_FILE, lambda: self._build(params, run, splits, dev, test))
        saved = shared.contents
        run.set_tags(**{"kernel.key": path.name, "kernel.source": shared.source})
        if shared.built_here and run.rank == 0 and (path / KERNELS_FILE).stat().st_size <= ARTIFACT_LIMIT_BYTES:
            run.log_artifact(path / KERNELS_FILE, "kernel")
        n_dev = len(dev)
        k_eval = saved["k_eval"]
        f0 = saved["f0"] if params.adjust_for_init else {}
        metrics = {"n_train": float(len(splits.train)), "n_dev": float(n_dev), "n_test": float(len(test)),
                   "kernel_seconds": saved["seconds"], "kernel_entries_per_s": saved["entries"] / saved["seconds"],
                   "kernel_workers": float(saved["workers"]),
                   "params_trained": 0.0}  # the kernel solver fits coefficients on examples, no weights
        task = _task(params, run.data)
        # one fit for dev and test: every solver predicts each eval column from that column alone
        f0_eval = torch.cat([f0["dev"], f0["test"]]) if f0 else None
        prediction = solve(saved["k_train"], saved["y_train"], k_eval, solver=params.solver, reg=params.reg,
                           f0_train=f0.get("train"), f0_eval=f0_eval, f0_scaling=params.f0_scaling,
                           kernel_lambda=params.kernel_lambda, kernel_gamma=params.kernel_gamma,
                           logistic_cv=params.logistic_cv, sklearn_c=params.sklearn_c, class_layout=params.class_layout)
        for name, columns, rows in (("dev", slice(0, n_dev), dev), ("test", slice(n_dev, None), test)):
            labels = torch.tensor([label for _, label in rows])
            metrics[f"{name}_accuracy"] = accuracy(prediction.labels[columns], labels)
            if task in F1_TASKS:
                metrics[f"{name}_f1"] = binary_f1(prediction.labels[columns], labels)
        run.report(1, **metrics)
        return metrics

    def _build(self, params: KernelParams, run: RunContext, splits: LabeledSplits, dev: list,
               test: list) -> dict[str, Any] | None:
        """Compute the kernels (every rank its share of the blocks; rank 0 assembles them)."""
        torch.manual_seed(run.seed)  # a new classifier head (classifier_head: model) is initialised from the seed
        y_train = torch.tensor([label for _, label in splits.train])
        if params.prompt:
            model, tokenizer = models.load_model(run.model.name, "masked_lm")
            prompt, word_ids = prompt_and_words(tokenizer, run.data.name, splits, task=params.prompt_task,
                                               label_words=params.label_words)
            logits_fn = prompt_logits_fn(model, word_ids, decoder=params.decoder)
            max_length = params.max_length or MAX_LENGTH.get(_task(params, run.data), 128)
            inputs = [encode(tokenizer, prompt, [(text, None) for text, _ in rows], max_length)
                      for rows in (splits.train, dev + test)]
        else:
            model, tokenizer = models.load_model(run.model.name, "sequence_classification",
                                                 num_labels=len(splits.labels))
            inputs = [_plain(tokenizer, rows, params.max_length or 128) for rows in (splits.train, dev + test)]
        model = model.to(run.device)
        train, evals = ({k: v.to(run.device) for k, v in batch.items()} for batch in inputs)
        if not params.prompt:
            if params.classifier_head == "linear_probe":  # every rank fits the same probe (random_state 0)
                model = linear_probe_classifier(model, train, y_train, classes=len(splits.labels))
            logits_fn = classifier_logits_fn(model)
        if params.binary_classification:
            logits_fn = binary(logits_fn)
        shard = (run.rank, run.world_size) if distributed(run) else (0, 1)
        options = dict(logits_fn=logits_fn, formula=params.formula, subset=params.subset,
                       chunk_size=params.chunk_size, row_chunk_size=params.row_chunk_size, shard=shard)
        started = time.perf_counter()
        k_train, k_eval = ntk(model, train, evals, with_train=True, on_block=_progress(run.rank), **options)
        k_train, k_eval = sum(gather(run, k_train)), sum(gather(run, k_eval))
        seconds = time.perf_counter() - started
        if run.rank != 0:
            return None
        f0 = _initial_logits(model, logits_fn, {"train": train, "evals": evals}, len(dev))
        classes = k_train.shape[-1]
        n, m = len(splits.train), len(dev) + len(test)
        return {"k_train": k_train, "k_eval": k_eval, "f0": f0, "y_train": y_train, "seconds": seconds,
                "entries": float(n * classes * (n + m) * classes), "workers": shard[1]}


def _progress(rank: int):
    """Prints a line at every tenth of the kernels' blocks (the trial's log; kernels can take minutes)."""
    started = time.perf_counter()

    def on_block(done: int, total: int) -> None:
        if done == total or done * 10 // total != (done - 1) * 10 // total:
            print(f"kernels train x train and train x eval (rank {rank}): {done}/{total} blocks, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    return on_block


def _task(params: KernelParams, data: DataSpec) -> str:
    return (params.prompt_task or task_of(data.name)).lower()


def _check_labels(params: KernelParams, splits: LabeledSplits) -> None:
    if params.binary_classification and len(splits.labels) != 2:
        raise DataError(f"kernel: binary_classification needs two labels, the data has {len(splits.labels)} "
                        f"{list(splits.labels)}; choose two with data.labels")


def _plain(tokenizer, rows: list, max_length: int) -> dict[str, torch.Tensor]:
    batch = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def _initial_logits(model: torch.nn.Module, logits_fn, batches: dict, n_dev: int,
                    batch_size: int = 32) -> dict[str, torch.Tensor]:
    """f0: the model's logits at θ0 for train, dev and test (float64, CPU)."""
    params = select_params(model, "all", decoder=getattr(logits_fn, "decoder", "separate"))
    out = {}
    with eval_mode(model):
        for name, batch in batches.items():
            size = len(batch["input_ids"])
            out[name] = torch.cat([logits_fn(params, {k: v[s:s + batch_size] for k, v in batch.items()})
                                   for s in range(0, size, batch_size)]).double().cpu()
    evals = out.pop("evals")
    return {"train": out["train"], "dev": evals[:n_dev], "test": evals[n_dev:]}
