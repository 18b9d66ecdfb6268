"""Compute cost beside every result (issue 23, item 8): the FLOP estimates (training, IGF's information
gain and learner) against torch's own counter, a method's counted steps (CaMeLS's meta step), the shared
loop's counts of what it trained on (also across a restart), the trial's clock, and the report's cost
columns and Pareto figure."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from raysel.cost import (CountedFlops, Stopwatch, TrainingCost, batch_size_and_tokens, forward_flops, train_flops,
                         with_total_flops)
from raysel.inputs import DataSpec, ModelSpec
from raysel.methods.camels.algorithm import meta_step, trainable_params
from raysel.methods.igf.algorithm import (SecondaryLearner, information_gain, information_gain_flops,
                                          train_secondary_learner)
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


@pytest.mark.parametrize("name", ["tiny-gpt2-random", "tiny-llama-random"])
@pytest.mark.parametrize("engine", ["exact", "loop", "first_order"])
def test_the_information_gain_estimate_is_within_a_tenth_of_torchs_counted_flops(name, engine):
    model, _ = load_model(name, "causal_lm")
    ids = torch.randint(5, 500, (26, 24), generator=torch.Generator().manual_seed(0))
    contexts, objective = ids[:6], ids[6:]
    with FlopCounterMode(display=False) as counted:
        information_gain(model, contexts, objective, engine=engine, chunk_size=3)
    estimate = information_gain_flops(model, 6, 20, 24, engine=engine)
    assert 0.9 <= counted.get_total_flops() / estimate <= 1.02


def test_the_secondary_learners_fit_estimate_is_within_a_seventh_of_torchs_counted_flops():
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    learner = SecondaryLearner.from_model(model)
    contexts = torch.randint(5, 500, (90, 16), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counted:
        train_secondary_learner(learner, contexts, torch.randn(90), heldout=20, batch_size=16, epochs=3, eval_every=2)
    estimate = learner.fit_flops(90, 16, heldout=20, batch_size=16, epochs=3, eval_every=2)
    assert 0.85 <= counted.get_total_flops() / estimate <= 1.02


def test_counted_flops_count_the_first_step_and_scale_the_others_by_their_size():
    base, _ = load_model("tiny-gpt2-random", "causal_lm")
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    weigher = torch.nn.Linear(1, 1)  # per-token weights from a learnable scale: a real second-order meta step
    start = trainable_params(base)

    def batch(rows: int, length: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(5, 500, (rows, length), generator=torch.Generator().manual_seed(length))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def step(length: int):
        documents = batch(2, length)
        return meta_step(base, weigher, start, documents, batch(2, 8), None, inner_lr=1e-3, sequential=True,
                         c_kl=0.0, c_norm=0.0, weigh=lambda d: weigher(torch.ones(*d["input_ids"].shape, 1)).squeeze(-1))

    with FlopCounterMode(display=False) as counted:
        step(12)
    counter = CountedFlops()
    _, first = counter.run(lambda: step(12), size=2.0)
    _, second = counter.run(lambda: step(12), size=3.0)
    assert first == counted.get_total_flops() > 0
    assert second == pytest.approx(1.5 * first)


def test_the_total_adds_selection_flops_where_a_trial_reported_them():
    frame = pd.DataFrame({"train_flops_est": [10.0, 20.0], "selection_flops_est": [5.0, None]})
    assert with_total_flops(frame)["total_flops_est"].tolist() == [15.0, 20.0]
    assert "total_flops_est" not in with_total_flops(frame.drop(columns="selection_flops_est"))


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
