"""Statistics over a sweep's trials: pure functions over pandas tables (scipy.stats for the tests).

The input is the long table of ``raysel.report.load`` (one row per trial × step) or a table with one
row per trial. Which trials an arm's numbers come from is the protocol's business:
- ``seeds`` / ``search+seeds``: the seeds-stage trials (n = number of seeds);
- ``per_seed_grid`` (LM-BFF): per data seed the trial with the best dev ``metric`` (n = number of seeds,
  std is the population std, as LM-BFF reports);
- ``search``: every trial; the summary gives each arm's best trial, there are no tests.
"""
from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from raysel.protocols import SEARCH, best_per_seed
from raysel.spec import ProtocolSpec

SUMMARY_COLUMNS = ["arm", "metric", "step", "n", "mean", "se", "std", "median", "min", "max", "ci95_low",
                   "ci95_high", "iqm", "iqm_ci95_low", "iqm_ci95_high"]
STAT_COLUMNS = ["n", "mean", "se", "std", "median", "min", "max"]
MIN_RUNS_FOR_TESTS = 5  # below this a t-test's p-value leans entirely on the normality assumption
BOOTSTRAP_RESAMPLES = 9999
POWER, ALPHA = 0.8, 0.05  # the power lines: seeds needed to detect the observed effect at 80%, two-sided 5%
MAX_POWER_SEEDS = 100_000  # beyond this (or for no effect at all) the power line says inf


