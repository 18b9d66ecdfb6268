"""Pruning's pure functions (H-score and the related scores, removal sets, subsets) and the recipe's
records: they come from the training forward pass (checked with a model whose predictions we control)."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raysel.methods.pruning import (Pruning, ambiguous_subset, cartography, el2n_scores, forgetting_events, h_scores,
                                    keep_mask, ordered_subset, permutation, random_subset, record_step, removal_sets,
                                    winning_ticket)
from raysel.methods.pruning import recipe as pruning_recipe
from raysel.methods.pruning import load_records, records_dir
from raysel.methods.standard import Prepared
from raysel.inputs import DataSpec, ModelSpec
from raysel.run_context import LocalRun


def runs(*patterns: str) -> torch.Tensor:
    """Correctness [runs, epochs, 1] of one example from strings like '101' (one per run)."""
    return torch.tensor([[[c == "1"] for c in p] for p in patterns])


# ---------------------------------------------------------------- H-score
@pytest.mark.parametrize("patterns, expected", [
    (("000", "000", "000"), 0),  # never learned
    (("111", "111", "111"), 3),  # always learned
    (("101", "010", "101"), 0),  # alternating: right in some epochs of every run, never in all of them
    (("111", "011", "111"), 2),  # learned in every epoch of two runs
    (("110", "111", "000"), 1),  # forgotten in the last epoch of the first run
])
def test_h_score_counts_the_runs_correct_in_every_epoch(patterns, expected):
    assert h_scores(runs(*patterns)).tolist() == [expected]


def test_h_scores_of_several_examples_and_bad_shapes():
    correct = torch.cat([runs("11", "11"), runs("10", "11"), runs("00", "01")], dim=2)
    assert h_scores(correct).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match=r"\[runs, epochs, examples\]"):
        h_scores(torch.ones(2, 3, dtype=torch.bool))


def test_cartography_forgetting_and_el2n_from_the_same_records():
    gold = torch.tensor([[[0.2, 0.9], [0.4, 0.9]], [[0.6, 0.9], [0.8, 0.9]]])  # [2 runs, 2 epochs, 2 examples]
    correct = gold > 0.5
    scores = cartography(gold, correct)
    assert scores["confidence"].tolist() == pytest.approx([0.5, 0.9])
    assert scores["variability"].tolist() == pytest.approx([np.std([0.2, 0.4, 0.6, 0.8]), 0.0])
    assert scores["correctness"].tolist() == pytest.approx([0.5, 1.0])
    assert forgetting_events(torch.cat([runs("101", "110"), runs("011", "111")], dim=2)).tolist() == [2, 0]
    el2n = torch.arange(8.0).reshape(2, 2, 2)
    assert el2n_scores(el2n, epochs=1).tolist() == pytest.approx([2.0, 3.0])  # first epoch, averaged over runs
    assert el2n_scores(el2n, epochs=2).tolist() == pytest.approx([3.0, 4.0])


def test_record_step_from_logits():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    correct, gold, el2n = record_step(logits, torch.tensor([0, 1]))
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert correct.tolist() == [True, False]
    assert gold.tolist() == pytest.approx([float(p[0]), float(p[1])])
    assert el2n.tolist() == pytest.approx([float(torch.tensor([p[0] - 1, p[1]]).norm()),
                                           float(torch.tensor([p[0], p[1] - 1]).norm())])


# ---------------------------------------------------------------- removal sets and subsets
def test_the_papers_removal_sets_for_six_runs():
    assert winning_ticket(6) == (0, 6)
    assert removal_sets(6) == [(0, 6), (0, 1, 6), (0, 1, 2, 6), (0, 1, 2, 3, 6), (0, 1, 5, 6), (0, 1, 2, 3, 4, 6),
                               (0, 1, 2, 3, 5, 6)]
    assert removal_sets(3) == [(0, 3), (0, 1, 3), (0, 1, 2, 3)]  # sets that three runs make equal appear once


def test_subset_sizes_follow_the_h_distribution_and_keep_the_run_order():
    h = torch.tensor([0, 6, 3, 1, 6, 5, 2, 0, 4, 6])
    keep = keep_mask(h, winning_ticket(6))
    assert keep.tolist() == [False, False, True, True, False, True, True, False, True, False]
    assert int(keep_mask(h, (0, 1, 2, 6)).sum()) == 3 and int(keep_mask(h, (0, 1, 5, 6)).sum()) == 3
    order = permutation(10, seed=342)
    assert sorted(order.tolist()) == list(range(10)) and torch.equal(order, permutation(10, seed=342))
    kept = ordered_subset(order, keep)
    assert kept.tolist() == [i for i in order.tolist() if keep[i]]  # the order minus the removed examples


def test_equal_size_baselines():
    order = permutation(10, seed=4827)
    assert random_subset(order, 4).tolist() == order[:4].tolist()
    variability = torch.tensor([0.1, 0.5, 0.5, 0.0, 0.9, 0.2, 0.3, 0.8, 0.05, 0.4])
    chosen = ambiguous_subset(variability, order, 4)
    assert len(chosen) == 4 and set(chosen.tolist()) == {4, 7, 1, 2}  # the four most variable
    assert chosen.tolist() == [i for i in order.tolist() if i in {1, 2, 4, 7}]  # in the run's order
    assert set(ambiguous_subset(variability, order, 2).tolist()) == {4, 7}


# ---------------------------------------------------------------- the records come from the training pass
class Controlled(torch.nn.Module):
    """Predicts the gold label only in training mode and only while ``w > 0``; its loss is ``10 w``, so
    the first SGD step (lr 1) makes w = -9. Evaluation (eval mode) is always wrong."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, input_ids, labels=None, attention_mask=None):
        right = self.training and float(self.w.detach()) > 0
        predicted = labels if right else 1 - labels if labels is not None else torch.ones_like(input_ids[:, 0])
        logits = torch.nn.functional.one_hot(predicted, 2).float() * 5
        return SimpleNamespace(logits=logits, loss=10 * self.w + 0 * logits.sum())


