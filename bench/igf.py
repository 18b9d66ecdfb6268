"""IGF information gain: raysel's batched engines against the reference formulation.

    python bench/igf.py                              # 32 contexts, objective 100 x 32 tokens, tiny-gpt2
    python bench/igf.py --contexts 16 --threads 2 --chunk-size 4
    python bench/igf.py --compile                    # also exact with torch.compile
    python bench/igf.py --device cuda --contexts 256 --loop-contexts 16
    python bench/igf.py --model smollm2-135m --contexts 8 --loop-contexts 2 --check-contexts 1

The same model (--model: the built-in pretrained tiny-gpt2 by default), objective set and contexts go through
raysel.methods.igf.information_gain with engine "loop" (the reference formulation: per context
a deep copy of θ0, one torch.optim.AdamW step, the objective evaluated one context at a time),
"exact" (raysel's batched torch.func engine) and "first_order" (the approximation). Speed is
timed in float32 (what users run); agreement of exact with the loop is measured in float64
(IG is a small difference of two perplexities). Each engine's FLOPs are counted once by torch's
FlopCounterMode (untimed) and put against the float32 matmul rate measured in the same run (achieved
GFLOP/s, fraction of the matmul rate). Prints a table and one JSON line, and writes
the JSON to bench/results/igf.json (igf-<model>.json for another model; or --out). On a LLaMA
(smollm2-135m) the float64 agreement is limited by transformers' RMSNorm, which computes in float32.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from raysel.data.pydocs import load_pydocs  # noqa: E402
from _common import count_flops, machine, matmul_rates, roofline, save  # noqa: E402 (bench/ is the script's directory)
from raysel.methods import igf  # noqa: E402
from raysel.models import load_model  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Results: bench/results/igf.json unless --out.")
    parser.add_argument("--model", default="tiny-gpt2", help="a built-in or local causal LM (tiny-gpt2)")
    parser.add_argument("--contexts", type=int, default=32, help="contexts timed with exact and first_order (32)")
    parser.add_argument("--loop-contexts", type=int, default=8,
                        help="of those, how many the slow reference loop times (8)")
    parser.add_argument("--check-contexts", type=int, default=4,
                        help="contexts for the float64 agreement check of exact vs loop (4)")
    parser.add_argument("--objective", type=int, default=100, help="objective-set contexts (100, as the paper)")
    parser.add_argument("--context-len", type=int, default=32, help="tokens per context (32, as the paper)")
    parser.add_argument("--chunk-size", type=int, default=8, help="contexts per batched step of exact/first_order (8)")
    parser.add_argument("--eval-batch-size", type=int, default=None,
                        help="objective contexts per forward in exact/first_order "
                             "(default: 512 tokens' worth on CPU, all on CUDA)")
    parser.add_argument("--compile", action="store_true",
                        help="also time exact with compile=True (torch.compile; its compile time reported apart)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def data(tokenizer, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective set and contexts as the reference splits a corpus: the pydocs fine-tuning part's
    first qualifying articles give the objective set, contexts are sampled from the later ones.
    (pydocs articles are short, so an article qualifies with one window: min_len = context_len.)"""
    texts = [a.text for a in load_pydocs("finetune")]
    articles = [torch.tensor(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    generator = torch.Generator().manual_seed(args.seed)
    objective, pool = igf.objective_and_pool(articles, size=args.objective, context_len=args.context_len,
                                             min_len=args.context_len, trim=True, generator=generator)
    contexts = torch.stack([igf.sample_context(pool, args.context_len, generator) for _ in range(args.contexts)])
    return objective, contexts


def timed(device: torch.device, fn, *args, **kwargs) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tokenizer = load_model(args.model, "causal_lm")
    model = model.to(device).eval()
    objective, contexts = data(tokenizer, args)
    hyper = dict(lr=args.lr, step="adamw", max_grad_norm=3.0)
    batched = dict(chunk_size=args.chunk_size, eval_batch_size=args.eval_batch_size)
    ig = igf.information_gain
    n_loop = min(args.loop_contexts, args.contexts)

    for engine, kw in (("loop", {}), ("exact", batched), ("first_order", batched)):  # warm-up, untimed
        ig(model, contexts[:2], objective, engine=engine, **hyper, **kw)
    loop, t_loop = timed(device, ig, model, contexts[:n_loop], objective, engine="loop", **hyper)
    _, t_loop_batched = timed(device, ig, model, contexts[:n_loop], objective, engine="loop",
                              eval_batch_size=args.objective, **hyper)
    exact, t_exact = timed(device, ig, model, contexts, objective, engine="exact", **hyper, **batched)
    first, t_first = timed(device, ig, model, contexts, objective, engine="first_order", **hyper, **batched)
    compiled = {}
    if args.compile:  # the first call compiles (timed apart), the second is timed
        _, compile_s = timed(device, ig, model, contexts[:2], objective, engine="exact", compile=True, **hyper, **batched)
        exact_c, t_exact_c = timed(device, ig, model, contexts, objective, engine="exact", compile=True, **hyper,
                                   **batched)
        compiled = {"first_call_s": compile_s, "seconds": t_exact_c,
                    "max_rel_diff_vs_exact_float32": float(((exact_c - exact).abs() / exact.abs()).max())}

    # the roofline: each engine's work counted once by torch (untimed), against the matmul rate of now
    matmul = matmul_rates(device.type)
    counted = {"loop": count_flops(ig, model, contexts[:n_loop], objective, engine="loop", **hyper)[1],
               "exact": count_flops(ig, model, contexts, objective, engine="exact", **hyper, **batched)[1],
               "first_order": count_flops(ig, model, contexts, objective, engine="first_order", **hyper, **batched)[1]}
    counted["loop_batched_eval"] = counted["loop"]  # the same products, other batch shapes
    seconds = {"loop": t_loop, "loop_batched_eval": t_loop_batched, "exact": t_exact, "first_order": t_first}
    if compiled:
        counted["exact_compiled"], seconds["exact_compiled"] = counted["exact"], compiled["seconds"]
    rooflines = {k: roofline(counted[k], seconds[k], matmul["float32"]) for k in seconds}

    model64 = model.double()  # the agreement check, in float64
    n_check = min(args.check_contexts, args.contexts)
    loop64 = ig(model64, contexts[:n_check], objective, engine="loop", **hyper)
    exact64 = ig(model64, contexts[:n_check], objective, engine="exact", **hyper, **batched)
    rel64 = float(((exact64 - loop64).abs() / loop64.abs()).max())

    rates = {"loop": n_loop / t_loop, "loop_batched_eval": n_loop / t_loop_batched,
             "exact": len(contexts) / t_exact, "first_order": len(contexts) / t_first,
             **({"exact_compiled": len(contexts) / compiled["seconds"]} if compiled else {})}
    result = {
        "bench": "igf", "model": args.model, "device": str(device), "threads": torch.get_num_threads(),
        "contexts": len(contexts), "loop_contexts": n_loop, "check_contexts": n_check,
        "objective": list(objective.shape), "chunk_size": args.chunk_size, "eval_batch_size": args.eval_batch_size,
        "lr": args.lr, "contexts_per_s": rates, "matmul_gflops": matmul, "roofline": rooflines,
        "flops_per_context_exact": counted["exact"] / len(contexts),
        "exact_vs_loop": rates["exact"] / rates["loop"],
        "exact_vs_loop_batched_eval": rates["exact"] / rates["loop_batched_eval"],
        "first_order_vs_loop": rates["first_order"] / rates["loop"],
        "first_order_vs_exact": rates["first_order"] / rates["exact"],
        "max_rel_diff_exact_vs_loop_float64": rel64, "compiled": compiled,
        "max_rel_diff_exact_vs_loop_float32": float(((exact[:n_loop] - loop).abs() / loop.abs()).max()),
        "spearman_first_order_vs_exact": igf.rank_correlation(first, exact),
        "ig_exact_float32": {"mean": float(exact.mean()), "std": float(exact.std()), "min": float(exact.min()),
                             "max": float(exact.max())},
        "machine": machine(device.type),
    }
    report(result)
    name = "igf.json" if args.model == "tiny-gpt2" else f"igf-{Path(args.model).name}.json"
    save(result, args.out or Path(__file__).parent / "results" / name)


def report(r: dict) -> None:
    rates = r["contexts_per_s"]
    print(f"IG on {r['model']}, objective {r['objective'][0]}x{r['objective'][1]} tokens, {r['device']}, "
          f"{r['threads']} threads, chunk {r['chunk_size']}, float32 timings")
    print(f"{'engine':<34}{'contexts':>9}{'contexts/s':>12}{'vs reference':>14}{'GFLOP/s':>10}{'of matmul':>11}")
    rows = (("reference loop (eval batch 1)", "loop", r["loop_contexts"]),
            ("loop, batched objective eval", "loop_batched_eval", r["loop_contexts"]),
            ("exact (raysel, torch.func)", "exact", r["contexts"]),
            ("exact, compile=True", "exact_compiled", r["contexts"]),
            ("first_order (approximation)", "first_order", r["contexts"]))
    for label, key, n in rows:
        if key not in rates:
            continue
        line = r["roofline"][key]
        print(f"{label:<34}{n:>9}{rates[key]:>12.3f}{rates[key] / rates['loop']:>13.1f}x"
              f"{line['gflops']:>10.1f}{line['fraction_of_matmul']:>10.0%}")
    print(f"float32 matmul (2048 x 2048) now: {r['matmul_gflops']['float32']:.1f} GFLOP/s; FLOPs counted by torch "
          f"(exact: {r['flops_per_context_exact'] / 1e9:.1f} GFLOP per context)")
    print(f"exact vs reference loop: {r['exact_vs_loop']:.1f}x; max relative IG difference (float64, "
          f"{r['check_contexts']} contexts): {r['max_rel_diff_exact_vs_loop_float64']:.1e}")
    if r["compiled"]:
        c = r["compiled"]
        print(f"exact, compile=True: first call (compiling) {c['first_call_s']:.1f} s, then "
              f"{rates['exact_compiled'] / rates['exact']:.2f}x exact; max relative IG difference (float32) "
              f"{c['max_rel_diff_vs_exact_float32']:.1e}")
    print(f"first_order vs exact: {r['first_order_vs_exact']:.1f}x faster, Spearman "
          f"{r['spearman_first_order_vs_exact']:.3f} over {r['contexts']} contexts")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
