"""Sweep specs: the YAML files in tune_configs/, their ``--set`` overrides and their validation.

A spec is validated completely before Ray starts: every problem is collected and raised once as
a ``SpecError`` whose lines name the field and what is allowed.
"""
from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import pydantic
import yaml
from pydantic import Field

from raysel.inputs import DataSpec, ModelSpec
from raysel.inputs import Strict as _Strict
from raysel.methods import UnknownMethodError, get_method
from raysel import searchers
from raysel.protocols import PROTOCOLS, Protocol, UnknownProtocolError, arm_waves, get_protocol
from raysel.space import (DISTRIBUTIONS, Categorical, Distribution, IntRange, LogUniform, Uniform,  # noqa: F401
                          distribution_bounds, grid_values, is_distribution, parse_space_value)

SEED_PRESETS: dict[str, list[int]] = {
    "50-run": list(range(50)),  # IGF: 50 runs, error bars ±1 SE
    "5-seed": [13, 21, 42, 87, 100],  # LM-BFF / kernel: k-shot data seeds
}
RESERVED_TRIAL_KEYS = ("arm", "method", "seed", "stage", "model", "data")
# MLflow's tracking stores (a SQLAlchemy database may name its driver: postgresql+psycopg2://)
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
                    "uc")
MLFLOW_KEY_LENGTH = 250  # MLflow's limit for metric, param and tag names (mlflow.utils.validation)
LONGEST_SUMMARY_STAT = "ci95_high"  # the report logs {arm}.{metric}.{stat} to the sweep's parent run


class SpecError(ValueError):
    """A spec problem (or several), one line each: ``field: what is wrong (allowed: ...)``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        head = f"invalid sweep spec{f' {source}' if source else ''}"
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"{head}: {problems[0]}")
        else:
            super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


def seed_list(seeds: "str | list[int]") -> list[int]:
    """A preset's seeds ('50-run', '5-seed') or the list itself."""
    return list(SEED_PRESETS[seeds]) if isinstance(seeds, str) else list(seeds)


# ---------------------------------------------------------------- parts of a spec
class ArmSpec(_Strict):
    name: str
    method: str
    params: dict[str, Any] = {}
    search_space: dict[str, Any] = {}
    model: ModelSpec | None = None  # the fields it sets replace the spec's model's
    data: DataSpec | None = None  # the fields it sets replace the spec's data's (e.g. only labels)
    # seeds/per_seed_grid protocols: the arm's own seeds (default: the protocol's), and the arms whose
    # trials all finish before this arm's start (e.g. pruning: the scoring runs whose records it reads)
    seeds: Union[Literal["50-run", "5-seed"], list[int], None] = None
    after: list[str] = []
    # params one stage of the protocol sets over the others, e.g. a cheaper evaluation while searching:
    # {search: {splits: [val]}, seeds: {splits: [test]}} (they win over the search's best config too)
    stage_params: dict[Literal["search", "seeds", "grid"], dict[str, Any]] = {}


class ProtocolSpec(_Strict):
    kind: str = "search"  # a name in raysel.protocols.PROTOCOLS
    metric: str  # what the search optimises / the grid selects on (a dev metric)
    mode: Literal["min", "max"]
    report_metric: str | None = None  # what the tables compare (default: metric)
    num_samples: int = Field(8, gt=0)  # Optuna trials per arm (search, search+seeds)
    # search phases: Optuna's seeded TPE, or every point of the search space once (categorical / int
    # distributions; num_samples is then the grid's size), e.g. the CaMeLS paper's learning-rate grid
    searcher: str = "tpe"  # raysel.searchers: tpe (Optuna's TPE; "optuna" is its old name), random, cmaes, grid
    sampler: dict[str, Any] = {}  # the searcher's settings, e.g. {n_startup_trials: 4, multivariate: true}
    search_seed: int = 0  # the run seed of every search trial, and the sampler's seed (unless sampler.seed)
    # raysel.studies: where the Optuna searchers keep each search phase's study (an SQLAlchemy URL);
    # default: the SQLite file optuna.db in the sweep's directory
    study_storage: str | None = None
    seeds: Union[Literal["50-run", "5-seed"], list[int]] = "50-run"

    @pydantic.field_validator("kind")
    @classmethod
    def _is_a_protocol(cls, v: str) -> str:
        get_protocol(v)  # UnknownProtocolError (a ValueError) lists the protocols
        return v

    @pydantic.field_validator("searcher")
    @classmethod
    def _is_a_searcher(cls, v: str) -> str:
        return searchers.canonical(v)  # ValueError listing the searchers

    @property
    def rules(self) -> Protocol:
        """What this protocol runs and reports (raysel.protocols)."""
        return get_protocol(self.kind)

    @property
    def seed_list(self) -> list[int]:
        return seed_list(self.seeds)

    @property
    def compared_metric(self) -> str:
        return self.report_metric or self.metric


