"""eNTK kernel: raysel's ntk against the reference formulation (princeton-nlp/LM-Kernel-FT, functorch).

    python bench/kernel.py                                   # tiny-bert, 16 x 16 examples of 16 tokens
    python bench/kernel.py --model minilm --n-train 8 --n-eval 8 --seq-len 32 --chunk-size 4
    python bench/kernel.py --device cuda --model minilm --n-train 64 --n-eval 64 --chunk-size 16

The same model (a built-in with a sequence-classification head, C = 2 logits) and the same
inputs (random equal-length token sequences, no attention mask) go through two engines, each in
its own spawned process (so that its peak memory is its own):

- reference: per train example (batch 1) the full Jacobian by ``torch.func.jacrev``
  ({name: [C, *shape]}), then per eval example a ``vmap`` over the C train gradient directions of
  a ``torch.func.jvp`` of the eval logits along that direction: ⟨g_c(x_train), g_c'(x_eval)⟩ for
  all c, c'; each [C, C] block moved to float64 on CPU. train × train is computed in full.
- raysel: ``raysel.methods.kernel.ntk`` (vmapped jacrev over ``--chunk-size`` examples, the word
  embeddings differentiated at the rows the inputs use, products accumulated in float64; train ×
  train through the symmetric path; ``--row-chunk-size`` train examples held at once).

Formula sgd, over all parameters. Each engine does an untimed warm-up (2 × 2 examples), then
train × train and train × eval once each, timed. Rates are kernel entries (N·C·M·C) per second.
Agreement: max |K_raysel − K_ref| / max |K_ref| on the timed (model-dtype) kernels, and on a
float64 copy of the model (a few examples; elementwise relative difference there too).
Prints a table and one JSON line, and writes the JSON to bench/results/kernel.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.func import functional_call, jacrev, jvp, vmap  # noqa: E402

from _common import machine, save  # noqa: E402 (bench/ is the script's directory)
from raysel.methods import kernel  # noqa: E402
from raysel.models import load_model  # noqa: E402

CLASSES = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Results: bench/results/kernel.json unless --out.")
    parser.add_argument("--model", choices=("tiny-bert", "minilm"), default="tiny-bert",
                        help="built-in model with a new 2-label classifier head (tiny-bert)")
    parser.add_argument("--n-train", type=int, default=16, help="train examples N (16)")
    parser.add_argument("--n-eval", type=int, default=16, help="eval examples M (16)")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per example (16)")
    parser.add_argument("--chunk-size", type=int, default=8, help="raysel ntk chunk_size (8)")
    parser.add_argument("--row-chunk-size", type=int, default=None,
                        help="raysel ntk row_chunk_size: train examples held at once (default: chunk size)")
    parser.add_argument("--check", type=int, default=4,
                        help="examples per side for the float64 agreement check (4; 0 skips it)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kernel.json")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the two engines

def reference_kernel(model: torch.nn.Module, rows: dict, cols: dict) -> torch.Tensor:
    """LM-Kernel-FT's formulation: jacrev per train example, vmap-over-C of jvp per eval example."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(p, example):  # one example → [C]
        return functional_call(model, p, (), {k: v[None] for k, v in example.items()}).logits[0]

    n, m = len(rows["input_ids"]), len(cols["input_ids"])
    out = torch.empty(n, CLASSES, m, CLASSES, dtype=torch.float64)
    for i in range(n):
        x = {k: v[i] for k, v in rows.items()}
        jac = jacrev(f)(params, x)  # {name: [C, *shape]}
        for j in range(m):
            y = {k: v[j] for k, v in cols.items()}

            def along(tangent, y=y):
                return jvp(lambda p: f(p, y), (params,), (tangent,))[1]  # [C']: ⟨g_c'(y), tangent⟩
            out[i, :, j, :] = vmap(along)(jac).double().cpu()  # [C, C']
    return out


def raysel_kernel(model, rows, cols, chunk_size, row_chunk_size=None):
    fn = kernel.classifier_logits_fn(model)
    return kernel.ntk(model, rows, cols, logits_fn=fn, formula="sgd", chunk_size=chunk_size,
                      row_chunk_size=row_chunk_size)


def run_engine(engine: str, model, train, eval_, chunk_size: int, device: torch.device,
               row_chunk_size: int | None = None):
    def call(rows, cols):
        with torch.no_grad() if engine == "raysel" else torch.enable_grad():
            if engine == "raysel":
                return raysel_kernel(model, rows, None if cols is rows else cols, chunk_size, row_chunk_size)
            return reference_kernel(model, rows, cols)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times, kernels = {}, {}
    for name, cols in (("train_train", train), ("train_eval", eval_)):
        sync()
        start = time.perf_counter()
        kernels[name] = call(train, cols)
        sync()
        times[name] = time.perf_counter() - start
    return kernels, times


# ----------------------------------------------------------------------------- data and model

def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype = torch.float32):
    torch.manual_seed(args.seed)  # minilm's classifier head is initialised from the global RNG
    model, _ = load_model(args.model, "sequence_classification", num_labels=CLASSES)
    # eager attention for both engines: torch has no forward-mode AD (the reference's jvp) for SDPA's
    # fused CPU kernel, and LM-Kernel-FT ran on eager attention
    model.set_attn_implementation("eager")
    model = model.to(device=device, dtype=dtype).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)

    def ids(n):  # equal-length sequences, no attention mask (vmap/jvp paths need mask-free inputs)
        return {"input_ids": torch.randint(5, vocab, (n, args.seq_len), generator=g).to(device)}
    return model, ids(args.n_train), ids(args.n_eval)


