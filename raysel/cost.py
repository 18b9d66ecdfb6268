"""What a trial's result cost: examples and tokens trained on, parameters trained, an estimate of the
training FLOPs (and of a method's data selection, e.g. IGF's information gain), wall and CPU seconds. Pure
functions and counters; the shared loop counts its batches (``TrainingCost``; a method's own micro-steps
through ``CountedFlops``), the trial measures time (``Stopwatch``), the report puts them beside the metric.

The FLOP estimate of a forward pass over a padded batch of B sequences of T tokens is
``2·P·B·T + 4·L·d·B·T²``: P the weights of the model's matrix multiplications (every ``nn.Linear`` and
GPT-2 ``Conv1D``, the LM head included; embedding lookups cost nothing), and the attention scores and
their weighted sum in each of L layers of width d. Training is three forward passes' worth (the
backward pass is two). tests/test_cost.py checks it against torch's own FLOP counter.
"""
from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch

if TYPE_CHECKING:
    import pandas as pd

# the report's compute columns: the loop's and the trial's, then what methods report of their data use
# (IGF: contexts examined, of which train_examples were accepted; pruning: the subset trained on), and the
# selection's own FLOPs (IGF's IG and learner) with the sum of both
COST_METRICS = ("train_examples", "train_tokens", "train_flops_est", "selection_flops_est", "total_flops_est",
                "params_trained", "wall_s", "cpu_s", "contexts_consumed", "subset_size")


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

    def add_flops(self, flops: float, examples: int, tokens: int) -> None:
        """Count one micro-step a method ran itself (``micro_step``: e.g. CaMeLS's meta step)."""
        self.examples += examples
        self.tokens += tokens
        self.flops += flops

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


Result = TypeVar("Result")


class CountedFlops:
    """FLOPs of a repeated step whose shapes vary (e.g. CaMeLS's meta step, second-order): the first call is
    counted by torch's FlopCounterMode, later ones are scaled from it by ``size``, a number proportional to
    the step's work (its forward FLOP estimate): one step pays the counter's overhead (about 1.5x)."""

    def __init__(self) -> None:
        self.per_size: float | None = None

    def run(self, step: Callable[[], Result], size: float) -> tuple[Result, float]:
        """``step()``'s result and its FLOPs."""
        if self.per_size is not None:
            return step(), self.per_size * size
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            result = step()
        flops = float(counter.get_total_flops())
        self.per_size = flops / size
        return result, flops


def with_total_flops(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``total_flops_est`` (training + selection) where a trial reported selection FLOPs."""
    if "selection_flops_est" not in frame or "train_flops_est" not in frame:
        return frame
    return frame.assign(total_flops_est=frame["train_flops_est"] + frame["selection_flops_est"].fillna(0.0))


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
