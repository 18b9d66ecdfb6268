"""Kernel view of fine-tuning (Malladi et al., ICML 2023), the pure algorithm.

1. The model's "logits" f(x) ∈ R^C come from a ``LogitsFn`` (params, batch) → [B, C]: MLM scores
   at the mask restricted to the label words (``prompt_logits_fn``), a classifier head
   (``classifier_logits_fn``), or f = logit1 − logit0 with C = 1 (``binary``).
2. ``ntk``: the empirical NTK at θ0, K[i,c,j,c'] = ⟨g_c(x_i), g_c'(x_j)⟩ with g_c = ∇_θ f_c, for the
   formulas sgd, signgd and asymmetric_signgd, over a parameter subset.
3. ``solve``: kernel regression / classification with the train kernel, predictions on eval.

Deliberate differences from the reference code (princeton-nlp/LM-Kernel-FT):
- Per-example Jacobians come from torch.func (vmap of jacrev, ``chunk_size`` examples at a time);
  the inner (eval) Jacobians are recomputed per train chunk rather than taken by jvp.
- train × train uses symmetry: only blocks on or above the diagonal are computed.
- Vocabulary-sized parameters are differentiated only at the rows that can have a gradient (the
  reference's jvp gathers them too; its jacrev side holds them densely).
- Padded batches are vmapped with a 4-D attention mask (the reference pads dynamically, batch 1).
- The asym solver takes ``kernel_lambda`` and ``kernel_gamma`` as explicit arguments (the
  reference reads a missing ``kernel_lambda``).
"""
from __future__ import annotations

import warnings
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from raysel.methods.loop import eval_mode
from raysel.models.prompt import PromptClassifier

FORMULAS = ("sgd", "signgd", "asymmetric_signgd")
SUBSETS = ("all", "exclude_embeddings", "exclude_head", "only_biases", "trainable")
SOLVERS = ("lstsq", "logistic", "svc", "svr", "asym")

BLOCK_SLICE = 65_536  # parameters per partial dot product (see _block)
OUTPUT_ROWS = "__output_rows__"  # a params key: a logits function's output rows in a compact vocabulary

Params = dict[str, Tensor]
Batch = dict[str, Tensor]
LogitsFn = Callable[[Params, Batch], Tensor]  # (parameters by name, batch with leading dim B) → [B, C]


# ----------------------------------------------------------------------------- logits

def classifier_logits_fn(model: nn.Module) -> LogitsFn:
    """The classifier head's logits [B, num_labels]: the batch holds the model's keyword inputs."""
    causal = _is_causal(model)

    def logits(params: Params, batch: Batch) -> Tensor:
        params = {n: p for n, p in params.items() if n != OUTPUT_ROWS}
        return functional_call(model, params, (), _model_inputs(batch, causal, _dtype(params))).logits
    logits.output_rows = ()  # type: ignore[attr-defined]  # no vocabulary row on the output side
    return logits


def prompt_logits_fn(model: nn.Module, label_word_ids: Tensor | list[int]) -> LogitsFn:
    """A masked LM's scores at the mask restricted to the C label words: [B, C] (LM-BFF's logits).

    ``model`` is the ``*ForMaskedLM``; the batch holds its inputs and each example's mask position
    ``mask_pos`` [B]. The logits are those of raysel.models.prompt.PromptClassifier, which
    prompt-based fine-tuning trains."""
    words = [int(w) for w in torch.as_tensor(label_word_ids).flatten()]
    wrapper = PromptClassifier(model, words)
    causal = _is_causal(model)

    def logits(params: Params, batch: Batch) -> Tensor:
        named = {("label_word_ids" if name == OUTPUT_ROWS else "mlm." + name): p for name, p in params.items()}
        return functional_call(wrapper, named, (), _model_inputs(batch, causal, _dtype(params))).logits
    logits.output_rows = tuple(words)  # type: ignore[attr-defined]  # the decoder rows the logits read
    return logits


def binary(logits_fn: LogitsFn) -> LogitsFn:
    """f = logit[1] − logit[0] as [B, 1], for binary classification (labels {0, 1} → {−1, +1})."""
    def logits(params: Params, batch: Batch) -> Tensor:
        two = logits_fn(params, batch)
        if two.shape[-1] != 2:
            raise ValueError(f"binary needs exactly 2 logits, got {two.shape[-1]}")
        return two[:, 1:] - two[:, :1]
    if hasattr(logits_fn, "output_rows"):
        logits.output_rows = logits_fn.output_rows  # type: ignore[attr-defined]
    return logits