def worker(engine: str, args: argparse.Namespace, path: str) -> None:
    """One engine in a fresh process: warm-up, timed runs, peak memory; results saved to ``path``."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, train, eval_ = build(args, device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda0 = torch.cuda.memory_allocated()
    small = {k: v[:2] for k, v in train.items()}
    run_engine(engine, model, small, {k: v[:2] for k, v in eval_.items()}, args.chunk_size, device)  # warm-up
    kernels, times = run_engine(engine, model, train, eval_, args.chunk_size, device, args.row_chunk_size)
    memory = {"peak_rss_increase_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}
    if device.type == "cuda":
        memory["cuda_peak_allocated_increase_mib"] = (torch.cuda.max_memory_allocated() - cuda0) / 2 ** 20
    torch.save({"kernels": kernels, "times": times, "memory": memory,
                "dtype": str(next(model.parameters()).dtype),
                "params": sum(p.numel() for p in model.parameters())}, path)


def spawn(engine: str, args: argparse.Namespace, tmp: str) -> dict:
    path = os.path.join(tmp, f"{engine}.pt")
    process = mp.get_context("spawn").Process(target=worker, args=(engine, args, path))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{engine} worker failed with exit code {process.exitcode}")
    return torch.load(path)


def rel_scale(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def check_float64(args: argparse.Namespace) -> dict:
    """Both engines on a float64 copy of the model, ``--check`` examples per side."""
    device = torch.device(args.device)
    small = argparse.Namespace(**{**vars(args), "n_train": args.check, "n_eval": args.check})
    model, train, eval_ = build(small, device, torch.float64)
    out = {}
    for name, cols in (("train_train", train), ("train_eval", eval_)):
        ref = reference_kernel(model, train, cols)
        ours = raysel_kernel(model, train, None if cols is train else cols, args.chunk_size)
        out[name] = {"scale": rel_scale(ours, ref),
                     "elementwise": float(((ours - ref).abs() / ref.abs().clamp_min(1e-300)).max())}
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {engine: spawn(engine, args, tmp) for engine in ("reference", "raysel")}
    ref, ours = runs["reference"], runs["raysel"]
    check = check_float64(args) if args.check else None
    sizes = {"train_train": args.n_train * CLASSES * args.n_train * CLASSES,
             "train_eval": args.n_train * CLASSES * args.n_eval * CLASSES}
    rates = {e: {k: sizes[k] / r["times"][k] for k in sizes} | {"total": sum(sizes.values()) / sum(r["times"].values())}
             for e, r in runs.items()}
    result = {
        "bench": "kernel", "model": args.model, "params": ref["params"], "dtype": ref["dtype"],
        "device": args.device, "threads": args.threads, "n_train": args.n_train, "n_eval": args.n_eval,
        "seq_len": args.seq_len, "classes": CLASSES, "chunk_size": args.chunk_size,
        "row_chunk_size": args.row_chunk_size or args.chunk_size, "formula": "sgd",
        "entries": sizes, "seconds": {e: r["times"] for e, r in runs.items()}, "entries_per_s": rates,
        "ratio_raysel_vs_reference": {k: rates["raysel"][k] / rates["reference"][k] for k in rates["raysel"]},
        "max_rel_diff_model_dtype": {k: rel_scale(ours["kernels"][k], ref["kernels"][k]) for k in sizes},
        "max_rel_diff_float64": check, "check_examples": args.check,
        "memory": {e: r["memory"] for e, r in runs.items()},
        "machine": machine(args.device),
    }
    report(result)
    save(result, args.out)


def report(r: dict) -> None:
    print(f"eNTK (sgd) on {r['model']} ({r['params'] / 1e6:.2f}M params, {r['dtype']}), C={r['classes']}, "
          f"N={r['n_train']} M={r['n_eval']} x {r['seq_len']} tokens, {r['device']}, {r['threads']} threads, "
          f"chunk {r['chunk_size']}")
    mem_key = "cuda_peak_allocated_increase_mib" if r["device"] == "cuda" else "peak_rss_increase_mib"
    print(f"{'engine':<12}{'kernel':<13}{'entries':>9}{'seconds':>10}{'entries/s':>12}{'peak mem MiB':>14}")
    for engine in ("reference", "raysel"):
        for k in ("train_train", "train_eval"):
            print(f"{engine:<12}{k:<13}{r['entries'][k]:>9}{r['seconds'][engine][k]:>10.2f}"
                  f"{r['entries_per_s'][engine][k]:>12.1f}{r['memory'][engine][mem_key]:>14.0f}")
    ratio = r["ratio_raysel_vs_reference"]
    print(f"raysel / reference: train x train {ratio['train_train']:.1f}x, train x eval {ratio['train_eval']:.1f}x, "
          f"total {ratio['total']:.1f}x")
    d = r["max_rel_diff_model_dtype"]
    print(f"max |dK| / max |K| ({r['dtype']}): train x train {d['train_train']:.1e}, train x eval {d['train_eval']:.1e}")
    if r["max_rel_diff_float64"]:
        c = r["max_rel_diff_float64"]
        print(f"float64 copy, {r['check_examples']} x {r['check_examples']}: max |dK| / max |K| "
              f"{max(v['scale'] for v in c.values()):.1e}, elementwise max rel diff "
              f"{max(v['elementwise'] for v in c.values()):.1e}")
    print(f"peak memory: {mem_key} (per engine process, over the process after model load, "
          f"warm-up included)")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
