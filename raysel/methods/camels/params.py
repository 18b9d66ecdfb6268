"""CaMeLS's hyperparameters (every phase's, one model) and the names of the files its phases share."""
from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from raysel.methods.base import MethodParams
from raysel.methods.loop import LoopParams

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
    # keep only the encoder's first k transformer layers (None: all): a small weight model on the base itself
    weight_encoder_layers: int | None = Field(None, gt=0)
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

    def loop(self, phase: Literal["qa_tune", "meta_train", "adapt", "light_tune"], steps: int | None = None) -> LoopParams:
        """The shared loop's parameters of one of CaMeLS's optimisation loops (each has its own fields;
        ``steps``: adapt's, one per document of the stream). The CaMeLS loops other than QA pre-tuning
        keep the reference's plain Adam: a constant rate, no clipping unless set, no autocast."""
        plain = {"lr_schedule": "constant", "max_grad_norm": None, "bf16_autocast": False}
        if phase == "qa_tune":
            return LoopParams(lr=self.qa_lr, max_steps=self.qa_steps, batch_size=self.qa_batch_size,
                              eval_every=self.qa_eval_every, warmup_steps=0)
        if phase == "meta_train":  # meta_step does each micro-batch's backward (grad_acc_steps of them)
            return LoopParams(**{**plain, "max_grad_norm": self.max_grad_norm}, lr=self.outer_lr,
                              max_steps=self.outer_steps, grad_accum=self.grad_acc_steps,
                              batch_size=self.grad_acc_steps * self.update_batch_size, eval_every=self.val_every)
        if phase == "adapt":  # batch 1, one pass over the stream
            return LoopParams(**plain, lr=self.lr, max_steps=steps, batch_size=1)
        return LoopParams(**plain, lr=self.qa_lt_lr, max_steps=self.qa_lt_max_steps, batch_size=self.qa_lt_batch_size,
                          eval_every=self.qa_lt_eval_every)

    @property
    def padded_length(self) -> int | None:
        """The document length the loss's denominator assumes ("padded"), or None (the real targets)."""
        return self.max_doc_tokens if self.loss_normalization == "padded" else None
