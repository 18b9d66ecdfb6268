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

FORMULAS = ("sgd", "signgd", "asymmetric_signgd")
SUBSETS = ("all", "exclude_embeddings", "exclude_head", "only_biases", "trainable")
SOLVERS = ("lstsq", "logistic", "svc", "svr", "asym")

BLOCK_SLICE = 65_536  # parameters per partial dot product (see _block)

Params = dict[str, Tensor]
Batch = dict[str, Tensor]
LogitsFn = Callable[[Params, Batch], Tensor]  # (parameters by name, batch with leading dim B) → [B, C]


# ----------------------------------------------------------------------------- logits

def classifier_logits_fn(model: nn.Module) -> LogitsFn:
    """The classifier head's logits [B, num_labels]: the batch holds the model's keyword inputs."""
    def logits(params: Params, batch: Batch) -> Tensor:
        return functional_call(model, params, (), dict(batch)).logits
    return logits


def prompt_logits_fn(model: nn.Module, label_word_ids: Tensor | list[int], *,
                     mask_key: str = "mask_pos") -> LogitsFn:
    """MLM scores at the mask position restricted to the C label words: [B, C].

    The mask position varies per example, so it travels in the batch under ``mask_key`` ([B]
    long); the other keys are the model's inputs.
    """
    words = torch.as_tensor(label_word_ids, dtype=torch.long)

    def logits(params: Params, batch: Batch) -> Tensor:
        inputs = {k: v for k, v in batch.items() if k != mask_key}
        scores = functional_call(model, params, (), inputs).logits  # [B, L, V]
        # gather rather than advanced indexing: the positions are vmapped tensors
        index = batch[mask_key].view(-1, 1, 1).expand(-1, 1, scores.shape[-1])
        at_mask = scores.gather(1, index).squeeze(1)  # [B, V]
        return at_mask.index_select(1, words.to(at_mask.device))
    return logits


def binary(logits_fn: LogitsFn) -> LogitsFn:
    """f = logit[1] − logit[0] as [B, 1], for binary classification (labels {0, 1} → {−1, +1})."""
    def logits(params: Params, batch: Batch) -> Tensor:
        two = logits_fn(params, batch)
        if two.shape[-1] != 2:
            raise ValueError(f"binary needs exactly 2 logits, got {two.shape[-1]}")
        return two[:, 1:] - two[:, :1]
    return logits


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
        subset: str | Callable[[str], bool] = "all", chunk_size: int = 8, vectorize: bool = True) -> Tensor:
    """The empirical NTK of ``logits_fn`` at the model's parameters, float64.

    sgd: K[i,c,j,c'] = ⟨g_c(x_i), g_c'(x_j)⟩, [N, C, M, C] (i over train, j over eval);
    signgd: ⟨sign g_c(x_i), sign g_c'(x_j)⟩; asymmetric_signgd (C = 1 only): [2, N, 1, M, 1],
    pass 0 ⟨sign g(x_i), g(x_j)⟩ and the flipped pass 1 ⟨g(x_i), sign g(x_j)⟩ = ⟨sign g(x_j), g(x_i)⟩.
    ``eval_batch`` None (or the train batch itself): train × train through the symmetric path.
    Gradients are over ``select_params(model, subset)``, with dropout off; ``chunk_size`` examples
    have their Jacobians held at once (memory ≈ chunk_size · C · #params per side).

    ``vectorize``: per-example Jacobians by vmap over the chunk (fast; ``logits_fn`` must have no
    data-dependent control flow: transformers inspects an ``attention_mask``, so give equal-length
    examples without one), else one jacrev per example (any model, padded batches with masks).
    """
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
    params = select_params(model, subset)
    symmetric = eval_batch is None or eval_batch is train_batch
    with eval_mode(model), torch.no_grad():
        jac = _jacobian_fn(logits_fn, params, vectorize)
        if formula == "asymmetric_signgd":
            return _asymmetric(jac, train_batch, None if symmetric else eval_batch, chunk_size)
        signed = formula == "signgd"
        if symmetric:
            return _symmetric_kernel(jac, train_batch, chunk_size, signed)
        return _kernel(jac, train_batch, eval_batch, chunk_size, signed, signed)


