"""Protocol expansion into phases, per-seed selection and summary statistics (no Ray needed)."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from raysel.report import describe, per_seed_selection, summarize
from raysel.spec import SpecError, load_spec
from raysel.protocols import PROTOCOLS, Phase, PerSeedGrid, expand, get_protocol, grid_variants
from raysel.sweep import param_space


def spec(kind: str, **protocol):
    return load_spec({
        "name": "p",
        "protocol": {"kind": kind, "metric": "dev_accuracy", "mode": "max", "report_metric": "test_accuracy",
                     **protocol},
        "arms": [
            {"name": "a", "method": "standard", "params": {"task": "classification"},
             "search_space": {"lr": {"distribution": "categorical", "choices": [1e-5, 1e-4]},
                              "warmup_steps": {"distribution": "int", "low": 0, "high": 2}}},
            {"name": "b", "method": "standard", "params": {"task": "classification", "lr": 3e-4},
             "search_space": {"max_steps": {"distribution": "categorical", "choices": [20, 40]}}},
        ],
    })


def test_search_runs_one_optuna_phase_per_arm_on_the_search_seed():
    phases = expand(spec("search", num_samples=5, search_seed=7))
    assert [p.label for p in phases] == ["search-a", "search-b"]
    assert all(p.is_search and p.seeds == [7] and p.num_trials == 5 for p in phases)
    space = param_space(phases[0])
    assert space["seed"] == 7
    assert type(space["variant"]["params"]["lr"]).__name__ == "Categorical"
    assert space["variant"]["params"]["task"] == "classification"


def test_seeds_protocol_runs_every_arm_on_the_same_seeds():
    s = load_spec({"name": "s", "protocol": {"kind": "seeds", "seeds": "5-seed", "metric": "m", "mode": "min"},
                   "arms": [{"name": "a", "method": "standard", "params": {"lr": 1e-4}},
                            {"name": "b", "method": "standard", "params": {"lr": 1e-3}}]})
    (phase,) = expand(s)
    assert phase.num_trials == 10 and phase.seeds == [13, 21, 42, 87, 100]
    assert [v["arm"] for v in phase.variants] == ["a", "b"]
    space = param_space(phase)
    assert space["seed"] == {"grid_search": [13, 21, 42, 87, 100]}


def test_the_50_run_protocol_is_seeds_0_to_49():
    s = load_spec({"name": "s", "method": "standard", "protocol": {"kind": "seeds", "metric": "m", "mode": "min"}})
    assert expand(s)[0].seeds == list(range(50))


def test_per_seed_grid_enumerates_the_grid_for_every_seed():
    (phase,) = expand(spec("per_seed_grid", seeds=[1, 2, 3]))
    # arm a: 2 lr × 3 warmup values; arm b: 2 max_steps values
    assert len(phase.variants) == 2 * 3 + 2
    assert phase.num_trials == 8 * 3
    lrs = sorted({(v["params"]["lr"], v["params"]["warmup_steps"]) for v in phase.variants if v["arm"] == "a"})
    assert lrs == [(1e-5, 0), (1e-5, 1), (1e-5, 2), (1e-4, 0), (1e-4, 1), (1e-4, 2)]


def test_search_then_seeds_uses_each_arms_best_config():
    s = spec("search+seeds", seeds=[5, 6])
    assert [p.stage for p in expand(s)] == ["search", "search"]
    (phase,) = get_protocol("search+seeds").next_phases(
        s, {"a": {"task": "classification", "lr": 1e-4, "warmup_steps": 1},
            "b": {"task": "classification", "lr": 3e-4, "max_steps": 40}})
    assert phase.stage == "seeds" and phase.seeds == [5, 6] and phase.num_trials == 4
    assert phase.variants[0]["params"]["lr"] == 1e-4 and phase.variants[1]["params"]["max_steps"] == 40


def test_stage_params_set_a_stages_own_params_over_the_arms_and_the_searchs_best():
    raw = spec("search+seeds", seeds=[5]).model_dump(mode="json")
    raw["arms"][0]["stage_params"] = {"search": {"eval_examples": 8}, "seeds": {"eval_examples": 64}}
    s = load_spec(raw)
    search_a = expand(s)[0]
    assert search_a.variants[0]["params"]["eval_examples"] == 8
    (seeds,) = get_protocol("search+seeds").next_phases(
        s, {"a": {"task": "classification", "lr": 1e-4, "eval_examples": 8}, "b": {"task": "classification"}})
    a, b = seeds.variants
    assert a["params"]["eval_examples"] == 64 and a["params"]["lr"] == 1e-4 and "eval_examples" not in b["params"]


@pytest.mark.parametrize("stage_params, expected", [
    ({"seeds": {"lr": -1}}, "arms.0.stage_params.seeds.lr: Input should be greater than 0"),
    ({"search": {"warmup_steps": 1}}, "arms.0.stage_params.search: warmup_steps searched (search_space)"),
    ({"tests": {"lr": 1e-4}}, "arms.0.stage_params.tests"),
])
def test_bad_stage_params_are_named(stage_params, expected):
    raw = spec("search+seeds").model_dump(mode="json")
    raw["arms"][0]["stage_params"] = stage_params
    with pytest.raises(SpecError, match=re.escape(expected)):
        load_spec(raw)


def test_search_then_seeds_needs_a_best_config_of_every_arm():
    with pytest.raises(RuntimeError, match=r"arm\(s\) \['b'\] reported 'dev_accuracy'"):
        get_protocol("search+seeds").next_phases(spec("search+seeds"), {"a": {"lr": 1e-4}})
    assert get_protocol("search").next_phases(spec("search"), {}) == []


def test_an_unknown_protocol_lists_the_registered_ones():
    with pytest.raises(SpecError, match=r"protocol.kind: unknown protocol 'grid'; allowed: 'search', 'seeds', "
                                        r"'search\+seeds', 'per_seed_grid'"):
        spec("grid")


def test_a_protocol_is_added_in_one_place(monkeypatch):
    """A protocol registered in raysel.protocols is validated, expanded and reported with no other change."""
    class LastSeedOnly(PerSeedGrid):
        name = "last_seed_only"

        def phases(self, spec):
            return [Phase(label="last", stage="grid", variants=grid_variants(spec, arm, "grid"),
                          seeds=spec.protocol.seed_list[-1:]) for arm in spec.resolved_arms()]

    monkeypatch.setitem(PROTOCOLS, LastSeedOnly.name, LastSeedOnly())
    s = spec("last_seed_only", seeds=[1, 2, 3])
    assert [(p.label, p.seeds, p.num_trials) for p in expand(s)] == [("last", [3], 6), ("last", [3], 2)]
    with pytest.raises(SpecError, match=r"search_space.lr: only categorical and int .* \(protocol last_seed_only\)"):
        load_spec({"name": "p", "method": "standard", "search_space": {"lr": {"distribution": "uniform", "low": 0,
                                                                                 "high": 1}},
                   "protocol": {"kind": "last_seed_only", "metric": "m", "mode": "min"}})
    frame = pd.DataFrame({"trial_id": ["t1", "t2"], "arm": ["a", "a"], "seed": [3, 3], "step": [1, 1],
                          "dev_accuracy": [0.5, 0.7], "test_accuracy": [0.4, 0.6], "status": "FINISHED"})
    summary = summarize(frame, s.protocol)
    assert summary.loc[0, "n"] == 1 and summary.loc[0, "mean"] == 0.6


def test_describe_gives_mean_se_std():
    stats = describe(pd.Series([1.0, 2.0, 3.0, 4.0]))
    assert stats["n"] == 4 and stats["mean"] == 2.5 and stats["median"] == 2.5
    assert stats["std"] == pytest.approx(1.2909944, rel=1e-6)
    assert stats["se"] == pytest.approx(1.2909944 / 2, rel=1e-6)
    assert math.isnan(describe(pd.Series([1.0]))["se"])


def test_per_seed_selection_picks_the_dev_best_config_per_seed():
    trials = pd.DataFrame({
        "arm": ["a"] * 4, "seed": [1, 1, 2, 2], "stage": ["grid"] * 4, "params.lr": [1e-5, 1e-4, 1e-5, 1e-4],
        "dev_accuracy": [0.5, 0.7, 0.9, 0.6], "test_accuracy": [0.40, 0.60, 0.80, 0.95]})
    chosen = per_seed_selection(trials, "dev_accuracy", "max")
    assert chosen["test_accuracy"].tolist() == [0.60, 0.80]  # not the test-best 0.95
    summary = summarize(trials, spec("per_seed_grid").protocol)
    row = summary.iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.70) and row["std"] == pytest.approx(0.10)  # population std


def test_seeds_summary_uses_the_seeds_stage_only():
    trials = pd.DataFrame({"arm": ["a", "a", "a"], "seed": [0, 1, 2], "stage": ["search", "seeds", "seeds"],
                           "dev_accuracy": [0.1, 0.2, 0.3], "test_accuracy": [0.9, 0.5, 0.7]})
    row = summarize(trials, spec("search+seeds").protocol).iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.6)

