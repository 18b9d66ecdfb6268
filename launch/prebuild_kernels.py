"""Build the eNTK kernels of a spec's kernel arms in this process, without Ray, into a kernel cache.

Kernels are the expensive part of a kernel sweep (the solvers take milliseconds); a machine with a
GPU builds them in a fraction of the CPU time. Build them there, copy the cache directory to where
the sweep runs, and point the kernel arms at it; their trials then find every kernel and only solve:

    python launch/prebuild_kernels.py tune_configs/kernel_5seed.yaml --set data.k=64 --cache kernels/
    raysel sweep tune_configs/kernel_5seed.yaml --set data.k=64 --set name=kernel-5seed-k64 \\
        --set arms.0.params.kernel_cache=kernels/ --set arms.3.params.kernel_cache=kernels/

A kernel is keyed by what it depends on (model, data, seed, logits, formula, subset, and the split's
examples themselves: see ``KernelParams.kernel_key``), so the cache is found whatever the solver
settings, and not used where the data differ (the built-ins depend on the Python version). Each kernel is
built by one run of the kernel recipe's own loop (``LocalRun``), which also prints its dev/test
accuracy for the arm's first grid point.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raysel.methods import get_method
from raysel.spec import DataSpec, ModelSpec, load_spec
from raysel.protocols import expand
from raysel.run_context import LocalRun, pick_device


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the sweep's YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for raysel sweep")
    parser.add_argument("--cache", required=True, type=Path, help="the kernel cache directory to fill")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these protocol seeds (default: all)")
    args = parser.parse_args(argv)

    spec = load_spec(args.spec, args.set)
    method = get_method("kernel")
    device = pick_device(True)
    done: set[str] = set()
    for phase in expand(spec):
        for variant in phase.variants:
            if variant["method"] != "kernel":
                continue
            params = method.Params(**variant["params"])
            model, data = ModelSpec(**variant["model"]), DataSpec(**variant["data"])
            for seed in args.seeds or phase.seeds:
                key = params.kernel_key(model, data, seed)
                if key in done:
                    continue
                done.add(key)
                run = LocalRun(seed=seed, model=model, data=data, device=device, shared_dir=args.cache,
                               artifact_dir=args.cache / f"prebuilt-{device.type}-{variant['arm']}-seed{seed}")
                started = time.perf_counter()
                metrics = method.train_loop(params, run)
                print(json.dumps({"arm": variant["arm"], "seed": seed,
                                  "wall_s": round(time.perf_counter() - started, 1),
                                  **{k: metrics[k] for k in ("kernel_seconds", "kernel_entries_per_s",
                                                             "dev_accuracy", "test_accuracy")}}), flush=True)


if __name__ == "__main__":
    main()
