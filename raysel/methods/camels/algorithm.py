"""CaMeLS as pure functions: the weighted LM loss, the token-weight model, the differentiable inner
loop (``torch.func.functional_call``, no ``higher``) and the pieces of the outer loss.

Parameters travel as ``{name: tensor}`` dicts, so an adapted model is just another dict evaluated with
``functional_call(model, (params, buffers), ...)``; gradients of the outer loss flow through every
inner SGD step back to the token weights (``create_graph=True``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]


def _fp32_or_wider(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits up to float32 for the loss; float64 stays float64 (exactness checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, *,
                     denominator: int | None = None) -> torch.Tensor:
    """Per-token next-token cross-entropy × the target token's weight, summed and divided by
    ``denominator`` (None: the number of real targets, a mean).

    ``logits`` [B, T, V], ``labels`` [B, T] (the input ids; -100 marks padding and is not a target),
    ``weights`` [B, T] (token t's weight scales the loss of predicting token t). With every weight 1 and
    no ``denominator`` this is the plain causal-LM loss (HF's ``labels=`` loss), whatever the padding.
    The reference pads documents to 1024 tokens and divides by B·1023 (:func:`padded_denominator`, the
    recipe's ``loss_normalization: padded``): at the same learning rate its SGD step on an L-token
    document is (L−1)/1023 times the mean's.
    """
    targets, target_weights = labels[:, 1:], weights[:, 1:]
    nll = F.cross_entropy(_fp32_or_wider(logits[:, :-1].flatten(0, 1)), targets.flatten(), ignore_index=-100,
                          reduction="none").view_as(targets)
    real = targets != -100
    count = real.sum().clamp(min=1) if denominator is None else denominator
    return (nll * target_weights * real).sum() / count


def padded_denominator(batch_size: int, padded_length: int | None) -> int | None:
    """B·(padded_length − 1), the reference's loss denominator for documents padded to ``padded_length``
    tokens; None (the real targets' count) without a padded length."""
    return None if padded_length is None else batch_size * (padded_length - 1)


class TokenWeightModel(torch.nn.Module):
    """CaMeLS's weight model: a causal-LM encoder, Linear(d→128) → GELU → Linear(128→1) initialised to
    zero → Softplus(β=3), times the attention mask. Every token starts at weight ln(2)/3 ≈ 0.231."""

    def __init__(self, encoder: torch.nn.Module, hidden_size: int, head_size: int = 128, beta: float = 3.0):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Sequential(torch.nn.Linear(hidden_size, head_size), torch.nn.GELU(),
                                        torch.nn.Linear(head_size, 1))
        torch.nn.init.zeros_(self.head[2].weight)
        torch.nn.init.zeros_(self.head[2].bias)
        self.softplus = torch.nn.Softplus(beta=beta)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.softplus(self.head(hidden).squeeze(-1)) * attention_mask


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The ids as LM targets with padding marked -100."""
    return input_ids.masked_fill(attention_mask == 0, -100)


def trainable_params(model: torch.nn.Module) -> Params:
    """Detached copies of the model's parameters that require grad: the start of an inner loop."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}


def logits_of(model: torch.nn.Module, params: Params, batch: Batch) -> torch.Tensor:
    """The model's logits on ``batch`` with ``params`` in place of its own (buffers kept)."""
    buffers = dict(model.named_buffers())
    return functional_call(model, (params, buffers), args=(),
                           kwargs={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}).logits


def sgd_step(model: torch.nn.Module, params: Params, batch: Batch, weights: torch.Tensor, lr: float, *,
             create_graph: bool, padded_length: int | None = None) -> Params:
    """One SGD step on the weighted LM loss of ``batch`` (a mean over its real targets, or with
    ``padded_length`` the reference's sum / (B·(padded_length − 1))). With ``create_graph`` the new
    parameters are differentiable functions of ``weights`` (and of ``params``): the tape the
    meta-gradient flows through."""
    loss = weighted_lm_loss(logits_of(model, params, batch), lm_labels(batch["input_ids"], batch["attention_mask"]),
                            weights, denominator=padded_denominator(len(batch["input_ids"]), padded_length))
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True)
    return {n: params[n] if g is None else params[n] - lr * g for n, g in zip(names, grads)}


def inner_loop(model: torch.nn.Module, params: Params, documents: Batch, weights: torch.Tensor, lr: float, *,
               sequential: bool = True, create_graph: bool = True, padded_length: int | None = None) -> Params:
    """Adapt ``params`` on a batch of documents with their token weights [B, T]: one SGD step per
    document in order (``sequential``, a tape of B updates) or one step on the whole batch; the loss's
    normalisation as in :func:`sgd_step`."""
    if not sequential:
        return sgd_step(model, params, documents, weights, lr, create_graph=create_graph, padded_length=padded_length)
    for i in range(len(documents["input_ids"])):
        length = int(documents["attention_mask"][i].sum())  # drop the padding: a batch of one needs none
        one = {k: v[i:i + 1, :length] for k, v in documents.items()}
        params = sgd_step(model, params, one, weights[i:i + 1, :length], lr, create_graph=create_graph,
                          padded_length=padded_length)
    return params


def qa_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the answer tokens (``labels`` is -100 on the question and padding)."""
    return F.cross_entropy(_fp32_or_wider(logits[:, :-1].flatten(0, 1)), labels[:, 1:].flatten(), ignore_index=-100)


def kl_locality(pre_logits: torch.Tensor, post_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(pre ‖ post) of the next-token distributions, averaged over the real tokens: how much the
    adapted model changed its predictions on unrelated text."""
    pre, post = F.log_softmax(_fp32_or_wider(pre_logits), -1), F.log_softmax(_fp32_or_wider(post_logits), -1)
    kl = (pre.exp() * (pre - post)).sum(-1)
    mask = attention_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def weight_norm(weights: torch.Tensor, attention_mask: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean over documents of the p-norm of their token weights (the outer loss's ``c_norm`` term)."""
    return (weights * attention_mask).norm(p=p, dim=-1).mean()


def outer_loss(model: torch.nn.Module, start: Params, adapted: Params, questions: Batch,
               locality: Batch | None, weights: torch.Tensor, documents_mask: torch.Tensor, *,
               c_kl: float, c_norm: float, norm_p: float = 2.0) -> dict[str, torch.Tensor]:
    """The meta-objective of one batch: QA NLL of the adapted model on the documents' questions
    + c_kl · KL(pre ‖ post) on unrelated text + c_norm · weight norm. Returns every part and ``loss``."""
    parts = {"qa_nll": qa_nll(logits_of(model, adapted, questions), questions["labels"])}
    loss = parts["qa_nll"]
    if locality is not None and c_kl:
        with torch.no_grad():
            pre = logits_of(model, {k: v.detach() for k, v in start.items()}, locality)
        parts["kl"] = kl_locality(pre, logits_of(model, adapted, locality), locality["attention_mask"])
        loss = loss + c_kl * parts["kl"]
    if c_norm:
        parts["norm"] = weight_norm(weights, documents_mask, norm_p)
        loss = loss + c_norm * parts["norm"]
    parts["loss"] = loss
    return parts


def meta_step(model: torch.nn.Module, weight_model: torch.nn.Module, start: Params, documents: Batch,
              questions: Batch, locality: Batch | None, *, inner_lr: float, sequential: bool, c_kl: float,
              c_norm: float, norm_p: float = 2.0, scale: float = 1.0, padded_length: int | None = None,
              weigh: Callable[[Batch], torch.Tensor] | None = None) -> tuple[Params, dict[str, float]]:
    """One meta-training batch: weigh the documents, adapt ``start`` through the differentiable inner
    loop, backpropagate ``scale`` × the outer loss into the weight model's ``.grad`` (accumulating).
    Returns the adapted parameters (detached: the base model carried to the next batch) and the losses.

    Attention runs in PyTorch's math kernel here: the fused CPU and flash kernels have no double backward."""
    with sdpa_kernel([SDPBackend.MATH]):
        weights = (weigh or (lambda d: weight_model(d["input_ids"], d["attention_mask"])))(documents)
        adapted = inner_loop(model, start, documents, weights, inner_lr, sequential=sequential, create_graph=True,
                             padded_length=padded_length)
        parts = outer_loss(model, start, adapted, questions, locality, weights, documents["attention_mask"],
                           c_kl=c_kl, c_norm=c_norm, norm_p=norm_p)
        (scale * parts["loss"]).backward(inputs=list(weight_model.parameters()))
    carried = {k: v.detach().requires_grad_(True) for k, v in adapted.items()}
    return carried, {k: float(v.detach()) for k, v in parts.items()}
