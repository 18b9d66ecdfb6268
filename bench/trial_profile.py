"""Where a trial's time goes: py-spy samples of a raysel trial actor against the same trials in a plain loop.

``overhead.py`` times whole sweeps; this splits one trial's life into its parts. The same N seeds of
the standard method (tiny-gpt2-random on pydocs, as in ``overhead.py``) run twice under py-spy (Ray
installs it with ``ray[default]``), sampling at ``--rate`` Hz, idle threads left out:

  plain:   a fresh Python process runs the N trials in a ``for`` loop (``LocalRun``, no Ray, no MLflow);
           py-spy runs it, so its first trial is cold, as the actor's is;
  raysel:  after a 2-trial sweep that warms the driver, a sweep of N serial trials (MLflow in SQLite,
           checkpoints); py-spy attaches to its trial actor as soon as Ray has started it.

Every sample is put in one part: the innermost frame of its stack that names a part decides (an
import inside the model's loading counts as an import). Samples outside the trial's body (``run_trial``
or the plain loop's ``plain_trial``) are the actor's own start-up, Tune's function trainable and
helper threads (telemetry, Ray's own). Seconds per trial are samples / rate / N, so a part that only
the first trial pays (imports) is spread over the N trials too: ``first_trial_only`` says which.

    python bench/trial_profile.py                        # N=16 → bench/results/trial_profile.json
    python bench/trial_profile.py --trials 8 --rate 100 --out /tmp/p.json
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (the same trials, params, Ray start and sweep as overhead.py)
from _common import save  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "trial_profile.json"
BODIES = ("run_trial", "plain_trial")  # a trial's body: raysel's, the plain loop's


class Part(NamedTuple):
    label: str
    functions: str  # a regular expression for the function names it holds
    always: bool  # takes milliseconds in every raysel trial: no sample at all means its functions were renamed


# the innermost frame of a sample that matches a part's functions decides the sample's part
PARTS: list[Part] = [
    Part("imports", r"_find_and_load", False),
    Part("MLflow: the trial's run opened", r"TrialLogger\.__init__", True),
    Part("MLflow: metrics, tags, loads logged; run closed", r"(TrialLogger|NullLogger)\..*", True),
    Part("Tune: result and checkpoint sent", r"TuneRun\._send", False),
    Part("checkpoint written (torch.save)", r"save", True),
    Part("telemetry gauges", r"TrialMetrics\..*", False),
    Part("data: tokenized into windows", r"TokenWindows\.__init__", True),
    Part("model loaded", r"load_model", True),
    Part("evaluation (dev and test perplexity)", r"_causal_lm\.<locals>\.evaluate", True),
    Part("training steps", r"fine_tune", True),
    Part("the rest of the trial's body", "|".join(BODIES), False),
]
OUTSIDE = "outside the body (actor start-up, Tune's trainable, threads)"
FIRST_TRIAL_ONLY = ("imports",)

PLAIN_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import json
from overhead import plain_trial
params, n = json.loads(sys.argv[2]), int(sys.argv[3])
for seed in range(n):
    plain_trial(seed, params)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Split a raysel trial's time into its parts (py-spy samples of its Ray actor) against the "
                    "same trials in a plain Python loop. Prints seconds per trial per part; writes JSON.")
    parser.add_argument("--trials", type=int, default=16, help="N: trials per variant (default 16)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per trial (default 5)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--wall", action="store_true",
                        help="count idle samples too (py-spy --idle): a part's wall time, waits on disk and locks "
                             "included, instead of its CPU time; threads that only wait fill the 'outside' row")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.steps < 1 or args.rate < 1:
        parser.error("--trials, --steps and --rate must be positive")
    return args


def find_py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).is_file():
        sys.exit("error: py-spy not found (it comes with ray[default]: pip install 'ray[default]')")
    return found


def function_name(frame: str) -> str:
    """``'Standard.train_loop (raysel/methods/standard.py:88)'`` → ``'Standard.train_loop'``."""
    return frame.rsplit(" (", 1)[0]


def split_samples(raw: str) -> dict[str, int]:
    """py-spy's raw output (``frame;frame;... count`` per line, root first) → samples per part."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        names = [function_name(f) for f in stack.split(";")]
        part = OUTSIDE
        if any(name in BODIES for name in names):
            part = next(p.label for name in reversed(names) for p in PARTS if re.fullmatch(p.functions, name))
        counts[part] += int(n)
    return dict(counts)


def py_spy_record(rate: int, out: Path, wall: bool) -> list[str]:
    """py-spy's command, up to what it records: raw stacks, never pausing the process it samples."""
    return [find_py_spy(), "record", "--format", "raw", "-r", str(rate), "--nonblocking", *(["--idle"] if wall else []),
            "-o", str(out)]


def profile_plain(record: list[str], params: dict, n: int) -> dict[str, int]:
    subprocess.run([*record, "--", sys.executable, "-c", PLAIN_SCRIPT, str(Path(__file__).resolve().parent),
                    json.dumps(params), str(n)], check=True, capture_output=True)
    return split_samples(Path(record[-1]).read_text())


