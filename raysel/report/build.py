"""``build``: a sweep's report — tables (Markdown, CSV, JSON) and PNG figures, written and logged.

What a report holds depends on the protocol (raysel.protocols):
seeds-like sweeps get the summary per arm, tests between arms, curves with ±1 SE bands, a box plot
and a bar chart at the chosen step; search sweeps get each arm's best trial, the optimisation
history and the parameter importances; search+seeds gets both.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raysel import studies
from raysel.cost import COST_METRICS, with_total_flops
from raysel.report import stats
from raysel.report.sources import ReportError, SweepRecord, load_frame, metric_columns, resolve
from raysel.searchers import search_note
from raysel.spec import Categorical, ProtocolSpec, SweepSpec
from raysel.storage import Storage
from raysel.tracking import redact_uri

DEFAULT_OUT = Path("raysel_reports")  # where reports of sweeps without a local storage directory go


@dataclass
class Report:
    """Everything ``raysel report`` shows and writes; tables are pandas DataFrames."""

    name: str
    protocol: ProtocolSpec
    metric: str
    step: int | None
    source: str  # "mlflow" or "tune"
    frame: pd.DataFrame  # one row per trial × step
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    steps: pd.DataFrame
    search: pd.DataFrame
    importances: pd.DataFrame
    selection: pd.DataFrame | None = None  # per_seed_grid: the dev-best trial per (arm, seed)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    method_figures: dict[str, Path] = field(default_factory=dict)  # drawn by the methods (see method_figures)
    files: list[Path] = field(default_factory=list)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The non-empty tables by file stem."""
        tables = {"summary": self.summary, "comparisons": self.comparisons, "steps": self.steps,
                  "search": self.search, "importances": self.importances, "selection": self.selection}
        return {k: v for k, v in tables.items() if v is not None and not v.empty}

    def markdown(self) -> str:
        """The report as one Markdown document (tables, notes, figure links)."""
        at = "each trial's last report" if self.step is None else f"step {self.step}"
        parts = [f"# Sweep `{self.name}`: {self.metric} ({self.protocol.kind}, at {at})"]
        titles = {"summary": "Summary per arm", "comparisons": "Comparisons between arms",
                  "selection": "Per-seed selection (dev-best config per data seed)",
                  "search": "Search trials", "importances": "Parameter importances (fANOVA)"}
        for key, title in titles.items():
            table = self.tables().get(key)
            if table is not None:
                parts.append(f"## {title}\n\n{markdown_table(table)}")
        if self.notes:
            parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in self.notes))
        if self.figures:
            parts.append("## Figures\n\n" + "\n".join(f"![{k}]({p.name})" for k, p in self.figures.items()))
        return "\n\n".join(parts) + "\n"


def build(sweep: "str | Path", *, tracking_uri: str | None = None, source: str = "auto",
          metric: str | None = None, step: int | None = None, arms: list[str] | None = None,
          baseline: str | None = None, out_dir: "str | Path | None" = None, make_figures: bool = True,
          log: bool = False) -> Report:
    """Build a sweep's report (the API behind ``raysel report``) and write it to ``out_dir``.

    ``sweep``: storage directory, MLflow parent run id, or experiment name. ``out_dir`` defaults to
    the sweep's ``report/`` directory (else ``raysel_reports/<name>``). ``log=True`` also logs the
    files as artifacts of the sweep's MLflow parent run (under ``report/``)."""
    record = resolve(sweep, tracking_uri)
    frame, used = load_frame(record, source)
    spec = SweepSpec.model_validate(record.spec)
    protocol = spec.protocol
    metric = metric or spec.report.metric or protocol.compared_metric
    step = step if step is not None else spec.report.step
    if baseline is None and not (arms and spec.report.baseline not in arms):  # the spec's, unless --arms drops it
        baseline = spec.report.baseline
    arms = _check_options(frame, metric, step, arms, [a.name for a in spec.resolved_arms()], baseline,
                          spec.report.columns)
    report = _compute(record, frame, used, protocol, metric, step, arms, baseline, spec)
    out = Path(out_dir) if out_dir else (record.sweep_dir / "report" if record.sweep_dir else DEFAULT_OUT / record.name)
    if make_figures and record.sweep_dir:
        report.method_figures = method_figures(spec, record.sweep_dir, out)
    write(report, out, make_figures)
    if record.storage_uri and not out_dir:  # read from a URI: the report is stored back beside the sweep
        Storage.parse(record.storage_uri).upload("report")
    if log:
        log_report(report, record)
    return report


