"""Protocols: how a sweep's arms become trials, and which trials an arm's numbers come from.

| protocol      | phases                                                              | an arm's numbers           |
|---------------|---------------------------------------------------------------------|----------------------------|
| search        | per arm: Optuna (seeded TPE) over its search space on one seed, or  | its best trial             |
|               | with ``searcher: grid`` every point of it once                      |                            |
| seeds         | one grid: arms × seeds, fixed configs                               | every trial (n = seeds)    |
| search+seeds  | the search phases, then one grid: each arm's best config × seeds    | the seeds-stage trials     |
| per_seed_grid | one grid: arms × grid of the search space × seeds                   | per seed the dev-best trial|

In seeds and per_seed_grid an arm may have its own seeds and wait for other arms (``after:``): the
arms then run as several grids, one after the other, in the order ``after`` asks for.

A protocol is a ``Protocol`` subclass in ``PROTOCOLS``: it checks its part of a spec, expands into
phases, says what runs after a phase, and picks the trials (and statistics) the report compares.
Nothing outside this module branches on a protocol's name; adding one touches this file and its test.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from raysel.space import grid_values, is_distribution

if TYPE_CHECKING:
    import pandas as pd

    from raysel.spec import ArmSpec, ProtocolSpec, SweepSpec

SEARCH, SEEDS, GRID = "search", "seeds", "grid"  # the stage a trial ran in (its raysel.stage tag)


@dataclass
class Phase:
    """One Tuner: a search over one variant's distributions, or a grid of fixed variants × seeds."""

    label: str  # names the Tune experiment directory: "{sweep}/{label}"
    stage: str  # SEARCH, SEEDS or GRID
    variants: list[dict[str, Any]]  # arm, method, stage, params (values or distributions), model, data
    seeds: list[int]
    num_samples: int = 1  # Optuna trials (search phases)
    grid: bool = False  # a search phase that enumerates its grid (searcher: grid) instead of asking Optuna

    @property
    def is_search(self) -> bool:
        """Its trials' best config per arm is what a later phase may run (search+seeds)."""
        return self.stage == SEARCH

    @property
    def asks_searcher(self) -> bool:
        """Optuna proposes its configs (else Tune enumerates a grid of variants × seeds)."""
        return self.is_search and not self.grid

    @property
    def num_trials(self) -> int:
        return self.num_samples if self.asks_searcher else len(self.variants) * len(self.seeds)


class Protocol:
    """The rules of one protocol. Class attributes say what it allows; methods do the work."""

    name: ClassVar[str]
    searches: ClassVar[bool] = False  # has search phases: an arm needs a distribution; reports search history
    fixed_configs: ClassVar[bool] = False  # search spaces hold values only
    enumerates_grid: ClassVar[bool] = False  # every distribution is enumerated (categorical / int)
    own_seeds: ClassVar[bool] = False  # arms may set their own seeds and after:
    compares_arms: ClassVar[bool] = True  # statistics over seeds, tests, curves (else each arm's best trial)
    selects_per_seed: ClassVar[bool] = False  # an arm's numbers come from one selected trial per seed
    ddof: ClassVar[int] = 1  # of the std in the summary (0: the population std, as LM-BFF reports)
    error_bar: ClassVar[str] = "se"  # the bar chart's error bars: "se" or "std"

    # -- the spec
    def check(self, spec: "SweepSpec") -> list[str]:
        """Problems with the protocol section as a whole (one line each)."""
        searching = ", ".join(repr(n) for n, p in PROTOCOLS.items() if p.searches)
        if spec.protocol.searcher == "grid" and not self.searches:
            return [f"protocol.searcher: 'grid' is for the search phases of {searching} (protocol {self.name!r} "
                    "has none; per_seed_grid always enumerates its grid)"]
        if spec.protocol.sampler and not self.searches:
            return [f"protocol.sampler: sets the searcher of the search phases of {searching}; protocol "
                    f"{self.name!r} has none"]
        return []

    def check_space_value(self, value: Any, at: str, searcher: str | None) -> list[str]:
        """Problems with one search-space distribution under this protocol."""
        problems = []
        if self.enumerates_grid or searcher == "grid":
            try:
                grid_values(value)
            except ValueError as err:
                problems.append(f"{at}: {err} ({'searcher grid' if searcher == 'grid' else f'protocol {self.name}'})")
        if self.fixed_configs:
            searching = " or ".join(repr(n) for n, p in PROTOCOLS.items() if p.searches and p.compares_arms)
            problems.append(f"{at}: protocol {self.name!r} runs a fixed config; give a value, not a distribution "
                            f"(or use {searching})")
        return problems

    # -- running
    def phases(self, spec: "SweepSpec") -> list[Phase]:
        """The phases the sweep starts with, in running order."""
        raise NotImplementedError

    def next_phases(self, spec: "SweepSpec", best: dict[str, dict[str, Any]]) -> list[Phase]:
        """The phases to run once the first ones ended, given each arm's best params (search phases)."""
        return []

    # -- reporting
    def compared_trials(self, trials: "pd.DataFrame", protocol: "ProtocolSpec") -> "pd.DataFrame":
        """Of the usable trials (one row each), the ones whose numbers an arm reports."""
        return trials

    def notes(self, protocol: "ProtocolSpec", bootstrap_resamples: int) -> list[str]:
        """What a reader of the report should know about how its numbers were made."""
        return [f"SE = std / sqrt(n) with the sample std; CIs are percentile bootstrap ({bootstrap_resamples} "
                "resamples, seeded)"]


