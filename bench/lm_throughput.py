"""Causal-LM training speed in raysel's standard loop, against the machine's matmul rate.

    python bench/lm_throughput.py                         # smollm2-135m, 8 x 128 tokens per step
    python bench/lm_throughput.py --model tiny-gpt2 --batch-size 16

The standard method runs on a LocalRun (no Ray) for --steps optimizer steps on pydocs; the time
between consecutive steps' reports is one step (forward, backward, clip, AdamW; no evaluation in
between). Also timed: loading the model by name. Achieved rate = 6 x parameters x tokens per second
(the usual training FLOP count, attention left out), and the FLOPs of one step's forward and backward
counted by torch's FlopCounterMode (attention and the LM head included), each against a float32
matmul's rate measured in the same run with the same threads. Writes bench/results/lm_throughput-<model>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from _common import machine, matmul_rates, roofline, save, training_pass_flops  # noqa: E402 (bench/ is the script's directory)
from raysel.inputs import DataSpec, ModelSpec  # noqa: E402
from raysel.methods import get_method  # noqa: E402
from raysel.models import load_model  # noqa: E402
from raysel.run_context import LocalRun  # noqa: E402


class TimedRun(LocalRun):
    """A LocalRun noting when each step's report arrives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.arrived: dict[int, float] = {}

    def report(self, step: int, **metrics: float) -> None:
        self.arrived.setdefault(step, time.perf_counter())
        super().report(step, **metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a built-in or local causal LM (smollm2-135m)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=128, help="tokens per sequence (128)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is not timed (4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    model, _ = load_model(args.model, "causal_lm")
    load_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.context))
    step_flops = training_pass_flops(model, ids)  # one step's products
    del model

    standard = get_method("standard")
    run = TimedRun(seed=0, model=ModelSpec(name=args.model), data=DataSpec(name="pydocs"),
                   device=torch.device("cpu"))
    loop = standard.Params(max_steps=args.steps, eval_every=args.steps, context_len=args.context,
                           batch_size=args.batch_size, eval_examples=args.batch_size, lr=1e-5)
    standard.train_loop(loop, run)
    steps = [run.arrived[s + 1] - run.arrived[s] for s in range(1, args.steps - 1)]  # after the first step
    step_s = statistics.median(steps)
    tokens_per_s = args.batch_size * args.context / step_s
    achieved = 6 * params * tokens_per_s / 1e9
    matmul = matmul_rates("cpu")["float32"]
    counted = roofline(step_flops, step_s, matmul)
    result = {"bench": "lm_throughput", "model": args.model, "params": params, "threads": torch.get_num_threads(),
              "batch_size": args.batch_size, "context": args.context, "timed_steps": len(steps),
              "load_by_name_s": load_s, "step_s": step_s, "step_s_all": steps, "tokens_per_s": tokens_per_s,
              "achieved_gflops_6nt": achieved, "matmul_gflops": matmul, "fraction_of_matmul": achieved / matmul,
              "roofline": counted, "machine": machine("cpu")}
    print(f"{args.model} ({params / 1e6:.1f}M params), {args.batch_size} x {args.context} tokens per step, "
          f"{result['threads']} threads: load by name {load_s:.1f} s; step {step_s:.2f} s (median of "
          f"{len(steps)}) = {tokens_per_s:.0f} tokens/s = {achieved:.1f} GFLOP/s (6NT), "
          f"{100 * achieved / matmul:.0f}% of this machine's float32 matmul ({matmul:.1f} GFLOP/s); counted by "
          f"torch: {step_flops / 1e9:.0f} GFLOP per step = {counted['gflops']:.1f} GFLOP/s, "
          f"{counted['fraction_of_matmul']:.0%} of the matmul rate")
    save(result, args.out or Path(__file__).parent / "results" / f"lm_throughput-{args.model}.json")


if __name__ == "__main__":
    main()
