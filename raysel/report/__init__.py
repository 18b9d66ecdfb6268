"""Reports of sweeps: the papers' tables and figures from any sweep, with honest statistics.

    from raysel import report
    frame = report.load("raysel_results/igf-50run")    # one row per trial × step (params, tags, metrics)
    table = report.summarize(frame, protocol)           # per arm: n, mean, SE, std, median, min, max, CI
    r = report.build("raysel_results/igf-50run", step=60, baseline="standard")   # = `raysel report ...`
    r.summary, r.comparisons, r.figures

A sweep is named by its storage directory, its MLflow parent run id or its MLflow experiment name;
MLflow is the source of truth, Ray Tune's result files the fallback (see sources.py).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from raysel.report.build import Report, build, markdown_table, summary_metrics
from raysel.report.sources import ReportError, SweepRecord, load_frame, resolve
from raysel.report.stats import (compare, compare_samples, describe, per_seed_selection, per_trial, step_table,
                                 summarize, values_at)


def load(sweep: "str | Path", *, tracking_uri: str | None = None, source: str = "auto") -> pd.DataFrame:
    """One row per trial × step: identity (trial_id, run_id, arm, method, stage, seed, status),
    ``params.*``, ``tags.*``, ``step`` and the metrics reported at that step.

    ``source``: "mlflow", "tune" or "auto" (MLflow when the sweep was tracked, else Ray Tune's files)."""
    frame, _ = load_frame(resolve(sweep, tracking_uri), source)
    return frame


__all__ = ["Report", "ReportError", "SweepRecord", "build", "compare", "compare_samples", "describe", "load",
           "markdown_table", "per_seed_selection", "per_trial", "resolve", "step_table", "summarize",
           "summary_metrics", "values_at"]
