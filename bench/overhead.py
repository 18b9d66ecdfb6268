"""Scheduler overhead per trial: raysel (Ray Tune + MLflow) against the same loop in a plain Python loop.

N short trials of the standard method (tiny-gpt2-random on pydocs, a few steps) run

  (b) plain:     ``Standard().train_loop(params, LocalRun(seed=s))`` for s in seeds, one after the
                 other in this process: no Ray, no MLflow (after one untimed warm-up trial, so that
                 imports and disk caches are warm);
  (e) floor:     a fresh Python process imports what a trial actor imports (MLflow, raysel's trial
                 module, the method's module) and runs two plain trials: its imports plus the first
                 trial's extra time over the second are what any new process pays before its first
                 trial (every Tune run's trial actor is one);
  (a0) serial, first sweep: ``raysel.run_sweep`` with protocol ``seeds`` over the same seeds and
                 params, ``workers: 0``, MLflow on (SQLite in a temp dir), ``max_concurrent_trials: 1``,
                 as the first sweep of this process (the driver's own first imports are in it, as in
                 every ``raysel sweep`` command): serial against serial, (a0 - b) / N;
  (a) serial:    the same sweep again, the driver warm (the Python API's second sweep): (a - b) / N;
  (d) serial, 2N trials, driver warm: with (a), what one more trial costs ((d - a) / N, against
                 (b) / N: the overhead per trial) and what a sweep costs once (a - N x that; the fresh
                 trial actor's floor (e) is part of it); the same split is also read from inside the
                 trials (Tune's time_total_s), which a drift of the machine's speed moves less;
  (c) concurrent: the sweep with ``max_concurrent_trials: 2`` (both cores of a 2-core machine).

Ray is started by the benchmark before (a0) (``ray.init`` timed on its own, not counted in any
variant); (b) and (e) run before Ray starts so that Ray's idle daemons do not slow them down. Every
trial uses one torch thread (as a raysel trial with ``cpus_per_worker: 1`` does).

    python bench/overhead.py                  # N=8, 5 steps → bench/results/overhead.json
    python bench/overhead.py --trials 4 --steps 3 --out /tmp/o.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead.json"
MODEL, DATA = "tiny-gpt2-random", "pydocs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-trial overhead of raysel (Ray Tune + MLflow) over calling the same train_loop "
                    "in a plain Python loop. Prints wall times, (a - b) / N and a / b; writes JSON.")
    parser.add_argument("--trials", type=int, default=8, help="N: trials (seeds 0..N-1) per variant (default 8)")
    parser.add_argument("--steps", type=int, default=5,
                        help="optimizer steps per trial; evaluation at step 0 and at the last step (default 5)")
    parser.add_argument("--eval-examples", type=int, default=16, help="dev/test windows per evaluation (default 16)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default {DEFAULT_OUT})")
    parser.add_argument("--no-concurrent", action="store_true", help="skip variant (c), max_concurrent_trials 2")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.steps < 1 or args.eval_examples < 1:
        parser.error("--trials, --steps and --eval-examples must be positive")
    return args


def trial_params(steps: int, eval_examples: int) -> dict:
    return {"task": "causal_lm", "max_steps": steps, "eval_every": steps, "context_len": 32, "batch_size": 8,
            "eval_examples": eval_examples, "eval_batch_size": 16}


def machine_info() -> dict:
    import mlflow
    import optuna
    import ray
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    return {"cpu_count": os.cpu_count(), "usable_cpus": usable, "memory_gb": memory_gb,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "mlflow": mlflow.__version__, "optuna": optuna.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------- (b) the plain loop
def plain_trial(seed: int, params: dict) -> tuple[float, dict]:
    """One trial exactly as a raysel ``workers: 0`` trial runs it, minus Ray and MLflow."""
    import torch

    from raysel.methods import get_method
    from raysel.spec import DataSpec, ModelSpec
    from raysel.run_context import LocalRun, seed_everything

    method = get_method("standard")
    start = time.perf_counter()
    torch.set_num_threads(1)  # as run_trial does with cpus_per_worker: 1
    seed_everything(seed)
    with tempfile.TemporaryDirectory(prefix="raysel-bench-") as artifacts:
        run = LocalRun(seed=seed, model=ModelSpec(name=MODEL), data=DataSpec(name=DATA),
                       artifact_dir=Path(artifacts), device=torch.device("cpu"))
        final = method.train_loop(method.Params.model_validate(params), run)
        run.finish(final)
    return time.perf_counter() - start, final


def run_plain(seeds: list[int], params: dict) -> dict:
    warmup_s, _ = plain_trial(seeds[0], params)  # imports, tokenizer/corpus caches, page cache
    per_trial, finals = [], {}
    start = time.perf_counter()
    for seed in seeds:
        seconds, final = plain_trial(seed, params)
        per_trial.append(round(seconds, 3))
        finals[seed] = final
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 3), "warmup_s": round(warmup_s, 3), "per_trial_s": per_trial,
            "final_test_perplexity": {str(s): finals[s].get("test_perplexity") for s in seeds}}


# ---------------------------------------------------------------- (e) a fresh process's floor
FLOOR_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import mlflow, raysel.trial  # what a trial actor imports before its first trial (torch with it) ...
from raysel.methods import get_method
get_method("standard")  # ... and the method's module (transformers' model code), as run_trial does
imported = time.perf_counter() - start
sys.path.insert(0, sys.argv[1])
from overhead import plain_trial
params = json.loads(sys.argv[2])
first, _ = plain_trial(0, params)
second, _ = plain_trial(1, params)
print(json.dumps({"imports_s": imported, "first_trial_s": first, "second_trial_s": second}))
"""