def _is_causal(model: nn.Module) -> bool:
    """Whether the model's attention is causal (transformers marks its attention modules ``is_causal``)."""
    return any(getattr(module, "is_causal", False) is True for module in model.modules())


def _dtype(params: Params) -> torch.dtype:
    return next((p.dtype for p in params.values() if p.is_floating_point()), torch.float32)


def _model_inputs(batch: Batch, causal: bool, dtype: torch.dtype) -> Batch:
    """The batch with its padding mask [B, L] as an additive 4-D mask [B, 1, L, L].

    transformers turns a 2-D mask into a 4-D one with data-dependent checks that torch.func.vmap
    refuses; a 4-D mask is used as given (causal models: the causal triangle is added here). It is in
    the parameters' dtype: a float32 mask beside float64 attention scores changes the numbers."""
    if "attention_mask" not in batch or batch["attention_mask"].dim() != 2:
        return batch
    keep = batch["attention_mask"].bool()[:, None, None, :]  # [B, 1, 1, L]
    length = keep.shape[-1]
    keep = keep.expand(-1, 1, length, length)
    if causal:
        keep = keep & torch.ones(length, length, dtype=torch.bool, device=keep.device).tril()
    additive = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
    return {**batch, "attention_mask": additive}


# ----------------------------------------------------------------------------- eNTK

def select_params(model: nn.Module, subset: str | Callable[[str], bool] = "all") -> Params:
    """The parameters the kernel differentiates, by name, detached.

    "all"; "exclude_embeddings" (names without "embed"); "exclude_head" (names without "head");
    "only_biases" (BitFit: parameters named ``*.bias``); "trainable" (requires_grad, e.g.
    LoRA-only); or a predicate on the parameter name.
    """
    if callable(subset):
        keep = subset
    elif subset == "all":
        def keep(n: str) -> bool: return True
    elif subset == "exclude_embeddings":
        def keep(n: str) -> bool: return "embed" not in n
    elif subset == "exclude_head":
        def keep(n: str) -> bool: return "head" not in n
    elif subset == "only_biases":
        def keep(n: str) -> bool: return n.rsplit(".", 1)[-1] == "bias"
    elif subset == "trainable":
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        def keep(n: str) -> bool: return n in trainable
    else:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)} or a callable, got {subset!r}")
    params = {n: p.detach() for n, p in model.named_parameters() if keep(n)}
    if not params:
        raise ValueError(f"parameter subset {subset!r} selects no parameters")
    return params


