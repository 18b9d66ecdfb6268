"""Compute cost beside every result (issue 23, item 8): the FLOP estimate against torch's own counter,
the shared loop's counts of what it trained on (also across a restart), the trial's clock, and the
report's cost columns and Pareto figure."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from raysel.cost import Stopwatch, TrainingCost, batch_size_and_tokens, forward_flops, train_flops
from raysel.inputs import DataSpec, ModelSpec
from raysel.methods.loop import LoopParams, fine_tune
from raysel.models import load_model
from raysel.report.stats import pareto_front
from raysel.run_context import LocalRun


@pytest.mark.parametrize("name, task", [("tiny-gpt2-random", "causal_lm"), ("tiny-llama-random", "causal_lm"),
                                        ("tiny-bert", "sequence_classification")])
def test_the_flop_estimate_is_within_a_tenth_of_torchs_counted_flops(name, task):
    model, _ = load_model(name, task)
    batch, length = 4, 48
    ids = torch.randint(5, 500, (batch, length), generator=torch.Generator().manual_seed(0))
    labels = ids if task == "causal_lm" else torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counted:
        model(input_ids=ids, labels=labels).loss.backward()
    assert 0.9 <= counted.get_total_flops() / train_flops(model, batch, length) <= 1.02
    with FlopCounterMode(display=False) as counted, torch.no_grad():
        model(input_ids=ids)
    assert 0.9 <= counted.get_total_flops() / forward_flops(model, batch, length) <= 1.02


def test_batches_count_their_real_tokens():
    batch = {"input_ids": torch.ones(3, 5, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])}
    assert batch_size_and_tokens(batch) == (3, 9, 5)
    assert batch_size_and_tokens({"input_ids": torch.ones(2, 4, dtype=torch.long)}) == (2, 8, 4)
    assert batch_size_and_tokens({"features": torch.ones(2, 4)}) == (0, 0, 0)


def test_the_shared_loop_reports_what_it_trained_on_and_keeps_counting_after_a_restart():
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    lengths = [5, 7, 3, 6, 4, 8]

    def next_batch(step: int, micro: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(5, 500, (2, 8), generator=generator)
        mask = torch.zeros(2, 8, dtype=torch.long)
        mask[:, :lengths[step - 1]] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    params = LoopParams(max_steps=6, eval_every=3, batch_size=2)
    run = LocalRun(model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="pydocs"))
    fine_tune(model, params, run, next_batch, lambda m: {"score": 1.0})
    last = run.results[-1]
    assert last["train_examples"] == 12 and last["train_tokens"] == 2 * sum(lengths)
    assert last["train_flops_est"] == pytest.approx(6 * train_flops(model, 2, 8))
    assert last["params_trained"] == sum(p.numel() for p in model.parameters())
    assert [r["train_tokens"] for r in run.results if "train_tokens" in r][:2] == [10, 24]  # cumulative per step

    # a restart from the step-3 checkpoint goes on counting from its counts
    restarted = LocalRun(model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="pydocs"))
    checkpoint = dict(run.saved_state)
    checkpoint["step"], checkpoint["cost"] = 3, {"examples": 6, "tokens": 2 * sum(lengths[:3]),
                                                 "flops": 3 * train_flops(model, 2, 8)}
    restarted.saved_state = checkpoint
    fine_tune(load_model("tiny-gpt2-random", "causal_lm")[0], params, restarted, next_batch, lambda m: {"score": 1.0})
    assert restarted.results[-1]["train_tokens"] == last["train_tokens"]
    assert restarted.results[-1]["train_flops_est"] == pytest.approx(last["train_flops_est"])


def test_frozen_parameters_are_not_counted_as_trained_and_workers_multiply_counts():
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    for p in model.transformer.h.parameters():
        p.requires_grad_(False)
    cost = TrainingCost(model)
    cost.add({"input_ids": torch.ones(2, 4, dtype=torch.long)})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cost.metrics()["params_trained"] == trainable < sum(p.numel() for p in model.parameters())
    assert cost.metrics(workers=4)["train_tokens"] == 4 * cost.metrics()["train_tokens"] == 32


def test_the_stopwatch_counts_this_process_cpu_time():
    watch = Stopwatch()
    total = sum(i * i for i in range(2_000_000))  # busy for a moment
    seconds = watch.metrics(workers=2)
    assert total > 0 and seconds["wall_s"] > 0 and seconds["cpu_s"] > 0


def test_the_pareto_front_keeps_the_arms_nothing_cheaper_beats():
    summary = pd.DataFrame({"arm": ["a", "b", "c", "d"], "mean": [10.0, 9.0, 9.5, 8.0],
                            "train_flops_est": [1.0, 2.0, 3.0, 4.0]})
    assert pareto_front(summary, "train_flops_est", "min") == ["a", "b", "d"]  # c costs more than b and is worse
    assert pareto_front(summary, "train_flops_est", "max") == ["a"]


class _RecordingLogger:
    """The trial logger's interface, recording what would be logged (MLflow itself is in the e2e tests)."""

    run_id = "r"

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def last_logged_step(self) -> int:
        return -1

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.logged.append((step, dict(metrics)))


def test_the_trials_clock_is_logged_at_the_last_step_without_logging_that_step_again():
    logger = _RecordingLogger()
    run = LocalRun(logger=logger)
    run.report(6, train_loss=1.5, test_perplexity=40.0)
    run.finish({"test_perplexity": 40.0, **Stopwatch().metrics()})
    assert [step for step, _ in logger.logged] == [6, 6]
    assert set(logger.logged[1][1]) == {"wall_s", "cpu_s"}  # only what is new: train_loss is not logged twice
    assert run.results[-1]["train_loss"] == 1.5 and "wall_s" in run.results[-1]  # Tune's result has everything