class SchedulerSpec(_Strict):
    """Early stopping of a phase's trials, in the loop's global steps. asha: Ray Tune's ASHA (its rungs
    from grace_period, reduction_factor, max_t); median: Ray Tune's median stopping rule (a trial whose best
    value by step t is worse than the median of the other trials' running means up to t is stopped, once
    t >= grace_period and min_samples_required other trials have reached t); pbt: Ray Tune's population
    based training (every perturbation_interval steps a trial in the bottom quantile_fraction takes the
    checkpoint of one in the top and perturbs the searched params: x0.8/x1.2, or resampled with
    resample_probability; synch: the population waits for its slowest at each interval)."""

    kind: Literal["none", "asha", "median", "pbt"] = "none"
    grace_period: int = Field(1, gt=0)
    reduction_factor: float = Field(3.0, gt=1)  # asha
    max_t: int | None = Field(None, gt=0)  # asha
    min_samples_required: int = Field(3, gt=0)  # median
    perturbation_interval: int | None = Field(None, gt=0)  # pbt (required): a multiple of the arms' eval_every
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)  # pbt
    resample_probability: float = Field(0.25, ge=0, le=1)  # pbt
    synch: bool = False  # pbt

    def problems(self) -> list[str]:
        """Settings the chosen kind does not read, given other than their defaults (misplaced, or the
        wrong kind; a dumped spec carries every default)."""
        reads = {"none": set(), "asha": {"grace_period", "reduction_factor", "max_t"},
                 "median": {"grace_period", "min_samples_required"},
                 "pbt": {"perturbation_interval", "quantile_fraction", "resample_probability", "synch"}}[self.kind]
        unread = [key for key, field in type(self).model_fields.items()
                  if key not in reads | {"kind"} and getattr(self, key) != field.default]
        problems = [f"scheduler.{key}: not a setting of scheduler {self.kind!r}; its settings: "
                    f"{', '.join(sorted(reads)) or 'none'}" for key in unread]
        if self.kind == "pbt" and self.perturbation_interval is None:
            problems.append("scheduler.perturbation_interval: pbt needs it (in loop steps; a multiple of the arms' "
                            "eval_every, when they checkpoint)")
        return problems



class ResourcesSpec(_Strict):
    workers: int = Field(0, ge=0)  # 0: loop in the trial process; N: Ray Train TorchTrainer, N workers
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, gt=0)  # None: as many as resources allow
    max_failures: int = Field(1, ge=-1)  # restarts of a failed trial from its last checkpoint
    memory_gb_per_worker: float = Field(0.0, ge=0)  # Ray's `memory` resource reserved per worker (0: none)
    custom_per_worker: dict[str, pydantic.PositiveFloat] = {}  # Ray custom resources per worker, e.g. {"accelerator_type:A100": 0.01}
    scale_timeout_s: float = Field(600.0, gt=0)  # how long to wait for the autoscaler to add nodes a trial needs


class CheckpointsSpec(_Strict):
    """How many of a trial's checkpoints stay on disk (in-process and Ray Train trials alike). A running
    trial keeps its latest checkpoint in any case (a restart resumes from it)."""

    keep: int = Field(1, ge=1)  # checkpoints kept per running trial: the latest, or the best by keep_best_by
    keep_best_by: str | None = None  # a reported metric: keep the `keep` best by it (and the latest)
    keep_best_mode: Literal["min", "max"] | None = None  # default: protocol.mode
    keep_finished: bool | None = None  # a trial that finished keeps its kept checkpoints; default: only
    #                                    when tracking is off (with tracking on its results are in MLflow)