def ntk(model: nn.Module, train_batch: Batch, eval_batch: Batch | None = None, *, logits_fn: LogitsFn,
        formula: Literal["sgd", "signgd", "asymmetric_signgd"] = "sgd",
        subset: str | Callable[[str], bool] = "all", chunk_size: int = 8, row_chunk_size: int | None = None,
        vectorize: bool = True, sparse_rows: bool = True, shard: tuple[int, int] = (0, 1),
        on_block: Callable[[int, int], None] | None = None) -> Tensor:
    """The empirical NTK of ``logits_fn`` at the model's parameters, float64.

    sgd: K[i,c,j,c'] = ⟨g_c(x_i), g_c'(x_j)⟩, [N, C, M, C] (i over train, j over eval);
    signgd: ⟨sign g_c(x_i), sign g_c'(x_j)⟩; asymmetric_signgd (C = 1 only): [2, N, 1, M, 1],
    pass 0 ⟨sign g(x_i), g(x_j)⟩ and the flipped pass 1 ⟨g(x_i), sign g(x_j)⟩ = ⟨sign g(x_j), g(x_i)⟩.
    ``eval_batch`` None (or the train batch itself): train × train through the symmetric path.
    Gradients are over ``select_params(model, subset)``, with dropout off. signgd, as in the
    reference, takes the sign of every entry, also of gradients that are zero up to rounding (an
    attention key bias: softmax ignores a constant shift): those add ±1 terms that depend on the
    arithmetic (padding, chunking); exclude such parameters with a subset predicate if it matters.

    Work is in blocks: the Jacobians of ``row_chunk_size`` train examples (default ``chunk_size``)
    are held while those of ``chunk_size`` eval examples at a time are formed against them (memory ≈
    (rows + columns) · C · #params floats). ``shard=(rank, world)`` computes only this rank's
    contiguous share of the blocks and leaves zeros elsewhere, so that the sum over ranks (an
    all-reduce) is the whole kernel, entry for entry. ``on_block(done, total)`` follows progress.

    ``vectorize``: per-example Jacobians by vmap over the chunk (padded batches are fine: the
    attention mask goes in as 4-D), else one jacrev per example. ``sparse_rows``: when the logits
    function declares its ``output_rows`` (the built-in ones do) and the model is bidirectional,
    vocabulary-sized parameters (word embeddings, a tied MLM decoder and its bias) are
    differentiated only at the rows that can have a gradient (the chunk's token ids and those
    output rows), through a compact vocabulary (``_jacobian_fn``), instead of densely.
    """
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
    params = select_params(model, subset)
    symmetric = eval_batch is None or eval_batch is train_batch
    vocabulary = _vocabulary_params(model, logits_fn, train_batch) if sparse_rows else {}
    plan = _Plan(chunk_size, row_chunk_size or chunk_size, shard, on_block)
    with eval_mode(model), torch.no_grad():
        jac = _jacobian_fn(logits_fn, params, vectorize, vocabulary, _pinned_rows(model))
        classes = _classes(logits_fn, params, train_batch)
        train_order = _by_length(train_batch)
        eval_order = train_order if symmetric else _by_length(eval_batch)

        def kernel(sign_rows: bool, sign_cols: bool, mirror: bool = False) -> Tensor:
            """One pass over examples sorted by length (less padding per chunk), in the callers' order;
            ``mirror``: train × train computed on and above the diagonal only."""
            columns = train_order if symmetric else eval_order
            k = plan.kernel(jac, train_order.batch, columns.batch, classes, sign_rows, sign_cols, symmetric=mirror)
            return k[train_order.inverse][:, :, columns.inverse]

        if formula == "asymmetric_signgd":
            if classes != 1:
                raise ValueError(f"asymmetric_signgd is for binary classification (C = 1 logit, see binary()); "
                                 f"got C = {classes}")
            if symmetric:
                first = kernel(True, False)  # not symmetric: every block computed
                return torch.stack([first, first.permute(2, 3, 0, 1).contiguous()])  # ⟨g_i, sign g_j⟩ = pass 0 at (j, i)
            plan.total_runs = 2
            return torch.stack([kernel(True, False), kernel(False, True)])
        signed = formula == "signgd"
        return kernel(signed, signed, mirror=symmetric)


class _Sorted(NamedTuple):
    batch: Batch  # the examples, shortest first
    inverse: Tensor  # positions that put the kernel's rows or columns back in the given order


def _by_length(batch: Batch) -> _Sorted:
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return _Sorted(batch, torch.arange(_size(batch)))
    order = torch.sort(mask.sum(1).cpu(), stable=True).indices
    return _Sorted({k: v[order.to(v.device)] for k, v in batch.items()}, torch.argsort(order))


class _Jacobians(NamedTuple):
    grads: Params  # name → [B, C, *shape]; a row-sparse parameter's: [B, C, u, *rest] (its rows only)
    rows: dict[str, Tensor]  # row-sparse parameter → the u sorted row ids its grads hold


def _vocabulary_params(model: nn.Module, logits_fn: LogitsFn, batch: Batch) -> Params:
    """The model's vocabulary-sized parameters (all of them, differentiated or not), when the
    kernel can run on a compact vocabulary (see ``ntk``'s sparse_rows); else none.

    Only for bidirectional models: a causal classifier finds its last token by comparing input ids
    with the pad id, which a compact vocabulary renumbers."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if (not hasattr(logits_fn, "output_rows") or "input_ids" not in batch or embeddings is None
            or _is_causal(model)):
        return {}
    vocab = embeddings.weight.shape[0]
    return {n: p.detach() for n, p in model.named_parameters() if p.dim() >= 1 and p.shape[0] == vocab}


def _pinned_rows(model: nn.Module) -> Tensor:
    """Ids kept at their own position in a compact vocabulary: 0 .. the padding index, so that the
    embedding's padding_idx (no gradient) and RoBERTa's position ids (ids != padding_idx) still hold."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    padding = getattr(embeddings, "padding_idx", None)
    return torch.arange((padding or 0) + 1)


