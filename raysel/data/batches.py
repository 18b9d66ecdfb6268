"""Tensors from texts: fixed-length LM context windows and padded classification batches."""
from __future__ import annotations

from typing import Sequence

import torch

from raysel.data.errors import DataError


class TokenWindows:
    """Token windows of ``context_len`` tokens cut from articles (tokenised once).

    ``sample`` draws a random article and a random window in it (the IGF paper's contexts);
    ``fixed`` gives a deterministic set of windows for evaluation.
    """

    def __init__(self, tokenizer, texts: Sequence[str], context_len: int):
        self.context_len = context_len
        encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        self.articles = [torch.tensor(ids, dtype=torch.long) for ids in encoded if len(ids) >= context_len]
        if not self.articles:
            raise DataError(f"no article has at least context_len={context_len} tokens "
                            f"({len(texts)} texts given); use shorter contexts or longer texts")
        lengths = torch.tensor([len(a) for a in self.articles], dtype=torch.float)
        self._weights = lengths - context_len + 1  # a window chosen uniformly over all positions

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        picks = torch.multinomial(self._weights, n, replacement=True, generator=generator)
        rows = []
        for index in picks.tolist():
            article = self.articles[index]
            start = int(torch.randint(0, len(article) - self.context_len + 1, (1,), generator=generator))
            rows.append(article[start:start + self.context_len])
        return torch.stack(rows)

    def fixed(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.sample(n, torch.Generator().manual_seed(seed))


class ClassificationBatches:
    """(text, label) examples tokenised once, padded per batch.

    With a ``prompt`` (raysel.data.prompts) each text is placed in the prompt's template and the
    batches carry each example's mask position (``mask_pos``) for a PromptClassifier."""

    def __init__(self, tokenizer, examples: Sequence[tuple[str, int]], max_length: int, prompt=None):
        if not examples:
            raise DataError("a classification split is empty")
        self.tokenizer = tokenizer
        texts = [text for text, _ in examples]
        self.mask_pos: torch.Tensor | None = None
        if prompt is None:
            self.encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        else:
            from raysel.data.prompts import prompt_ids

            pairs = [prompt_ids(tokenizer, prompt, text, max_length=max_length) for text in texts]
            self.encoded = [ids for ids, _ in pairs]
            self.mask_pos = torch.tensor([pos for _, pos in pairs], dtype=torch.long)
        self.labels = torch.tensor([label for _, label in examples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        indices = list(indices)
        padded = self.tokenizer.pad({"input_ids": [self.encoded[i] for i in indices]}, return_tensors="pt")
        out = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
               "labels": self.labels[indices]}
        if self.mask_pos is not None:
            out["mask_pos"] = self.mask_pos[indices]
        return out

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.batch(torch.randint(0, len(self), (n,), generator=generator).tolist())

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, batch_size: int = 64) -> torch.Tensor:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        predictions = []
        for start in range(0, len(self), batch_size):
            batch = self.batch(range(start, min(start + batch_size, len(self))))
            batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            predictions.append(logits.argmax(-1).cpu())
        model.train(was_training)
        return torch.cat(predictions)