def trial_actor_pid(timeout_s: float = 300.0) -> str | None:
    """The process of the first raysel trial actor Ray starts from now on (its title names the class)."""
    before = set(_actor_pids())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = [pid for pid in _actor_pids() if pid not in before]
        if new:
            return new[0]
        time.sleep(0.02)
    return None


def _actor_pids() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line.split(None, 1)[0] for line in ps.splitlines()[1:] if "RayselTrial" in line or "raysel_trial" in line]


def profile_raysel(record: list[str], params: dict, n: int, workdir: Path) -> tuple[dict[str, int], dict]:
    overhead.run_raysel([0, 1], params, 1, workdir, label="-warm-driver")

    def attach() -> None:
        pid = trial_actor_pid()
        if pid is not None:
            subprocess.run([*record, "--pid", pid], capture_output=True)

    spy_thread = threading.Thread(target=attach, daemon=True)
    spy_thread.start()
    sweep = overhead.run_raysel(list(range(n)), params, 1, workdir, label="-profiled")
    spy_thread.join(timeout=120)  # py-spy stops when the actor's process ends with its Tune run
    if not Path(record[-1]).is_file():
        sys.exit("error: py-spy recorded nothing: the trial actor was not found, or py-spy may not attach to it "
                 "(it needs ptrace: run as root, or with kernel.yama.ptrace_scope 0)")
    return split_samples(Path(record[-1]).read_text()), sweep


def per_trial(samples: dict[str, int], rate: int, n: int) -> dict[str, float]:
    return {part: round(samples.get(part, 0) / rate / n, 4) for part in (p.label for p in PARTS)} | {
        OUTSIDE: round(samples.get(OUTSIDE, 0) / rate / n, 4)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    find_py_spy()  # before any work
    n, params = args.trials, overhead.trial_params(args.steps, 16)
    counted = "samples, idle ones too" if args.wall else "CPU samples"
    report: dict = {"benchmark": "trial_profile", "trials": n, "rate_hz": args.rate, "wall": args.wall,
                    "params": params, "model": overhead.MODEL, "data": overhead.DATA,
                    "machine": overhead.machine_info(), "load_average_before": overhead.load_average()}
    print(f"where a trial's time goes: {n} trials x {args.steps} steps, standard on {overhead.MODEL}/"
          f"{overhead.DATA}, py-spy at {args.rate} Hz ({counted}), load {report['load_average_before']}", flush=True)
    import ray

    with tempfile.TemporaryDirectory(prefix="raysel-trial-profile-") as tmp:
        workdir = Path(tmp)
        print("plain loop under py-spy ...", flush=True)
        plain = profile_plain(py_spy_record(args.rate, workdir / "plain.raw", args.wall), params, n)
        overhead.start_ray()
        try:
            print("raysel sweep, its trial actor under py-spy ...", flush=True)
            raysel, sweep = profile_raysel(py_spy_record(args.rate, workdir / "raysel.raw", args.wall), params, n,
                                           workdir)
        finally:
            ray.shutdown()
    report["load_average_after"] = overhead.load_average()
    report["samples"] = {"plain": plain, "raysel": raysel}
    plain_s, raysel_s = per_trial(plain, args.rate, n), per_trial(raysel, args.rate, n)
    report["seconds_per_trial"] = {"plain": plain_s, "raysel": raysel_s}
    report["raysel_sweep"] = {k: sweep[k] for k in ("wall_s", "trials", "errors", "in_trial_time_total_s")}
    report["first_trial_only"] = list(FIRST_TRIAL_ONLY)

    lines = [f"{f'seconds per trial ({counted} / rate / N)':<66} {'raysel':>8} {'plain':>8}"]
    for part in [part.label for part in PARTS] + [OUTSIDE]:
        note = " (first trial only)" if part in FIRST_TRIAL_ONLY else ""
        lines.append(f"  {part + note:<64} {raysel_s[part]:8.3f} {plain_s[part]:8.3f}")
    body = [part.label for part in PARTS if part.label not in FIRST_TRIAL_ONLY]
    lines.append(f"  {'a trial body, imports left out':<64} {sum(raysel_s[k] for k in body):8.3f} "
                 f"{sum(plain_s[k] for k in body):8.3f}")
    empty = [part.label for part in PARTS if part.always and not raysel.get(part.label)]
    if empty:
        lines.append(f"WARNING: no samples in {empty}: update PARTS in {Path(__file__).name} to the code's names")
    in_trial = sweep["in_trial_time_total_s"]
    if len(in_trial) > 1:
        lines.append(f"raysel sweep: {sweep['wall_s']:.2f} s wall, {sweep['errors']} failed; Tune's time_total_s of a "
                     f"warm trial {statistics.median(in_trial[1:]):.3f} s (median), of the first {in_trial[0]:.3f} s")
    print("\n".join(lines), flush=True)
    save(report, args.out)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
