"""The measured effects in the README's fidelity table: raysel's defaults against the reference's
behaviour (and the named options beside them), on the built-in models, in float64 where exactness
is the question.

    python bench/fidelity.py igf        # tiny-gpt2 (raysel prepare): IG with the reference's eps and dropout
    python bench/fidelity.py opf        # minilm on pydocs-topics: Fisher clipping, dropout, selection, gauge
    python bench/fidelity.py camels     # synthetic-facts: several gold answers, TF-IDF, loss normalisation
    python bench/kernel.py --fidelity   # (the kernel's rows)

Each part prints its rows and one JSON line, and writes the JSON to bench/results/fidelity-<part>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from _common import machine, save  # noqa: E402 (bench/ is the script's directory)

RESULTS = Path(__file__).parent / "results"


# ----------------------------------------------------------------------------- IGF

def igf_part(args: argparse.Namespace) -> dict:
    """IG (exact engine, eval mode, float64) with torch's AdamW eps against transformers.AdamW's
    convention (eps added to √v before bias correction: eps/√(1−β2) in effect on the first step), and
    the reference's IG taken in train mode (GPT-2's dropout 0.1) over several dropout seeds."""
    from raysel.data.pydocs import load_pydocs
    from raysel.methods import igf
    from raysel.methods.igf.algorithm import ADAM_BETAS, objective_perplexity, sequence_losses
    from raysel.models import load_model

    model, tokenizer = load_model("tiny-gpt2", "causal_lm")
    model = model.double().eval()
    texts = [a.text for a in load_pydocs("finetune")]
    articles = [torch.tensor(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    generator = torch.Generator().manual_seed(0)
    objective, pool = igf.objective_and_pool(articles, size=args.objective, context_len=32, min_len=32, trim=True,
                                             generator=generator)
    contexts = torch.stack([igf.sample_context(pool, 32, generator) for _ in range(args.contexts)])
    hyper = dict(lr=5e-5, step="adamw", max_grad_norm=3.0)
    ours = igf.information_gain(model, contexts, objective, engine="exact", eps=1e-8, **hyper)
    theirs_eps = igf.information_gain(model, contexts, objective, engine="exact",
                                      eps=1e-8 / math.sqrt(1 - ADAM_BETAS[1]), **hyper)
    scale = ours.abs().mean()  # relative to IG's scale: a context with IG near 0 has no relative error
    eps_rel = (theirs_eps - ours).abs() / scale

    ppl0 = objective_perplexity(model, objective, len(objective))
    for module in model.modules():  # tiny-gpt2 is pretrained without dropout; GPT-2's is 0.1
        if isinstance(module, torch.nn.Dropout):
            module.p = args.dropout
    dropout = []  # [seed][context]: the reference's step, taken in train mode
    for seed in range(args.dropout_seeds):
        torch.manual_seed(seed)
        gains = []
        for ids in contexts:
            work = copy.deepcopy(model).train()
            optimizer = torch.optim.AdamW(work.parameters(), lr=5e-5, betas=ADAM_BETAS, eps=1e-8)
            sequence_losses(work(ids[None]).logits, ids[None]).sum().backward()
            torch.nn.utils.clip_grad_norm_(work.parameters(), 3.0)
            optimizer.step()
            gains.append(ppl0 - objective_perplexity(work.eval(), objective, len(objective)))
        dropout.append(torch.tensor(gains, dtype=torch.float64))
    stacked = torch.stack(dropout)  # [seeds, contexts]
    spread = stacked.std(0) / scale
    result = {
        "part": "igf", "model": "tiny-gpt2", "dtype": "float64", "contexts": len(contexts),
        "objective": list(objective.shape), "dropout_seeds": args.dropout_seeds, "dropout": args.dropout,
        "ig_mean_abs": float(scale),
        "eps_convention_diff_over_mean_abs_ig": {"max": float(eps_rel.max()), "median": float(eps_rel.median())},
        "dropout_std_over_mean_abs_ig": {"median": float(spread.median()), "max": float(spread.max())},
        "dropout_mean_vs_eval_diff_over_mean_abs_ig": float(((stacked.mean(0) - ours).abs() / scale).median()),
        "spearman_dropout_seed0_vs_eval": igf.rank_correlation(dropout[0], ours),
        "spearman_dropout_seed0_vs_seed1": igf.rank_correlation(dropout[0], dropout[1]),
        "machine": machine("cpu"),
    }
    print(f"IGF on tiny-gpt2, {len(contexts)} contexts, objective {objective.shape[0]}x{objective.shape[1]}, float64")
    eps, spread_ = result["eps_convention_diff_over_mean_abs_ig"], result["dropout_std_over_mean_abs_ig"]
    print(f"  eps convention (transformers.AdamW vs torch.optim.AdamW): |ΔIG| / mean |IG| max {eps['max']:.2e}, "
          f"median {eps['median']:.2e}")
    print(f"  dropout {args.dropout} on (the reference), {args.dropout_seeds} seeds: a context's IG std / mean |IG| "
          f"median {spread_['median']:.2f} (max {spread_['max']:.2f}); "
          f"Spearman seed 0 vs eval mode {result['spearman_dropout_seed0_vs_eval']:.3f}, "
          f"seed 0 vs seed 1 {result['spearman_dropout_seed0_vs_seed1']:.3f}")
    return result


# ----------------------------------------------------------------------------- OPF

def opf_part(args: argparse.Namespace) -> dict:
    """Which matrices OPF decomposes on minilm / pydocs-topics (top_n layers per matrix, the attention
    and FFN types) under the reference's Fisher (each gradient clipped alone, dropout on: several seeds) and
    raysel's former one (global clip, dropout off), chosen per matrix or per layer; and where each
    gauge puts the norm of a decomposed FFN_1 matrix."""
    from raysel.data.sources import classification_splits
    from raysel.methods.opf.algorithm import (WEIGHT_TYPES, auto_shapes, fisher_scores, layer_dims,
                                              matrix_candidates, mpo_decompose, select_top)
    from raysel.models import load_model
    from raysel.spec import DataSpec

    torch.manual_seed(0)
    model, tokenizer = load_model("minilm", "sequence_classification", num_labels=5)
    train = classification_splits(DataSpec(name="pydocs-topics"), seed=0).train[:args.examples]
    batches = []
    for start in range(0, len(train), 16):
        rows = train[start:start + 16]
        enc = tokenizer([t for t, _ in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": torch.tensor([label for _, label in rows])})
    candidates = matrix_candidates(model, list(WEIGHT_TYPES))
    names = [n for layers in candidates.values() for group in layers.values() for n in group]

    reference = [fisher_scores(model, batches, names, seed=s) for s in range(args.fisher_seeds)]
    former = fisher_scores(model, batches, names, clip="global", dropout=False)
    no_dropout = fisher_scores(model, batches, names, dropout=False)

    def overlap(a: set, b: set) -> float:
        return len(a & b) / len(a)

    by_top_n = {}
    for top_n in args.top_n:
        def chosen(scores: dict, selection: str = "per_matrix") -> set[str]:
            return set(select_top(candidates, scores, top_n, selection=selection))

        picks = [chosen(s) for s in reference]
        by_top_n[top_n] = {
            "matrices": len(picks[0]),
            "reference_seed_vs_seed": statistics.mean(overlap(picks[i], picks[j]) for i in range(len(picks))
                                                      for j in range(i + 1, len(picks))),
            "reference_vs_former": statistics.mean(overlap(p, chosen(former, "per_layer")) for p in picks),
            "per_layer_vs_per_matrix_same_scores": statistics.mean(
                overlap(p, chosen(s, "per_layer")) for p, s in zip(picks, reference)),
            "global_vs_per_parameter_clip_dropout_off": overlap(chosen(no_dropout), chosen(former)),
        }
    matrix = model.get_submodule(candidates["FFN_1"][0][0])
    in_shape, out_shape = auto_shapes(*layer_dims(matrix), 13)
    w = matrix.weight.detach().double().T
    norms = {g: [round(float(c.norm()), 2) for c in mpo_decompose(w, in_shape, out_shape, gauge=g)]
             for g in ("balanced", "left", "centre")}
    result = {
        "part": "opf", "model": "minilm", "data": "pydocs-topics", "examples": len(train),
        "fisher_seeds": args.fisher_seeds, "overlap_of_chosen_matrices": by_top_n,
        "core_norms_ffn1_layer0": norms, "matrix_norm": round(float(w.norm()), 2),
        "machine": machine("cpu"),
    }
    print(f"OPF on minilm, pydocs-topics ({len(train)} examples, {args.fisher_seeds} dropout seeds): "
          "share of the chosen matrices in common")
    print(f"  {'top_n':>5} {'matrices':>8} {'seed vs seed':>12} {'vs former default':>17} {'per-layer':>9} "
          f"{'global clip':>11}")
    for top_n, row in by_top_n.items():
        print(f"  {top_n:>5} {row['matrices']:>8} {row['reference_seed_vs_seed']:>12.0%} "
              f"{row['reference_vs_former']:>17.0%} {row['per_layer_vs_per_matrix_same_scores']:>9.0%} "
              f"{row['global_vs_per_parameter_clip_dropout_off']:>11.0%}")
    print(f"  core norms of FFN_1 (layer 0, ‖W‖ {result['matrix_norm']}): " +
          "; ".join(f"{g}: first {n[0]}, middle {n[len(n) // 2]}, last {n[-1]}" for g, n in norms.items()))
    return result


# ----------------------------------------------------------------------------- CaMeLS

def camels_part(args: argparse.Namespace) -> dict:
    """On synthetic-facts with tiny-gpt2's tokenizer: how often the shortest gold answer is not the
    first and what the rule does to a score; the TF-IDF weights with the reference's fit corpus and
    truncation against the former ones; the step factor of the loss normalisation."""
    from raysel.data.sources import qa_splits
    from raysel.methods.camels import TfidfScorer, char_scores_weights, tfidf_corpus
    from raysel.methods.camels.qa import encode_documents
    from raysel.metrics import normalize_answer, squad_em, squad_f1, target_answer
    from raysel.models import load_model
    from raysel.spec import DataSpec

    splits = qa_splits(DataSpec(name="synthetic-facts"))
    questions = [q for docs in splits.values() for d in docs for q in d["questions"]]
    several = [q for q in questions if len(q["answers"]) > 1]
    differs = [q for q in several if normalize_answer(target_answer(q["answers"], "shortest"))
               != normalize_answer(q["answers"][0])]
    scored = [q for split in ("val", "test") for d in splits[split] for q in d["questions"]]
    first_answer = {rule: {name: 100 * sum(metric(q["answers"][0], q["answers"], rule=rule) for q in scored) / len(scored)
                           for name, metric in (("f1", squad_f1), ("em", squad_em))}
                    for rule in ("best", "shortest")}

    _, tokenizer = load_model("tiny-gpt2", "causal_lm")
    tokenizer.model_max_length = 100_000
    texts = tfidf_corpus(splits)
    lengths = sorted(len(tokenizer(t)["input_ids"]) for t in texts)
    median = statistics.median(lengths)
    scorer = TfidfScorer(texts)
    former = TfidfScorer([d["text"] for split in ("train", "val", "test") for d in splits[split]])
    corpus_shift = []
    for doc in splits["val"][:100]:
        offsets = encode_documents(tokenizer, [doc["text"]], 256)["offset_mapping"][0]
        corpus_shift.append(float((scorer.token_weights(doc["text"], offsets)
                                   - char_scores_weights(offsets, former.char_scores(doc["text"]))).abs().max()))
    long_doc = " ".join(d["text"] for d in splits["val"][:12])
    offsets = encode_documents(tokenizer, [long_doc], 256)["offset_mapping"][0]
    truncated = scorer.token_weights(long_doc, offsets)
    whole = char_scores_weights(offsets, scorer.char_scores(long_doc))
    result = {
        "part": "camels", "data": "synthetic-facts", "tokenizer": "tiny-gpt2", "questions": len(questions),
        "several_answers": len(several) / len(questions), "shortest_not_first": len(differs) / len(questions),
        "predicting_the_first_answer_val_test": first_answer,
        "document_tokens": {"min": lengths[0], "median": median, "max": lengths[-1]},
        "step_factor_tokens_vs_reference_1024": 1023 / (median - 1),
        "tfidf_fit_corpus_max_weight_change_100_val_docs": {"median": statistics.median(corpus_shift),
                                                             "max": max(corpus_shift)},
        "tfidf_long_document": {"tokens": len(tokenizer(long_doc)["input_ids"]), "kept": 256,
                                "max_weight_change_truncated_vs_whole": float((truncated - whole).abs().max())},
        "machine": machine("cpu"),
    }
    print(f"CaMeLS on synthetic-facts ({len(questions)} questions), tiny-gpt2's tokenizer")
    print(f"  several gold answers: {result['several_answers']:.1%}; shortest not the first (normalised): "
          f"{result['shortest_not_first']:.1%}")
    print("  predicting the first answer on val + test: " + "; ".join(
        f"{rule}: F1 {v['f1']:.1f}, EM {v['em']:.1f}" for rule, v in first_answer.items()))
    print(f"  documents {lengths[0]}-{lengths[-1]} tokens (median {median}): at the same inner_lr the mean over "
          f"real tokens steps {result['step_factor_tokens_vs_reference_1024']:.1f}x the reference's (B·1023)")
    print(f"  TF-IDF fit on every split's unique documents vs train + evaluated splits: max |Δw| per document "
          f"median {statistics.median(corpus_shift):.3f}, max {max(corpus_shift):.3f}; a "
          f"{result['tfidf_long_document']['tokens']}-token document cut at 256: truncated vs whole-text weights "
          f"differ by up to {result['tfidf_long_document']['max_weight_change_truncated_vs_whole']:.2f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("igf", "opf", "camels"))
    parser.add_argument("--contexts", type=int, default=16, help="igf: contexts (16)")
    parser.add_argument("--objective", type=int, default=100, help="igf: objective contexts (100)")
    parser.add_argument("--dropout-seeds", type=int, default=5, help="igf: dropout seeds (5)")
    parser.add_argument("--dropout", type=float, default=0.1, help="igf: dropout in train mode (0.1, GPT-2's)")
    parser.add_argument("--examples", type=int, default=160, help="opf: training examples for the Fisher pass (160)")
    parser.add_argument("--top-n", type=int, nargs="+", default=[1, 2, 4], help="opf: layers per matrix (1 2 4)")
    parser.add_argument("--fisher-seeds", type=int, default=3, help="opf: dropout seeds of the reference's Fisher (3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"igf": igf_part, "opf": opf_part, "camels": camels_part}[args.part](args)
    print(json.dumps(result))
    save(result, RESULTS / f"fidelity-{args.part}.json")


if __name__ == "__main__":
    main()
