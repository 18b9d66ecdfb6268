"""The one training loop every method shares (so that comparisons between methods are fair).

AdamW (or plain SGD), a linear schedule with warmup (or a constant rate), gradient accumulation,
clipping, bf16 autocast on CUDA, evaluation every ``eval_every`` optimizer steps, a checkpoint with
every evaluation. A method customises it with functions:

- ``next_batch(step, micro, generator)``: the next micro-batch (None skips it, e.g. a filter
  rejected it) and ``evaluate(model)``: the metrics (None: no evaluation);
- ``loss(model, batch)``: the micro-batch's loss (default ``model(**batch).loss``; e.g. per-token
  weights), or ``micro_step(step, micro, generator)``: the method's own forward and backward of one
  micro-batch, returning its loss parts, floats or 0-dim tensors (CaMeLS's bi-level meta step);
- ``step_metrics``, ``extra_state``, ``param_groups``, ``before_step``: per-step metrics, method
  state checkpointed with the model, optimizer groups, model changes between steps;
- ``stop(step, evaluation)``: early stopping after an evaluation;
- ``track=False``: a loop inside a phase (CaMeLS's online adaptation): no reports, no checkpoints.

Batches are drawn from a generator seeded by (seed, step, micro, rank) and the dropout RNG state
is checkpointed, so a restarted trial replays exactly the steps it would have taken. Under DDP the
gradients are all-reduced once per optimizer step, and the losses are read back from the device
once per step.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Literal

import pydantic
import torch
from pydantic import Field

from raysel.cost import TrainingCost
from raysel.methods.base import MethodParams, RunContext, check_finite

Batch = dict[str, torch.Tensor]


class LoopParams(MethodParams):
    """Optimisation hyperparameters shared by every method's fine-tuning loop."""

    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: torch.optim.SGD (the kernel paper's SGD fine-tuning)
    lr: float = Field(5e-5, gt=0)  # peak learning rate
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(0.0, ge=0)
    adam_eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)  # linear warmup, then linear decay to 0 at max_steps
    max_steps: int = Field(60, gt=0)  # optimizer steps ("batches" in the IGF paper)
    batch_size: int = Field(16, gt=0)  # examples per optimizer step, over all workers
    grad_accum: int = Field(1, gt=0)  # micro-batches per optimizer step
    max_grad_norm: float | None = Field(1.0, gt=0)  # None: no clipping
    eval_every: int = Field(10, gt=0)  # evaluate (and checkpoint) every N optimizer steps
    lr_schedule: Literal["linear", "constant"] = "linear"  # linear: warmup, then decay to 0 at max_steps
    bf16_autocast: bool = True  # on CUDA devices that support it

    def loop(self, **changes: Any) -> "LoopParams":
        """The shared loop's parameters (with ``changes``), validated. Every method's Params has a
        ``loop(...)``: those built on LoopParams inherit this one; IGF and CaMeLS map their own fields."""
        return LoopParams.model_validate({**{f: getattr(self, f) for f in LoopParams.model_fields}, **changes})

    @pydantic.model_validator(mode="after")
    def _check_schedule(self):
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        return self


