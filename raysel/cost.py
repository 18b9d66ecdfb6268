"""What a trial's result cost: examples and tokens trained on, parameters trained, an estimate of the
training FLOPs, wall and CPU seconds. Pure functions and a counter; the shared loop counts its batches
(``TrainingCost``), the trial measures time (``Stopwatch``), the report puts them beside the metric.

The FLOP estimate of a forward pass over a padded batch of B sequences of T tokens is
``2·P·B·T + 4·L·d·B·T²``: P the weights of the model's matrix multiplications (every ``nn.Linear`` and
GPT-2 ``Conv1D``, the LM head included; embedding lookups cost nothing), and the attention scores and
their weighted sum in each of L layers of width d. Training is three forward passes' worth (the
backward pass is two). tests/test_cost.py checks it against torch's own FLOP counter.
"""
from __future__ import annotations

import resource
import time
from typing import Any

import torch

# the report's compute columns: the loop's and the trial's, then what methods report of their data use
# (IGF: contexts examined, of which train_examples were accepted; pruning: the subset trained on)
COST_METRICS = ("train_examples", "train_tokens", "train_flops_est", "params_trained", "wall_s", "cpu_s",
                "contexts_consumed", "subset_size")


def matmul_parameters(model: torch.nn.Module) -> int:
    """The weights that enter a matrix multiplication per token (Linear and Conv1D layers)."""
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


def attention_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(layers, attention width) from a Hugging Face config; (0, 0) for a model without one."""
    config = getattr(model, "config", None)
    if config is None:
        return 0, 0
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 0
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 0
    return int(layers), int(width)


def forward_flops(model: torch.nn.Module, batch_size: int, seq_len: int) -> float:
    """Estimated FLOPs of one forward pass over a ``batch_size`` × ``seq_len`` batch (see the module)."""
    layers, width = attention_shape(model)
    tokens = batch_size * seq_len
    return 2.0 * matmul_parameters(model) * tokens + 4.0 * layers * width * batch_size * seq_len ** 2


def train_flops(model: torch.nn.Module, batch_size: int, seq_len: int) -> float:
    """Estimated FLOPs of a forward and backward pass (three forward passes' worth)."""
    return 3.0 * forward_flops(model, batch_size, seq_len)


def trained_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def batch_size_and_tokens(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(examples, real tokens, padded length) of a batch of token ids (attention_mask counts the real ones)."""
    ids = batch.get("input_ids")
    if ids is None or ids.dim() != 2:
        return 0, 0, 0
    mask = batch.get("attention_mask")
    real = int(mask.sum()) if mask is not None else ids.numel()
    return int(ids.shape[0]), real, int(ids.shape[1])


class TrainingCost:
    """The shared loop's running count of what it trained on (checkpointed with the loop's state)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.examples = self.tokens = 0
        self.flops = 0.0

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        """Count one micro-batch trained on (forward and backward)."""
        examples, tokens, length = batch_size_and_tokens(batch)
        if examples:
            self.examples += examples
            self.tokens += tokens
            self.flops += train_flops(self.model, examples, length)

    def metrics(self, workers: int = 1) -> dict[str, float]:
        """Cumulative counts; under data parallelism this rank's × ``workers`` (ranks see equal batches)."""
        out = {"params_trained": float(trained_parameters(self.model))}
        if self.examples:
            out.update(train_examples=float(self.examples * workers), train_tokens=float(self.tokens * workers),
                       train_flops_est=self.flops * workers)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"examples": self.examples, "tokens": self.tokens, "flops": self.flops}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.examples, self.tokens, self.flops = state["examples"], state["tokens"], state["flops"]


class Stopwatch:
    """Wall and CPU seconds (this process's, every thread's) since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()

    def metrics(self, workers: int = 1) -> dict[str, float]:
        """Seconds since it was made; CPU seconds × ``workers`` (rank 0's for all ranks under Ray Train)."""
        return {"wall_s": time.perf_counter() - self.wall, "cpu_s": (_cpu_seconds() - self.cpu) * workers}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