def run_floor(params: dict) -> dict:
    """What a new Python process pays before its first trial runs at full speed: the imports of a trial
    actor (torch, MLflow, the method's module with transformers' model code), and the first trial's own
    first-use work (tokenizer and corpus read from raysel's cache) over a second trial's time. No Ray, no
    MLflow run."""
    proc = subprocess.run([sys.executable, "-c", FLOOR_SCRIPT, str(Path(__file__).resolve().parent),
                           json.dumps(params)], capture_output=True, text=True, check=True)
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    floor = measured["imports_s"] + measured["first_trial_s"] - measured["second_trial_s"]
    return {**{k: round(v, 3) for k, v in measured.items()}, "floor_s": round(floor, 3)}


# ---------------------------------------------------------------- (a0), (a), (d), (c) through raysel
def run_raysel(seeds: list[int], params: dict, concurrency: int, workdir: Path, label: str = "") -> dict:
    import raysel

    name = f"overhead{label}-c{concurrency}-n{len(seeds)}"
    spec = {
        "name": name, "method": "standard", "model": {"name": MODEL}, "data": {"name": DATA},
        "params": params,
        "protocol": {"kind": "seeds", "seeds": seeds, "metric": "test_perplexity", "mode": "min"},
        "resources": {"workers": 0, "cpus_per_worker": 1, "max_concurrent_trials": concurrency,
                      "max_failures": 0},
        "tracking": {"enabled": True, "uri": f"sqlite:///{workdir / f'{name}-mlflow.db'}"},
        "storage_path": str(workdir / "results"),
    }
    start = time.perf_counter()
    result = raysel.run_sweep(spec, progress=False)
    wall = time.perf_counter() - start
    trials = result.trials
    errors = int(result.num_errors)
    in_trial = [round(float(v), 3) for v in trials["time_total_s"]] if "time_total_s" in trials else []
    finals = {}
    if "test_perplexity" in trials:
        finals = {str(int(s)): float(v) for s, v in zip(trials["seed"], trials["test_perplexity"])}
    return {"wall_s": round(wall, 3), "max_concurrent_trials": concurrency, "trials": len(trials),
            "errors": errors, "in_trial_time_total_s": in_trial,
            "in_trial_time_sum_s": round(sum(in_trial), 3) if in_trial else None,
            "final_test_perplexity": finals}


def start_ray() -> float:
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=200 * 2**20,
             log_to_driver=False)
    return time.perf_counter() - start