def _compute(record: SweepRecord, frame: pd.DataFrame, used: str, protocol: ProtocolSpec, metric: str,
             step: int | None, arms: list[str], baseline: str | None, spec: SweepSpec) -> Report:
    rules = protocol.rules
    frame = with_total_flops(frame)
    search = stats.search_trials(frame, protocol, arms) if rules.searches else None
    spaces = {a.name: spec.parsed_search_space(a) for a in spec.resolved_arms()}
    study_url, study_trials, study_problem = _studies(record, spec, arms)
    if search is not None and study_trials:  # each search trial's number and state in its Optuna study
        search = search.merge(studies.trial_table(study_trials).drop(columns="arm"), on="trial_id", how="left")
    importances = (stats.param_importances(search, spaces, protocol.metric, protocol.mode, study_trials)
                   if search is not None else None)
    selection = None
    if rules.selects_per_seed:
        chosen = stats.compared_trials(stats.per_trial(frame), protocol)
        params = [c for c in chosen if c.startswith("params.") and chosen[c].astype(str).nunique() > 1]
        keep = ["arm", "seed", "trial_id", *params, protocol.metric, metric]
        selection = chosen[chosen["arm"].isin(arms)][list(dict.fromkeys(keep))].reset_index(drop=True)
    summary = stats.summarize(frame, protocol, metric, step, arms)
    # the spec's columns at the report's step (e.g. a pruned subset's size beside its accuracy), then what each
    # arm's result cost: its trials' totals at their end, averaged
    costs = [c for c in COST_METRICS if c in frame and c not in spec.report.columns] if rules.compares_arms else []
    for column, at in [*((c, step) for c in spec.report.columns), *((c, None) for c in costs)]:
        values = stats.values_at(frame, protocol, column, at, arms)
        summary[column] = summary["arm"].map(values.groupby("arm")["value"].mean())
    report = Report(
        name=record.name, protocol=protocol, metric=metric, step=step, source=used, frame=frame,
        summary=summary,
        comparisons=stats.compare(frame, protocol, metric, step, arms, baseline),
        steps=stats.step_table(frame, protocol, metric, arms) if rules.compares_arms else pd.DataFrame(),
        search=search if search is not None else pd.DataFrame(),
        importances=importances if importances is not None else pd.DataFrame(), selection=selection)
    report.notes = _notes(report, record)
    if rules.searches:
        categorical = sorted({k for space in spaces.values() for k, v in space.items() if isinstance(v, Categorical)})
        report.notes.append(search_note(protocol.searcher, protocol.sampler, protocol.num_samples, categorical))
    if study_trials:
        report.notes.append(studies.studies_note(redact_uri(study_url), study_trials))
    if study_problem:
        report.notes.append(study_problem)
    return report


def _studies(record: SweepRecord, spec: SweepSpec, arms: list[str]) -> tuple[str | None, dict[str, list], str | None]:
    """The sweep's Optuna studies (raysel.studies), when its searcher kept them: their storage URL, per arm
    their trials, and why they could not be read here (None when they could)."""
    protocol = spec.protocol
    if not protocol.rules.searches or protocol.searcher == "grid":
        return None, {}, None
    if not protocol.study_storage and record.sweep_dir is None:
        return None, {}, None
    url = studies.storage_url(protocol.study_storage, record.sweep_dir)
    try:
        return url, studies.arm_trials(url, spec.name, arms), None
    except Exception as err:  # a database this machine cannot reach: the report goes on from MLflow
        return url, {}, (f"the Optuna studies in {redact_uri(url)} could not be read here ({type(err).__name__}); "
                         "the search table and importances come from the logged trials")


def _check_options(frame: pd.DataFrame, metric: str, step: int | None, requested: list[str] | None,
                   order: list[str], baseline: str | None, columns: list[str] = ()) -> list[str]:
    """The arms to report, in order; one ReportError naming every bad option and what is allowed."""
    problems = []
    available = metric_columns(frame)
    for name, what in [(metric, "metric"), *((c, "report.columns: metric") for c in columns)]:
        if name not in available:
            problems.append(f"{what} {name!r} was not reported by any trial; reported: {', '.join(available) or 'none'}")
    present = list(dict.fromkeys(frame["arm"].dropna())) if "arm" in frame else []
    if requested:
        unknown = [a for a in requested if a not in present]
        if unknown:
            problems.append(f"arms {unknown} have no trials; arms with trials: {', '.join(present) or 'none'}")
        arms = [a for a in requested if a in present]
    else:
        arms = [a for a in order if a in present] + [a for a in present if a not in order]
    if baseline is not None and baseline not in arms:
        problems.append(f"baseline {baseline!r} is not among the reported arms: {', '.join(arms)}")
    if step is not None and metric in available:
        steps = sorted(int(s) for s in frame.dropna(subset=[metric])["step"].unique())
        if step not in steps:
            shown = ", ".join(map(str, steps[:12])) + (" ..." if len(steps) > 12 else "")
            problems.append(f"step {step}: no trial reported {metric!r} at that step; steps with it: {shown}")
    if problems:
        raise ReportError("; ".join(problems))
    return arms


