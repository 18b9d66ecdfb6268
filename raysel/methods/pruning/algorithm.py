"""Dataset pruning by per-example success rate (Tayaranian et al., CoLLAs 2024): pure functions.

Records of S scoring runs × E epochs × N training examples, taken from each training step's own
forward pass, are tensors shaped [S, E, N]:
- ``correct``: argmax of the logits == gold label;
- ``gold_prob``: softmax probability of the gold label;
- ``el2n``: ‖softmax − one-hot(gold)‖₂.

From them: the H-score (the paper's), Dataset Cartography's confidence / variability / correctness,
forgetting events and EL2N (computed from the same records, nothing re-trained), the removal sets,
and the subsets in the phase-2 training order.
"""
from __future__ import annotations

import torch


def record_step(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example of one training forward pass: (correct, gold probability, EL2N)."""
    logits = logits.detach().float()
    probs = logits.softmax(-1)
    correct = logits.argmax(-1) == labels
    gold = probs.gather(-1, labels[:, None]).squeeze(-1)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    return correct, gold, (probs - one_hot).norm(dim=-1)


def h_scores(correct: torch.Tensor) -> torch.Tensor:
    """H_i = Σ_s Π_e correct[s, e, i]: the number of runs that got example i right in every epoch (0..S)."""
    if correct.dim() != 3:
        raise ValueError(f"correct must be [runs, epochs, examples]; got shape {tuple(correct.shape)}")
    return correct.bool().all(dim=1).sum(dim=0)


def cartography(gold_prob: torch.Tensor, correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dataset Cartography over all S × E observations: confidence (mean gold probability),
    variability (its population std) and correctness (fraction of observations correct)."""
    observations = gold_prob.reshape(-1, gold_prob.shape[-1]).double()
    return {"confidence": observations.mean(0), "variability": observations.std(0, correction=0),
            "correctness": correct.reshape(-1, correct.shape[-1]).double().mean(0)}


def forgetting_events(correct: torch.Tensor) -> torch.Tensor:
    """Correct → incorrect transitions between consecutive epochs, summed over the runs."""
    c = correct.bool()
    return (c[:, :-1] & ~c[:, 1:]).sum(dim=(0, 1))


def el2n_scores(el2n: torch.Tensor, epochs: int = 1) -> torch.Tensor:
    """EL2N averaged over the runs' first ``epochs`` epochs (the early models)."""
    return el2n[:, :epochs].double().mean(dim=(0, 1))


def winning_ticket(runs: int) -> tuple[int, ...]:
    """The winning-ticket removal set: never learned (H = 0) and always learned (H = S)."""
    return (0, runs)


def removal_sets(runs: int) -> list[tuple[int, ...]]:
    """The paper's removal sets for S runs, in its order (S = 6: {0,6}, {0,1,6}, {0,1,2,6}, {0,1,2,3,6},
    {0,1,5,6}, {0,1,2,3,4,6}, {0,1,2,3,5,6}); a set that a small S makes equal to an earlier one appears once."""
    s = runs
    sets = [(0, s), (0, 1, s), (0, 1, 2, s), (0, 1, 2, 3, s), (0, 1, s - 1, s), (0, 1, 2, 3, 4, s),
            (0, 1, 2, 3, s - 1, s)]
    unique = [tuple(sorted({v for v in values if 0 <= v <= s})) for values in sets]
    return list(dict.fromkeys(unique))


def keep_mask(h: torch.Tensor, remove: "tuple[int, ...] | list[int]") -> torch.Tensor:
    """True for the examples whose H is not in ``remove``."""
    return ~torch.isin(h, torch.as_tensor(list(remove), dtype=h.dtype))


def permutation(n: int, seed: int) -> torch.Tensor:
    """A run's fixed example order, ``randperm(n)`` from its seed, reused every epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def ordered_subset(order: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept examples in the run's order (the order minus the removed examples)."""
    return order[keep[order]]


def random_subset(order: torch.Tensor, size: int) -> torch.Tensor:
    """The equal-size random baseline: the first ``size`` examples of the run's order."""
    return order[:size]


def ambiguous_subset(variability: torch.Tensor, order: torch.Tensor, size: int) -> torch.Tensor:
    """The equal-size ambiguous baseline: the ``size`` most variable examples (ties: lower index), in
    the run's order."""
    ranked = torch.argsort(variability, descending=True, stable=True)  # stable: ties keep the lower index
    keep = torch.zeros(variability.numel(), dtype=torch.bool)
    keep[ranked[:size]] = True
    return ordered_subset(order, keep)