def _jacobian_fn(logits_fn: LogitsFn, params: Params, vectorize: bool, vocabulary: Params, pinned: Tensor
                 ) -> Callable[[Batch], _Jacobians]:
    """Batch [B, ...] → per-example Jacobians.

    Row-sparse parameters go in compacted: for each chunk the rows U it can touch (its token ids,
    the logits' output rows, the pinned ids; sorted, so the pinned ones keep their positions) are
    the whole "vocabulary", the input ids and output rows are renumbered into it, and the model runs
    on those rows. The function is the same, so the gradient with respect to the compact rows is
    the full gradient at U, and nothing vocabulary-sized is formed (dense per-example gradients
    of a 30k × 384 embedding cost minilm ~70% of its Jacobian time)."""
    output_rows = torch.as_tensor(getattr(logits_fn, "output_rows", ()), dtype=torch.long)
    sparse = [n for n in params if n in vocabulary]  # differentiated at the chunk's rows
    dense = {n: p for n, p in params.items() if n not in vocabulary}

    def jacobians(batch: Batch) -> _Jacobians:
        extra: Params = {}
        compact: Params = {}
        rows = None
        if vocabulary:
            ids = batch["input_ids"]
            rows = torch.cat([pinned, ids.flatten().cpu(), output_rows]).unique()  # sorted
            on_device = rows.to(ids.device)
            batch = {**batch, "input_ids": torch.searchsorted(on_device, ids.contiguous())}
            compact = {n: vocabulary[n].index_select(0, on_device) for n in sparse}
            # the vocabulary-sized parameters not differentiated are compacted too (constants)
            extra.update({n: p.index_select(0, on_device) for n, p in vocabulary.items() if n not in params})
            if len(output_rows):
                extra[OUTPUT_ROWS] = torch.searchsorted(on_device, output_rows.to(ids.device))

        def one(dense_: Params, compact_: Params, example: Batch) -> Tensor:
            return logits_fn({**dense_, **compact_, **extra}, {k: v[None] for k, v in example.items()})[0]

        def looped(dense_: Params, compact_: Params, batch_: Batch) -> tuple[Params, Params]:
            size = len(next(iter(batch_.values())))
            parts = [jacrev(one, argnums=(0, 1))(dense_, compact_, {k: v[i] for k, v in batch_.items()})
                     for i in range(size)]
            return tuple({n: torch.stack([p[side][n] for p in parts]) for n in parts[0][side]} for side in (0, 1))

        per_example = vmap(jacrev(one, argnums=(0, 1)), in_dims=(None, None, 0)) if vectorize else looped
        with torch.enable_grad(), warnings.catch_warnings():
            # kernels without a vmap batching rule loop over the batch and warn; same numbers
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            grads_dense, grads_sparse = per_example(dense, compact, batch)
        grads = {**grads_dense, **grads_sparse}
        return _Jacobians({n: grads[n] for n in params}, {n: rows for n in sparse})
    return jacobians


def _classes(logits_fn: LogitsFn, params: Params, batch: Batch) -> int:
    """C, from one example's logits (every rank needs it, even one without blocks to compute)."""
    with torch.no_grad():
        return logits_fn(params, _trim({k: v[:1] for k, v in batch.items()})).shape[-1]