class TrackingSpec(_Strict):
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"  # any MLflow tracking URI; relative sqlite paths → cwd
    experiment: str | None = None  # default: the sweep's name
    # each trial's run gets MLflow's system metrics (system/cpu_utilization_percentage, memory, disk, network,
    # GPU utilisation and memory where there is one), sampled every system_metrics_interval_s
    system_metrics: bool = False
    system_metrics_interval_s: float = Field(10.0, gt=0)
    # the best trial's trained model per arm (by the protocol metric), saved with save_pretrained, logged into
    # the parent run under best_model/ARM (raysel.best_models; OPF's: the merged model)
    log_best_model: bool = False

    @pydantic.field_validator("uri")
    @classmethod
    def _is_a_uri(cls, v: str) -> str:
        allowed = ("allowed: sqlite:///PATH, http(s)://HOST:PORT, postgresql://..., mysql://..., mssql://..., "
                   "databricks, file:PATH")
        found = re.match(r"^([a-z][a-z0-9+.-]*):", v)
        if not found:
            raise ValueError(f"{v!r} is not a tracking URI; {allowed}")
        if found.group(1).split("+")[0] not in TRACKING_SCHEMES:
            raise ValueError(f"{v!r}: MLflow cannot track to a {found.group(1)!r} URI; {allowed}")
        return v


class RaySpec(_Strict):
    address: str | None = None  # None: RAY_ADDRESS or a local Ray started for the sweep
    num_cpus: int | None = Field(None, gt=0)  # local Ray only
    object_store_memory: int | None = Field(None, gt=0)  # bytes, local Ray only
    dashboard: bool = False  # local Ray: start the dashboard (127.0.0.1:8265) even for in-process trials
    metrics_export_port: int | None = Field(None, gt=0, lt=65536)  # local Ray's Prometheus endpoint (None: any)


class ReportSpec(_Strict):
    """Defaults of ``raysel report`` for this sweep (the command's options override them)."""

    metric: str | None = None  # the compared metric (default: protocol.report_metric, else protocol.metric)
    step: int | None = Field(None, ge=0)  # box plot, bars and tests at this step (default: each trial's last)
    baseline: str | None = None  # an arm: test every other arm against it (default: every pair of arms)
    columns: list[str] = []  # more metrics for the summary, as their mean per arm (e.g. subset_percent)