def _notes(report: Report, record: SweepRecord) -> list[str]:
    notes = [f"source: {'MLflow ' + redact_uri(str(record.tracking_uri)) if report.source == 'mlflow' else 'Ray Tune result files'}"
             f" ({report.frame['trial_id'].nunique()} trials)"]
    trials = stats.per_trial(report.frame)
    failed = trials[trials["status"] == "FAILED"] if "status" in trials else trials.iloc[0:0]
    if len(failed):
        reasons = failed["tags.raysel.failure"] if "tags.raysel.failure" in failed else pd.Series(index=failed.index)
        listed = [f"{row.trial_id} ({row.arm}, seed {row.seed}" + (f": {reason})" if isinstance(reason, str) else ")")
                  for row, reason in zip(failed.itertuples(), reasons)]
        notes.append(f"{len(failed)} failed trial(s) left out of every statistic: {'; '.join(listed)}")
    abandoned = trials[trials["status"] == "KILLED"] if "status" in trials else trials.iloc[0:0]
    if len(abandoned):
        notes.append(f"{len(abandoned)} trial run(s) abandoned by a killed driver (started after Ray Tune last saved "
                     f"the sweep's state; --resume ran other trials instead) left out: "
                     f"{', '.join(map(str, abandoned['trial_id']))}")
    rules = report.protocol.rules
    notes += rules.notes(report.protocol, stats.BOOTSTRAP_RESAMPLES)
    notes += comparison_notes(report.comparisons)
    if rules.searches and report.importances.empty:
        notes.append("no parameter importances: an arm needs at least two finished search trials, "
                     "a searched parameter and an objective that varied")
    return notes


def comparison_notes(comparisons: pd.DataFrame) -> list[str]:
    """How the comparisons' p-values are adjusted, and the power lines: per comparison, the seeds per
    arm a t-test would need to detect the observed effect at 80% power, against the seeds it had."""
    if comparisons.empty:
        return []
    notes = [f"*_p_holm: Holm-adjusted over the {len(comparisons)} comparison(s) of the table (family-wise "
             f"error); seeds_for_power / paired_seeds_for_power: seeds per arm (pairs) at which a two-sided "
             f"t-test at {stats.ALPHA:g} detects the observed effect (Cohen's d / d_z) with {stats.POWER:.0%} power"]
    for row in comparisons.itertuples():
        paired = row.paired_n >= 2 and row.paired_n == row.n == row.n_vs
        needed = row.paired_seeds_for_power if paired else row.seeds_for_power
        if math.isnan(needed):
            continue
        had = row.paired_n if paired else min(row.n, row.n_vs)
        test = "paired" if paired else "two-sample"
        verdict = ("enough" if needed <= had else "an effect this size would go undetected most of the time"
                   if math.isfinite(needed) else "no seed count would (no effect)")
        shown = f"{needed:.0f}" if math.isfinite(needed) else "inf"
        notes.append(f"power line, {row.arm} vs {row.vs}: the {test} t-test needs {shown} seeds for the observed "
                     f"effect, this sweep has {had:.0f}: {verdict}")
    return notes


