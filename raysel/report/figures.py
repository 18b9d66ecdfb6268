"""The report's PNG figures (matplotlib's object API on the Agg canvas: no pyplot state, no display).

Every figure has a title, labelled axes and a legend or tick labels naming the arms; sizes are fixed
(``FIGSIZE`` at ``DPI``) so that a figure reads the same in the README, MLflow and a terminal viewer.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from raysel.report.stats import pareto_front

if TYPE_CHECKING:
    from raysel.methods.base import MethodFigure

FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # → 800 × 500 pixels
STEP_LABEL = "step (optimizer updates)"


def metric_label(metric: str) -> str:
    """An axis label that says which way is better (and the unit where the name implies one)."""
    text = metric.replace("_", " ")
    if "perplexity" in metric or metric.endswith("loss") or metric.endswith("mse"):
        return f"{text} (lower is better)"
    if "accuracy" in metric:
        return f"{text} (fraction correct, higher is better)"
    if metric.endswith(("f1", "_em", "exact_match")):
        return f"{text} (higher is better)"
    return text


def _figure(title: str) -> tuple[Figure, object]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def curves(steps: pd.DataFrame, metric: str, title: str, path: Path) -> Path:
    """Mean of ``metric`` per step for each arm, with a ±1 standard-error band."""
    figure, axes = _figure(title)
    for arm, group in steps.groupby("arm", sort=False):
        x, mean = group["step"].to_numpy(), group["mean"].to_numpy()
        se = np.nan_to_num(group["se"].to_numpy())
        line, = axes.plot(x, mean, marker="o", markersize=3, label=f"{arm} (n={int(group['n'].max())})")
        axes.fill_between(x, mean - se, mean + se, color=line.get_color(), alpha=0.2)
    axes.set_xlabel(STEP_LABEL)
    axes.set_ylabel(metric_label(metric))
    axes.legend(title="arm (mean ± 1 SE)")
    return _save(figure, path)


def box(values: pd.DataFrame, metric: str, title: str, path: Path) -> Path:
    """One box per arm (median, quartiles, 1.5 IQR whiskers) with every run as a dot."""
    figure, axes = _figure(title)
    arms = list(dict.fromkeys(values["arm"]))
    samples = [values.loc[values["arm"] == arm, "value"].to_numpy(dtype=float) for arm in arms]
    axes.boxplot(samples, tick_labels=[f"{a}\n(n={len(s)})" for a, s in zip(arms, samples)], showfliers=False)
    jitter = np.random.default_rng(0)
    for i, sample in enumerate(samples, start=1):
        axes.scatter(i + jitter.uniform(-0.12, 0.12, len(sample)), sample, s=12, alpha=0.6, zorder=3)
        if len(sample):
            axes.annotate(f"median {np.median(sample):.4g}", (i, np.median(sample)), xytext=(28, 0),
                          textcoords="offset points", va="center", fontsize=8)
    axes.set_xlabel("arm")
    axes.set_ylabel(metric_label(metric))
    return _save(figure, path)


def bars(summary: pd.DataFrame, metric: str, error: str, title: str, path: Path) -> Path:
    """Mean per arm with error bars (``error`` names the column: std or se)."""
    figure, axes = _figure(title)
    x = np.arange(len(summary))
    means = summary["mean"].to_numpy(dtype=float)
    errors = np.nan_to_num(summary[error].to_numpy(dtype=float))
    rects = axes.bar(x, means, yerr=errors, capsize=6, color="tab:blue", alpha=0.8)
    axes.bar_label(rects, labels=[f"{m:.4g} ({e:.2g})" for m, e in zip(means, errors)], padding=3, fontsize=8)
    axes.set_xticks(x, [f"{a}\n(n={int(n)})" for a, n in zip(summary["arm"], summary["n"])])
    axes.set_xlabel("arm")
    axes.set_ylabel(metric_label(metric) + f"\nmean, error bar = {'1 SE' if error == 'se' else 'std'}")
    axes.margins(y=0.15)
    return _save(figure, path)


def search_history(search: pd.DataFrame, metric: str, mode: str, title: str, path: Path) -> Path:
    """Each search trial's objective in start order, and the best value so far (Optuna's history plot)."""
    figure, axes = _figure(title)
    for arm, group in search.groupby("arm", sort=False):
        dots = axes.scatter(group["order"], group[metric], s=18, label=f"{arm}: trial")
        axes.step(group["order"], group["best_so_far"], where="post", color=dots.get_facecolor()[0],
                  label=f"{arm}: best so far ({'min' if mode == 'min' else 'max'})")
    axes.set_xlabel("search trial (in start order)")
    axes.set_ylabel(metric_label(metric))
    axes.legend()
    return _save(figure, path)


def importances(table: pd.DataFrame, title: str, path: Path) -> Path:
    """fANOVA importance of each searched parameter (one group of bars per arm)."""
    figure, axes = _figure(title)
    labels = [f"{arm}: {param}" if table["arm"].nunique() > 1 else param
              for arm, param in zip(table["arm"], table["param"])]
    y = np.arange(len(table))
    axes.barh(y, table["importance"], color="tab:green", alpha=0.8)
    axes.set_yticks(y, labels)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("importance (fANOVA share of the objective's variance)")
    return _save(figure, path)


def h_histogram(h: np.ndarray, runs: int, removed: tuple[int, ...], title: str, path: Path) -> Path:
    """Examples per H-score (0..runs), as a share of the training set; the bars of ``removed`` greyed."""
    counts = np.bincount(h.astype(int), minlength=runs + 1)
    share = 100.0 * counts / max(1, counts.sum())
    figure, axes = _figure(title)
    colors = ["0.7" if value in removed else "tab:blue" for value in range(runs + 1)]
    bars = axes.bar(np.arange(runs + 1), share, color=colors)
    for bar, count in zip(bars, counts):
        axes.annotate(str(count), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    kept = 100.0 * counts[[v for v in range(runs + 1) if v not in removed]].sum() / max(1, counts.sum())
    axes.set_xticks(np.arange(runs + 1))
    axes.set_xlabel(f"H-score (runs of {runs} correct in every epoch)")
    axes.set_ylabel("% of training examples (bar labels: counts)")
    axes.legend(handles=[Patch(color="0.7", label=f"removed (winning ticket: H in {sorted(removed)})"),
                         Patch(color="tab:blue", label=f"kept: {kept:.1f}% of the training set")])
    return _save(figure, path)


def cartography_map(scores: pd.DataFrame, title: str, path: Path) -> Path:
    """Dataset Cartography: confidence against variability per example, coloured by H-score."""
    figure, axes = _figure(title)
    points = axes.scatter(scores["variability"], scores["confidence"], c=scores["h"], s=8, cmap="viridis")
    figure.colorbar(points, ax=axes, label="H-score")
    axes.set_xlabel("variability (std of the gold-label probability over runs × epochs)")
    axes.set_ylabel("confidence (mean gold-label probability)")
    return _save(figure, path)


def token_weights(documents: list[list[str]], weights: list[list[float]], title: str, path: Path) -> Path:
    """Documents as text with every token shaded by its weight, from the lightest (smallest weight shown)
    to the darkest (largest), with a colour bar in weight units; monospaced and wrapped to the width."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fontsize, text_width = 8.0, 0.86  # points; the text's share of the figure's width
    width_in = FIGSIZE[0] + 1.5
    line_chars = int(text_width * width_in * 72 / (0.602 * fontsize))  # a monospace glyph is 0.602 em wide
    lines: list[list[tuple[str, float]]] = []
    for tokens, values in zip(documents, weights):
        lines.append([])
        width = 0
        for token, value in zip(tokens, values):
            token = token.replace("\n", " ")
            if width + len(token) > line_chars and lines[-1]:
                lines.append([])
                width = 0
            lines[-1].append((token, value))
            width += len(token)
        lines.append([])  # a blank line between documents
    shown = [v for vs in weights for v in vs] or [0.0, 1.0]
    low, high = min(shown), max(shown)
    norm, cmap = Normalize(low, high if high > low else low + 1e-9), colormaps["Oranges"]
    height = 0.9 + 0.2 * len(lines)
    figure = Figure(figsize=(width_in, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.01, 0.02, text_width, 1 - 0.5 / height - 0.02))
    axes.set_title(title)
    axes.set_axis_off()
    axes.set_xlim(0, line_chars)
    axes.set_ylim(len(lines), 0)
    for row, line in enumerate(lines):
        x = 0
        for token, value in line:
            axes.text(x, row + 0.5, token, family="monospace", fontsize=fontsize, va="center", ha="left",
                      bbox={"facecolor": cmap(norm(value)), "edgecolor": "none", "pad": 0.5})
            x += len(token)
    bar = figure.add_axes((text_width + 0.04, 0.1, 0.02, 0.75))
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar, label="token weight")
    return _save(figure, path)