def describe(values: "pd.Series | np.ndarray", *, ddof: int = 1) -> dict[str, float]:
    """n, mean, standard error, std, median, min, max of a sample (NaNs dropped)."""
    x = pd.Series(values, dtype=float).dropna().to_numpy()
    n = len(x)
    if n == 0:
        return {"n": 0, **{k: math.nan for k in STAT_COLUMNS[1:]}}
    std = float(np.std(x, ddof=ddof)) if n > ddof else math.nan
    return {"n": n, "mean": float(x.mean()), "se": std / math.sqrt(n) if n > 1 else math.nan, "std": std,
            "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max())}


# ---------------------------------------------------------------- from trial × step rows to trials
def per_trial(frame: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """One row per trial: every metric's latest value as of ``step`` (default: the trial's last report).

    At a given step only trials that reached it count (a trial stopped early has no value at step 60).
    A table that already has one row per trial is returned as it is.
    """
    if "step" not in frame or "trial_id" not in frame:
        return frame.copy()
    ordered = frame.sort_values(["trial_id", "step"], kind="stable")
    if step is not None:
        reached = ordered.groupby("trial_id")["step"].transform("max") >= step
        ordered = ordered[reached & (ordered["step"] <= step)]
    last = ordered.groupby("trial_id", sort=False, dropna=False).last()  # last non-NaN value per column
    return last.reset_index()[list(frame.columns)]


def usable(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that did not fail or were not abandoned by a killed driver (their numbers are partial)."""
    keep = pd.Series(True, index=trials.index)
    if "status" in trials:
        keep &= ~trials["status"].isin(["FAILED", "KILLED"])
    if "error" in trials:
        keep &= trials["error"].isna()
    return trials[keep]


per_seed_selection = best_per_seed  # LM-BFF's model selection, for users of raysel.report


def compared_trials(trials: pd.DataFrame, protocol: ProtocolSpec) -> pd.DataFrame:
    """The trials (one row each, final values) whose numbers an arm reports under ``protocol``."""
    return protocol.rules.compared_trials(usable(trials), protocol)


def values_at(frame: pd.DataFrame, protocol: ProtocolSpec, metric: str, step: int | None = None,
              arms: list[str] | None = None) -> pd.DataFrame:
    """Columns arm, seed, trial_id, value: the compared trials' ``metric`` at ``step`` (default: last).

    Selection (per_seed_grid) always uses the final dev values; the value is read at ``step``."""
    chosen = compared_trials(per_trial(frame), protocol)
    if arms is not None:
        chosen = chosen[chosen["arm"].isin(arms)]
    values = chosen.copy()
    if step is not None:
        at = per_trial(frame, step)
        values[metric] = chosen["trial_id"].map(at.set_index("trial_id")[metric]) if metric in at else math.nan
    values = values.rename(columns={metric: "value"})
    columns = [c for c in ("arm", "seed", "trial_id", "value") if c in values]
    return values[columns].dropna(subset=["value"]).reset_index(drop=True)


# ---------------------------------------------------------------- tables
def summarize(frame: pd.DataFrame, protocol: ProtocolSpec, metric: str | None = None, step: int | None = None,
              arms: list[str] | None = None) -> pd.DataFrame:
    """One row per arm with the protocol's statistics of ``metric`` (default: the protocol's compared one).

    seeds-like protocols: n, mean, SE, std, median, min, max, a bootstrap 95% CI of the mean, and the
    interquartile mean (IQM, the mean of the middle half of the runs) with its bootstrap 95% CI — the
    rliable practice for many-seed protocols (its stratified bootstrap resamples runs within each task;
    an arm is one task here); search: the arm's best trial (on the protocol's metric) and its ``metric``."""
    metric = metric or protocol.compared_metric
    if frame.empty or metric not in frame:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    if not protocol.rules.compares_arms:
        return _search_summary(usable(per_trial(frame, step)), protocol, metric, arms)
    values = values_at(frame, protocol, metric, step, arms)
    ddof = protocol.rules.ddof
    rows = []
    for arm in _arm_order(values, arms):
        x = values.loc[values["arm"] == arm, "value"].to_numpy(dtype=float)
        low, high = bootstrap_ci((x,), _mean_statistic)
        iqm_low, iqm_high = bootstrap_ci((x,), interquartile_mean)
        rows.append({"arm": arm, "metric": metric, "step": "last" if step is None else step,
                     **describe(x, ddof=ddof), "ci95_low": low, "ci95_high": high,
                     "iqm": float(interquartile_mean(x)) if len(x) else math.nan,
                     "iqm_ci95_low": iqm_low, "iqm_ci95_high": iqm_high})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _search_summary(trials: pd.DataFrame, protocol: ProtocolSpec, metric: str,
                    arms: list[str] | None) -> pd.DataFrame:
    rows = []
    ranked = trials.dropna(subset=[protocol.metric])
    for arm in _arm_order(ranked, arms):
        group = ranked[ranked["arm"] == arm]
        best = group.sort_values(protocol.metric, ascending=protocol.mode == "min", kind="stable").iloc[0]
        row = {"arm": arm, "trials": len(group), "best_trial": best.get("trial_id"),
               protocol.metric: best[protocol.metric]}
        row[metric] = best.get(metric, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def step_table(frame: pd.DataFrame, protocol: ProtocolSpec, metric: str | None = None,
               arms: list[str] | None = None) -> pd.DataFrame:
    """Per arm and step: n, mean, SE, std, median, min, max of ``metric`` over the compared trials
    (the curves of the IGF paper's Figure 1, left)."""
    metric = metric or protocol.compared_metric
    columns = ["arm", "step", *STAT_COLUMNS]
    if "step" not in frame or metric not in frame:
        return pd.DataFrame(columns=columns)
    ids = set(compared_trials(per_trial(frame), protocol)["trial_id"])
    rows = frame[frame["trial_id"].isin(ids)].dropna(subset=[metric, "step"])
    if arms is not None:
        rows = rows[rows["arm"].isin(arms)]
    out = [{"arm": arm, "step": int(step), **describe(group[metric])}
           for (arm, step), group in rows.groupby(["arm", "step"], sort=True)]
    table = pd.DataFrame(out, columns=columns)
    order = {arm: i for i, arm in enumerate(_arm_order(rows, arms))}
    return table.sort_values(["arm", "step"], key=lambda c: c.map(order) if c.name == "arm" else c,
                             kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- comparisons
def compare(frame: pd.DataFrame, protocol: ProtocolSpec, metric: str | None = None, step: int | None = None,
            arms: list[str] | None = None, baseline: str | None = None) -> pd.DataFrame:
    """Pairwise tests between arms at ``step`` (default: each trial's last value).

    Each arm against ``baseline`` when given, else every pair. Columns: the two samples' n and mean,
    the difference of means with its bootstrap 95% CI, Cohen's d (pooled SD), Welch's t-test, the
    paired t-test on the seeds both arms ran, Mann-Whitney U, Holm-adjusted p-values over the table's
    comparisons (the family), the power lines (seeds per arm a two-sample / paired t-test would need to
    detect the observed effect at 80% power), and a note when n is too small for a test to mean much."""
    metric = metric or protocol.compared_metric
    if not protocol.rules.compares_arms or frame.empty or metric not in frame:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    values = values_at(frame, protocol, metric, step, arms)
    order = _arm_order(values, arms)
    if baseline is not None:
        pairs = [(arm, baseline) for arm in order if arm != baseline]
    else:
        pairs = list(combinations(order, 2))
    rows = [compare_samples(_sample(values, a), _sample(values, b), a, b)
            for a, b in pairs]
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for test in HOLM_TESTS:  # one family: the comparisons of this table
        table[f"{test}_p_holm"] = holm(table[f"{test}_p"].to_numpy(dtype=float))
    table.insert(2, "metric", metric)
    table.insert(3, "step", "last" if step is None else step)
    return table


COMPARISON_COLUMNS = ["arm", "vs", "n", "n_vs", "mean", "mean_vs", "diff", "diff_ci95_low", "diff_ci95_high",
                      "cohen_d", "welch_t", "welch_p", "welch_p_holm", "paired_n", "paired_t", "paired_p",
                      "paired_p_holm", "mannwhitney_u", "mannwhitney_p", "mannwhitney_p_holm", "seeds_for_power",
                      "paired_seeds_for_power", "note"]
HOLM_TESTS = ("welch", "paired", "mannwhitney")


def _sample(values: pd.DataFrame, arm: str) -> pd.Series:
    """An arm's values indexed by seed (NaN seeds kept apart so they never pair)."""
    rows = values[values["arm"] == arm]
    index = rows["seed"] if "seed" in rows else pd.RangeIndex(len(rows))
    return pd.Series(rows["value"].to_numpy(dtype=float), index=index)


def compare_samples(a: pd.Series, b: pd.Series, name_a: str = "a", name_b: str = "b") -> dict[str, Any]:
    """The comparison row of two samples indexed by seed (see ``compare``)."""
    from scipy import stats

    x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    row: dict[str, Any] = {"arm": name_a, "vs": name_b, "n": len(x), "n_vs": len(y),
                           "mean": _mean(x), "mean_vs": _mean(y), "diff": _mean(x) - _mean(y)}
    shared = a.index.intersection(b.index) if a.index.is_unique and b.index.is_unique else a.index[:0]
    pa, pb = a.loc[shared].to_numpy(dtype=float), b.loc[shared].to_numpy(dtype=float)
    paired = len(shared) >= 2 and len(shared) == len(x) == len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant or tiny samples; the note says it instead
        if paired:
            row["diff_ci95_low"], row["diff_ci95_high"] = bootstrap_ci((pa - pb,), _mean_statistic)
        else:
            row["diff_ci95_low"], row["diff_ci95_high"] = bootstrap_ci((x, y), _mean_difference)
        row["cohen_d"] = cohen_d(x, y)
        row["seeds_for_power"] = seeds_for_power(row["cohen_d"], paired=False)
        row["paired_seeds_for_power"] = (seeds_for_power(cohen_dz(pa - pb), paired=True) if len(shared) >= 2
                                         else math.nan)
        welch = stats.ttest_ind(x, y, equal_var=False) if min(len(x), len(y)) >= 2 else None
        row["welch_t"], row["welch_p"] = _test_values(welch)
        row["paired_n"] = len(shared)
        pair_test = stats.ttest_rel(pa, pb) if len(shared) >= 2 else None
        row["paired_t"], row["paired_p"] = _test_values(pair_test)
        mwu = stats.mannwhitneyu(x, y, alternative="two-sided") if min(len(x), len(y)) >= 1 else None
        row["mannwhitney_u"], row["mannwhitney_p"] = _test_values(mwu)
    row["note"] = small_sample_note(len(x), len(y), len(shared), x, y)
    return row


def cohen_d(x: np.ndarray, y: np.ndarray) -> float:
    """Difference of means over the pooled standard deviation (NaN when undefined)."""
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return math.nan
    pooled = math.sqrt(((nx - 1) * np.var(x, ddof=1) + (ny - 1) * np.var(y, ddof=1)) / (nx + ny - 2))
    return float((np.mean(x) - np.mean(y)) / pooled) if pooled > 0 else math.nan


def cohen_dz(differences: np.ndarray) -> float:
    """Mean paired difference over its standard deviation (the paired test's effect size)."""
    if len(differences) < 2:
        return math.nan
    sd = float(np.std(differences, ddof=1))
    mean = float(np.mean(differences))
    return mean / sd if sd > 0 else (math.inf if mean != 0 else math.nan)


def t_test_power(effect: float, n: int, *, paired: bool, alpha: float = ALPHA) -> float:
    """Power of a two-sided t-test at level ``alpha`` to detect a standardised effect: ``n`` seeds per arm
    (two-sample test, Cohen's d) or ``n`` pairs (paired test, Cohen's d_z), from the noncentral t."""
    from scipy import stats

    df = n - 1 if paired else 2 * n - 2
    if df < 1:
        return math.nan
    noncentrality = abs(effect) * (math.sqrt(n) if paired else math.sqrt(n / 2))
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def seeds_for_power(effect: float, *, paired: bool, power: float = POWER, alpha: float = ALPHA) -> float:
    """The fewest seeds per arm (pairs, if ``paired``) at which a two-sided t-test detects ``effect``
    with ``power``: the power line (inf for no effect, or beyond MAX_POWER_SEEDS; NaN if undefined)."""
    if effect is None or math.isnan(effect):
        return math.nan
    if math.isinf(effect):  # every paired difference the same non-zero value
        return 2.0
    if effect == 0 or t_test_power(effect, MAX_POWER_SEEDS, paired=paired, alpha=alpha) < power:
        return math.inf
    low, high = 1, 2  # power rises with n: double, then bisect (power(low) < target <= power(high))
    while t_test_power(effect, high, paired=paired, alpha=alpha) < power:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if t_test_power(effect, middle, paired=paired, alpha=alpha) < power:
            low = middle
        else:
            high = middle
    return float(high)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (family-wise error control; NaNs stay NaN
    and are not counted in the family)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = len(present)
    running = 0.0
    for rank, index in enumerate(present[np.argsort(p[present], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def small_sample_note(n: int, n_vs: int, paired_n: int, x: np.ndarray, y: np.ndarray) -> str:
    """What a reader should know before trusting the p-values of this comparison."""
    notes = []
    if min(n, n_vs) < 2:
        return f"{n} vs {n_vs} runs: too few for any test"
    if min(n, n_vs) < MIN_RUNS_FOR_TESTS:
        notes.append(f"only {n} vs {n_vs} runs: t-test p-values rest on normality and mean little")
    smallest_mwu_p = 2 / math.comb(n + n_vs, n)
    if smallest_mwu_p > 0.05:
        notes.append(f"Mann-Whitney cannot reach p < 0.05 with {n} vs {n_vs} runs "
                     f"(smallest possible p = {smallest_mwu_p:.2g})")
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        notes.append("no variance in either arm")
    if 0 < paired_n < 2:
        notes.append("fewer than 2 shared seeds: no paired test")
    return "; ".join(notes)


def bootstrap_ci(samples: tuple[np.ndarray, ...], statistic, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` (seeded: the same table every time); NaN if n < 2."""
    from scipy import stats

    if any(len(s) < 2 for s in samples):
        return math.nan, math.nan
    if all(np.ptp(s) == 0 for s in samples):  # constant samples: the statistic cannot move
        value = float(statistic(*samples, axis=-1))
        return value, value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.bootstrap(samples, statistic, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=level,
                                 method="percentile", vectorized=True, rng=np.random.default_rng(0))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def interquartile_mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean of the middle half of the runs (25% trimmed from each end; rliable's IQM)."""
    from scipy import stats

    return stats.trim_mean(x, 0.25, axis=axis)


def _mean_statistic(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def _test_values(result: Any) -> tuple[float, float]:
    if result is None:
        return math.nan, math.nan
    return float(result.statistic), float(result.pvalue)


def _arm_order(table: pd.DataFrame, arms: list[str] | None) -> list[str]:
    present = list(dict.fromkeys(table["arm"].dropna())) if "arm" in table else []
    return [a for a in arms if a in present] if arms is not None else present


def pareto_front(summary: pd.DataFrame, cost: str, mode: str) -> list[str]:
    """The arms no other arm beats on both mean ``cost`` (lower) and mean metric (``mode``), cheapest first."""
    rows = summary.dropna(subset=["mean", cost]).sort_values([cost, "mean"], ascending=[True, mode == "min"],
                                                             kind="stable")
    front, best = [], None
    for _, row in rows.iterrows():  # cheapest first: on the front when better than everything cheaper
        if best is None or (row["mean"] < best if mode == "min" else row["mean"] > best):
            front.append(row["arm"])
            best = row["mean"]
    return front


# ---------------------------------------------------------------- search sweeps
def search_trials(frame: pd.DataFrame, protocol: ProtocolSpec, arms: list[str] | None = None) -> pd.DataFrame:
    """The search-stage trials in start order with their objective and the best value so far."""
    trials = usable(per_trial(frame))
    if "stage" in trials:
        trials = trials[trials["stage"] == SEARCH]
    trials = trials.dropna(subset=[protocol.metric]) if protocol.metric in trials else trials.iloc[0:0]
    if arms is not None:
        trials = trials[trials["arm"].isin(arms)]
    if "start_time" in trials:
        trials = trials.sort_values("start_time", kind="stable")
    out = []
    for arm in _arm_order(trials, arms):
        group = trials[trials["arm"] == arm].copy()
        group.insert(1, "order", range(1, len(group) + 1))
        best = group[protocol.metric].cummin() if protocol.mode == "min" else group[protocol.metric].cummax()
        group["best_so_far"] = best
        out.append(group)
    if not out:
        return pd.DataFrame(columns=["arm", "order", "trial_id", protocol.metric, "best_so_far"])
    table = pd.concat(out, ignore_index=True)
    params = [c for c in table if c.startswith("params.") and table[c].astype(str).nunique() > 1]
    keep = ["arm", "order", "trial_id", *params, protocol.metric, "best_so_far"]
    if protocol.compared_metric != protocol.metric and protocol.compared_metric in table:
        keep.insert(-1, protocol.compared_metric)
    return table[keep]


def param_importances(search: pd.DataFrame, spaces: dict[str, dict[str, Any]], metric: str,
                      mode: str, studies: dict[str, list] | None = None) -> pd.DataFrame:
    """Optuna's fANOVA importance of each searched parameter, per arm (columns arm, param, importance).

    An arm's trials come from its Optuna study when ``studies`` has it (raysel.studies: its COMPLETE
    trials), else the study is rebuilt from the logged trials and the spec's distributions; arms with
    fewer than two finished trials, no searched parameter, or an objective that never varied (fANOVA has
    nothing to split) are left out."""
    import optuna

    from raysel.studies import searched

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for arm in dict.fromkeys([*search["arm"], *(studies or {})]):
        if arm in (studies or {}):
            finished = [searched(t) + (t.value,) for t in studies[arm] if t.state.name == "COMPLETE"]
        else:
            group = search[search["arm"] == arm]
            distributions = {k: _optuna_distribution(v) for k, v in spaces.get(arm, {}).items()
                             if _optuna_distribution(v) is not None and f"params.{k}" in group}
            finished = [({k: _plain(trial[f"params.{k}"]) for k in distributions}, distributions, float(trial[metric]))
                        for _, trial in group.iterrows()]
        if len(finished) < 2 or not finished[0][1] or len({value for *_, value in finished}) < 2:
            continue
        study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
        for params, distributions, value in finished:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        rows.extend({"arm": arm, "param": k, "importance": float(v)} for k, v in importances.items())
    return pd.DataFrame(rows, columns=["arm", "param", "importance"])


def _optuna_distribution(dist: Any):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from raysel.spec import Categorical, IntRange, LogUniform, Uniform

    if isinstance(dist, Uniform):
        return FloatDistribution(dist.low, dist.high)
    if isinstance(dist, LogUniform):
        return FloatDistribution(dist.low, dist.high, log=True)
    if isinstance(dist, IntRange):
        return IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, Categorical):
        return CategoricalDistribution(dist.choices)
    return None  # a fixed value is not searched


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
