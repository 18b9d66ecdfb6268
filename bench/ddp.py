"""DDP with gradient accumulation: the shared loop's optimizer steps per second on Ray Train workers,
with one gradient all-reduce and one loss read-back per optimizer step (raysel's loop) against one of
each per micro-batch (the loop before issue 21, rebuilt here: DDP's ``no_sync`` switched off and a
``float(loss)`` after every micro-batch).

Each run is a Ray Train ``TorchTrainer`` (gloo on CPU, NCCL with ``--device cuda``) whose workers
train a randomly initialised GPT-2 (``--layers``/``--width``; no download) with raysel's ``fine_tune``
on random tokens. Rank 0 times the optimizer steps after ``--warmup`` steps; the two variants
alternate ``--repeats`` times and the median of each is reported, with the all-reduces per step
(counted by a DDP communication hook) and the largest difference of the two variants' final weights
(the same arithmetic: 0, up to float rounding of the all-reduce's sum order). An optimizer step's
FLOPs (one micro-batch's forward and backward counted by torch, × micro-batches × workers) per second
are put against the float32 matmul rate of all this machine's threads, measured in the same run.

    python bench/ddp.py                           # 2 CPU workers, grad_accum 4 → bench/results/ddp.json
    python bench/ddp.py --workers 1 --device cuda  # the GPU machine: one worker, accumulation
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ddp.json"
VARIANTS = {"per_micro_batch": "all-reduce and loss read-back after every micro-batch (before)",
            "per_step": "one all-reduce and one loss read-back per optimizer step (raysel)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Optimizer steps/s of the shared loop under DDP with gradient "
                                                 "accumulation: one all-reduce per step vs one per micro-batch.")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU per worker")
    parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step (default 4)")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per micro-batch per worker (default 2)")
    parser.add_argument("--context", type=int, default=64, help="tokens per sequence (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="GPT-2 layers (default 2)")
    parser.add_argument("--width", type=int, default=256, help="GPT-2 hidden size (default 256)")
    parser.add_argument("--vocab", type=int, default=16384, help="vocabulary size (default 16384)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternating (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if min(args.workers, args.grad_accum, args.micro_batch, args.repeats) < 1 or args.steps <= args.warmup + 1:
        parser.error("--workers, --grad-accum, --micro-batch, --repeats must be positive and --steps > --warmup + 1")
    return args


def _worker(config: dict) -> None:
    """One Ray Train worker: raysel's loop on a random GPT-2, rank 0 writing its step times."""
    import ray.train
    import ray.train.torch
    import torch
    import transformers
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from raysel.inputs import DataSpec, ModelSpec
    from raysel.methods.loop import LoopParams, fine_tune
    from raysel.run_context import TrainRun
    from raysel.tracking import NullLogger

    args, variant = argparse.Namespace(**config["args"]), config["variant"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1 if args.device == "cpu" else 4)
    all_reduces: list[int] = []

    class BenchRun(TrainRun):
        def prepare_model(self, model):
            ddp = super().prepare_model(model)
            ddp.register_comm_hook(None, lambda group, bucket: all_reduces.append(1) or allreduce_hook(group, bucket))
            if variant == "per_micro_batch":
                ddp.no_sync = contextlib.nullcontext  # DDP all-reduces after every backward
            return ddp

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=args.context, n_embd=args.width, n_layer=args.layers,
        n_head=max(1, args.width // 64)))
    run = BenchRun(seed=0, device=ray.train.torch.get_device(), rank=rank, world_size=world, model=ModelSpec(),
                   data=DataSpec(), artifact_dir=Path(config["dir"]) / f"rank{rank}", logger=NullLogger())
    params = LoopParams(max_steps=args.steps, eval_every=args.steps, lr=1e-4, warmup_steps=1,
                        batch_size=args.micro_batch * args.grad_accum * world, grad_accum=args.grad_accum,
                        bf16_autocast=False)

    def next_batch(step, micro, generator):
        ids = torch.randint(0, args.vocab, (args.micro_batch, args.context), generator=generator)
        return {"input_ids": ids, "labels": ids}

    def loss(m, batch):
        value = m(**batch).loss
        if variant == "per_micro_batch":
            float(value)  # the loop before read every micro-batch's loss back to the host
        return value

    times: list[float] = []

    def step_metrics(step):
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        return {}

    fine_tune(model, params, run, next_batch, None, loss=loss, step_metrics=step_metrics)
    if rank == 0:
        plain = getattr(model, "module", model)
        weights = torch.cat([p.detach().flatten().double().cpu() for p in plain.parameters()])
        torch.save(weights, Path(config["dir"]) / "weights.pt")
        (Path(config["dir"]) / "times.json").write_text(json.dumps(
            {"times": times, "all_reduces": len(all_reduces),
             "parameters": sum(p.numel() for p in plain.parameters())}))


def run_once(args: argparse.Namespace, variant: str, directory: Path) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    directory.mkdir(parents=True)
    TorchTrainer(_worker, train_loop_config={"args": vars(args) | {"out": str(args.out)}, "variant": variant,
                                             "dir": str(directory)},
                 scaling_config=ray.train.ScalingConfig(num_workers=args.workers, use_gpu=args.device == "cuda"),
                 run_config=ray.train.RunConfig(name=f"ddp-{directory.name}", storage_path=str(directory / "train"))
                 ).fit()
    record = json.loads((directory / "times.json").read_text())
    timed = record["times"][args.warmup:]
    record["steps_per_s"] = (len(timed) - 1) / (timed[-1] - timed[0])
    return record


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ray
    import torch

    import transformers

    from _common import machine, matmul_rates, roofline, save, training_pass_flops

    ray.init(num_cpus=max(args.workers, os.cpu_count() or 1), num_gpus=args.workers if args.device == "cuda" else 0,
             include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    weights: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in (VARIANTS if repeat % 2 == 0 else reversed(list(VARIANTS))):
                directory = Path(tmp) / f"{variant}-{repeat}"
                record = run_once(args, variant, directory)
                weights[variant] = torch.load(directory / "weights.pt")
                runs[variant].append(record)
                print(f"{variant:>16} run {repeat + 1}: {record['steps_per_s']:.3f} steps/s, "
                      f"{record['all_reduces'] / args.steps:.0f} bucket all-reduce(s) per step", flush=True)
    ray.shutdown()
    summary = {v: statistics.median(r["steps_per_s"] for r in runs[v]) for v in VARIANTS}
    # the roofline: one micro-batch's forward and backward counted by torch, × micro-batches per optimizer step
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=args.context, n_embd=args.width, n_layer=args.layers,
        n_head=max(1, args.width // 64)))
    ids = torch.randint(0, args.vocab, (args.micro_batch, args.context))
    step_flops = training_pass_flops(model, ids) * args.grad_accum * args.workers
    matmul = matmul_rates(args.device)["float32"]  # all of this machine's threads, the workers' together
    rooflines = {v: roofline(step_flops, 1.0 / summary[v], matmul) for v in VARIANTS}
    speedup = summary["per_step"] / summary["per_micro_batch"]
    difference = float((weights["per_step"] - weights["per_micro_batch"]).abs().max())
    print(f"parameters: {runs['per_step'][0]['parameters']:,}; workers {args.workers} ({args.device}), "
          f"grad_accum {args.grad_accum}, micro-batch {args.micro_batch} x {args.context} tokens")
    for variant, text in VARIANTS.items():
        line = rooflines[variant]
        print(f"  {summary[variant]:.3f} steps/s (median of {args.repeats}), {line['gflops']:.1f} GFLOP/s = "
              f"{line['fraction_of_matmul']:.0%} of the float32 matmul rate: {text}")
    print(f"  per_step / per_micro_batch: {speedup:.2f}x; largest weight difference after {args.steps} steps: "
          f"{difference:.2e}")
    save({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
          "variants": VARIANTS, "steps_per_s": summary, "speedup": speedup, "max_weight_difference": difference,
          "runs": runs, "step_flops": step_flops, "matmul_gflops": matmul, "roofline": rooflines,
          "machine": machine(args.device)}, args.out)


if __name__ == "__main__":
    main()
