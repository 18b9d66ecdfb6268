"""The standard fine-tuning method and the shared loop, without Ray (raysel.run_context.LocalRun)."""
from __future__ import annotations

import math

import pytest
import torch

from raysel.methods import get_method
from raysel.methods.loop import linear_schedule
from raysel.metrics import accuracy, perplexity, squad_em, squad_f1
from raysel.inputs import DataSpec, ModelSpec
from raysel.run_context import LocalRun

standard = get_method("standard")


def lm_run(seed: int = 0, model: str = "tiny-gpt2-random", **params):
    run = _local(seed, model)
    defaults = dict(max_steps=8, eval_every=4, context_len=32, batch_size=8, eval_examples=32, lr=3e-3)
    final = standard.train_loop(standard.Params(**{**defaults, **params}), run)
    return run, final


@pytest.mark.parametrize("model", ["tiny-gpt2-random", "tiny-llama-random"])  # LLaMA: smollm2-135m's architecture
def test_causal_lm_perplexity_falls_and_steps_are_the_loops(model):
    run, final = lm_run(model=model)
    assert [r["step"] for r in run.results] == list(range(0, 9))
    first, last = run.results[0], run.results[-1]
    assert first["step"] == 0 and "train_loss" not in first  # the untrained model, before any step
    assert last["test_perplexity"] < 0.8 * first["test_perplexity"]
    assert final == {"dev_perplexity": last["dev_perplexity"], "test_perplexity": last["test_perplexity"]}
    assert all(math.isfinite(r["train_loss"]) for r in run.results[1:])
    assert all("test_perplexity" in r for r in run.results)  # Tune sees the latest evaluation every step


def test_same_seed_same_numbers_other_seed_other_numbers():
    _, a = lm_run(seed=1, max_steps=4)
    _, b = lm_run(seed=1, max_steps=4)
    _, c = lm_run(seed=2, max_steps=4)
    assert a == b
    assert a != c


def test_a_restored_trial_finishes_exactly_like_an_uninterrupted_one():
    params = standard.Params(max_steps=8, eval_every=4, context_len=32, batch_size=8, eval_examples=32, lr=3e-3)
    full = _local(seed=3)
    final_full = standard.train_loop(params, full)
    crashed = _StopAfter(4, seed=3)
    with pytest.raises(_Stop):
        standard.train_loop(params, crashed)
    assert crashed.saved_state["step"] == 4
    resumed = _local(seed=3)
    resumed.saved_state = crashed.saved_state
    torch.manual_seed(12345)  # the global RNG state must not matter: batches come from (seed, step)
    final_resumed = standard.train_loop(params, resumed)
    assert [r["step"] for r in resumed.results] == [5, 6, 7, 8]
    assert final_resumed == pytest.approx(final_full, rel=1e-6)
    assert [r["train_loss"] for r in resumed.results] == pytest.approx([r["train_loss"] for r in full.results[5:]])
    # every result after the restart carries the objective, as before it (Optuna reads it from each one)
    assert [r["test_perplexity"] for r in resumed.results] == pytest.approx(
        [r["test_perplexity"] for r in full.results[5:]])


def test_a_trial_restored_from_its_last_checkpoint_finishes_at_its_real_step():
    """Killed after its final checkpoint: the restarted trial has no step left to run, and its one
    result (what the CLI table and trials.csv show) is at the checkpoint's step with its evaluation."""
    params = standard.Params(max_steps=4, eval_every=4, context_len=32, batch_size=8, eval_examples=32, lr=3e-3)
    done = _local(seed=3)
    final = standard.train_loop(params, done)
    restarted = _local(seed=3)
    restarted.saved_state = done.saved_state
    restarted.finish(standard.train_loop(params, restarted))
    assert [r["step"] for r in restarted.results] == [4]
    assert restarted.results[0]["test_perplexity"] == pytest.approx(final["test_perplexity"])


def _local(seed: int, model: str = "tiny-gpt2-random") -> LocalRun:
    return LocalRun(seed=seed, model=ModelSpec(name=model), data=DataSpec(name="pydocs"),
                    device=torch.device("cpu"))


class _Stop(Exception):
    pass


class _StopAfter(LocalRun):
    """A run that dies right after reporting ``step`` (a crash after a checkpoint)."""

    def __init__(self, step: int, seed: int):
        super().__init__(seed=seed, model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="pydocs"),
                         device=torch.device("cpu"))
        self.stop_step = step

    def report(self, step: int, **metrics: float) -> None:
        super().report(step, **metrics)
        if step == self.stop_step:
            raise _Stop