def _size(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _trim(batch: Batch) -> Batch:
    """Drop the padding columns no example of this slice needs (positions past its longest one)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    length, full = int(mask.sum(1).max()), mask.shape[1]
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[1] == full else v for k, v in batch.items()}


def _rows_slice(batch: Batch, start: int, stop: int) -> Batch:
    return _trim({k: v[start:stop] for k, v in batch.items()})


class _Plan:
    """Which blocks this rank computes, in which order, with which Jacobians held (see ``ntk``)."""

    def __init__(self, chunk_size: int, row_chunk_size: int, shard: tuple[int, int],
                 on_block: Callable[[int, int], None] | None):
        rank, world = shard
        if chunk_size < 1 or row_chunk_size < 1:
            raise ValueError(f"chunk sizes must be positive, got {chunk_size} and {row_chunk_size}")
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.chunk, self.row_chunk, self.rank, self.world = chunk_size, row_chunk_size, rank, world
        self.on_block, self.total_runs, self.done = on_block, 1, 0

    def blocks(self, n: int, m: int, symmetric: bool) -> list[tuple[int, int, int, int]]:
        """All blocks (row start, row stop, column start, column stop) in row-major order; symmetric:
        the diagonal block of each row chunk and the columns after it (the rest is mirrored)."""
        out = []
        for r0 in range(0, n, self.row_chunk):
            r1 = min(n, r0 + self.row_chunk)
            if symmetric:
                out.append((r0, r1, r0, r1))
            for c0 in range(r1 if symmetric else 0, m, self.chunk):
                out.append((r0, r1, c0, min(m, c0 + self.chunk)))
        return out

    def kernel(self, jac: Callable[[Batch], _Jacobians], rows: Batch, cols: Batch, classes: int, sign_rows: bool,
               sign_cols: bool, symmetric: bool = False) -> Tensor:
        n, m = _size(rows), _size(cols)
        blocks = self.blocks(n, m, symmetric)
        start, stop = (len(blocks) * self.rank) // self.world, (len(blocks) * (self.rank + 1)) // self.world
        kernel = torch.zeros(n, classes, m, classes, dtype=torch.float64)
        held, held_rows = None, None
        for r0, r1, c0, c1 in blocks[start:stop]:
            if held_rows != (r0, r1):
                held, held_rows = jac(_rows_slice(rows, r0, r1)), (r0, r1)
            if symmetric and c0 == r0:  # averaged with its mirror so that the kernel is exactly symmetric
                block = _block(held, held, sign_rows, sign_cols)
                block = (block + block.permute(2, 3, 0, 1)) / 2
            else:
                block = _block(held, jac(_rows_slice(cols, c0, c1)), sign_rows, sign_cols)
            kernel[r0:r1, :, c0:c1, :] = block
            if symmetric and c0 != r0:
                kernel[c0:c1, :, r0:r1, :] = block.permute(2, 3, 0, 1)
            self.done += 1
            if self.on_block is not None:
                self.on_block(self.done, (stop - start) * self.total_runs)
        return kernel


def _common(rows_a: Tensor, rows_b: Tensor) -> tuple[Tensor, Tensor]:
    """Positions in two sorted id lists of the ids they share."""
    in_a = torch.isin(rows_a, rows_b).nonzero().flatten()
    return in_a, torch.searchsorted(rows_b, rows_a[in_a])


def _block(a: _Jacobians, b: _Jacobians, sign_a: bool, sign_b: bool) -> Tensor:
    """Σ over parameters of ⟨a[i, c], b[j, c']⟩: [Ba, C, Bb, C], float64.

    Products run in the Jacobians' dtype over slices of ``BLOCK_SLICE`` parameters and the slices'
    sums accumulate in float64: converting whole Jacobians to float64 first cost 8x the time and
    memory on minilm for no accuracy that matters (float32 slices agree with float64 to ~2e-7 of
    the kernel's scale). A row-sparse parameter contributes through the rows both sides hold (a
    row only one side holds has a zero gradient on the other: sign(0) = 0 too)."""
    first, second = next(iter(a.grads.values())), next(iter(b.grads.values()))
    total = torch.zeros(first.shape[0], first.shape[1], second.shape[0], second.shape[1], dtype=torch.float64,
                        device=first.device)
    for name, ga in a.grads.items():
        gb = b.grads[name]
        if name in a.rows:
            at_a, at_b = _common(a.rows[name].to(ga.device), b.rows[name].to(ga.device))
            ga, gb = ga.index_select(2, at_a), gb.index_select(2, at_b)
        ga, gb = ga.flatten(2), gb.flatten(2)
        ga = ga.sign() if sign_a else ga
        gb = gb.sign() if sign_b else gb
        for start in range(0, ga.shape[2], BLOCK_SLICE):
            total += torch.einsum("acp,bdp->acbd", ga[..., start:start + BLOCK_SLICE],
                                  gb[..., start:start + BLOCK_SLICE]).double()
    return total.cpu()


# ----------------------------------------------------------------------------- solvers

class Prediction(NamedTuple):
    labels: Tensor  # [M] long, in 0..C-1 (0/1 when C = 1)
    scores: Tensor  # [M, C] float64: regression outputs / decision values / log-probabilities


def solve(k_train: Tensor, y_train: Tensor, k_eval: Tensor, *,
          solver: Literal["lstsq", "logistic", "svc", "svr", "asym"] = "lstsq", reg: float = 0.0,
          f0_train: Tensor | None = None, f0_eval: Tensor | None = None, f0_scaling: float = 1.0,
          kernel_lambda: float = 0.5, kernel_gamma: float = 1.0, logistic_cv: int = 0,
          sklearn_c: float = 1.0) -> Prediction:
    """Fit on the train kernel [N, C, N, C] and labels [N]; predict from k_eval [N, C, M, C] (train × eval).

    C = 1 is binary with f = logit1 − logit0: labels {0, 1} become targets ±1 and label 1 is
    predicted for a positive score. C > 1: one-hot targets, argmax prediction.
    lstsq: minimum-norm α = K⁺(Y − f0_train/s) on the [N·C, N·C] kernel (ridge: K + reg·σ_max·I),
    scores K_evalᵀα + f0_eval/s. logistic: LogisticRegression (LogisticRegressionCV with
    ``logistic_cv`` folds when > 0) on kernel rows as features, scores log-probabilities (C = 1:
    log p1 − log p0). svc: SVC(kernel="precomputed") on Σ_c K[:, c, :, c]. svr: one SVR per logit
    on K[:, c, :, c]. ``sklearn_c`` is sklearn's inverse regularization C for these three.
    asym: the A-SignGD solver (kernels [2, N, 1, ·, 1] from asymmetric_signgd), with
    ``kernel_lambda`` (λ) and ``kernel_gamma`` (γ).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    y_train = torch.as_tensor(y_train, dtype=torch.long).cpu()
    classes = max(2, k_train.shape[-1])
    if y_train.numel() and not (0 <= int(y_train.min()) and int(y_train.max()) < classes):
        raise ValueError(f"labels must lie in 0..{classes - 1} (0/1 for C = 1), got {y_train.unique().tolist()}")
    if solver == "asym":
        return _solve_asym(k_train, y_train, k_eval, kernel_lambda, kernel_gamma)
    if k_train.dim() != 4 or k_eval.dim() != 4:
        raise ValueError(f"solver {solver!r} needs kernels [N, C, N, C] and [N, C, M, C]; got shapes "
                         f"{tuple(k_train.shape)} and {tuple(k_eval.shape)} (asym takes the 2-pass kernels)")
    k_train, k_eval = k_train.double().cpu(), k_eval.double().cpu()
    if solver == "lstsq":
        return _solve_lstsq(k_train, y_train, k_eval, reg, f0_train, f0_eval, f0_scaling)
    if solver == "logistic":
        return _solve_logistic(k_train, y_train, k_eval, logistic_cv, sklearn_c)
    if solver == "svc":
        return _solve_svc(k_train, y_train, k_eval, sklearn_c)
    return _solve_svr(k_train, y_train, k_eval, sklearn_c)


def _targets(y: Tensor, classes: int) -> Tensor:
    """[N, C] float64: ±1 for C = 1, one-hot otherwise."""
    if classes == 1:
        return (2.0 * y - 1.0).double()[:, None]
    return torch.nn.functional.one_hot(y, classes).double()


def _labels(scores: Tensor) -> Tensor:
    return (scores[:, 0] > 0).long() if scores.shape[1] == 1 else scores.argmax(1)


def _solve_lstsq(k_train: Tensor, y: Tensor, k_eval: Tensor, reg: float, f0_train: Tensor | None,
                 f0_eval: Tensor | None, s: float) -> Prediction:
    n, c, m = k_train.shape[0], k_train.shape[1], k_eval.shape[2]
    if (f0_train is None) != (f0_eval is None):
        raise ValueError("give both f0_train [N, C] and f0_eval [M, C], or neither")
    kt = k_train.reshape(n * c, n * c)
    if reg:
        kt = kt + reg * torch.linalg.matrix_norm(kt, ord=2) * torch.eye(n * c, dtype=kt.dtype)
    targets = _targets(y, c)
    if f0_train is not None:
        targets = targets - f0_train.double().cpu().reshape(n, c) / s
    alpha = torch.linalg.pinv(kt, hermitian=True) @ targets.reshape(-1)  # minimum-norm solution
    scores = (k_eval.reshape(n * c, m * c).T @ alpha).reshape(m, c)
    if f0_eval is not None:
        scores = scores + f0_eval.double().cpu().reshape(m, c) / s
    return Prediction(_labels(scores), scores)


def _rows(k_train: Tensor, k_eval: Tensor) -> tuple:
    """Per-example feature rows: train [N, N·C·C] and eval [M, N·C·C], as numpy."""
    n, m = k_train.shape[0], k_eval.shape[2]
    return (k_train.permute(0, 1, 3, 2).reshape(n, -1).numpy(), k_eval.permute(2, 0, 1, 3).reshape(m, -1).numpy())


def _solve_logistic(k_train: Tensor, y: Tensor, k_eval: Tensor, cv: int, c_reg: float) -> Prediction:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    x_train, x_eval = _rows(k_train, k_eval)
    model = LogisticRegressionCV(cv=cv, max_iter=5000) if cv else LogisticRegression(C=c_reg, max_iter=5000)
    model.fit(x_train, y.numpy())
    log_p = torch.from_numpy(model.predict_log_proba(x_eval)).double()
    labels = torch.as_tensor(model.classes_)[log_p.argmax(1)].long()
    if k_train.shape[1] == 1:
        log_p = log_p[:, 1:] - log_p[:, :1]
    return Prediction(labels, log_p)


def _solve_svc(k_train: Tensor, y: Tensor, k_eval: Tensor, c_reg: float) -> Prediction:
    from sklearn.svm import SVC

    gram, cross = k_train.diagonal(dim1=1, dim2=3).sum(-1), k_eval.diagonal(dim1=1, dim2=3).sum(-1)
    model = SVC(kernel="precomputed", C=c_reg).fit(gram.numpy(), y.numpy())
    scores = torch.from_numpy(model.decision_function(cross.T.numpy())).double()
    labels = torch.from_numpy(model.predict(cross.T.numpy())).long()
    return Prediction(labels, scores.reshape(len(labels), -1))


def _solve_svr(k_train: Tensor, y: Tensor, k_eval: Tensor, c_reg: float) -> Prediction:
    from sklearn.svm import SVR

    targets = _targets(y, k_train.shape[1])
    columns = []
    for c in range(k_train.shape[1]):
        model = SVR(kernel="precomputed", C=c_reg).fit(k_train[:, c, :, c].numpy(), targets[:, c].numpy())
        columns.append(torch.from_numpy(model.predict(k_eval[:, c, :, c].T.numpy())))
    scores = torch.stack(columns, dim=1).double()
    return Prediction(_labels(scores), scores)


def _solve_asym(k_train: Tensor, y: Tensor, k_eval: Tensor, lam: float, gamma: float) -> Prediction:
    """A-SignGD: H_ij = y_i K(x_i, x_j) y_j with K(x, x') = ⟨sign g(x), g(x')⟩ (pass 0) and
    Hᵀ from the flipped pass; [[I/γ, H], [Hᵀ, I/γ]]·[α; β] = 1; the score of x is
    λ Σ α_i y_i K(x_i, x) + (1 − λ) Σ β_i y_i K(x, x_i)."""
    if k_train.dim() != 5 or k_train.shape[0] != 2 or k_train.shape[2] != 1:
        raise ValueError(f"asym needs the 2-pass binary kernels [2, N, 1, N, 1] from asymmetric_signgd, "
                         f"got {tuple(k_train.shape)}")
    n, m = k_train.shape[1], k_eval.shape[3]
    kt, ke = k_train.double().cpu().reshape(2, n, n), k_eval.double().cpu().reshape(2, n, m)
    signs = 2.0 * y.double() - 1.0
    h, h_flipped = signs[:, None] * kt[0] * signs[None], signs[:, None] * kt[1] * signs[None]
    eye = torch.eye(n, dtype=torch.float64) / gamma
    # kt[1][i, j] = K(x_j, x_i), so its signed form is Hᵀ (exactly so when the passes match)
    system = torch.cat([torch.cat([eye, h], 1), torch.cat([h_flipped, eye], 1)], 0)
    solution = torch.linalg.solve(system, torch.ones(2 * n, dtype=torch.float64))
    alpha, beta = solution[:n], solution[n:]
    scores = lam * ((alpha * signs) @ ke[0]) + (1 - lam) * ((beta * signs) @ ke[1])
    return Prediction((scores > 0).long(), scores[:, None])