class SweepSpec(_Strict):
    name: str = "sweep"
    method: str | None = None  # single-arm shorthand for arms: [{name: method, method, params, ...}]
    params: dict[str, Any] = {}
    search_space: dict[str, Any] = {}
    arms: list[ArmSpec] = []
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    protocol: ProtocolSpec
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    checkpoints: CheckpointsSpec = CheckpointsSpec()
    tracking: TrackingSpec = TrackingSpec()
    ray: RaySpec = RaySpec()
    report: ReportSpec = ReportSpec()
    storage_path: str = "raysel_results"

    @pydantic.field_validator("name")
    @classmethod
    def _name_is_a_path_part(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", v):
            raise ValueError("must be letters, digits, '_', '-', '.', '+' (it names a directory)")
        if len(v) > 200:
            raise ValueError(f"{len(v)} characters; at most 200 (it names a directory and an MLflow experiment)")
        return v

    def resolved_arms(self) -> list[ArmSpec]:
        """The arms with the spec's defaults filled in (a single-arm spec becomes one arm)."""
        arms = self.arms or [
            ArmSpec(name=self.method or "", method=self.method or "", params=self.params,
                    search_space=self.search_space)
        ]
        return [a.model_copy(update={"model": _laid_over(self.model, a.model), "data": _laid_over(self.data, a.data)})
                for a in arms]

    def arm_seeds(self, arm: ArmSpec) -> list[int]:
        """The seeds an arm runs on: its own, else the protocol's."""
        return seed_list(arm.seeds) if arm.seeds is not None else self.protocol.seed_list

    def parsed_search_space(self, arm: ArmSpec) -> dict[str, Any]:
        """An arm's search space with distributions parsed (fixed values stay as they are)."""
        return {key: parse_space_value(value) for key, value in arm.search_space.items()}


def _laid_over(base: _Strict, override: _Strict | None) -> _Strict:
    """An arm's model or data section: the fields the arm sets, over the spec's (``--set data.k=64``
    reaches an arm that only sets ``data.labels``)."""
    if override is None:
        return base
    return base.model_copy(update={field: getattr(override, field) for field in override.model_fields_set})


# ---------------------------------------------------------------- loading and validation
def load_spec(source: "str | os.PathLike | dict | SweepSpec",
              overrides: "list[str] | dict[str, Any] | None" = None, *, arms: list[str] | None = None) -> SweepSpec:
    """Load a spec from a YAML path or a dict, apply ``a.b=c`` overrides, keep only ``arms`` (by name,
    in the spec's order; default: all), validate everything."""
    if isinstance(source, SweepSpec):
        if not overrides and not arms:
            return source
        source = source.model_dump(mode="json", exclude_unset=True)
    label = None
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        label = str(path)
        raw = _read_yaml(path)
        raw.setdefault("name", path.stem)
    for key, value in parse_overrides(overrides).items():
        _set_dotted(raw, key, value, label)
    if arms:
        raw["arms"] = _kept_arms(raw, arms, label)
    return validate_spec(raw, label)


def _kept_arms(raw: dict[str, Any], names: list[str], label: str | None) -> list[Any]:
    """The spec's arms named in ``names`` (``--arms``), in the spec's order."""
    arms = raw.get("arms") if isinstance(raw.get("arms"), list) else []
    present = [a.get("name") for a in arms if isinstance(a, dict)]
    unknown = [n for n in names if n not in present]
    if unknown:
        raise SpecError([f"--arms: {', '.join(map(repr, unknown))} not in the spec; its arms: "
                         f"{', '.join(map(str, present)) or 'none (a single-method spec has no arms to choose)'}"],
                        label)
    kept = [a for a in arms if a.get("name") in names]
    problems = [f"--arms: arm {a['name']!r} runs after {other!r}, which --arms leaves out; add it to --arms"
                for a in kept for other in a.get("after") or [] if other in present and other not in names]
    if problems:
        raise SpecError(problems, label)
    return kept


def validate_spec(raw: dict[str, Any], label: str | None = None) -> SweepSpec:
    try:
        spec = SweepSpec.model_validate(raw)
    except pydantic.ValidationError as err:
        found = [_format_pydantic_error(e) for e in err.errors()]
        raise SpecError(list(dict.fromkeys(found + _check_raw_arms(raw))), label) from None
    problems = _check_semantics(spec)
    if problems:
        raise SpecError(problems, label)
    return spec


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError([f"file {str(path)!r} does not exist (give a YAML spec, e.g. tune_configs/quickstart.yaml)"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpecError(["not a text file: a spec is YAML in UTF-8 (e.g. tune_configs/quickstart.yaml)"],
                        str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or " ".join(str(err).split())
        raise SpecError([f"not valid YAML{where}: {what}"], str(path)) from None
    if not isinstance(raw, dict):
        raise SpecError(["the file must hold a mapping of spec fields (name, method, protocol, ...)"], str(path))
    # top-level `x-...` keys hold YAML anchors shared by several arms (as in docker-compose): not fields
    return {k: v for k, v in raw.items() if not str(k).startswith("x-")}


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML (lists, bools, null, numbers), with 1e-4-style floats as floats."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value) else value
        except ValueError:
            return value
    return value


def parse_overrides(overrides: "list[str] | dict[str, Any] | None") -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError([f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. params.lr=1e-4"])
        parsed[key.strip()] = parse_value(value.strip())
    return parsed


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, label: str | None) -> None:
    node: Any = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError([f"--set {dotted}: {'.'.join(parts[:i])} has {len(node)} items; "
                                 f"use an index 0..{len(node) - 1}"], label)
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise SpecError([f"--set {dotted}: {'.'.join(parts[:i + 1])} is a value, not a section"], label)
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise SpecError([f"--set {dotted}: index out of range"], label)
        node[int(last)] = value
    else:
        node[last] = value


def _format_pydantic_error(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    loc = re.sub(r"\.(uniform|loguniform|int|categorical)\b", "", loc)
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (misspelt?)"
    if kind == "literal_error":
        return f"{loc}: {error.get('input')!r} is not allowed; {msg[0].lower() + msg[1:]}"
    if kind == "union_tag_invalid":
        return (f"{loc}: unknown distribution {error.get('input', {}).get('distribution')!r}; "
                f"allowed: {', '.join(DISTRIBUTIONS)}")
    if kind == "missing":
        return f"{loc}: required field is missing"
    msg = msg.removeprefix("Value error, ")
    if isinstance(error.get("input"), dict):  # a check across several fields: the whole section adds nothing
        return f"{loc}: {msg}"
    shown = repr(error.get("input"))
    return f"{loc}: {msg} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def _check_semantics(spec: SweepSpec) -> list[str]:
    """Cross-field checks: methods exist, params and search spaces fit each method's Params."""
    problems: list[str] = []
    protocol = spec.protocol
    if spec.arms and (spec.method or spec.params or spec.search_space):
        problems.append("method/params/search_space: give either top-level method/params/search_space or arms, not both")
    if not spec.arms and not spec.method:
        problems.append("method: required (or give arms: [...]); see `raysel list` for the methods")
    problems += searchers.sampler_problems(protocol.searcher, protocol.sampler)
    problems += spec.scheduler.problems()
    if spec.scheduler.kind == "pbt" and not (protocol.rules.searches and protocol.searcher == "random"):
        problems.append(f"scheduler.kind: pbt draws its population itself and perturbs the searched params: it needs "
                        f"a protocol that searches with searcher 'random' (this spec: protocol {protocol.kind!r}, "
                        f"searcher {protocol.searcher!r})")
    if spec.tracking.log_best_model and not spec.tracking.enabled:
        problems.append("tracking.log_best_model: the best models are logged to MLflow; set tracking.enabled: true")
    if protocol.study_storage and (protocol.searcher == "grid" or not protocol.rules.searches
                                   or spec.scheduler.kind == "pbt"):
        problems.append(f"protocol.study_storage: only the Optuna searchers (tpe, random, cmaes) of a protocol "
                        f"that searches keep a study (not under scheduler pbt); this spec has searcher "
                        f"{protocol.searcher!r}, protocol {protocol.kind!r}, scheduler {spec.scheduler.kind!r}")
    if isinstance(protocol.seeds, list) and (not protocol.seeds or len(set(protocol.seeds)) != len(protocol.seeds)):
        problems.append("protocol.seeds: must be a non-empty list of distinct integers, or '50-run' / '5-seed'")
    arms = spec.resolved_arms()
    names = [a.name for a in arms]
    longest_metric = max([protocol.compared_metric, protocol.metric, spec.report.metric or "", *spec.report.columns],
                         key=len)
    room = MLFLOW_KEY_LENGTH - len(longest_metric) - len(LONGEST_SUMMARY_STAT) - 2
    for index, name in enumerate(names):
        if len(name) > room:
            problems.append(f"{f'arms.{index}.name' if spec.arms else 'method'}: {len(name)} characters; at most "
                            f"{room} here (the report logs '<arm>.{longest_metric}.{LONGEST_SUMMARY_STAT}' to MLflow, "
                            f"whose names hold {MLFLOW_KEY_LENGTH})")
    if len(set(names)) != len(names):
        problems.append(f"arms: names must be distinct (got {names})")
    if spec.report.baseline is not None and spec.report.baseline not in names:
        problems.append(f"report.baseline: {spec.report.baseline!r} is not an arm; arms: {', '.join(names)}")
    problems += protocol.rules.check(spec)
    for index, arm in enumerate(arms):
        where = f"arms.{index}" if spec.arms else ""
        problems += _check_arm(arm, where, protocol.rules, protocol.searcher)
    problems += _check_order(arms, protocol.rules)
    problems += _check_workers(spec.resources.workers, arms, bool(spec.arms))
    if spec.resources.workers == 0 and spec.resources.gpus_per_worker > 1:
        problems.append("resources.gpus_per_worker: a workers: 0 trial runs in one process; use at most 1 GPU")
    return problems


def _check_workers(workers: int, arms: list[ArmSpec], several: bool) -> list[str]:
    """Each arm's method runs on at most its ``max_workers`` Ray Train workers."""
    problems = []
    for arm in arms:
        try:
            limit = get_method(arm.method).max_workers
        except UnknownMethodError:
            continue  # reported by _check_arm
        if limit is not None and workers > limit:
            which = f"arm {arm.name!r} (method {arm.method!r})" if several else f"method {arm.method!r}"
            problems.append(f"resources.workers: {workers}, but {which} runs on at most {limit} worker(s) "
                            f"per trial; allowed: 0 (the trial's own process) to {limit}")
    return problems


def _check_order(arms: list[ArmSpec], rules: Protocol) -> list[str]:
    """Arms' own seeds and ``after``: protocols that allow them only, known arms, no cycles."""
    problems: list[str] = []
    names = [a.name for a in arms]
    allowing = " or ".join(repr(n) for n, p in PROTOCOLS.items() if p.own_seeds)
    for index, arm in enumerate(arms):
        where = f"arms.{index}"
        if (arm.seeds is not None or arm.after) and not rules.own_seeds:
            problems.append(f"{where}: an arm's own seeds and after: need protocol {allowing} "
                            f"(got {rules.name!r}; search phases run each arm on search_seed)")
        if isinstance(arm.seeds, list) and (not arm.seeds or len(set(arm.seeds)) != len(arm.seeds)):
            problems.append(f"{where}.seeds: must be a non-empty list of distinct integers, or '50-run' / '5-seed'")
        for other in arm.after:
            if other not in names or other == arm.name:
                problems.append(f"{where}.after: {other!r} is not another arm; arms: {', '.join(names)}")
    if not problems:
        try:
            arm_waves(arms)
        except ValueError as err:
            problems.append(f"arms: {err}")
    return problems


def _check_raw_arms(raw: dict[str, Any]) -> list[str]:
    """Method-level checks of the arms that parse, so that one run reports every problem."""
    protocol = raw.get("protocol") if isinstance(raw.get("protocol"), dict) else None
    rules = None  # a missing or unknown protocol is reported already; checks that depend on it would only add noise
    if protocol is not None:
        try:
            rules = get_protocol(protocol.get("kind", ProtocolSpec.model_fields["kind"].default))
        except (UnknownProtocolError, TypeError):
            pass
    searcher = (protocol or {}).get("searcher")
    if isinstance(raw.get("arms"), list) and raw["arms"]:
        candidates = [(f"arms.{i}", a) for i, a in enumerate(raw["arms"])]
    else:
        candidates = [("", {"name": "arm", "method": raw.get("method"), "params": raw.get("params", {}),
                            "search_space": raw.get("search_space", {})})]
    problems: list[str] = []
    for where, arm in candidates:
        try:
            problems += _check_arm(ArmSpec.model_validate(arm), where, rules, searcher)
        except pydantic.ValidationError:
            continue  # its structural errors are already reported
    return problems


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _check_arm(arm: ArmSpec, where: str, rules: Protocol | None, searcher: str | None) -> list[str]:
    """An arm's method, params and search space (``rules``: its protocol, None when that is invalid)."""
    try:
        method = get_method(arm.method)
    except UnknownMethodError as err:
        return [f"{_join(where, 'method')}: {err}"]
    problems: list[str] = []
    fields = method.Params.model_fields
    for key in arm.params:
        if key in RESERVED_TRIAL_KEYS:
            problems.append(f"{_join(where, 'params', key)}: {key!r} is reserved; set it in the spec's own section")
    space = {}
    for key, value in arm.search_space.items():
        try:
            space[key] = parse_space_value(value)
        except pydantic.ValidationError as err:
            problems += [_format_pydantic_error({**e, "loc": (*filter(None, [where]), "search_space", key, *e["loc"])})
                         for e in err.errors()]
    if len(space) < len(arm.search_space):
        return problems
    if rules is not None and rules.searches and not any(is_distribution(v) for v in space.values()):
        problems.append(f"{_join(where, 'search_space')}: empty; protocol {rules.name!r} needs at least one "
                        f"distribution ({', '.join(DISTRIBUTIONS)})")
    for key, value in space.items():
        at = _join(where, "search_space", key)
        if key not in fields:
            problems.append(f"{at}: {method.name!r} has no parameter {key!r}; allowed: {', '.join(sorted(fields))}")
            continue
        problems += _check_distribution(value, at, rules, searcher)
    problems += _check_params(method, {**arm.params, **{k: v for k, v in space.items() if not is_distribution(v)}},
                              _join(where, "params"))
    # every value a distribution can produce must be a valid parameter: check its ends/choices
    for key, value in space.items():
        if key in fields and is_distribution(value):
            for bound in distribution_bounds(value):
                problems += _check_params(method, {**arm.params, key: bound}, _join(where, "search_space"),
                                          only=key, value_note=f" (search-space value {bound!r})")
    fixed = {**arm.params, **{k: v for k, v in space.items() if not is_distribution(v)}}
    for stage, overrides in arm.stage_params.items():
        at = _join(where, "stage_params", stage)
        searched = sorted(k for k in overrides if is_distribution(space.get(k)))
        if searched:
            problems.append(f"{at}: {', '.join(searched)} searched (search_space); a stage cannot also fix it")
        problems += _check_params(method, {**fixed, **overrides}, at)
    if not problems:
        problems += _check_space_points(method, arm, space, _join(where, "search_space"))
    return list(dict.fromkeys(problems))


def _check_space_points(method: Any, arm: ArmSpec, space: dict[str, Any], where: str,
                        limit: int = 4096) -> list[str]:
    """The rules across several parameters (e.g. warmup_steps below max_steps) at every combination of
    the search space's choices and ends, with the fixed params: the first point that breaks one."""
    keys = [k for k, v in space.items() if is_distribution(v)]
    values = [distribution_bounds(space[k]) for k in keys]
    if not keys or math.prod(len(v) for v in values) > limit:
        return []
    fixed = {**arm.params, **{k: v for k, v in space.items() if not is_distribution(v)}}
    for combo in itertools.product(*values):
        point = dict(zip(keys, combo))
        try:
            method.Params.model_validate({**fixed, **point})
        except pydantic.ValidationError as err:
            message = err.errors()[0]["msg"].removeprefix("Value error, ")
            return [f"{where}: the point {point} breaks a rule of {method.name!r} with the fixed params: {message}"]
    return []


def _check_distribution(value: Any, at: str, rules: Protocol | None, searcher: str | None) -> list[str]:
    if not is_distribution(value):
        return []
    problems = []
    if isinstance(value, Categorical) and not value.choices:
        problems.append(f"{at}.choices: empty; give at least one value")
    if isinstance(value, (Uniform, LogUniform, IntRange)) and not value.low < value.high:
        problems.append(f"{at}: low ({value.low}) must be below high ({value.high})")
    if isinstance(value, LogUniform) and value.low <= 0:
        problems.append(f"{at}.low: a loguniform distribution needs low > 0 (got {value.low})")
    if isinstance(value, (Uniform, LogUniform)) and not all(map(math.isfinite, (value.low, value.high))):
        problems.append(f"{at}: low and high must be finite")
    if rules is not None:
        problems += rules.check_space_value(value, at, searcher)
    return problems


def _check_params(method: Any, params: dict[str, Any], where: str, *, only: str | None = None,
                  value_note: str = "") -> list[str]:
    try:
        method.Params.model_validate(params)
    except pydantic.ValidationError as err:
        out = []
        for e in err.errors():
            if only is not None and (not e["loc"] or e["loc"][0] != only):
                continue
            out.append(_format_pydantic_error({**e, "loc": (where, *e["loc"])}).replace(
                f" (got {e.get('input')!r})", value_note or f" (got {e.get('input')!r})"))
        return out
    return []