def test_classification_reports_dev_and_test_accuracy():
    run = LocalRun(seed=13, model=ModelSpec(name="tiny-bert"), data=DataSpec(name="pydocs-topics", k=4),
                   device=torch.device("cpu"))
    final = standard.train_loop(standard.Params(task="classification", max_steps=4, eval_every=2, batch_size=4,
                                                eval_examples=25), run)
    assert set(final) == {"dev_accuracy", "test_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in final.values())
    # 25 test examples: accuracy is a multiple of 1/25
    assert final["test_accuracy"] * 25 == pytest.approx(round(final["test_accuracy"] * 25), abs=1e-6)


class _Regression(torch.nn.Module):
    """A linear model in float64 whose forward returns ``.loss`` like a transformers model."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1, dtype=torch.float64)
        torch.nn.init.constant_(self.linear.weight, 0.5)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x, y):
        return type("Out", (), {"loss": ((self.linear(x).squeeze(-1) - y) ** 2).mean()})()


def _one_step(**loop) -> torch.Tensor:
    """The weight change of one SGD step of the shared loop on 8 fixed examples."""
    from raysel.methods.loop import LoopParams, fine_tune

    x = torch.arange(24, dtype=torch.float64).reshape(8, 3) / 10
    y = torch.linspace(-1, 1, 8, dtype=torch.float64)
    params = LoopParams(optimizer="sgd", lr=0.1, max_steps=1, eval_every=1, batch_size=8, **loop)
    per_micro = params.batch_size // params.grad_accum

    def next_batch(step, micro, generator):
        rows = slice(micro * per_micro, (micro + 1) * per_micro)
        return {"x": x[rows], "y": y[rows]}

    model = _Regression()
    before = model.linear.weight.detach().clone()
    fine_tune(model, params, _local(0), next_batch, lambda m: {})
    return model.linear.weight.detach() - before


def test_gradient_accumulation_averages_micro_batches_and_clipping_bounds_the_update():
    whole = _one_step(grad_accum=1, max_grad_norm=None)
    accumulated = _one_step(grad_accum=2, max_grad_norm=None)
    assert torch.allclose(accumulated, whole, rtol=1e-12, atol=0)  # 2 micro-batches of 4 = one batch of 8
    assert torch.allclose(_one_step(grad_accum=4, max_grad_norm=None), whole, rtol=1e-12, atol=0)
    clipped = _one_step(grad_accum=2, max_grad_norm=0.01)
    assert whole.norm() > 0.1 * 0.01 * 10  # the unclipped gradient is far above the bound
    # SGD: the step is lr × the clipped gradient (weight and bias together have norm max_grad_norm)
    assert clipped.norm() < 0.1 * 0.01 + 1e-12 and torch.allclose(clipped / clipped.norm(), whole / whole.norm())
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        standard.Params(batch_size=6, grad_accum=4)


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of a tensor's value into Python (each one waits on the device on a GPU)."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__bool__}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


def test_the_loop_reads_losses_back_once_per_optimizer_step_and_stops_a_non_finite_one_before_the_update():
    from raysel.methods.base import NonFiniteLossError
    from raysel.methods.loop import LoopParams, fine_tune

    x, y = torch.ones(8, 3, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    params = LoopParams(optimizer="sgd", lr=0.01, max_steps=3, batch_size=8, grad_accum=4, max_grad_norm=None)
    run = _local(0)
    with _HostReads() as reads:
        fine_tune(_Regression(), params, run, lambda step, micro, g: {"x": x[:2], "y": y[:2]}, None)
    assert reads.count == 3  # one per optimizer step, not one per micro-batch (12)
    assert [r["step"] for r in run.results] == [1, 2, 3] and all(r["train_loss"] > 0 for r in run.results)

    model = _Regression()
    before = model.linear.weight.detach().clone()
    poisoned = {"x": x[:2], "y": torch.tensor([0.0, float("nan")], dtype=torch.float64)}
    with pytest.raises(NonFiniteLossError, match="training loss became nan at step 1"):
        fine_tune(model, params, _local(0), lambda step, micro, g: poisoned if micro == 1 else {"x": x[:2], "y": y[:2]},
                  None)
    assert torch.equal(model.linear.weight.detach(), before)  # the nan never reached the weights


def test_the_loop_stops_early_and_an_untracked_loop_reports_and_saves_nothing():
    from raysel.methods.loop import LoopParams, fine_tune

    x, y = torch.ones(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    params = LoopParams(optimizer="sgd", lr=0.01, max_steps=10, eval_every=2, batch_size=4, lr_schedule="constant")
    drawn: list[int] = []

    def next_batch(step, micro, generator):
        drawn.append(step)
        return {"x": x, "y": y}

    run = _local(0)
    evaluations = iter(range(100))
    fine_tune(_Regression(), params, run, next_batch, lambda m: {"score": float(next(evaluations))},
              stop=lambda step, evaluation: evaluation["score"] >= 2)
    assert drawn == [1, 2, 3, 4] and [r["step"] for r in run.results] == [0, 1, 2, 3, 4]  # stopped at step 4
    assert [r["lr"] for r in run.results[1:]] == [0.01] * 4  # the constant schedule

    untracked = _local(0)
    final = fine_tune(_Regression(), params, untracked, next_batch, None, track=False)
    assert final == {} and untracked.results == [] and untracked.saved_state is None


def test_linear_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear_schedule(optimizer, warmup_steps=2, max_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs[0] < lrs[1] < lrs[2] == 1.0
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0
    assert schedule.get_last_lr()[0] == 0.0


def test_metrics():
    class Uniform(torch.nn.Module):
        def __init__(self, vocab: int):
            super().__init__()
            self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()

    assert perplexity(Uniform(50), torch.randint(0, 50, (4, 10))) == pytest.approx(50.0)
    assert accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)
    assert squad_em("The Eiffel tower!", ["eiffel tower"]) == 1.0
    assert squad_f1("in the year 1889", ["1889"]) == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert squad_f1("", ["x"]) == 0.0