def micro_batch_size(params: LoopParams, world_size: int) -> int:
    """Examples per micro-batch on one worker: batch_size split over accumulation and workers."""
    return max(1, params.batch_size // (params.grad_accum * world_size))


def batch_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (dropout off) inside the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def autocast(device: torch.device, enabled: bool = True):
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_schedule(optimizer: torch.optim.Optimizer, params: LoopParams):
    if params.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return linear_schedule(optimizer, params.warmup_steps, params.max_steps)


def make_optimizer(parameters, params: LoopParams) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    return torch.optim.AdamW(parameters, lr=params.lr, eps=params.adam_eps, weight_decay=params.weight_decay)


def fine_tune(model: torch.nn.Module, params: LoopParams, run: RunContext,
              next_batch: Callable[[int, int, torch.Generator], Batch | None] | None,
              evaluate: Callable[[torch.nn.Module], dict[str, float]] | None, *,
              loss: Callable[[torch.nn.Module, Batch], torch.Tensor] | None = None,
              micro_step: Callable[[int, int, torch.Generator], dict[str, float] | None] | None = None,
              step_metrics: Callable[[int], dict[str, float]] | None = None,
              extra_state: Any = None,
              param_groups: Callable[[torch.nn.Module], list[dict[str, Any]]] | None = None,
              before_step: Callable[[int], bool] | None = None,
              stop: Callable[[int, dict[str, float]], bool] | None = None,
              track: bool = True, seed_dropout: bool = True, offer_model: bool = True,
              cost: TrainingCost | None = None) -> dict[str, float]:
    """Train ``model`` for ``params.max_steps`` optimizer steps (fewer when ``stop`` says so); return
    the last evaluation.

    ``step_metrics(step)`` adds the method's own numbers to every step's report (e.g. IGF's
    acceptance rate); ``extra_state`` (anything with ``state_dict``/``load_state_dict``, e.g. the
    method's counters) is checkpointed and restored with the model — restored first, so that it can
    rebuild the model's structure before the weights load. ``param_groups(model)`` gives the
    optimizer's groups (e.g. their own learning rates); ``before_step(step)`` may change the model's
    parameters (OPF decomposes matrices) and returns True when it did: the optimizer is then rebuilt
    over the new parameters, keeping the state of those that remain and the schedule's position.
    ``seed_dropout=False`` leaves the dropout RNG as the caller left it (CaMeLS's phases, whose
    results predate the shared loop). At the end the model is offered as its arm's best
    (``run.offer_model``) unless ``offer_model=False`` (OPF offers its merged model itself). The loop
    counts what its batches cost (``TrainingCost``); a ``micro_step`` method passes its own ``cost`` and
    adds its steps to it (``TrainingCost.add_flops``)."""
    model = run.prepare_model(model)
    plain = getattr(model, "module", model)  # unwrapped from DDP for evaluation and state
    start, evaluation = 0, {}
    if seed_dropout:
        torch.manual_seed(run.seed + 7919 * run.rank)  # dropout; batches have their own generators
    state = run.restore() if track else None
    if state is not None and extra_state is not None:
        extra_state.load_state_dict(state["extra"])
    optimizer = make_optimizer(param_groups(plain) if param_groups else model.parameters(), params)
    schedule = make_schedule(optimizer, params)
    cost = cost if cost is not None else TrainingCost(plain)  # what it trained on: the report's compute columns
    if state is not None:
        plain.load_state_dict(state["model"])
        configured = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        _configured_hyperparameters_win(optimizer, schedule, configured)
        torch.set_rng_state(state["rng"])
        start, evaluation = state["step"], state["evaluation"]
        cost.load_state_dict(state.get("cost"))
    elif evaluate is not None:
        evaluation = evaluate(plain)
        if track:
            run.report(0, **evaluation)
    for step in range(start + 1, params.max_steps + 1):
        if before_step is not None and before_step(step):
            optimizer, schedule = _rebuilt(optimizer, schedule, param_groups(plain) if param_groups
                                           else model.parameters(), params)
        model.train()
        parts: dict[str, list[float | torch.Tensor]] = {}
        for micro in range(params.grad_accum):
            generator = batch_generator(run.seed, step, micro, run.rank)
            with _gradient_sync(model, micro == params.grad_accum - 1):
                if micro_step is not None:
                    values = micro_step(step, micro, generator)
                else:
                    batch = next_batch(step, micro, generator)
                    values = _default_micro_step(model, params, run, batch, loss)
                    if batch is not None:
                        cost.add(batch)
            if values is None:
                continue
            for key, value in values.items():
                parts.setdefault(key, []).append(value)
        parts = _on_host(parts)  # the step's one device-to-host copy
        for value in parts.get("loss", []):
            check_finite(value, step)  # before the optimizer step: a non-finite loss never reaches the weights
        if params.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.max_grad_norm)
        metrics: dict[str, float] = {"lr": schedule.get_last_lr()[0]}
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        metrics.update({f"train_{key}": sum(values) / len(values) for key, values in parts.items()})
        metrics.update(cost.metrics(run.world_size))
        if step_metrics is not None:
            metrics.update(step_metrics(step))
        evaluated = evaluate is not None and (step % params.eval_every == 0 or step == params.max_steps)
        if evaluated:
            evaluation = evaluate(plain)
            metrics.update(evaluation)
            if track:
                run.checkpoint({"model": plain.state_dict(), "optimizer": optimizer.state_dict(),
                                "schedule": schedule.state_dict(), "step": step, "evaluation": evaluation,
                                "rng": torch.get_rng_state(), "cost": cost.state_dict(),
                                "extra": extra_state.state_dict() if extra_state is not None else None})
        if track:
            run.report(step, **metrics)
        if evaluated and stop is not None and stop(step, evaluation):
            break
    if track and offer_model:
        run.offer_model(plain)
    return dict(evaluation)