def max_abs_difference(x: dict, y: dict) -> float | None:
    keys = [k for k in x if k in y and x[k] is not None and y[k] is not None]
    return max((abs(x[k] - y[k]) for k in keys), default=None) if keys else None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    seeds = list(range(args.trials))
    params = trial_params(args.steps, args.eval_examples)
    n = args.trials
    report: dict = {"benchmark": "overhead", "trials": n, "seeds": seeds, "params": params,
                    "model": MODEL, "data": DATA, "machine": machine_info(), "load_average_before": load_average(),
                    "note": "(a0), (a), (d) and (b) are serial (max_concurrent_trials 1 vs a plain for-loop); (a0) is "
                            "the process's first sweep, (a) and (d) run with the driver warm; Ray start-up is timed "
                            "separately and not included in any variant"}
    print(f"raysel scheduler overhead: {n} trials x {args.steps} steps, standard on {MODEL}/{DATA}, "
          f"{report['machine']['usable_cpus']} CPUs, load {report['load_average_before']}", flush=True)

    print("(b) plain Python loop (LocalRun, no Ray, no MLflow) ...", flush=True)
    plain = run_plain(seeds, params)
    report["plain_loop"] = plain
    print("(e) a fresh process: imports and two plain trials ...", flush=True)
    report["fresh_process"] = run_floor(params)

    import ray

    with tempfile.TemporaryDirectory(prefix="raysel-overhead-") as tmp:
        workdir = Path(tmp)
        report["ray_start_s"] = round(start_ray(), 3)
        try:
            print(f"    Ray started in {report['ray_start_s']:.1f} s", flush=True)
            print("(a0) raysel.run_sweep, max_concurrent_trials 1 (serial), the process's first sweep ...", flush=True)
            report["raysel_serial_first"] = run_raysel(seeds, params, 1, workdir, label="-first")
            print("(a) the same sweep again, the driver warm ...", flush=True)
            report["raysel_serial"] = run_raysel(seeds, params, 1, workdir)
            print(f"(d) raysel.run_sweep, max_concurrent_trials 1, {2 * n} trials ...", flush=True)
            report["raysel_serial_2n"] = run_raysel(list(range(2 * n)), params, 1, workdir)
            if not args.no_concurrent:
                print("(c) raysel.run_sweep, max_concurrent_trials 2 ...", flush=True)
                report["raysel_concurrent"] = run_raysel(seeds, params, 2, workdir)
        finally:
            ray.shutdown()
    report["load_average_after"] = load_average()

    a0, a, b = report["raysel_serial_first"]["wall_s"], report["raysel_serial"]["wall_s"], plain["wall_s"]
    report["overhead_per_trial_first_sweep_s"] = round((a0 - b) / n, 3)
    report["overhead_per_trial_s"] = round((a - b) / n, 3)
    report["ratio_serial_over_plain"] = round(a / b, 3)
    report["check_max_abs_diff_test_perplexity_serial_vs_plain"] = max_abs_difference(
        report["raysel_serial"]["final_test_perplexity"], plain["final_test_perplexity"])
    # the breakdown: what one more trial costs (marginal) and what a sweep costs once (fixed), each way;
    # (a) and (d) both run with the driver warm, so their difference holds no first-use imports
    a2 = report["raysel_serial_2n"]["wall_s"]
    marginal_a, marginal_b = (a2 - a) / n, b / n
    fixed = a - n * marginal_a
    floor = report["fresh_process"]["floor_s"]
    report["breakdown"] = {
        "marginal_per_trial_raysel_s": round(marginal_a, 3), "marginal_per_trial_plain_s": round(marginal_b, 3),
        "marginal_overhead_per_trial_s": round(marginal_a - marginal_b, 3),
        "fixed_per_sweep_raysel_s": round(fixed, 3),
        "fixed_plain_s": round(plain["warmup_s"] - marginal_b, 3),
        "fresh_process_floor_s": floor,
        "fixed_per_sweep_beyond_floor_s": round(fixed - floor, 3),
        "driver_first_sweep_extra_s": round(a0 - a, 3)}
    # the same split read from inside the trials (Tune's time_total_s), which a drift of this machine's speed
    # during a run moves less: a warm trial's time against a plain one, and the time outside every trial
    in_a, in_d = report["raysel_serial"]["in_trial_time_total_s"], report["raysel_serial_2n"]["in_trial_time_total_s"]
    if in_a and in_d:
        outside_a, outside_d = a - sum(in_a), a2 - sum(in_d)
        report["breakdown"].update({
            "warm_trial_median_s": round(statistics.median(in_d[1:]), 3),
            "plain_trial_median_s": round(statistics.median(plain["per_trial_s"]), 3),
            "first_trial_s": in_a[0], "outside_trials_a_s": round(outside_a, 3),
            "outside_trials_d_s": round(outside_d, 3),
            "outside_per_extra_trial_s": round((outside_d - outside_a) / n, 3)})
    if "raysel_concurrent" in report:
        c = report["raysel_concurrent"]["wall_s"]
        report["overhead_per_trial_concurrent_s"] = round((c - b) / n, 3)
        report["ratio_concurrent_over_plain"] = round(c / b, 3)

    d, e = report["breakdown"], report["fresh_process"]
    lines = [
        f"Ray start-up (separate, not in any variant): {report['ray_start_s']:8.2f} s",
        f"(b) plain loop, serial:                 {b:8.2f} s  ({b / n:.2f} s/trial; warm-up trial "
        f"{plain['warmup_s']:.2f} s not counted)",
        f"(e) a fresh process: imports {e['imports_s']:.2f} s, first trial {e['first_trial_s']:.2f} s, second "
        f"{e['second_trial_s']:.2f} s -> floor {floor:.2f} s before a process's first trial runs at full speed",
        f"(a0) raysel, first sweep of the process: {a0:8.2f} s  ({a0 / n:.2f} s/trial)",
        f"    overhead per trial (a0-b)/N:        {report['overhead_per_trial_first_sweep_s']:8.2f} s",
        f"(a) raysel, driver warm:                {a:8.2f} s  ({a / n:.2f} s/trial)",
        f"    overhead per trial (a-b)/N:         {report['overhead_per_trial_s']:8.2f} s   ratio a/b = "
        f"{report['ratio_serial_over_plain']:.2f}   (serial vs serial)",
    ]
    if report["raysel_serial"]["in_trial_time_sum_s"] is not None:
        lines.append(f"    time inside trials (Tune time_total_s, sum): {report['raysel_serial']['in_trial_time_sum_s']:.2f} s")
    lines += [
        f"(d) raysel, {2 * n} trials, driver warm:     {a2:8.2f} s",
        f"    one more trial: raysel {d['marginal_per_trial_raysel_s']:.2f} s, plain {d['marginal_per_trial_plain_s']:.2f} s "
        f"-> overhead per trial {d['marginal_overhead_per_trial_s']:.2f} s ((d-a)/N - b/N)",
        f"    once per sweep: raysel {fixed:.2f} s (a - N x marginal) = fresh-process floor {floor:.2f} s + "
        f"{d['fixed_per_sweep_beyond_floor_s']:.2f} s (Ray actor, Tune, MLflow store and runs, report); plain "
        f"{d['fixed_plain_s']:.2f} s (warm-up - one trial)",
        f"    the driver's first sweep: +{d['driver_first_sweep_extra_s']:.2f} s (a0 - a: its own first imports)"]
    if "outside_trials_a_s" in d:
        lines += [
            f"    inside the trials: a warm trial {d['warm_trial_median_s']:.2f} s (median of d) against a plain one "
            f"{d['plain_trial_median_s']:.2f} s; the first trial {d['first_trial_s']:.2f} s (its fresh actor)",
            f"    outside the trials: (a) {d['outside_trials_a_s']:.2f} s, (d) {d['outside_trials_d_s']:.2f} s -> "
            f"{d['outside_per_extra_trial_s']:.2f} s per extra trial"]
    if "raysel_concurrent" in report:
        c = report["raysel_concurrent"]["wall_s"]
        lines += [f"(c) raysel, max_concurrent_trials 2:    {c:8.2f} s  ({c / n:.2f} s/trial)",
                  f"    (c-b)/N:                            {report['overhead_per_trial_concurrent_s']:8.2f} s   "
                  f"ratio c/b = {report['ratio_concurrent_over_plain']:.2f}   (2 concurrent vs serial)"]
    diff = report["check_max_abs_diff_test_perplexity_serial_vs_plain"]
    lines.append(f"same work check: max |test_perplexity(a) - test_perplexity(b)| over seeds = {diff}")
    errors = sum(report[k]["errors"] for k in ("raysel_serial_first", "raysel_serial", "raysel_serial_2n",
                                               "raysel_concurrent") if k in report)
    if errors:
        lines.append(f"WARNING: {errors} raysel trial(s) failed; the timings are not comparable")
    print("\n".join(lines), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
