"""Searchers and their settings (issue 23, item 2): the spec's protocol.searcher / protocol.sampler become
the Optuna sampler Tune asks (the end-to-end check is in tests/test_sweep_e2e.py), bad settings are named,
and the report says how many search trials were random."""
from __future__ import annotations

import optuna
import pytest

from raysel.searchers import SEARCHERS, make_sampler, random_trials, sampler_problems, search_note
from raysel.spec import SpecError, load_spec


def search_spec(**protocol) -> dict:
    return {"name": "s", "method": "standard", "params": {"max_steps": 2},
            "search_space": {"lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3},
                             "warmup_steps": {"distribution": "categorical", "choices": [0, 1]}},
            "protocol": {"kind": "search", "metric": "test_perplexity", "mode": "min", "num_samples": 6, **protocol}}


def test_each_searcher_is_the_optuna_sampler_with_the_specs_settings():
    tpe = make_sampler("tpe", {"n_startup_trials": 3, "multivariate": True, "group": True}, search_seed=5)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._n_startup_trials == 3 and tpe._multivariate and tpe._group
    assert make_sampler("optuna", {}, 0)._n_startup_trials == 10  # the old name; Optuna's default kept
    assert isinstance(make_sampler("random", {}, 0), optuna.samplers.RandomSampler)
    cma = make_sampler("cmaes", {"n_startup_trials": 2, "popsize": 4, "with_margin": True}, 0)
    assert isinstance(cma, optuna.samplers.CmaEsSampler)
    assert cma._n_startup_trials == 2 and cma._popsize == 4 and cma._with_margin


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes"])
def test_a_searcher_is_seeded_by_the_search_seed_unless_its_settings_say(name):
    def suggestions(sampler) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("x", -3, 3) - 1) ** 2 + t.suggest_float("y", -3, 3) ** 2,
                       n_trials=8)
        return [t.params["x"] for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = suggestions(make_sampler(name, {}, search_seed=1))
    assert first == suggestions(make_sampler(name, {}, search_seed=1))
    assert first != suggestions(make_sampler(name, {}, search_seed=2))
    assert first == suggestions(make_sampler(name, {"seed": 1}, search_seed=2))


def test_cma_es_moves_toward_the_optimum_after_its_start_up_trials():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler("cmaes", {"n_startup_trials": 1}, 0))
    study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 2) ** 2 + (t.suggest_float("y", -5, 5) + 1) ** 2,
                   n_trials=60)
    assert study.best_value < 0.1 and abs(study.best_params["x"] - 2) < 0.4


def test_how_many_search_trials_are_random_and_the_reports_line():
    assert random_trials("tpe", {}, 8) == 8  # the 8-trial searches before: every trial random
    assert random_trials("tpe", {"n_startup_trials": 3}, 8) == 3
    assert random_trials("random", {}, 8) == 8 and random_trials("grid", {}, 4) == 0
    assert random_trials("cmaes", {}, 8) == 1
    assert "this search was a random search" in search_note("tpe", {}, 8, [])
    note = search_note("cmaes", {"n_startup_trials": 2}, 8, ["warmup_steps"])
    assert note.startswith("searcher cmaes: 2 of each arm's 8 search trials were drawn at random")
    assert "the categorical parameters (warmup_steps) at random" in note


def test_spec_errors_name_the_searcher_and_its_settings():
    assert load_spec(search_spec(searcher="optuna")).protocol.searcher == "tpe"
    with pytest.raises(SpecError, match=r"protocol.searcher: unknown searcher 'bayes'; allowed: tpe, random, cmaes, "
                                        r"grid"):
        load_spec(search_spec(searcher="bayes"))
    with pytest.raises(SpecError) as caught:
        load_spec(search_spec(searcher="tpe", sampler={"n_startup_trials": -1, "popsize": 4}))
    message = str(caught.value)
    assert "protocol.sampler.n_startup_trials: Input should be greater than or equal to 0" in message
    assert "protocol.sampler.popsize: not a setting of searcher 'tpe'; its settings: seed, n_startup_trials" in message
    assert sampler_problems("grid", {"seed": 1}) == [
        "protocol.sampler.seed: not a setting of searcher 'grid'; its settings: none (the grid is the search space)"]
    with pytest.raises(SpecError, match=r"protocol.sampler: sets the searcher of the search phases of 'search', "
                                        r"'search\+seeds'; protocol 'seeds' has none"):
        load_spec({**search_spec(sampler={"seed": 1}), "search_space": {},
                   "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min",
                                "sampler": {"seed": 1}}})
    assert set(SEARCHERS) == {"tpe", "random", "cmaes", "grid"}


def test_cma_es_without_its_package_is_one_line_before_anything_starts(monkeypatch, tmp_path):
    import importlib.util

    from raysel import searchers
    from raysel.sweep import check_services

    real = importlib.util.find_spec
    monkeypatch.setattr(searchers.importlib.util, "find_spec", lambda name: None if name == "cmaes" else real(name))
    spec = load_spec({**search_spec(searcher="cmaes"), "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    with pytest.raises(SpecError, match=r"protocol.searcher: 'cmaes' needs the cmaes package: pip install "
                                        r"'raysel\[cmaes\]'"):
        check_services(spec)
    assert searchers.missing_package("tpe") is None