def _configured_hyperparameters_win(optimizer: torch.optim.Optimizer, schedule: Any,
                                    configured: list[dict[str, Any]]) -> None:
    """After a restore, the optimizer's hyperparameters are the trial's config's, not the checkpoint's: the
    same for a restart, a perturbed lr (or weight decay) for a PBT exploit, at the schedule's position."""
    schedule.base_lrs = [wanted["initial_lr"] for wanted in configured]
    for group, wanted, base, factor in zip(optimizer.param_groups, configured, schedule.base_lrs, schedule.lr_lambdas):
        group.update({k: v for k, v in wanted.items() if k != "lr"})
        group["lr"] = base * factor(schedule.last_epoch)
    schedule._last_lr = [group["lr"] for group in optimizer.param_groups]  # get_last_lr(): the loop logs it


def _default_micro_step(model: torch.nn.Module, params: LoopParams, run: RunContext, batch: Batch | None,
                        loss: Callable[[torch.nn.Module, Batch], torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Forward and backward of one micro-batch (scaled for accumulation); its unscaled loss, left on
    the device (read back once per optimizer step, by ``_on_host``)."""
    if batch is None:
        return None
    batch = {k: v.to(run.device) for k, v in batch.items()}
    with autocast(run.device, params.bf16_autocast):
        value = loss(model, batch) if loss is not None else model(**batch).loss
    (value / params.grad_accum).backward()
    return {"loss": value.detach()}


def _gradient_sync(model: torch.nn.Module, last_micro: bool):
    """DDP all-reduces gradients on the optimizer step's last micro-batch only (``no_sync`` before):
    one all-reduce per step, the same averaged gradient. Every rank must run a backward on that last
    micro-batch (the methods that may skip one run on a single worker)."""
    if last_micro or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def _on_host(parts: dict[str, list[float | torch.Tensor]]) -> dict[str, list[float]]:
    """The step's per-micro-batch values as Python floats, with one device-to-host copy for all the
    tensors among them (a ``float(tensor)`` per micro-batch would wait on the device every time)."""
    tensors = [value for values in parts.values() for value in values if isinstance(value, torch.Tensor)]
    if not tensors:
        return parts  # type: ignore[return-value]
    copied = iter(torch.stack([t.reshape(()).double() for t in tensors]).tolist())
    return {key: [next(copied) if isinstance(v, torch.Tensor) else float(v) for v in values]
            for key, values in parts.items()}


def _rebuilt(optimizer: torch.optim.Optimizer, schedule, parameters, params: LoopParams):
    """A new optimizer over ``parameters``: state carried over for the parameters it had, same schedule step."""
    new = make_optimizer(parameters, params)
    for group in new.param_groups:
        for p in group["params"]:
            if p in optimizer.state:
                new.state[p] = optimizer.state[p]
    new_schedule = make_schedule(new, params)
    new_schedule.load_state_dict(schedule.state_dict())  # its position and the rates it last set
    for group, lr in zip(new.param_groups, new_schedule.get_last_lr()):
        group["lr"] = lr
    return new, new_schedule


def state_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Parameter counts, for a method's tags."""
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