class Search(Protocol):
    name = "search"
    searches = True
    compares_arms = False

    def phases(self, spec):
        return search_phases(spec)

    def notes(self, protocol, bootstrap_resamples):
        return ["search sweeps are summarised by each arm's best trial; no tests between arms"]


class Seeds(Protocol):
    name = "seeds"
    fixed_configs = True
    own_seeds = True

    def phases(self, spec):
        return grid_phases(spec, SEEDS)

    def compared_trials(self, trials, protocol):
        return trials[trials["stage"] == SEEDS] if "stage" in trials else trials


class SearchThenSeeds(Search):
    name = "search+seeds"
    compares_arms = True

    def next_phases(self, spec, best):
        missing = [a.name for a in spec.resolved_arms() if a.name not in best]
        if missing:
            raise RuntimeError(f"no search trial of arm(s) {missing} reported {spec.protocol.metric!r}; "
                               "cannot run the seeds phase")
        variants = [variant(arm, SEEDS, best[arm.name]) for arm in spec.resolved_arms()]
        return [Phase(label=SEEDS, stage=SEEDS, variants=variants, seeds=spec.protocol.seed_list)]

    def compared_trials(self, trials, protocol):
        return trials[trials["stage"] == SEEDS] if "stage" in trials else trials

    notes = Protocol.notes


class PerSeedGrid(Protocol):
    """LM-BFF's model selection: per data seed the grid point with the best dev metric."""

    name = "per_seed_grid"
    enumerates_grid = True
    own_seeds = True
    selects_per_seed = True
    ddof = 0
    error_bar = "std"

    def phases(self, spec):
        return grid_phases(spec, GRID)

    def compared_trials(self, trials, protocol):
        return best_per_seed(trials, protocol.metric, protocol.mode)

    def notes(self, protocol, bootstrap_resamples):
        return [f"per data seed the config with the best dev {protocol.metric} ({protocol.mode}) is chosen; "
                "std is the population std"]


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (Search(), Seeds(), SearchThenSeeds(), PerSeedGrid())}


class UnknownProtocolError(ValueError):
    pass


def get_protocol(name: str) -> Protocol:
    """The protocol registered under ``name``; the error lists the valid names."""
    if name not in PROTOCOLS:
        raise UnknownProtocolError(f"unknown protocol {name!r}; allowed: {', '.join(map(repr, PROTOCOLS))}")
    return PROTOCOLS[name]


# ---------------------------------------------------------------- phases
def expand(spec: "SweepSpec") -> list[Phase]:
    """The phases a sweep starts with (its protocol may add more once they ended: ``next_phases``)."""
    return spec.protocol.rules.phases(spec)