METHOD_FIGURES = {"h_histogram": h_histogram, "cartography_map": cartography_map, "token_weights": token_weights}


def method_figure(figure: "MethodFigure", path: Path) -> Path:
    """Draw a figure a method asked for (``Method.report_figures``) with its data."""
    if figure.kind not in METHOD_FIGURES:
        raise ValueError(f"unknown method figure {figure.kind!r}; allowed: {', '.join(METHOD_FIGURES)}")
    return METHOD_FIGURES[figure.kind](**figure.data, title=figure.title, path=path)


COST_LABELS = {"total_flops_est": "training + selection FLOPs (estimate, log scale)",
               "train_flops_est": "training FLOPs (estimate, log scale)", "wall_s": "wall seconds per trial (log scale)",
               "train_tokens": "tokens trained on (log scale)", "cpu_s": "CPU seconds per trial (log scale)"}


def pareto(summary: pd.DataFrame, metric: str, cost: str, mode: str, title: str, path: Path) -> Path:
    """Each arm's mean ``metric`` (±1 SE) against its mean ``cost``; the arms no other arm beats on both
    (cheaper or as cheap, and better) are joined: the Pareto front."""
    figure, axes = _figure(title)
    rows = summary.dropna(subset=["mean", cost]).sort_values(cost, kind="stable")
    for _, row in rows.iterrows():
        axes.errorbar(row[cost], row["mean"], yerr=np.nan_to_num(row.get("se", np.nan)), fmt="o", capsize=4,
                      label=f"{row['arm']} (n={int(row['n'])})")
        axes.annotate(row["arm"], (row[cost], row["mean"]), xytext=(6, 6), textcoords="offset points", fontsize=8)
    front = rows.set_index("arm").loc[pareto_front(rows, cost, mode)]
    if len(front) > 1:
        xs, ys = front[cost].to_numpy(), front["mean"].to_numpy()
        axes.plot(xs, ys, color="grey", linestyle="--", linewidth=1, label="Pareto front", zorder=0)
    if (rows[cost] > 0).all() and len(rows):
        axes.set_xscale("log")
    axes.set_xlabel(COST_LABELS.get(cost, cost))
    axes.set_ylabel(metric_label(metric) + " (mean ± 1 SE)")
    axes.legend(title="arm")
    return _save(figure, path)
