"""OPF: a training step with matrices in MPO form, against the dense model and the reference formulation.

    python bench/opf.py                                    # minilm, batch 32 x 128 tokens (the paper's)
    python bench/opf.py --batch 8 --seq-len 64             # a small batch: the cores' cost shows more
    python bench/opf.py --model tiny-bert --steps 5

One model (a built-in with a sequence-classification head) and one batch of random tokens. The
first ``--top-n`` layers of each weight type (FFN_1, FFN_2, attention: 3 + 3 + 12 matrices by
default) are put in MPO form with OPF's shapes ([a, 1 × 13, b], ``auto_shapes``), then one training
step (forward, backward, AdamW step) is timed, median of ``--steps`` after two untimed ones, for:

- dense: the model as it is (what OPF's merged model costs);
- opf: raysel's MPOLinear, ``mode="contract"``: W multiplied out once per forward in the cheapest
  order (a matrix-chain dynamic programme), same-shaped layers together in one batched contraction
  (MPOBank), then one matmul — what the recipe runs on CUDA;
- opf-layerwise: the same, each layer on its own — what the recipe runs on the CPU;
- opf-cores: MPOLinear ``mode="cores"``: the input pushed through the cores, W never formed (only when
  ``--variants`` names it; refused when its estimated activations exceed half the free memory);
- reference: W rebuilt from the cores on every forward by contracting left to right (OPF's code).

Also an evaluation forward (no_grad): MPOLinear keeps W while the cores do not change; the reference
rebuilds it. At the start every variant's logits equal the dense model's (reported). Ratios are
against the dense step (target: opf ≤ 1.5x) and against the reference; each variant's step is counted
once by torch's FlopCounterMode, and the dense step's FLOPs (the useful work) per second of each variant
are put against the float32 matmul rate measured in the same run. Prints a table and one JSON
line, writes bench/results/opf.json (or --out).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import count_flops, machine, matmul_rates, roofline, save  # noqa: E402

from raysel.methods.opf.algorithm import (MPOLinear, auto_shapes, matrix_candidates, mpo_contract_left_to_right,  # noqa: E402
                                          replace_module, share_contractions)
from raysel.models import load_model  # noqa: E402

VARIANTS = ("dense", "opf", "opf-layerwise", "opf-cores", "reference")
DEFAULT_VARIANTS = ("dense", "opf", "opf-layerwise", "reference")  # the README's table; opf-cores on request


class ReferenceMPO(nn.Module):
    """The reference formulation: the cores multiplied out left to right on every forward."""

    def __init__(self, layer: MPOLinear):
        super().__init__()
        self.cores, self.bias = layer.cores, layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, mpo_contract_left_to_right(list(self.cores)).T, self.bias)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", choices=("tiny-bert", "minilm"), default="minilm")
    parser.add_argument("--batch", type=int, default=32, help="examples per step (32)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per example (128)")
    parser.add_argument("--top-n", type=int, default=3, help="layers per weight type in MPO form (3)")
    parser.add_argument("--middle", type=int, default=13, help="size-1 middle cores of the shapes (13)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (5)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                        help="default: %(default)s; opf-cores (the input through the cores) only when named: its "
                             "activations grow with every core (22 GB and > 16 min at 32 x 128 on minilm)")
    parser.add_argument("--force", action="store_true",
                        help="run opf-cores even when its estimated activations exceed half the free memory")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "opf.json")
    return parser.parse_args(argv)


def build(base: nn.Module, variant: str, names: list[str], middle: int) -> nn.Module:
    model = copy.deepcopy(base)
    if variant == "dense":
        return model
    for name in names:
        layer = model.get_submodule(name)
        in_shape, out_shape = auto_shapes(layer.in_features, layer.out_features, middle)
        mpo = MPOLinear.from_layer(layer, in_shape, out_shape, mode="cores" if variant == "opf-cores" else "contract")
        replace_module(model, name, ReferenceMPO(mpo) if variant == "reference" else mpo)
    if variant == "opf":
        share_contractions(model, on_cpu=True)  # banked everywhere here; the recipe banks on CUDA only
    return model


def cores_activation_bytes(base: nn.Module, names: list[str], middle: int, tokens: int) -> int:
    """What opf-cores' forward keeps for the backward, estimated: after core k of a layer the input is
    [tokens, j_1..j_k, i_k+1..i_n, r_k+1] floats, held twice (the moved copy and tensordot's result)."""
    total = 0
    for name in names:
        layer = base.get_submodule(name)
        in_shape, out_shape = auto_shapes(layer.in_features, layer.out_features, middle)
        modes = [i * j for i, j in zip(in_shape, out_shape)]
        for k in range(len(in_shape)):
            bond = min(math.prod(modes[:k + 1]), math.prod(modes[k + 1:]))  # an exact decomposition's rank
            total += tokens * math.prod(out_shape[:k + 1]) * math.prod(in_shape[k + 1:]) * bond
    return 2 * 4 * total


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as info:
        return next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_variant(model: nn.Module, batch: dict, steps: int, device: torch.device) -> dict:
    model.to(device).train()
    cores = [p for n, p in model.named_parameters() if ".cores." in n]
    rest = [p for n, p in model.named_parameters() if ".cores." not in n]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": cores, "lr": 1e-6}], lr=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    _, flops = count_flops(step)  # also the first warm-up step
    train = []
    for i in range(steps + 2):
        sync(device)
        started = time.perf_counter()
        step()
        sync(device)
        if i >= 2:
            train.append(time.perf_counter() - started)
    model.eval()
    evals = []
    with torch.no_grad():
        for i in range(steps + 1):
            sync(device)
            started = time.perf_counter()
            model(**batch)
            sync(device)
            if i >= 1:
                evals.append(time.perf_counter() - started)
    return {"train_step_s": statistics.median(train), "eval_forward_s": statistics.median(evals),
            "train_step_flops": flops}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base, _ = load_model(args.model, "sequence_classification", num_labels=5)
    base.eval()
    found = matrix_candidates(base, ["FFN_1", "FFN_2", "attention"])
    names = [n for layers in found.values() for i in sorted(layers)[:args.top_n] for n in layers[i]]
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000 if args.model == "minilm" else 2000, (args.batch, args.seq_len),
                                        generator=g),
             "labels": torch.randint(0, 5, (args.batch,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        reference_logits = base.to(device)(**batch).logits
    if "opf-cores" in args.variants and not args.force:
        need, free = cores_activation_bytes(base, names, args.middle, args.batch * args.seq_len), free_bytes(device)
        if need > free / 2:
            sys.exit(f"opf-cores: its training step would keep about {need / 2**30:.1f} GiB of activations, more "
                     f"than half of the {free / 2**30:.1f} GiB free on {device}; give a smaller --batch/--seq-len, "
                     "leave opf-cores out, or --force")
    results, agreement, parameters = {}, {}, {}
    for variant in args.variants:
        model = build(base, variant, names, args.middle).to(device).eval()
        with torch.no_grad():
            agreement[variant] = float((model(**batch).logits - reference_logits).abs().max())
        parameters[variant] = sum(p.numel() for p in model.parameters())
        results[variant] = time_variant(model, batch, args.steps, device)
        print(f"{variant:<10} train step {results[variant]['train_step_s']:.3f} s, "
              f"eval forward {results[variant]['eval_forward_s']:.3f} s", flush=True)
        del model
    matmul = matmul_rates(device.type)["float32"]
    useful = results["dense"]["train_step_flops"] if "dense" in results else None  # the model's own products
    rooflines = {v: {"own": roofline(r["train_step_flops"], r["train_step_s"], matmul),
                     **({"useful": roofline(useful, r["train_step_s"], matmul)} if useful else {})}
                 for v, r in results.items()}
    timed = ("train_step_s", "eval_forward_s")
    ratio = {f"{v}_vs_dense": {k: results[v][k] / results["dense"][k] for k in timed}
             for v in results if v != "dense" and "dense" in results}
    if "opf" in results and "reference" in results:
        ratio["reference_vs_opf"] = {k: results["reference"][k] / results["opf"][k] for k in timed}
    if "opf" in results and "opf-cores" in results:
        ratio["cores_vs_contract"] = {k: results["opf-cores"][k] / results["opf"][k] for k in timed}
    result = {"bench": "opf", "model": args.model, "batch": args.batch, "seq_len": args.seq_len,
              "top_n": args.top_n, "middle": args.middle, "matrices": len(names), "device": args.device,
              "threads": args.threads, "parameters": parameters, "seconds": results, "ratios": ratio,
              "matmul_gflops": matmul, "roofline": rooflines,
              "max_abs_logit_diff_at_init": agreement, "machine": machine(args.device)}
    report(result)
    save(result, args.out)


def report(r: dict) -> None:
    print(f"OPF on {r['model']}: {r['matrices']} matrices in MPO form (top {r['top_n']} layers per type, "
          f"middle {r['middle']}), batch {r['batch']} x {r['seq_len']} tokens, {r['device']}, {r['threads']} threads")
    print(f"{'variant':<14}{'parameters':>12}{'train step s':>14}{'eval fwd s':>12}{'|dlogit| at init':>18}"
          f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'of matmul':>11}")
    for v, s in r["seconds"].items():
        line = r["roofline"][v].get("useful", r["roofline"][v]["own"])
        print(f"{v:<14}{r['parameters'][v]:>12}{s['train_step_s']:>14.3f}{s['eval_forward_s']:>12.3f}"
              f"{r['max_abs_logit_diff_at_init'][v]:>18.1e}{s['train_step_flops'] / 1e9:>12.1f}"
              f"{line['gflops']:>9.1f}{line['fraction_of_matmul']:>10.0%}")
    print(f"float32 matmul (2048 x 2048) now: {r['matmul_gflops']:.1f} GFLOP/s. GFLOP/step: each variant's own "
          "step counted by torch; GFLOP/s and of matmul: the dense step's FLOPs (the useful work) per second")
    for name, values in r["ratios"].items():
        print(f"{name}: train step {values['train_step_s']:.2f}x, eval forward {values['eval_forward_s']:.2f}x")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