# ---------------------------------------------------------------- output
def write(report: Report, out: Path, make_figures: bool = True) -> list[Path]:
    """Write every table as .md, .csv and .json, the figures as PNG, and report.md, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for stem, table in report.tables().items():
        (out / f"{stem}.md").write_text(markdown_table(table) + "\n")
        table.to_csv(out / f"{stem}.csv", index=False)
        (out / f"{stem}.json").write_text(table.to_json(orient="records", indent=2, date_format="iso"))
        files += [out / f"{stem}.{ext}" for ext in ("md", "csv", "json")]
    if make_figures:
        report.figures = {**draw(report, out), **report.method_figures}
        files += list(report.figures.values())
    (out / "report.md").write_text(report.markdown())
    report.files = [out / "report.md", *files]
    return report.files


def draw(report: Report, out: Path) -> dict[str, Path]:
    """The figures this protocol calls for (see the module docstring)."""
    from raysel.report import figures  # matplotlib: only when drawing (trial processes import this package)

    drawn: dict[str, Path] = {}
    at = "each trial's last report" if report.step is None else f"step {report.step}"
    metric, name = report.metric, report.name
    if not report.steps.empty and report.steps["step"].nunique() > 1:
        drawn["curves"] = figures.curves(report.steps, metric, f"{name}: {metric} per step", out / "curves.png")
    rules = report.protocol.rules
    values = (stats.values_at(report.frame, report.protocol, metric, report.step, list(report.summary["arm"]))
              if rules.compares_arms and not report.summary.empty else pd.DataFrame())
    if not values.empty:
        drawn["box"] = figures.box(values, metric, f"{name}: {metric} at {at}", out / "box.png")
        drawn["bars"] = figures.bars(report.summary, metric, rules.error_bar, f"{name}: {metric} at {at}", out / "bars.png")
        cost = next((c for c in ("total_flops_est", "train_flops_est", "wall_s") if c in report.summary
                     and report.summary[c].notna().any()), None)
        if cost is not None and report.summary["arm"].nunique() > 1:
            drawn["pareto"] = figures.pareto(report.summary, metric, cost, report.protocol.mode,
                                             f"{name}: {metric} at {at} against compute", out / "pareto.png")
    if not report.search.empty:
        drawn["search_history"] = figures.search_history(
            report.search, report.protocol.metric, report.protocol.mode,
            f"{name}: optimisation history", out / "search_history.png")
    if not report.importances.empty:
        drawn["importances"] = figures.importances(report.importances, f"{name}: parameter importances",
                                                   out / "importances.png")
    return drawn


def method_figures(spec: SweepSpec, sweep_dir: Path, out: Path) -> dict[str, Path]:
    """Figures (PNG) and tables (CSV) of the sweep's methods from the files its trials shared (e.g.
    pruning's H histogram: ``Method.report_figures``); only for a sweep whose storage directory is here."""
    from raysel.methods import MethodFigure, get_method
    from raysel.methods.base import shared_dir_of
    from raysel.report import figures

    arms = spec.resolved_arms()
    drawn: dict[str, Path] = {}
    for name in dict.fromkeys(a.method for a in arms):
        for stem, item in get_method(name).report_figures(arms, shared_dir_of(sweep_dir)).items():
            out.mkdir(parents=True, exist_ok=True)
            if isinstance(item, MethodFigure):
                drawn[stem] = figures.method_figure(item, out / f"{stem}.png")
            else:  # a table
                item.to_csv(out / f"{stem}.csv")
    return drawn


def log_report(report: Report, record: SweepRecord) -> None:
    """The report's files as artifacts of the sweep's parent run (``report/``), and its summary numbers
    as the parent run's metrics (e.g. ``igf-shifting.test_perplexity.mean``)."""
    from raysel.tracking import log_artifacts, log_summary_metrics

    if not (record.tracking_uri and record.parent_run_id):
        return
    log_artifacts(record.tracking_uri, record.parent_run_id, report.files, "report")
    log_summary_metrics(record.tracking_uri, record.parent_run_id, summary_metrics(report.summary))


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    metrics = {}
    for _, row in summary.iterrows():
        prefix = f"{row['arm']}.{row['metric']}" if "metric" in row else f"{row['arm']}.best"
        for column, value in row.items():
            if column not in ("arm", "metric", "step", "n", "trials") and _is_float(value):
                metrics[f"{prefix}.{column}"] = float(value)
    return metrics


def _is_float(value: Any) -> bool:
    return isinstance(value, float) and not math.isnan(value)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A plain Markdown table (for the terminal, the README and MLflow)."""
    if frame.empty:
        return "(no trials reported the metric)"
    cells = frame.map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) else ("" if v is None else str(v)))
    header = "| " + " | ".join(map(str, cells.columns)) + " |"
    rule = "|" + "|".join("---" for _ in cells.columns) + "|"
    return "\n".join([header, rule] + ["| " + " | ".join(row) + " |" for row in cells.to_numpy().tolist()])


def tables_json(tables: dict[str, pd.DataFrame]) -> str:
    """Tables as one JSON object: {name: [one object per row]}."""
    return json.dumps({k: json.loads(v.to_json(orient="records", date_format="iso")) for k, v in tables.items()},
                      indent=2)
