"""Protocol statistics over a sweep's trials (the full report with figures is issue #4's).

``summarize`` turns the one-row-per-trial table of a sweep into one row per arm:
- seeds / search+seeds: the seeds-stage trials' final metric, n, mean, SE, std, median, min, max;
- per_seed_grid: per seed the dev-best config (on ``metric``), then its ``report_metric`` over seeds
  (mean and population std, as LM-BFF reports);
- search: per arm the best trial (on ``metric``) and its ``report_metric``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysel.spec import ProtocolSpec

SUMMARY_COLUMNS = ["arm", "metric", "n", "mean", "se", "std", "median", "min", "max"]


def describe(values: "pd.Series | np.ndarray", *, ddof: int = 1) -> dict[str, float]:
    """n, mean, standard error, std, median, min, max of a sample (NaNs dropped)."""
    x = pd.Series(values, dtype=float).dropna().to_numpy()
    n = len(x)
    if n == 0:
        return {"n": 0, **{k: math.nan for k in SUMMARY_COLUMNS[3:]}}
    std = float(np.std(x, ddof=ddof)) if n > ddof else math.nan
    return {"n": n, "mean": float(x.mean()), "se": std / math.sqrt(n) if n > 1 else math.nan, "std": std,
            "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max())}


def per_seed_selection(trials: pd.DataFrame, select_metric: str, select_mode: str,
                       report_metric: str) -> pd.DataFrame:
    """LM-BFF model selection: per (arm, seed) the row with the best dev metric."""
    ok = trials.dropna(subset=[select_metric])
    ascending = select_mode == "min"
    ordered = ok.sort_values(select_metric, ascending=ascending, kind="stable")
    return ordered.groupby(["arm", "seed"], sort=False).head(1).sort_values(["arm", "seed"])[
        ["arm", "seed", select_metric, report_metric] + [c for c in ok.columns if c.startswith("params.")]]


def summarize(trials: pd.DataFrame, protocol: ProtocolSpec) -> pd.DataFrame:
    """One row per arm with the protocol's statistics of its compared metric."""
    metric = protocol.compared_metric
    if trials.empty or metric not in trials:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rows: list[dict[str, Any]] = []
    if protocol.kind == "per_seed_grid":
        chosen = per_seed_selection(trials, protocol.metric, protocol.mode, metric)
        for arm, group in chosen.groupby("arm", sort=False):
            rows.append({"arm": arm, "metric": metric, **describe(group[metric], ddof=0)})
    elif protocol.kind == "search":
        for arm, group in trials.dropna(subset=[protocol.metric]).groupby("arm", sort=False):
            best = group.sort_values(protocol.metric, ascending=protocol.mode == "min").iloc[0]
            rows.append({"arm": arm, "trials": len(group), "best_trial": best.get("trial_id"),
                         protocol.metric: best[protocol.metric], metric: best[metric]})
    else:
        seeds = trials[trials["stage"] == "seeds"]
        for arm, group in seeds.groupby("arm", sort=False):
            rows.append({"arm": arm, "metric": metric, **describe(group[metric])})
    return pd.DataFrame(rows)


def load(sweep: "str | Path") -> pd.DataFrame:
    """The per-trial table a sweep wrote under its storage path (``trials.csv``)."""
    path = Path(sweep)
    path = path / "trials.csv" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: give a sweep directory (storage_path/name) that finished")
    return pd.read_csv(path)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A plain Markdown table (for the README and the MLflow artifact)."""
    if frame.empty:
        return "(no trials reported the metric)"
    cells = frame.map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) else str(v))
    header = "| " + " | ".join(cells.columns) + " |"
    rule = "|" + "|".join("---" for _ in cells.columns) + "|"
    return "\n".join([header, rule] + ["| " + " | ".join(row) + " |" for row in cells.to_numpy().tolist()])
