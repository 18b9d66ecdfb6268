"""The CaMeLS recipe (Hu et al., EMNLP 2023) in three phases, each one trial (arms of a sweep); each
phase is a module (``qa_tune``, ``meta_train``, ``evaluate``) whose optimisation runs through the
shared loop (``raysel.methods.loop.fine_tune``):

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

from pathlib import Path
from typing import Any, ClassVar

import torch

from raysel.data.errors import DataError
from raysel.data.sources import lm_splits, qa_splits
from raysel.inputs import DataSpec, ModelSpec
from raysel.methods.base import Method, MethodFigure, RunContext
from raysel.methods.camels.artifacts import artifacts_dir, load_weight_model, token_weights
from raysel.methods.camels.baselines import load_spacy
from raysel.methods.camels.evaluate import evaluate
from raysel.methods.camels.meta_train import meta_train
from raysel.methods.camels.params import QA_MODEL, WEIGHT_MODEL, CamelsParams
from raysel.methods.camels.qa_tune import qa_tune
from raysel import models


class Camels(Method):
    """CaMeLS: meta-learned per-token loss weights for online adaptation, and its baselines."""

    name: ClassVar[str] = "camels"
    Params: ClassVar[type[CamelsParams]] = CamelsParams
    max_workers: ClassVar[int | None] = 1  # each phase trains and adapts in one process

    def preflight(self, params: CamelsParams, model: ModelSpec, data: DataSpec, seeds: list[int]) -> None:
        """Before Ray starts: the models and data load; another sweep's artifacts exist."""
        models.check_model(model.name, "causal_lm")
        qa_splits(data)
        if params.base_model:
            models.check_model(params.base_model, "causal_lm")
        if params.phase == "meta_train":
            encoder = params.weight_encoder or model.name
            models.check_model(encoder, "causal_lm")
            layers = models.transformer_layers(models.model_config(encoder)) if params.weight_encoder_layers else None
            if layers is not None and params.weight_encoder_layers > layers:
                raise DataError(f"camels: weight_encoder_layers={params.weight_encoder_layers}, but the weight "
                                f"encoder {encoder!r} has {layers} transformer layers; allowed: 1 to {layers}")
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