@dataclass
class Examples:
    labels: torch.Tensor

    @property
    def encoded(self):
        return [[i] for i in range(len(self.labels))]

    def __len__(self):
        return len(self.labels)

    def batch(self, ids):
        return {"input_ids": torch.tensor(ids)[:, None], "labels": self.labels[ids]}


def test_records_are_the_training_forward_pass_before_its_update(tmp_path, monkeypatch):
    examples = Examples(torch.tensor([0, 1] * 6))  # 12 examples, batches of 4: 3 steps per epoch

    def prepare(params, run):
        model = Controlled()
        return Prepared(model, None, lambda m: {"dev_accuracy": 0.0}, len(examples), None, examples)

    monkeypatch.setattr(pruning_recipe, "prepare", prepare)
    run = LocalRun(seed=342, model=ModelSpec(name="controlled"), device=torch.device("cpu"),
                   artifact_dir=tmp_path / "trial", shared_dir=tmp_path / "shared")
    params = Pruning.Params.model_validate({"phase": "score", "epochs": 2, "batch_size": 4, "optimizer": "sgd",
                                            "lr": 1.0, "max_grad_norm": None, "score_runs": 2})
    final = Pruning().train_loop(params, run)
    records = load_records(records_dir(tmp_path / "shared", "scores"))
    correct = records.correct[0]  # [epochs, examples] of this run
    first_batch = permutation(12, 342)[:4].tolist()
    # the first step's forward ran in training mode before the update: its 4 examples are right;
    # every later forward came after w turned negative (an extra pass after the update would be wrong too)
    assert correct[0].nonzero().flatten().tolist() == sorted(first_batch)
    assert not correct[1].any()
    assert records.gold_prob[0, 0, first_batch].min() > 0.99
    assert final["train_accuracy_last_epoch"] == 0.0 and final["correct_every_epoch_percent"] == 0.0
    assert (tmp_path / "trial" / "seed-342.pt").exists()


def test_a_subset_trains_on_its_examples_in_the_run_order(tmp_path, monkeypatch):
    """Stage train: the batches are the run's permutation minus the removed examples; steps follow the size."""
    examples = Examples(torch.tensor([0, 1] * 5))
    seen: list[list[int]] = []

    class Watching(Controlled):
        def forward(self, input_ids, labels=None, attention_mask=None):
            if self.training:
                seen.append(input_ids[:, 0].tolist())
            return super().forward(input_ids, labels, attention_mask)

    monkeypatch.setattr(pruning_recipe, "prepare", lambda params, run: Prepared(
        Watching(), None, lambda m: {"dev_accuracy": 0.0}, len(examples), None, examples))
    shared = tmp_path / "shared"
    directory = records_dir(shared, "scores")
    directory.mkdir(parents=True)
    h = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1, 1, 0])  # with 2 runs: winning ticket keeps H = 1 (4 examples)
    digest = pruning_recipe._digest(examples.encoded, examples.labels, "controlled")
    for run_index in range(2):
        correct = torch.stack([h > run_index] * 3)  # [epochs, N]: run r right in every epoch iff H > r
        torch.save({"seed": run_index, "examples_digest": digest, "model": "controlled", "correct": correct,
                    "gold_prob": correct.float(), "el2n": 1 - correct.float()}, directory / f"seed-{run_index}.pt")
    run = LocalRun(seed=7, model=ModelSpec(name="controlled"), device=torch.device("cpu"),
                   artifact_dir=tmp_path / "trial", shared_dir=shared)
    params = Pruning.Params.model_validate({"phase": "train", "subset": "remove", "epochs": 2, "batch_size": 3,
                                            "score_runs": 2, "lr": 1e-3})
    final = Pruning().train_loop(params, run)
    kept = [i for i in permutation(10, 7).tolist() if h[i] == 1]
    assert seen == [kept[:3], kept[3:]] * 2  # 2 steps per epoch, 2 epochs
    assert final["subset_size"] == 4 and final["subset_percent"] == 40.0

    wrong = Pruning.Params.model_validate({**params.model_dump(), "score_runs": 3})
    with pytest.raises(Exception, match=r"3 scoring runs' records expected in .*found seed-0, seed-1"):
        Pruning().train_loop(wrong, run)


def test_pruning_params_are_checked():
    with pytest.raises(ValueError, match="set epochs, not max_steps"):
        Pruning.Params.model_validate({"max_steps": 10})
    with pytest.raises(ValueError, match=r"remove_h \[0, 7\]: give H values in 0..score_runs \(6\)"):
        Pruning.Params.model_validate({"subset": "remove", "remove_h": [0, 7]})
    with pytest.raises(ValueError, match="removes every H value"):
        Pruning.Params.model_validate({"score_runs": 2, "remove_h": [0, 1, 2]})
    with pytest.raises(ValueError, match="phase 'score' trains on the full split"):
        Pruning.Params.model_validate({"phase": "score", "subset": "random"})
    assert Pruning.Params.model_validate({"score_runs": 4}).removal == (0, 4)


def test_preflight_rejects_k_shot_data():
    from raysel.data.errors import DataError

    with pytest.raises(DataError, match="leave data.k unset"):
        Pruning().preflight(Pruning.Params(), ModelSpec(name="tiny-bert"), DataSpec(name="pydocs-topics", k=4), [1])
