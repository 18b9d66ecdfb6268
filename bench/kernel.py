"""eNTK kernel: raysel's ntk against the reference formulation (princeton-nlp/LM-Kernel-FT, functorch).

    python bench/kernel.py                                   # tiny-bert, 16 x 16 examples of 16 tokens
    python bench/kernel.py --model minilm --n-train 8 --n-eval 8 --seq-len 32 --chunk-size 4
    python bench/kernel.py --model minilm --n-train 64 --n-eval 64 --seq-len 32 --reference-rows 8
    python bench/kernel.py --device cuda --model minilm --n-train 64 --n-eval 64 --chunk-size 16
    python bench/kernel.py --logits prompt                   # the masked LM's label-word scores instead
    python bench/kernel.py --fidelity                        # the README fidelity table's kernel rows
    python bench/kernel.py --fidelity --model minilm         #   on minilm (~3 min of CPU)

The same model (a built-in with a sequence-classification head, C = 2 logits; ``--logits prompt``:
the masked LM's scores of 2 label words at a mask position) and the same inputs (random
equal-length token sequences, no attention mask) go through two engines, each in its own spawned
process (so that its peak memory is its own):

- reference: per train example (batch 1) the full Jacobian by ``torch.func.jacrev``
  ({name: [C, *shape]}), then per eval example a ``vmap`` over the C train gradient directions of
  a ``torch.func.jvp`` of the eval logits along that direction: ⟨g_c(x_train), g_c'(x_eval)⟩ for
  all c, c'; each [C, C] block moved to float64 on CPU. train × train is computed in full. Prompt
  logits: over the reference's parameters, i.e. a copy of the masked LM whose decoder weight is a
  parameter of its own (transformers ties it to the input embeddings).
- raysel: ``raysel.methods.kernel.ntk`` (vmapped jacrev over ``--chunk-size`` examples, the word
  embeddings differentiated at the rows the inputs use, products accumulated in float64; train ×
  train through the symmetric path; ``--row-chunk-size`` train examples held at once). Prompt
  logits: ``prompt_logits_fn`` on the tied masked LM, its decoder a separate parameter (the
  default), differentiated at the label words' rows.

Formula sgd, over all parameters. Each engine does an untimed warm-up (2 × 2 examples), then
train × train and train × eval once each, timed; raysel also both in one pass (``ntk(...,
with_train=True)``, the recipe's call: the train rows' Jacobians formed once), which is its total's
time. Rates are kernel entries (N·C·M·C) per second.
Agreement: max |K_raysel − K_ref| / max |K_ref| on the timed (model-dtype) kernels, and on a
float64 copy of the model (a few examples; elementwise relative difference there too). Each engine's
timed work is counted once more by torch's FlopCounterMode (untimed, after its peak memory was read)
and put against the float32 matmul rate measured in the same run. Prints a table and one JSON line,
and writes the JSON to bench/results/kernel.json (or --out).

``--fidelity`` measures instead what the reference's behaviour changes against raysel's former one,
on pydocs-topics prompt examples (k = 4, seed 13; ``fidelity`` below): the decoder as its own
parameter against the tied one (relative kernel difference, per formula and subset), the
cross-validated logistic solver against the plain one, the flattened solvers against the per-class
layout (label agreement and accuracy on the eval examples), and (tiny-bert) the linear-probe head
against the model's random head; it writes bench/results/fidelity-kernel-<model>.json.
"""
from __future__ import annotations

import argparse
import copy
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

from _common import count_flops, machine, matmul_rates, roofline, save  # noqa: E402 (bench/ is the script's directory)
from raysel.methods import kernel  # noqa: E402
from raysel.models import load_model  # noqa: E402
from raysel.models.prompt import PromptClassifier  # noqa: E402

