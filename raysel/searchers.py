"""The search phases' searchers (``protocol.searcher``) and their settings (``protocol.sampler``).

| searcher | what picks the next config                                  | settings (``protocol.sampler``)                  |
|----------|-------------------------------------------------------------|--------------------------------------------------|
| tpe      | Optuna's TPE; its first ``n_startup_trials`` are random     | n_startup_trials, multivariate, group, n_ei_candidates, constant_liar, seed |
| random   | Optuna's random sampler                                     | seed                                             |
| cmaes    | Optuna's CMA-ES (needs ``cmaes``); categorical params random | n_startup_trials, popsize, use_separable_cma, with_margin, seed |
| grid     | every point of the search space once (raysel's own)         | –                                                |

``seed`` defaults to ``protocol.search_seed``. ``optuna`` is the old name of ``tpe``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import Field


class _Settings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    seed: int | None = None  # default: protocol.search_seed


class TPESettings(_Settings):
    n_startup_trials: int = Field(10, ge=0)  # Optuna's default: the first 10 trials are random
    multivariate: bool | None = None
    group: bool | None = None
    n_ei_candidates: int | None = Field(None, gt=0)
    constant_liar: bool | None = None


class RandomSettings(_Settings):
    pass


class CmaEsSettings(_Settings):
    n_startup_trials: int = Field(1, ge=0)  # Optuna's default
    popsize: int | None = Field(None, gt=1)
    use_separable_cma: bool | None = None
    with_margin: bool | None = None


class GridSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")  # nothing to set: the grid is the search space


@dataclass(frozen=True)
class Searcher:
    name: str
    description: str
    settings: type[pydantic.BaseModel]


SEARCHERS: dict[str, Searcher] = {s.name: s for s in (
    Searcher("tpe", "Optuna's TPE (its first n_startup_trials trials are random)", TPESettings),
    Searcher("random", "Optuna's random sampler", RandomSettings),
    Searcher("cmaes", "Optuna's CMA-ES (pip install cmaes; categorical parameters are sampled at random)",
             CmaEsSettings),
    Searcher("grid", "every point of a categorical/int search space once", GridSettings),
)}
ALIASES = {"optuna": "tpe"}  # the name before there was a choice


def canonical(name: str) -> str:
    """A searcher's registry name (``optuna`` → ``tpe``); ValueError listing the valid ones."""
    name = ALIASES.get(name, name)
    if name not in SEARCHERS:
        raise ValueError(f"unknown searcher {name!r}; allowed: {', '.join(SEARCHERS)} (optuna: tpe)")
    return name


def settings(name: str, sampler: dict[str, Any]) -> Any:
    """The searcher's validated settings (pydantic's ValidationError names a bad or unknown key)."""
    return SEARCHERS[canonical(name)].settings.model_validate(sampler)


def setting_names(name: str) -> list[str]:
    return list(SEARCHERS[canonical(name)].settings.model_fields)


def sampler_problems(name: str, sampler: dict[str, Any]) -> list[str]:
    """Every problem of a spec's ``protocol.sampler`` for its searcher, one line each."""
    try:
        settings(name, sampler)
    except pydantic.ValidationError as err:
        allowed = ", ".join(setting_names(name)) or "none (the grid is the search space)"
        return [f"protocol.sampler.{'.'.join(map(str, e['loc']))}: "
                + (f"not a setting of searcher {canonical(name)!r}; its settings: {allowed}"
                   if e["type"] == "extra_forbidden" else e["msg"]) for e in err.errors()]
    return []


def missing_package(name: str) -> str | None:
    """What this machine lacks to run the searcher, or None."""
    if canonical(name) == "cmaes" and importlib.util.find_spec("cmaes") is None:
        return "protocol.searcher: 'cmaes' needs the cmaes package: pip install 'raysel[cmaes]' (or pip install cmaes)"
    return None


def make_sampler(name: str, sampler: dict[str, Any], search_seed: int):
    """The Optuna sampler of an Optuna searcher (tpe, random, cmaes) with the spec's settings; the settings
    a spec does not give keep Optuna's defaults."""
    import optuna

    given = settings(name, sampler).model_dump(exclude_unset=True)
    seed = given.pop("seed", None)
    seed = search_seed if seed is None else seed
    kind = canonical(name)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **given)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **given)
    raise ValueError(f"searcher {kind!r} is not an Optuna sampler")


def random_trials(name: str, sampler: dict[str, Any], num_samples: int) -> int:
    """How many of an arm's ``num_samples`` search trials the searcher draws at random (at least: with
    concurrent trials, one suggested before enough had finished is random too)."""
    kind = canonical(name)
    if kind == "grid":
        return 0
    if kind == "random":
        return num_samples
    return min(num_samples, settings(name, sampler).n_startup_trials)


def search_note(name: str, sampler: dict[str, Any], num_samples: int, categorical: list[str]) -> str:
    """The report's line on how each arm's search trials were chosen."""
    kind = canonical(name)
    if kind == "grid":
        return "searcher grid: every point of each arm's search space once"
    if kind == "random":
        return f"searcher random: all {num_samples} search trials of each arm were drawn at random"
    startup = settings(name, sampler).n_startup_trials
    random = random_trials(name, sampler, num_samples)
    line = (f"searcher {kind}: {random} of each arm's {num_samples} search trials were drawn at random "
            f"(n_startup_trials {startup})")
    if random == num_samples:
        line += f": this search was a random search (set protocol.sampler.n_startup_trials below {num_samples})"
    else:
        line += (f", the other {num_samples - random} by {kind.upper()}'s model (more of them random if trials "
                 "ran concurrently: a trial suggested before enough others had finished is drawn at random)")
    if kind == "cmaes" and categorical:
        line += f"; CMA-ES samples the categorical parameters ({', '.join(categorical)}) at random"
    return line