def variant(arm: "ArmSpec", stage: str, params: dict[str, Any]) -> dict[str, Any]:
    """One config of an arm as a trial receives it (``config["variant"]``), the stage's own params
    (``stage_params``) over ``params``."""
    return {"arm": arm.name, "method": arm.method, "stage": stage, "params": {**params, **arm.stage_params.get(stage, {})},
            "model": arm.model.model_dump(), "data": arm.data.model_dump()}


def search_label(arm: str) -> str:
    """The label of an arm's search phase (its Tune experiment, its Optuna study)."""
    return f"{SEARCH}-{arm}"


def search_phases(spec: "SweepSpec") -> list[Phase]:
    """Per arm one search phase on the search seed: Optuna's, or every grid point once (searcher: grid)."""
    protocol = spec.protocol
    if protocol.searcher == "grid":
        return [Phase(label=search_label(arm.name), stage=SEARCH, seeds=[protocol.search_seed], grid=True,
                      variants=grid_variants(spec, arm, SEARCH)) for arm in spec.resolved_arms()]
    return [Phase(label=search_label(arm.name), stage=SEARCH, seeds=[protocol.search_seed],
                  num_samples=protocol.num_samples,
                  variants=[variant(arm, SEARCH, {**arm.params, **spec.parsed_search_space(arm)})])
            for arm in spec.resolved_arms()]


def grid_phases(spec: "SweepSpec", stage: str) -> list[Phase]:
    """Arms × configs × seeds as one grid, or one grid per group of arms that share seeds and order."""
    groups: list[tuple[list[int], list[dict[str, Any]]]] = []  # (seeds, variants), in running order
    for wave in arm_waves(spec.resolved_arms()):
        by_seeds: dict[tuple[int, ...], list[dict[str, Any]]] = {}
        for arm in wave:
            by_seeds.setdefault(tuple(spec.arm_seeds(arm)), []).extend(grid_variants(spec, arm, stage))
        groups += [(list(seeds), variants) for seeds, variants in by_seeds.items()]
    if len(groups) == 1:
        return [Phase(label=stage, stage=stage, variants=groups[0][1], seeds=groups[0][0])]
    # arms with their own seeds or an order: one Tuner each, run one after the other
    return [Phase(label=f"{stage}-{i}", stage=stage, variants=variants, seeds=seeds)
            for i, (seeds, variants) in enumerate(groups, 1)]


def grid_variants(spec: "SweepSpec", arm: "ArmSpec", stage: str) -> list[dict[str, Any]]:
    """An arm's fixed config (a search space of values) or every point of its grid."""
    space = spec.parsed_search_space(arm)
    keys = sorted(space)
    choices = [grid_values(space[k]) if is_distribution(space[k]) else [space[k]] for k in keys]
    return [variant(arm, stage, {**arm.params, **dict(zip(keys, combo))}) for combo in itertools.product(*choices)]


def arm_waves(arms: "list[ArmSpec]") -> "list[list[ArmSpec]]":
    """The arms in the order ``after`` asks for: wave 0 needs nothing, wave w needs only earlier waves."""
    by_name = {a.name: a for a in arms}
    depth: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise ValueError(f"after: is circular ({' -> '.join([*path, name])})")
        if name not in depth:
            depth[name] = 1 + max((visit(n, (*path, name)) for n in by_name[name].after), default=-1)
        return depth[name]

    for arm in arms:
        visit(arm.name, ())
    return [[a for a in arms if depth[a.name] == w] for w in range(max(depth.values(), default=-1) + 1)]


# ---------------------------------------------------------------- selection
def best_per_seed(trials: "pd.DataFrame", select_metric: str, select_mode: str) -> "pd.DataFrame":
    """Per (arm, seed) the trial (all its columns) with the best ``select_metric`` (LM-BFF's selection)."""
    ok = trials.dropna(subset=[select_metric])
    ordered = ok.sort_values(select_metric, ascending=select_mode == "min", kind="stable")
    return ordered.groupby(["arm", "seed"], sort=False).head(1).sort_values(["arm", "seed"], kind="stable")


__all__ = ["PROTOCOLS", "Phase", "Protocol", "UnknownProtocolError", "arm_waves", "best_per_seed", "expand",
           "get_protocol"]