def _jacobian_fn(logits_fn: LogitsFn, params: Params, vectorize: bool) -> Callable[[Batch], Params]:
    """Batch [B, ...] → per-example Jacobians {name: [B, C, *shape]}."""
    def one(p: Params, example: Batch) -> Tensor:
        return logits_fn(p, {k: v[None] for k, v in example.items()})[0]

    def looped(p: Params, batch: Batch) -> Params:
        rows = [jacrev(one)(p, {k: v[i] for k, v in batch.items()}) for i in range(len(next(iter(batch.values()))))]
        return {n: torch.stack([r[n] for r in rows]) for n in p}

    per_example = vmap(jacrev(one), in_dims=(None, 0)) if vectorize else looped

    def jacobians(batch: Batch) -> Params:
        with torch.enable_grad(), warnings.catch_warnings():
            # kernels without a vmap batching rule loop over the batch and warn; same numbers
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            return per_example(params, batch)
    return jacobians


def _chunks(batch: Batch, chunk_size: int) -> list[Batch]:
    n = len(next(iter(batch.values())))
    return [{k: v[s:s + chunk_size] for k, v in batch.items()} for s in range(0, n, chunk_size)]


def _block(a: Params, b: Params, sign_a: bool, sign_b: bool) -> Tensor:
    """Σ over parameters of ⟨a[i, c], b[j, c']⟩: [Ba, C, Bb, C], float64.

    Products run in the Jacobians' dtype over slices of ``BLOCK_SLICE`` parameters and the slices'
    sums accumulate in float64: converting whole Jacobians to float64 first (a dense word-embedding
    Jacobian is [B, C, vocab, d]) cost 8x the time and memory on minilm for no accuracy that matters
    (float32 slices agree with float64 to ~2e-7 of the kernel's scale)."""
    total = None
    for name, ga in a.items():
        ga, gb = ga.flatten(2), b[name].flatten(2)
        ga = ga.sign() if sign_a else ga
        gb = gb.sign() if sign_b else gb
        for start in range(0, ga.shape[2], BLOCK_SLICE):
            part = torch.einsum("acp,bdp->acbd", ga[..., start:start + BLOCK_SLICE],
                                gb[..., start:start + BLOCK_SLICE]).double()
            total = part if total is None else total + part
    return total.cpu()


def _kernel(jac: Callable[[Batch], Params], rows: Batch, cols: Batch, chunk_size: int, sign_rows: bool,
            sign_cols: bool) -> Tensor:
    col_chunks = _chunks(cols, chunk_size)
    blocks = []
    for r in _chunks(rows, chunk_size):
        jr = jac(r)
        blocks.append(torch.cat([_block(jr, jac(c), sign_rows, sign_cols) for c in col_chunks], dim=2))
    return torch.cat(blocks, dim=0)


def _symmetric_kernel(jac: Callable[[Batch], Params], batch: Batch, chunk_size: int, signed: bool) -> Tensor:
    """train × train: blocks on and above the diagonal, the rest mirrored (K[j,c',i,c] = K[i,c,j,c'])."""
    chunks = _chunks(batch, chunk_size)
    starts = [0]
    for c in chunks:
        starts.append(starts[-1] + len(next(iter(c.values()))))
    kernel = None
    for a, ca in enumerate(chunks):
        ja = jac(ca)
        for b in range(a, len(chunks)):
            if b == a:  # averaged with its mirror so that the kernel is exactly symmetric
                block = _block(ja, ja, signed, signed)
                block = (block + block.permute(2, 3, 0, 1)) / 2
            else:
                block = _block(ja, jac(chunks[b]), signed, signed)
            if kernel is None:
                n, classes = starts[-1], block.shape[1]
                kernel = torch.empty(n, classes, n, classes, dtype=torch.float64)
            ra, rb = slice(starts[a], starts[a + 1]), slice(starts[b], starts[b + 1])
            kernel[ra, :, rb, :] = block
            kernel[rb, :, ra, :] = block.permute(2, 3, 0, 1)
    return kernel


def _asymmetric(jac: Callable[[Batch], Params], train: Batch, eval_: Batch | None, chunk_size: int) -> Tensor:
    if eval_ is None:
        first = _kernel(jac, train, train, chunk_size, True, False)
        flipped = first.permute(2, 3, 0, 1)  # ⟨g(x_i), sign g(x_j)⟩ = pass 0 at (j, i)
    else:
        first = _kernel(jac, train, eval_, chunk_size, True, False)
        flipped = _kernel(jac, train, eval_, chunk_size, False, True)
    if first.shape[1] != 1:
        raise ValueError(f"asymmetric_signgd is for binary classification (C = 1 logit, see binary()); "
                         f"got C = {first.shape[1]}")
    return torch.stack([first, flipped.contiguous()])


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
