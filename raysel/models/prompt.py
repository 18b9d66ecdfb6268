"""A masked LM read as a classifier, LM-BFF style: the logits are the MLM scores of the label words
at the prompt's mask. Prompt-based fine-tuning trains it like any classifier (the shared loop calls
``model(**batch).loss``); the kernel method differentiates the same logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import SequenceClassifierOutput


class PromptClassifier(nn.Module):
    """``mlm`` (a transformers ``*ForMaskedLM``) as a C-way classifier over ``label_word_ids``.

    forward(input_ids, attention_mask, mask_pos, labels=None) → logits [B, C] = MLM scores at
    ``mask_pos`` restricted to the label words, loss = cross-entropy with ``labels``. When the MLM
    is "encoder + head" (BERT's ``cls``, RoBERTa's ``lm_head``) the head runs at the mask position
    only, not over every position (the same numbers, ~half the cost for a 30k vocabulary).
    """

    def __init__(self, mlm: nn.Module, label_word_ids: Sequence[int]):
        super().__init__()
        self.mlm = mlm
        self.register_buffer("label_word_ids", torch.as_tensor(list(label_word_ids), dtype=torch.long),
                             persistent=False)
        self._head_name = _head_name(mlm)

    @property
    def num_labels(self) -> int:
        return len(self.label_word_ids)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, mask_pos: Tensor | None = None,
                labels: Tensor | None = None, **inputs) -> SequenceClassifierOutput:
        if mask_pos is None:
            raise ValueError("PromptClassifier needs mask_pos: each example's mask position (see raysel.data.prompts)")
        at = mask_pos.view(-1, 1, 1)
        if self._head_name is None:  # an MLM we cannot split: every position's scores, then the mask's
            scores = self.mlm(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits
            at_mask = scores.gather(1, at.expand(-1, 1, scores.shape[-1]))[:, 0]
        else:
            hidden = self.mlm.base_model(input_ids=input_ids, attention_mask=attention_mask, **inputs)[0]
            # gather, not advanced indexing: under torch.func.vmap the positions are batched tensors
            hidden_at_mask = hidden.gather(1, at.expand(-1, 1, hidden.shape[-1]))
            at_mask = getattr(self.mlm, self._head_name)(hidden_at_mask)[:, 0]
        logits = at_mask.index_select(1, self.label_word_ids.to(at_mask.device))  # wrapped before .to(device)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _head_name(mlm: nn.Module) -> str | None:
    """The child module that maps hidden states to vocabulary scores (the one holding the output
    embeddings, beside the base model); None when the MLM is not laid out that way."""
    output = mlm.get_output_embeddings() if hasattr(mlm, "get_output_embeddings") else None
    base = getattr(mlm, "base_model", None)
    if output is None or base is None or base is mlm:
        return None
    heads = [name for name, child in mlm.named_children()
             if child is not base and any(m is output for m in child.modules())]
    others = [name for name, child in mlm.named_children() if child is not base and name not in heads]
    return heads[0] if len(heads) == 1 and not others else None