CLASSES = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Results: bench/results/kernel.json unless --out.")
    parser.add_argument("--model", choices=("tiny-bert", "minilm"), default="tiny-bert",
                        help="built-in model with a new 2-label classifier head (tiny-bert)")
    parser.add_argument("--logits", choices=("classifier", "prompt"), default="classifier",
                        help="the classifier head's 2 logits, or the masked LM's scores of 2 label words at a "
                             "mask position (classifier)")
    parser.add_argument("--n-train", type=int, default=16, help="train examples N (16)")
    parser.add_argument("--n-eval", type=int, default=16, help="eval examples M (16)")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per example (16)")
    parser.add_argument("--chunk-size", type=int, default=8, help="raysel ntk chunk_size (8)")
    parser.add_argument("--row-chunk-size", type=int, default=None,
                        help="raysel ntk row_chunk_size: train examples held at once (default: chunk size)")
    parser.add_argument("--reference-rows", type=int, default=None,
                        help="the reference computes only the first R train rows of both kernels (its cost per "
                             "entry does not depend on N: a 64 x 64 run takes ~20 min in full); default all")
    parser.add_argument("--no-factor-linears", dest="factor_linears", action="store_false",
                        help="raysel ntk factor_linears=False: linear weights' per-example gradients formed whole "
                             "(raysel's former engine)")
    parser.add_argument("--check", type=int, default=4,
                        help="examples per side for the float64 agreement check (4; 0 skips it)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (bench/results/kernel.json; --fidelity: fidelity-kernel-<model>.json)")
    parser.add_argument("--fidelity", action="store_true",
                        help="measure the fidelity table's kernel rows instead of the speed (see the docstring)")
    parser.add_argument("--fidelity-train", type=int, default=6,
                        help="--fidelity: train examples of the kernel comparison (6; the solvers use all 20)")
    parser.add_argument("--fidelity-eval", type=int, default=4,
                        help="--fidelity: eval examples of the kernel comparison (4)")
    parser.add_argument("--fidelity-solver-eval", type=int, default=40,
                        help="--fidelity: eval examples of the solver comparison (40: dev, then test; all 20 train)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the two engines

def label_words(model: torch.nn.Module) -> list[int]:
    vocab = model.config.vocab_size
    return [vocab // 3, vocab // 2]


def reference_module(model: torch.nn.Module, logits: str) -> torch.nn.Module:
    """What the reference differentiates: the classifier itself, or for prompt logits a copy of the
    masked LM whose decoder weight is a parameter of its own (its prompt model is not tied) behind
    the label-word scores at the mask."""
    if logits == "classifier":
        return model
    twin = copy.deepcopy(model)
    twin.get_output_embeddings().weight = torch.nn.Parameter(twin.get_input_embeddings().weight.detach().clone())
    return PromptClassifier(twin, label_words(model))


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


def raysel_kernel(model, rows, cols, chunk_size, row_chunk_size=None, logits="classifier", factor_linears=True,
                  with_train=False):
    fn = (kernel.classifier_logits_fn(model) if logits == "classifier"
          else kernel.prompt_logits_fn(model, label_words(model)))
    return kernel.ntk(model, rows, cols, logits_fn=fn, formula="sgd", chunk_size=chunk_size,
                      row_chunk_size=row_chunk_size, factor_linears=factor_linears, with_train=with_train)


def run_engine(engine: str, model, train, eval_, args: argparse.Namespace, device: torch.device,
               separately: bool = True):
    """Both kernels (train x train, train x eval), each timed: (kernels, seconds). The reference
    computes each by its own call; raysel both in one pass ("both": ``with_train``, the recipe's
    call) and, with ``separately``, each by its own call too (the same numbers, checked)."""
    module = reference_module(model, args.logits) if engine == "reference" else model

    def call(rows, cols, with_train=False):
        with torch.no_grad() if engine == "raysel" else torch.enable_grad():
            if engine == "raysel":
                return raysel_kernel(model, rows, None if cols is rows else cols, args.chunk_size,
                                     args.row_chunk_size, args.logits, args.factor_linears, with_train)
            return reference_kernel(module, rows, cols)

    def timed(*call_args, **options):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = call(*call_args, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    times, kernels = {}, {}
    rows = {k: v[:args.reference_rows] for k, v in train.items()} if engine == "reference" else train
    if engine == "raysel":
        both, times["both"] = timed(train, eval_, with_train=True)
        kernels = dict(zip(("train_train", "train_eval"), both))
    if engine == "reference" or separately:
        for name, cols in (("train_train", train), ("train_eval", eval_)):
            kernel_, times[name] = timed(rows, cols)
            if name in kernels and not torch.equal(kernel_, kernels[name]):
                raise AssertionError(f"raysel's {name} kernel differs between one pass and its own call")
            kernels[name] = kernel_
    return kernels, times


def both_kernels_seconds(times: dict) -> float:
    """The time of both kernels: raysel's one pass, the reference's two calls."""
    return times["both"] if "both" in times else times["train_train"] + times["train_eval"]


# ----------------------------------------------------------------------------- data and model

def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype = torch.float32):
    torch.manual_seed(args.seed)  # minilm's classifier head is initialised from the global RNG
    prompt = args.logits == "prompt"
    model, tokenizer = (load_model(args.model, "masked_lm") if prompt
                        else load_model(args.model, "sequence_classification", num_labels=CLASSES))
    # eager attention for both engines: torch has no forward-mode AD (the reference's jvp) for SDPA's
    # fused CPU kernel, and LM-Kernel-FT ran on eager attention
    model.set_attn_implementation("eager")
    model = model.to(device=device, dtype=dtype).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)

    def ids(n):  # equal-length sequences, no attention mask (vmap/jvp paths need mask-free inputs)
        batch = {"input_ids": torch.randint(5, vocab, (n, args.seq_len), generator=g)}
        if prompt:  # the mask token in the middle
            batch["input_ids"][:, args.seq_len // 2] = tokenizer.mask_token_id
            batch["mask_pos"] = torch.full((n,), args.seq_len // 2)
        return {k: v.to(device) for k, v in batch.items()}
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
    run_engine(engine, model, small, {k: v[:2] for k, v in eval_.items()}, args, device)  # warm-up
    kernels, times = run_engine(engine, model, train, eval_, args, device)
    memory = {"peak_rss_increase_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}
    if device.type == "cuda":
        memory["cuda_peak_allocated_increase_mib"] = (torch.cuda.max_memory_allocated() - cuda0) / 2 ** 20
    # the engine's products, counted by torch on a copy of the timed calls (after the memory was read)
    _, flops = count_flops(run_engine, engine, model, train, eval_, args, device, separately=False)
    torch.save({"kernels": kernels, "times": times, "memory": memory, "flops": flops,
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
    reference = reference_module(model, args.logits)
    for name, cols in (("train_train", train), ("train_eval", eval_)):
        ref = reference_kernel(reference, train, cols)
        ours = raysel_kernel(model, train, None if cols is train else cols, args.chunk_size, logits=args.logits,
                             factor_linears=args.factor_linears)
        out[name] = {"scale": rel_scale(ours, ref),
                     "elementwise": float(((ours - ref).abs() / ref.abs().clamp_min(1e-300)).max())}
    return out


def fidelity(args: argparse.Namespace) -> dict:
    """The kernel rows of the README's fidelity table, on ``args.model`` in float32 (tiny-bert: float64)."""
    import warnings

    from raysel.data.prompts import encode, prompt_and_words
    from raysel.data.sources import classification_splits
    from raysel.spec import DataSpec

    warnings.filterwarnings("ignore")  # sklearn's FutureWarnings, the CV fold warning of k = 4
    dtype = torch.float64 if args.model == "tiny-bert" else torch.float32
    splits = classification_splits(DataSpec(name="pydocs-topics", k=4), seed=13)
    mlm, tokenizer = load_model(args.model, "masked_lm")
    mlm = mlm.to(dtype).eval()
    words = ["string", "data", "time", "file", "number"] if args.model == "tiny-bert" else None  # tiny's vocab
    prompt, word_ids = prompt_and_words(tokenizer, "pydocs-topics", splits, label_words=words)
    evals = (splits.dev + splits.test)[:args.fidelity_solver_eval]
    step = max(1, len(splits.train) // args.fidelity_train)  # spread over the labels
    few = splits.train[::step][:args.fidelity_train]
    small = [encode(tokenizer, prompt, [(t, None) for t, _ in rows], 128) for rows in (few, evals[:args.fidelity_eval])]
    big = [encode(tokenizer, prompt, [(t, None) for t, _ in rows], 128) for rows in (splits.train, evals)]
    # a label word in an input (besides at the mask) is where a tied decoder adds cross terms
    present = sorted({w for w in word_ids for b in small if (b["input_ids"] == w).any()})
    out: dict = {"model": args.model, "dtype": str(dtype), "label_words_in_kernel_inputs": present,
                 "kernel_examples": [len(few), args.fidelity_eval], "solver_examples": [len(splits.train), len(evals)]}
    started = time.perf_counter()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    kernels = {}
    for formula in ("sgd", "signgd"):
        for subset in ("all", "exclude_embeddings", "exclude_head"):
            pair = {d: kernel.ntk(mlm, small[0], small[1], logits_fn=kernel.prompt_logits_fn(mlm, word_ids, decoder=d),
                                  formula=formula, subset=subset, chunk_size=4) for d in kernel.DECODERS}
            kernels[f"{formula}/{subset}"] = rel(pair["tied"], pair["separate"])
            print(f"{args.model} {formula:<7}{subset:<20} max |K_tied - K_separate| / max |K_separate| "
                  f"{kernels[f'{formula}/{subset}']:.2e}", flush=True)
    out["decoder_tied_vs_separate"] = kernels
    y = torch.tensor([label for _, label in splits.train])
    y_eval = torch.tensor([label for _, label in evals])
    solve = {}
    for d in kernel.DECODERS:
        fn = kernel.prompt_logits_fn(mlm, word_ids, decoder=d)
        solve[d] = (kernel.ntk(mlm, big[0], logits_fn=fn, chunk_size=4, row_chunk_size=10),
                    kernel.ntk(mlm, big[0], big[1], logits_fn=fn, chunk_size=4, row_chunk_size=10))

    def labels(d: str = "separate", **options) -> torch.Tensor:
        return kernel.solve(solve[d][0], y, solve[d][1], **options).labels

    def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a == b).double().mean())

    def acc(a: torch.Tensor) -> float:
        return float((a == y_eval).double().mean())
    effects = {"lstsq tied vs separate": (labels("tied"), labels())}
    effects["logistic cv5 vs plain C=1"] = (labels(solver="logistic"), labels(solver="logistic", logistic_cv=0))
    for solver in ("logistic", "svc", "svr"):
        options = {"logistic_cv": 0} if solver == "logistic" else {}
        effects[f"{solver} flattened vs per_class"] = (labels(solver=solver, **options),
                                                      labels(solver=solver, class_layout="per_class", **options))
    out["solver_agreement"] = {k: {"agreement": agreement(a, b), "accuracy": [acc(a), acc(b)]}
                               for k, (a, b) in effects.items()}
    for k, v in out["solver_agreement"].items():
        print(f"{args.model} {k:<32} label agreement {v['agreement']:.3f}, accuracy {v['accuracy'][0]:.3f} vs "
              f"{v['accuracy'][1]:.3f} ({len(evals)} eval)", flush=True)
    if args.model == "tiny-bert":  # no prompt: the linear-probe head against the model's random head
        plain = [{k: v for k, v in tokenizer([t for t, _ in rows], padding=True, truncation=True, max_length=128,
                                             return_tensors="pt").items() if k in ("input_ids", "attention_mask")}
                 for rows in (splits.train, evals)]
        torch.manual_seed(13)
        model, _ = load_model(args.model, "sequence_classification", num_labels=5)
        model = model.to(dtype).eval()
        heads = {"model": model, "linear_probe": kernel.linear_probe_classifier(copy.deepcopy(model), plain[0], y)}
        found = {}
        for name, module in heads.items():
            fn = kernel.classifier_logits_fn(module)
            found[name] = kernel.solve(kernel.ntk(module, plain[0], logits_fn=fn), y,
                                       kernel.ntk(module, plain[0], plain[1], logits_fn=fn)).labels
        out["no_prompt_probe_vs_model_head"] = {"agreement": agreement(found["linear_probe"], found["model"]),
                                                "accuracy": [acc(found["linear_probe"]), acc(found["model"])]}
        print(f"{args.model} no prompt, lstsq: linear_probe vs model head label agreement "
              f"{out['no_prompt_probe_vs_model_head']['agreement']:.3f}, accuracy "
              f"{out['no_prompt_probe_vs_model_head']['accuracy'][0]:.3f} vs "
              f"{out['no_prompt_probe_vs_model_head']['accuracy'][1]:.3f}")
    out["seconds"] = time.perf_counter() - started
    out["machine"] = machine("cpu")
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.fidelity:
        result = fidelity(args)
        print(json.dumps(result))
        save(result, args.out or Path(__file__).parent / "results" / f"fidelity-kernel-{args.model}.json")
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = {engine: spawn(engine, args, tmp) for engine in ("reference", "raysel")}
    ref, ours = runs["reference"], runs["raysel"]
    check = check_float64(args) if args.check else None
    matmul = matmul_rates(args.device)["float32"]
    both = {e: both_kernels_seconds(r["times"]) for e, r in runs.items()}
    rooflines = {e: roofline(r["flops"], both[e], matmul) for e, r in runs.items()}
    reference_rows = min(args.reference_rows or args.n_train, args.n_train)
    sizes = {e: {"train_train": n * CLASSES * args.n_train * CLASSES, "train_eval": n * CLASSES * args.n_eval * CLASSES}
             for e, n in (("reference", reference_rows), ("raysel", args.n_train))}
    rates = {e: {k: sizes[e][k] / r["times"][k] for k in sizes[e]}
             | {"total": sum(sizes[e].values()) / both[e]} for e, r in runs.items()}
    result = {
        "bench": "kernel", "model": args.model, "logits": args.logits, "params": ref["params"], "dtype": ref["dtype"],
        "device": args.device, "threads": args.threads, "n_train": args.n_train, "n_eval": args.n_eval,
        "seq_len": args.seq_len, "classes": CLASSES, "chunk_size": args.chunk_size,
        "row_chunk_size": args.row_chunk_size or args.chunk_size, "factor_linears": args.factor_linears,
        "formula": "sgd",
        "entries": sizes["raysel"], "reference_rows": reference_rows, "reference_entries": sizes["reference"],
        "seconds": {e: r["times"] for e, r in runs.items()}, "entries_per_s": rates,
        "ratio_raysel_vs_reference": {k: rates["raysel"][k] / rates["reference"][k] for k in rates["raysel"]},
        "max_rel_diff_model_dtype": {k: rel_scale(ours["kernels"][k][:reference_rows], ref["kernels"][k])
                                     for k in ref["kernels"]},
        "max_rel_diff_float64": check, "check_examples": args.check,
        "memory": {e: r["memory"] for e, r in runs.items()},
        "matmul_gflops": matmul, "roofline": rooflines,
        "machine": machine(args.device),
    }
    report(result)
    save(result, args.out or Path(__file__).parent / "results" / "kernel.json")


def report(r: dict) -> None:
    print(f"eNTK (sgd) on {r['model']} ({r['params'] / 1e6:.2f}M params, {r['dtype']}), {r['logits']} logits, "
          f"C={r['classes']}, "
          f"N={r['n_train']} M={r['n_eval']} x {r['seq_len']} tokens, {r['device']}, {r['threads']} threads, "
          f"chunk {r['chunk_size']}, factor_linears {r['factor_linears']}")
    mem_key = "cuda_peak_allocated_increase_mib" if r["device"] == "cuda" else "peak_rss_increase_mib"
    print(f"{'engine':<12}{'kernel':<13}{'entries':>9}{'seconds':>10}{'entries/s':>12}{'peak mem MiB':>14}")
    for engine in ("reference", "raysel"):
        for k in ("train_train", "train_eval"):
            entries = r["reference_entries" if engine == "reference" else "entries"][k]
            print(f"{engine:<12}{k:<13}{entries:>9}{r['seconds'][engine][k]:>10.2f}"
                  f"{r['entries_per_s'][engine][k]:>12.1f}{r['memory'][engine][mem_key]:>14.0f}")
        if "both" in r["seconds"][engine]:
            print(f"{engine:<12}{'both, 1 pass':<13}{sum(r['entries'].values()):>9}{r['seconds'][engine]['both']:>10.2f}"
                  f"{r['entries_per_s'][engine]['total']:>12.1f}{r['memory'][engine][mem_key]:>14.0f}")
    if r["reference_rows"] < r["n_train"]:
        print(f"the reference computed the first {r['reference_rows']} train rows of each kernel (--reference-rows); "
              f"rates are per entry it computed")
    ratio = r["ratio_raysel_vs_reference"]
    print(f"raysel / reference: train x train {ratio['train_train']:.1f}x, train x eval {ratio['train_eval']:.1f}x, "
          f"total (raysel's one pass against the reference's two calls) {ratio['total']:.1f}x")
    d = r["max_rel_diff_model_dtype"]
    print(f"max |dK| / max |K| ({r['dtype']}): train x train {d['train_train']:.1e}, train x eval {d['train_eval']:.1e}")
    if r["max_rel_diff_float64"]:
        c = r["max_rel_diff_float64"]
        print(f"float64 copy, {r['check_examples']} x {r['check_examples']}: max |dK| / max |K| "
              f"{max(v['scale'] for v in c.values()):.1e}, elementwise max rel diff "
              f"{max(v['elementwise'] for v in c.values()):.1e}")
    print(f"peak memory: {mem_key} (per engine process, over the process after model load, "
          f"warm-up included)")
    for engine, line in r["roofline"].items():
        print(f"{engine}: {line['flops'] / 1e9:.1f} GFLOP counted by torch for both kernels (raysel: the one pass), {line['gflops']:.1f} "
              f"GFLOP/s, {line['fraction_of_matmul']:.0%} of the float32 matmul rate ({r['matmul_gflops']:.1f} GFLOP/s)")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
