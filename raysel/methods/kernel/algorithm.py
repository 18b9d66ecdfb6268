"""Kernel view of fine-tuning (Malladi et al., ICML 2023), the pure algorithm.

1. The model's "logits" f(x) ∈ R^C come from a ``LogitsFn`` (params, batch) → [B, C]: MLM scores
   at the mask restricted to the label words (``prompt_logits_fn``), a classifier (``classifier_logits_fn``
   over a ``FirstTokenClassifier`` whose head is a linear probe, ``linear_probe_classifier``, or over
   a transformers sequence classifier), or f = logit1 − logit0 with C = 1 (``binary``).
2. ``ntk``: the empirical NTK at θ0, K[i,c,j,c'] = ⟨g_c(x_i), g_c'(x_j)⟩ with g_c = ∇_θ f_c, for the
   formulas sgd, signgd and asymmetric_signgd, over a parameter subset (``select_params``).
3. ``solve``: kernel regression / classification with the train kernel, predictions on eval.

What is the reference's (princeton-nlp/LM-Kernel-FT, src/models.py, kernel_trainer.py,
kernel_solvers.py, linearhead_trainer.py) and is reproduced by default:
- Parameters: its prompt model's MLM decoder weight (``cls.predictions.decoder.weight``,
  ``lm_head.decoder.weight``) is a parameter of its own, equal to the input word embeddings at θ0
  but with its own gradient; aliases of one tensor (the decoder bias) are one parameter. raysel
  differentiates transformers' tied masked LM, so ``select_params`` lists the tied output embedding
  under its decoder name as a separate parameter (``decoder="separate"``), and the logits functions
  call ``functional_call(..., tie_weights=False)`` so that the two can differ. ``decoder="tied"``
  (one tensor for both, what raysel did before) is an option: it adds the cross terms of a label
  word that occurs in the input, keeps the decoder under exclude_head and drops it under
  exclude_embeddings.
- Subsets by substring of the full dotted name: exclude_embeddings drops names with "embed",
  exclude_head those with "head" (RoBERTa's ``lm_head.*``; BERT's ``cls.predictions.*`` stays),
  only_biases keeps those with "bias".
- Solvers: the kernel [N, C, M, C] is one [N·C, M·C] matrix for every solver, targets flattened
  (row n·C + c; one-hot for C > 1, ±1 for C = 1), predictions reshaped to [M, C] and argmaxed (C = 1:
  label 1 iff the score is > 0); K + reg·σ_max(K)·I on the train kernel for all five; f0 (the
  logits at θ0, ``adjust_for_init``) in lstsq, svr and asym. ``class_layout="per_class"`` keeps
  raysel's former treatment of C > 1 (logistic, svc, svr) as an option.
- The classifier without a prompt: a bare Linear(hidden, C) on the final hidden state of the first
  token, initialised by a cross-validated logistic-regression probe on the train features
  (the reference's ``--from_linearhead``; its default without that flag is transformers'
  sequence classifier with a random head, ``classifier_logits_fn`` on that model here).

Deliberate differences from the reference code:
- Per-example Jacobians come from torch.func (vmap of jacrev, ``chunk_size`` examples at a time);
  the inner (eval) Jacobians are recomputed per train chunk rather than taken by jvp. A linear
  layer's weight gradient is held as its factors, the layer's inputs and output gradients per token
  (``factor_linears``), and multiplied out in each block: the same sums in another order.
- train × train uses symmetry: only blocks on or above the diagonal are computed.
- Vocabulary-sized parameters are differentiated only at the rows that can have a gradient (the
  reference's jvp gathers them too; its jacrev side holds them densely): the input embeddings at the
  chunk's token ids, the decoder weight and bias at the label words.
- Padded batches are vmapped with a 4-D attention mask (the reference pads dynamically, batch 1).
- lstsq solves by the pseudo-inverse (minimum norm; the reference calls torch.linalg.lstsq, whose
  CPU driver gelsy is minimum-norm too, with a slightly different rank cut-off).
- The asym solver takes ``kernel_lambda`` and ``kernel_gamma`` as explicit arguments (the
  reference reads a ``kernel_lambda`` its argument parser never defines).
- scikit-learn's changing defaults are pinned to the reference's: accuracy for the CV score, an L2
  penalty. Cross-validation uses fewer folds than asked when a class has fewer examples than folds
  (the reference fails there), with a warning.
- The two-class linear probe: scikit-learn's ``multi_class`` (deprecated in 1.5, since removed) no
  longer asks for a multinomial fit of two classes; the binomial fit with every C doubled is the
  same model (coefficients doubled), so the head is taken from it (``_probe``).
- The classifier's encoder runs without its pooler (the reference's holds one, with zero gradient).
- Only the input and output embeddings' own parameters are treated as vocabulary-sized (raysel
  used to compact any parameter whose first dimension had the vocabulary's length), and the
  solvers run numpy's BLAS on one thread (speed only).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten
from transformers.modeling_outputs import SequenceClassifierOutput

from raysel.methods.loop import eval_mode
from raysel.models.prompt import PromptClassifier

FORMULAS = ("sgd", "signgd", "asymmetric_signgd")
SUBSETS = ("all", "exclude_embeddings", "exclude_head", "only_biases", "trainable")
SOLVERS = ("lstsq", "logistic", "svc", "svr", "asym")
DECODERS = ("separate", "tied")
CLASS_LAYOUTS = ("flattened", "per_class")

BLOCK_SLICE = 65_536  # parameters per partial dot product (see _block)
EXPANDED_FLOP_COST = 2  # a FLOP of formed gradients (an outer product over few tokens, then a product that
#   streams them) takes ~2x the time of one of the factors' large matmuls (measured on CPU, minilm's layers, T 16-128)
OUTPUT_ROWS = "__output_rows__"  # a params key: a logits function's output rows in a compact vocabulary

Params = dict[str, Tensor]
Batch = dict[str, Tensor]
LogitsFn = Callable[[Params, Batch], Tensor]  # (parameters by name, batch with leading dim B) → [B, C]
Decoder = Literal["separate", "tied"]


# ----------------------------------------------------------------------------- parameters

class _Listing(NamedTuple):
    """A model's parameters as the kernel sees them (see ``select_params``)."""

    params: dict[str, nn.Parameter]  # listed name → parameter (the decoder's, when separate, too)
    aliases: dict[str, tuple[str, ...]]  # listed name → the other names of the same parameter
    roles: dict[str, str]  # the embeddings' vocabulary-sized listed names → "input", "output" or "both" (the
    #   rows they take in a compact vocabulary: the input ids, the output rows, both)


def _listing(model: nn.Module, decoder: Decoder = "separate") -> _Listing:
    """Every parameter once, in ``named_parameters`` order, under its first name; with "separate" the
    output embedding weight that is the input embedding weight is listed again under its own (the
    decoder's) name, as the reference's untied prompt model holds it."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    inputs = _embedding(model, "get_input_embeddings")
    outputs = _embedding(model, "get_output_embeddings")
    tied = inputs is not None and outputs is not None and getattr(outputs, "weight", None) is inputs.weight
    output_prefixes = {prefix for prefix, module in model.named_modules(remove_duplicate=False) if module is outputs}
    decoder_names = {f"{prefix}.weight" for prefix in output_prefixes} if tied and decoder == "separate" else set()
    listed: dict[str, nn.Parameter] = {}
    aliases: dict[str, list[str]] = {}
    first: dict[tuple[int, bool], str] = {}  # (parameter, is the decoder's name) → its listed name
    for name, param in model.named_parameters(remove_duplicate=False):
        key = (id(param), name in decoder_names)
        if key in first:
            aliases[first[key]].append(name)
        else:
            first[key] = name
            listed[name], aliases[name] = param, []
    roles: dict[str, str] = {}  # only the embeddings' own parameters: another of the same length (a position
    if inputs is not None:      # embedding as long as the vocabulary) is not indexed by token id
        vocab = inputs.weight.shape[0]
        output_params = {id(p) for p in outputs.parameters()} if outputs is not None else set()
        for name, param in listed.items():
            if param.dim() < 1 or param.shape[0] != vocab:
                continue
            if param is inputs.weight:
                roles[name] = "output" if name in decoder_names else ("both" if tied else "input")
            elif id(param) in output_params:
                roles[name] = "output"
    return _Listing(listed, {n: tuple(a) for n, a in aliases.items()}, roles)


def _embedding(model: nn.Module, getter: str) -> nn.Module | None:
    try:
        return getattr(model, getter)() if hasattr(model, getter) else None
    except (NotImplementedError, AttributeError):
        return None


def select_params(model: nn.Module, subset: str | Callable[[str], bool] = "all",
                  decoder: Decoder = "separate") -> Params:
    """The parameters the kernel differentiates, by name, detached.

    "all"; "exclude_embeddings" (names without "embed"); "exclude_head" (names without "head");
    "only_biases" (BitFit: names with "bias"); "trainable" (requires_grad, e.g. LoRA-only); or a
    predicate on the parameter name — the reference's rules, on full dotted names.
    ``decoder``: "separate" lists a masked LM's output embedding weight, when transformers ties it
    to the input embeddings, as a parameter of its own under the decoder's name
    (``cls.predictions.decoder.weight``, ``lm_head.decoder.weight``; the same values); "tied" lists
    the one tensor once, under the input embeddings' name. Other aliases of one tensor (the decoder
    bias) are one parameter, under its first name.
    """
    listing = _listing(model, decoder)
    if callable(subset):
        keep = subset
    elif subset == "all":
        def keep(n: str) -> bool: return True
    elif subset == "exclude_embeddings":
        def keep(n: str) -> bool: return "embed" not in n
    elif subset == "exclude_head":
        def keep(n: str) -> bool: return "head" not in n
    elif subset == "only_biases":
        def keep(n: str) -> bool: return "bias" in n
    elif subset == "trainable":
        def keep(n: str) -> bool: return listing.params[n].requires_grad
    else:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)} or a callable, got {subset!r}")
    params = {n: p.detach() for n, p in listing.params.items() if keep(n)}
    if not params:
        raise ValueError(f"parameter subset {subset!r} selects no parameters")
    return params


def _with_aliases(params: Params, aliases: dict[str, tuple[str, ...]]) -> Params:
    """``params`` and, for each, its other names (not given themselves), for functional_call with
    tie_weights=False: a name not given is the module's own tensor."""
    out = dict(params)
    for name, value in params.items():
        for alias in aliases.get(name, ()):
            out.setdefault(alias, value)
    return out


# ----------------------------------------------------------------------------- logits

def classifier_logits_fn(model: nn.Module, decoder: Decoder = "separate") -> LogitsFn:
    """The classifier's logits [B, num_labels]: ``model(**batch).logits`` (a ``FirstTokenClassifier``
    or a transformers sequence classifier); the batch holds the model's keyword inputs."""
    causal = is_causal(model)
    aliases = _listing(model, decoder).aliases

    def logits(params: Params, batch: Batch) -> Tensor:
        params = _with_aliases({n: p for n, p in params.items() if n != OUTPUT_ROWS}, aliases)
        return functional_call(model, params, (), _model_inputs(batch, causal, _dtype(params)),
                               tie_weights=False).logits
    logits.output_rows = ()  # type: ignore[attr-defined]  # no vocabulary row on the output side
    logits.decoder = decoder  # type: ignore[attr-defined]
    return logits


def prompt_logits_fn(model: nn.Module, label_word_ids: Tensor | list[int], decoder: Decoder = "separate") -> LogitsFn:
    """A masked LM's scores at the mask restricted to the C label words: [B, C] (LM-BFF's logits).

    ``model`` is the ``*ForMaskedLM``; the batch holds its inputs and each example's mask position
    ``mask_pos`` [B]. The logits are those of raysel.models.prompt.PromptClassifier, which
    prompt-based fine-tuning trains. ``decoder`` says how the parameters passed in are read (see
    ``select_params``): "separate", the decoder weight is its own parameter (the input embeddings
    given alone leave the decoder at its own value); "tied", the input embeddings stand for both."""
    words = [int(w) for w in torch.as_tensor(label_word_ids).flatten()]
    wrapper = PromptClassifier(model, words)
    causal = is_causal(model)
    aliases = _listing(model, decoder).aliases

    def logits(params: Params, batch: Batch) -> Tensor:
        named = {("label_word_ids" if name == OUTPUT_ROWS else "mlm." + name): p
                 for name, p in _with_aliases(params, aliases).items()}
        return functional_call(wrapper, named, (), _model_inputs(batch, causal, _dtype(params)),
                               tie_weights=False).logits
    logits.output_rows = tuple(words)  # type: ignore[attr-defined]  # the decoder rows the logits read
    logits.decoder = decoder  # type: ignore[attr-defined]
    return logits


def binary(logits_fn: LogitsFn) -> LogitsFn:
    """f = logit[1] − logit[0] as [B, 1], for binary classification (labels {0, 1} → {−1, +1})."""
    def logits(params: Params, batch: Batch) -> Tensor:
        two = logits_fn(params, batch)
        if two.shape[-1] != 2:
            raise ValueError(f"binary needs exactly 2 logits, got {two.shape[-1]}")
        return two[:, 1:] - two[:, :1]
    for attribute in ("output_rows", "decoder"):
        if hasattr(logits_fn, attribute):
            setattr(logits, attribute, getattr(logits_fn, attribute))
    return logits


class FirstTokenClassifier(nn.Module):
    """The reference's classifier without a prompt: ``classifier`` (a bare Linear(hidden, C)) on the
    encoder's final hidden state of the first token ([CLS] / <s>); no pooler, no dense + tanh.

    The encoder is held under its model's ``base_model_prefix`` (``bert``, ``roberta``), so that the
    parameter names are the reference's (``bert.encoder...``, ``classifier.weight``)."""

    def __init__(self, encoder: nn.Module, weight: Tensor, bias: Tensor, prefix: str = "encoder"):
        super().__init__()
        self._prefix = prefix
        self.add_module(prefix, encoder)
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias)
        self.train(encoder.training)  # the encoder's mode (a loaded model is in eval mode), not nn.Module's default

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self._prefix)

    @property
    def num_labels(self) -> int:
        return self.classifier.out_features

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                **inputs) -> SequenceClassifierOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs)[0]
        logits = self.classifier(hidden[:, 0])
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def first_token_features(encoder: nn.Module, batch: Batch, batch_size: int = 32) -> Tensor:
    """The encoder's final hidden state of each example's first token, [B, hidden], in eval mode."""
    causal = is_causal(encoder)
    out = []
    with eval_mode(encoder), torch.no_grad():
        for start in range(0, _size(batch), batch_size):
            part = _trim({k: v[start:start + batch_size] for k, v in batch.items()})
            dtype = next(encoder.parameters()).dtype
            out.append(encoder(**_model_inputs(part, causal, dtype))[0][:, 0])
    return torch.cat(out)


def linear_probe_classifier(model: nn.Module, batch: Batch, labels: Tensor | Sequence[int],
                            classes: int | None = None) -> FirstTokenClassifier:
    """The reference's ``--from_linearhead`` model: ``model``'s encoder (its ``base_model``, pooler
    dropped) and a Linear head fitted as a cross-validated logistic regression on the first-token
    features of ``batch`` (the train examples) with ``labels``: LogisticRegressionCV(max_iter=5000,
    multinomial, random_state=0); with 2 classes the head is [−w/2, w/2], [−b/2, b/2] (w, b the
    multinomial model's class-1 coefficients, as the reference assigns them)."""
    encoder = getattr(model, "base_model", model)
    if is_causal(encoder):
        raise ValueError("a linear-probe head reads the first token's final hidden state, which a causal model "
                         "computes from that token alone; use the model's own classifier head instead")
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused by the first-token head (the reference's has zero gradient)
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    classes = classes or int(labels.max()) + 1
    features = first_token_features(encoder, batch).cpu()  # in the model's dtype, as the reference's
    weight, bias = _probe(features.numpy(), labels.numpy(), classes)
    param = next(encoder.parameters())
    prefix = getattr(model, "base_model_prefix", "") or "encoder"
    return FirstTokenClassifier(encoder, weight.to(param.device, param.dtype), bias.to(param.device, param.dtype),
                                prefix=prefix)


def _probe(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[Tensor, Tensor]:
    """The reference's linear probe [C, hidden], [C]. Two classes: its multinomial model has
    P(1) = σ(2(w·x + b)) with penalty ||w||²/C (the two class rows ±w), the binomial model with C
    doubled and coefficients (2w, 2b); so the binomial fit's coefficients / 4 give ±w/2."""
    if len(np.unique(labels)) != classes:
        raise ValueError(f"the linear probe needs train examples of all {classes} labels, got labels "
                         f"{sorted(np.unique(labels).tolist())}")
    if classes == 2:
        cs = 2 * np.logspace(-4, 4, 10)  # LogisticRegressionCV's default grid (Cs=10), doubled
        fit = _logistic_cv(features, labels, folds=5, max_iter=5000, Cs=cs)
        w, b = torch.from_numpy(fit.coef_[0] / 4), torch.from_numpy(np.asarray(fit.intercept_) / 4)
        return torch.stack([-w, w]), torch.cat([-b, b])
    fit = _logistic_cv(features, labels, folds=5, max_iter=5000)  # lbfgs: multinomial for > 2 classes
    return torch.from_numpy(fit.coef_), torch.from_numpy(np.asarray(fit.intercept_))


def _logistic_cv(x: np.ndarray, y: np.ndarray, *, folds: int, max_iter: int, **kwargs: Any):
    """LogisticRegressionCV(cv=folds, max_iter, random_state=0) fitted, with the reference's
    semantics pinned across scikit-learn versions (accuracy for the CV score, an L2 penalty, whatever
    later defaults say); fewer folds when a class has fewer examples than folds (warned)."""
    from sklearn.linear_model import LogisticRegressionCV

    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < folds:
        if smallest < 2:
            raise ValueError(f"cross-validated logistic regression needs at least 2 examples of each target value, "
                             f"one has {smallest}")
        warnings.warn(f"LogisticRegressionCV: {folds} folds asked but a target value has {smallest} examples; "
                      f"using {smallest} folds", stacklevel=3)
        folds = smallest
    defaults = inspect.signature(LogisticRegressionCV).parameters
    pinned: dict[str, Any] = {"scoring": "accuracy"}
    if "l1_ratios" in defaults and defaults["l1_ratios"].default == "warn":
        pinned["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in defaults:
        pinned["use_legacy_attributes"] = False
    with _one_blas_thread():
        return LogisticRegressionCV(cv=folds, max_iter=max_iter, random_state=0, **pinned, **kwargs).fit(x, y)


def is_causal(model: nn.Module) -> bool:
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

def ntk(model: nn.Module, train_batch: Batch, eval_batch: Batch | None = None, *, logits_fn: LogitsFn,
        formula: Literal["sgd", "signgd", "asymmetric_signgd"] = "sgd",
        subset: str | Callable[[str], bool] = "all", decoder: Decoder | None = None, chunk_size: int = 8,
        row_chunk_size: int | None = None, vectorize: bool = True, sparse_rows: bool = True,
        factor_linears: bool = True, shard: tuple[int, int] = (0, 1),
        on_block: Callable[[int, int], None] | None = None, with_train: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The empirical NTK of ``logits_fn`` at the model's parameters, float64.

    sgd: K[i,c,j,c'] = ⟨g_c(x_i), g_c'(x_j)⟩, [N, C, M, C] (i over train, j over eval);
    signgd: ⟨sign g_c(x_i), sign g_c'(x_j)⟩; asymmetric_signgd (C = 1 only): [2, N, 1, M, 1],
    pass 0 ⟨sign g(x_i), g(x_j)⟩ and the flipped pass 1 ⟨g(x_i), sign g(x_j)⟩ = ⟨sign g(x_j), g(x_i)⟩.
    ``eval_batch`` None (or the train batch itself): train × train through the symmetric path.
    ``with_train`` (with an eval batch): both kernels, (train × train, train × eval), from one pass
    over the train rows: each held row chunk serves both, so its Jacobians are formed once, not once
    per kernel; the same numbers as the two calls.
    Gradients are over ``select_params(model, subset, decoder)``, with dropout off. ``decoder``
    (default: the logits function's, which the built-in ones declare, else "separate"): whether a
    masked LM's decoder weight is a parameter of its own ("separate", the reference's) or the tied
    input embeddings ("tied"). signgd, as in the
    reference, takes the sign of every entry, also of gradients that are zero up to rounding (an
    attention key bias: softmax ignores a constant shift): those add ±1 terms that depend on the
    arithmetic (padding, chunking); exclude such parameters with a subset predicate if it matters.

    Work is in blocks: the Jacobians of ``row_chunk_size`` train examples (default ``chunk_size``;
    formed ``chunk_size`` at a time) are held while those of ``chunk_size`` eval examples at a time
    are formed against them (memory ≈ (rows + columns) · C · #params floats, far less for the
    linear weights with ``factor_linears``). ``shard=(rank, world)`` computes only this rank's
    contiguous share of the blocks and leaves zeros elsewhere, so that the sum over ranks (an
    all-reduce) is the whole kernel, entry for entry. ``on_block(done, total)`` follows progress
    (with_train: the blocks of both kernels).

    ``vectorize``: per-example Jacobians by vmap over the chunk (padded batches are fine: the
    attention mask goes in as 4-D), else one jacrev per example. ``sparse_rows``: when the logits
    function declares its ``output_rows`` (the built-in ones do) and the model is bidirectional,
    vocabulary-sized parameters (word embeddings, the MLM decoder and its bias) are differentiated
    only at the rows that can have a gradient, through a compact vocabulary (``_jacobian_fn``):
    the input embeddings at the chunk's token ids, a separate decoder at the output rows (a tied
    one at both), instead of densely. ``factor_linears``: a linear layer's weight (nn.Linear,
    GPT-2's Conv1D; not vocabulary-sized, not shared) is not differentiated per example: its
    gradient Σ_t δ_t x_t^T is held as the layer's inputs x and output gradients δ per token
    (``_linear_factors``), and each block either multiplies the factors (⟨Σ_t δ_t x_t^T, Σ_s δ'_s x'_s^T⟩
    = Σ_t,s (δ_t·δ'_s)(x_t·x'_s)) or forms the gradients, whichever its FLOP estimate says is faster
    (``_factored``): a fraction of the per-example weight gradients' memory, and for short inputs
    less time.
    """
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
    declared = getattr(logits_fn, "decoder", None)
    if decoder is not None and declared is not None and decoder != declared:
        raise ValueError(f"decoder {decoder!r} differs from the logits function's ({declared!r}); build it with "
                         f"decoder={decoder!r}")
    decoder = decoder or declared or "separate"
    params = select_params(model, subset, decoder)
    symmetric = eval_batch is None or eval_batch is train_batch
    if with_train and symmetric:
        raise ValueError("with_train needs an eval batch (other than the train batch)")
    vocabulary = _vocabulary_params(model, logits_fn, train_batch, decoder) if sparse_rows else _Vocabulary({}, {})
    plan = _Plan(chunk_size, row_chunk_size or chunk_size, shard, on_block)
    with eval_mode(model), torch.no_grad():
        linears = _linear_factors(model, params, vocabulary) if factor_linears else {}
        jac = _jacobian_fn(logits_fn, params, vectorize, vocabulary, _pinned_rows(model), linears)
        classes = _classes(logits_fn, params, train_batch)
        train = _by_length(train_batch)
        evals = None if symmetric else _by_length(eval_batch)
        asymmetric = formula == "asymmetric_signgd"
        if asymmetric and classes != 1:
            raise ValueError(f"asymmetric_signgd is for binary classification (C = 1 logit, see binary()); "
                             f"got C = {classes}")
        signed = formula == "signgd"
        wants_train = symmetric or with_train
        # asymmetric_signgd's train x train: one pass, not mirrored, and its transpose (⟨g_i, sign g_j⟩ = pass 0 at (j, i))
        train_target = _Target(train, True, False, False) if asymmetric else _Target(train, signed, signed, True)
        eval_targets = [] if evals is None else (
            [_Target(evals, True, False, False), _Target(evals, False, True, False)] if asymmetric
            else [_Target(evals, signed, signed, False)])
        targets = ([train_target] if wants_train else []) + eval_targets
        kernels = [k[train.inverse][:, :, target.columns.inverse]  # back to the callers' order
                   for k, target in zip(plan.kernels(jac, train.batch, targets, classes), targets)]
    out = []
    if wants_train:
        k = kernels.pop(0)
        out.append(torch.stack([k, k.permute(2, 3, 0, 1).contiguous()]) if asymmetric else k)
    if eval_targets:
        out.append(torch.stack(kernels) if asymmetric else kernels[0])
    return tuple(out) if with_train else out[0]


class _Sorted(NamedTuple):
    batch: Batch  # the examples, shortest first
    inverse: Tensor  # positions that put the kernel's rows or columns back in the given order


def _by_length(batch: Batch) -> _Sorted:
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return _Sorted(batch, torch.arange(_size(batch)))
    order = torch.sort(mask.sum(1).cpu(), stable=True).indices
    return _Sorted({k: v[order.to(v.device)] for k, v in batch.items()}, torch.argsort(order))


class _Target(NamedTuple):
    """Kernel columns to compute against the train rows: examples sorted by length, whether the
    rows' and the columns' gradients take their sign, and whether the columns are the rows
    themselves (computed on and above the diagonal only, mirrored)."""

    columns: _Sorted
    sign_rows: bool
    sign_cols: bool
    mirror: bool


class _Jacobians(NamedTuple):
    grads: Params  # name → [B, C, *shape]; a row-sparse parameter's: [B, C, u, *rest] (its rows only)
    rows: dict[str, Tensor]  # row-sparse parameter → the u sorted row ids its grads hold
    factors: dict[str, tuple[Tensor, Tensor]]  # a factored linear weight → its inputs x [B, T, in] and
    #   output gradients δ [B, C, T, out] per token (T: every position of every call): grad = Σ_t δ_t x_t^T
    expanded: dict[str, Tensor]  # a factored weight → its per-example gradients [B, C, out · in], once formed


class _Vocabulary(NamedTuple):
    """The vocabulary-sized parameters (differentiated or not) and which rows each takes in a
    compact vocabulary: "input" (the chunk's token ids and the pinned ids) or "output" (the logits'
    output rows), or all of them "both" (one row set for every such parameter)."""

    params: Params
    sides: dict[str, str]


def _vocabulary_params(model: nn.Module, logits_fn: LogitsFn, batch: Batch, decoder: Decoder) -> _Vocabulary:
    """The model's vocabulary-sized parameters, when the kernel can run on a compact vocabulary (see
    ``ntk``'s sparse_rows); else none.

    Only for bidirectional models: a causal classifier finds its last token by comparing input ids
    with the pad id, which a compact vocabulary renumbers. Only the input and output embeddings' own
    parameters (word embeddings, decoder weight and bias) are compacted; another parameter as long
    as the vocabulary stays dense (one used with vocabulary-sized scores then fails loudly: set
    sparse_rows=False). The input embeddings and a separate decoder take their own rows; a tied
    decoder, or a logits function without output rows, puts them all on one row set (the union)."""
    embeddings = _embedding(model, "get_input_embeddings")
    if (not hasattr(logits_fn, "output_rows") or "input_ids" not in batch or embeddings is None
            or is_causal(model)):
        return _Vocabulary({}, {})
    listing = _listing(model, decoder)
    params = {n: listing.params[n].detach() for n in listing.roles}
    roles = set(listing.roles.values())
    split = "both" not in roles and (len(logits_fn.output_rows) > 0 or "output" not in roles)
    return _Vocabulary(params, {n: (listing.roles[n] if split else "both") for n in params})


def _linear_factors(model: nn.Module, params: Params, vocabulary: _Vocabulary) -> dict[str, nn.Module]:
    """Weight name → its linear layer (nn.Linear, or GPT-2's Conv1D), for the weights the kernel can
    hold as factors: differentiated, not vocabulary-sized (those take the compact rows) and not shared
    with another parameter or layer (a tied weight's gradient is a sum over its uses)."""
    shared = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n not in params}
    layers: dict[str, nn.Module] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        name = f"{prefix}.weight" if prefix else "weight"
        linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if (linear and name in params and name not in vocabulary.params and id(module.weight) not in shared
                and all(module is not seen for seen in layers.values())):
            layers[name] = module
    return layers


def _pinned_rows(model: nn.Module) -> Tensor:
    """Ids kept at their own position in a compact vocabulary: 0 .. the padding index, so that the
    embedding's padding_idx (no gradient) and RoBERTa's position ids (ids != padding_idx) still hold."""
    embeddings = _embedding(model, "get_input_embeddings")
    padding = getattr(embeddings, "padding_idx", None)
    return torch.arange((padding or 0) + 1)


def _jacobian_fn(logits_fn: LogitsFn, params: Params, vectorize: bool, vocabulary: _Vocabulary, pinned: Tensor,
                 linears: dict[str, nn.Module]) -> Callable[[Batch], _Jacobians]:
    """Batch [B, ...] → per-example Jacobians.

    Row-sparse parameters go in compacted: for each chunk the rows each can touch — the input
    embeddings the chunk's token ids and the pinned ids, a separate decoder and its bias the logits'
    output rows; all the union of both when they share one row set — sorted (so the pinned ids keep
    their positions) are the whole "vocabulary", the input ids and output rows are renumbered into
    it, and the model runs on those rows. The function is the same, so the gradient with respect
    to the compact rows is the full gradient at those rows, and nothing vocabulary-sized is formed
    (dense per-example gradients of a 30k × 384 embedding cost minilm ~70% of its Jacobian time).

    The weights of ``linears`` are constants here: a forward hook on each of those layers records
    its input and adds a zero offset to its output, so that the Jacobian with respect to the offsets
    is the layer's output gradient δ per token (``_Jacobians.factors``). A first call on one example
    finds the offsets' shapes (once per input shape)."""
    output_rows = torch.as_tensor(getattr(logits_fn, "output_rows", ()), dtype=torch.long)
    sparse = [n for n in params if n in vocabulary.params]  # differentiated at the chunk's rows
    dense = {n: p for n, p in params.items() if n not in vocabulary.params and n not in linears}
    weights = {n: params[n] for n in linears}
    layer_names = {id(layer): name for name, layer in linears.items()}
    call: dict[str, Any] = {}  # one call of the model: each factored layer's inputs and offsets, in call order
    shapes: dict[tuple, dict[str, list]] = {}  # an example's input shapes → the offsets' shapes (the shape pass's)

    def record(layer: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        name = layer_names[id(layer)]
        inputs = call["inputs"].setdefault(name, [])
        inputs.append(args[0])
        if call["offsets"] is None:  # the shape pass
            call["shapes"].setdefault(name, []).append((output.shape, output.dtype))
            return None
        return output + call["offsets"][name][len(inputs) - 1]

    def jacobians(batch: Batch) -> _Jacobians:
        extra: Params = dict(weights)
        compact: Params = {}
        rows: dict[str, Tensor] = {}
        if vocabulary.params:
            ids = batch["input_ids"]
            sides = set(vocabulary.sides.values())
            on_input = torch.cat([pinned, ids.flatten().cpu()] + ([output_rows] if "both" in sides else []))
            by_side = {"input": on_input.unique(), "output": output_rows.unique()}  # sorted
            by_side["both"] = by_side["input"]
            rows = {n: by_side[side] for n, side in vocabulary.sides.items()}
            device = {side: r.to(ids.device) for side, r in by_side.items()}
            input_side = "input" if "input" in sides else "both"
            batch = {**batch, "input_ids": torch.searchsorted(device[input_side], ids.contiguous())}
            compact = {n: vocabulary.params[n].index_select(0, device[vocabulary.sides[n]]) for n in sparse}
            # the vocabulary-sized parameters not differentiated are compacted too (constants)
            extra.update({n: p.index_select(0, device[vocabulary.sides[n]])
                          for n, p in vocabulary.params.items() if n not in params})
            if len(output_rows):
                output_side = "output" if "output" in sides else "both"
                extra[OUTPUT_ROWS] = torch.searchsorted(device[output_side], output_rows.to(ids.device))

        def one(dense_: Params, compact_: Params, offsets: dict[str, list[Tensor]], example: Batch
                ) -> tuple[Tensor, dict[str, Tensor]]:
            call.update(inputs={}, offsets=offsets)
            logits = logits_fn({**dense_, **compact_, **extra}, {k: v[None] for k, v in example.items()})[0]
            return logits, {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for n, xs in call["inputs"].items()}

        def looped(dense_: Params, compact_: Params, offsets: dict[str, list[Tensor]], batch_: Batch):
            parts = [jacrev(one, argnums=(0, 1, 2), has_aux=True)(dense_, compact_, offsets,
                                                                   {k: v[i] for k, v in batch_.items()})
                     for i in range(_size(batch_))]
            leaves = [tree_flatten(part) for part in parts]
            return tree_unflatten([torch.stack(column) for column in zip(*(flat for flat, _ in leaves))], leaves[0][1])

        handles = [layer.register_forward_hook(record) for layer in linears.values()]
        try:
            example_shape = tuple((k, v.shape[1:]) for k, v in batch.items())
            if linears and example_shape not in shapes:
                call.update(inputs={}, offsets=None, shapes={})
                logits_fn({**dense, **compact, **extra}, {k: v[:1] for k, v in batch.items()})
                shapes[example_shape] = call["shapes"]
            offsets = {n: [torch.zeros(shape, dtype=dtype, device=p.device) for shape, dtype in found]
                       for n, found in shapes.get(example_shape, {}).items() for p in (params[n],)}
            per_example = (vmap(jacrev(one, argnums=(0, 1, 2), has_aux=True), in_dims=(None, None, None, 0))
                           if vectorize else looped)
            with torch.enable_grad(), warnings.catch_warnings():
                # kernels without a vmap batching rule loop over the batch and warn; same numbers
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                (grads_dense, grads_sparse, grads_offsets), inputs = per_example(dense, compact, offsets, batch)
        finally:
            for handle in handles:
                handle.remove()
            call.clear()
        grads = {**grads_dense, **grads_sparse}
        size, classes = _size(batch), next(iter(grads_offsets.values()))[0].shape[1] if grads_offsets else 0
        factors = {n: (inputs[n], torch.cat([d.reshape(size, classes, -1, d.shape[-1]) for d in deltas], dim=2))
                   for n, deltas in grads_offsets.items()}
        return _Jacobians({n: grads[n] for n in params if n not in linears}, {n: rows[n] for n in sparse}, factors, {})
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
        self.on_block = on_block

    def blocks(self, n: int, targets: list[tuple[int, bool]]) -> list[tuple[int, int, int, int, int]]:
        """All blocks (target, row start, row stop, column start, column stop) of targets given as
        (columns, mirrored), row chunk by row chunk (each held row chunk serves every target); a
        mirrored target: the diagonal block of each row chunk and the columns after it."""
        out = []
        for r0 in range(0, n, self.row_chunk):
            r1 = min(n, r0 + self.row_chunk)
            for which, (m, mirror) in enumerate(targets):
                if mirror:
                    out.append((which, r0, r1, r0, r1))
                for c0 in range(r1 if mirror else 0, m, self.chunk):
                    out.append((which, r0, r1, c0, min(m, c0 + self.chunk)))
        return out

    def kernels(self, jac: Callable[[Batch], _Jacobians], rows: Batch, targets: list[_Target], classes: int
                ) -> list[Tensor]:
        n = _size(rows)
        blocks = self.blocks(n, [(_size(t.columns.batch), t.mirror) for t in targets])
        start, stop = (len(blocks) * self.rank) // self.world, (len(blocks) * (self.rank + 1)) // self.world
        kernels = [torch.zeros(n, classes, _size(t.columns.batch), classes, dtype=torch.float64) for t in targets]
        held, held_rows = None, None
        for done, (which, r0, r1, c0, c1) in enumerate(blocks[start:stop], 1):
            target, kernel = targets[which], kernels[which]
            if held_rows != (r0, r1):
                # formed chunk_size examples at a time: a large row chunk costs its Jacobians, not the
                # vmapped forward and backward of all its examples at once
                held = _joined([jac(_rows_slice(rows, s, min(r1, s + self.chunk))) for s in range(r0, r1, self.chunk)])
                held_rows = (r0, r1)
            if target.mirror and c0 == r0:  # averaged with its mirror so that the kernel is exactly symmetric
                block = _block(held, held, target.sign_rows, target.sign_cols)
                block = (block + block.permute(2, 3, 0, 1)) / 2
            else:
                block = _block(held, jac(_rows_slice(target.columns.batch, c0, c1)), target.sign_rows, target.sign_cols)
            kernel[r0:r1, :, c0:c1, :] = block
            if target.mirror and c0 != r0:
                kernel[c0:c1, :, r0:r1, :] = block.permute(2, 3, 0, 1)
            if self.on_block is not None:
                self.on_block(done, stop - start)
        return kernels


def _joined(parts: list[_Jacobians]) -> _Jacobians:
    """Jacobians of consecutive examples as one: row-sparse gradients on the union of the parts' rows,
    factors padded to the longest part's tokens (zero inputs and gradients add nothing)."""
    if len(parts) == 1:
        return parts[0]
    grads = {n: torch.cat([p.grads[n] for p in parts]) for n in parts[0].grads if n not in parts[0].rows}
    rows = {n: torch.cat([p.rows[n] for p in parts]).unique() for n in parts[0].rows}
    for name, union in rows.items():
        pieces = []
        for part in parts:
            g = part.grads[name]
            piece = g.new_zeros(g.shape[:2] + (len(union),) + g.shape[3:])
            pieces.append(piece.index_copy_(2, torch.searchsorted(union, part.rows[name]).to(g.device), g))
        grads[name] = torch.cat(pieces)
    factors = {}
    for name in dict.fromkeys(n for p in parts for n in p.factors):  # a part whose inputs skip a layer: zeros
        x0, d0 = next(p.factors[name] for p in parts if name in p.factors)
        tokens = max(p.factors[name][0].shape[1] for p in parts if name in p.factors)
        xs, ds = [], []
        for part in parts:
            size = _shape(part)[0]
            x, d = part.factors.get(name, (x0.new_zeros(size, tokens, x0.shape[2]),
                                           d0.new_zeros(size, d0.shape[1], tokens, d0.shape[3])))
            xs.append(nn.functional.pad(x, (0, 0, 0, tokens - x.shape[1])))
            ds.append(nn.functional.pad(d, (0, 0, 0, tokens - d.shape[2])))
        factors[name] = (torch.cat(xs), torch.cat(ds))
    return _Jacobians({n: grads[n] for n in parts[0].grads}, rows, factors, {})


def _shape(j: _Jacobians) -> tuple[int, int, torch.device]:
    """(examples B, logits C, device) of per-example Jacobians, from a gradient or a factor's δ."""
    some = next(iter(j.grads.values())) if j.grads else next(iter(j.factors.values()))[1]
    return some.shape[0], some.shape[1], some.device


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
    row only one side holds has a zero gradient on the other: sign(0) = 0 too). A factored linear
    weight contributes through ``_factored``."""
    (ba, classes, device), (bb, _, _) = _shape(a), _shape(b)
    total = torch.zeros(ba, classes, bb, classes, dtype=torch.float64, device=device)
    for name, ga in a.grads.items():
        gb = b.grads[name]
        if name in a.rows:
            at_a, at_b = _common(a.rows[name].to(ga.device), b.rows[name].to(ga.device))
            ga, gb = ga.index_select(2, at_a), gb.index_select(2, at_b)
        total += _dot(ga.flatten(2), gb.flatten(2), sign_a, sign_b)
    for name in [n for n in a.factors if n in b.factors]:  # a layer no input calls has no gradient
        total += _factored(a, b, name, sign_a, sign_b)
    return total.cpu()


def _dot(ga: Tensor, gb: Tensor, sign_a: bool, sign_b: bool) -> Tensor:
    """[Ba, C, P] · [Bb, C, P] → [Ba, C, Bb, C] float64, over slices of ``BLOCK_SLICE`` parameters."""
    ga = ga.sign() if sign_a else ga
    gb = gb.sign() if sign_b else gb
    total = torch.zeros(ga.shape[0], ga.shape[1], gb.shape[0], gb.shape[1], dtype=torch.float64, device=ga.device)
    for start in range(0, ga.shape[2], BLOCK_SLICE):
        total += torch.einsum("acp,bdp->acbd", ga[..., start:start + BLOCK_SLICE],
                              gb[..., start:start + BLOCK_SLICE]).double()
    return total


def _factored(a: _Jacobians, b: _Jacobians, name: str, sign_a: bool, sign_b: bool) -> Tensor:
    """A linear weight's share of a block from its factors (x [B, T, in], δ [B, C, T, out]), in
    float64: ⟨Σ_t δ_t x_t^T, Σ_s δ'_s x'_s^T⟩ = Σ_t,s (δ_t · δ'_s)(x_t · x'_s); or, when signs are
    taken or that would take longer (long inputs: its FLOPs grow with T², against formed gradients'
    FLOPs weighted by ``EXPANDED_FLOP_COST``), the per-example gradients δ^T x formed and dotted.
    Formed gradients of ``a`` (the held train rows) are kept for its next blocks when they are no
    more than the column chunk's (with the default row_chunk_size, as whole per-example gradients
    were held before factors)."""
    (xa, da), (xb, db) = a.factors[name], b.factors[name]
    (ba, classes, ta, width), (bb, _, tb, _), depth = da.shape, db.shape, xa.shape[-1]
    multiplied = ba * bb * ta * tb * (classes * classes * width + depth)
    forming = (0 if name in a.expanded else ba * ta) + (0 if b is a else bb * tb)
    expanded = forming * classes * depth * width + ba * bb * classes * classes * depth * width
    if not (sign_a or sign_b or EXPANDED_FLOP_COST * expanded < multiplied):
        inputs = torch.einsum("itk,jsk->itjs", xa, xb)
        deltas = torch.einsum("icto,jeso->ictjes", da, db)
        return torch.einsum("ictjes,itjs->icje", deltas, inputs).double()
    ga = a.expanded.get(name)
    if ga is None:
        ga = _formed(xa, da)
        if b is not a and ba <= bb:  # kept when no larger than a column chunk's (a large row chunk stays factored)
            a.expanded[name] = ga
    gb = ga if b is a else _formed(xb, db)
    return _dot(ga, gb, sign_a, sign_b)


def _formed(x: Tensor, delta: Tensor) -> Tensor:
    """Per-example gradients [B, C, out · in] of a linear weight from its factors: Σ_t δ_t x_t^T."""
    return torch.einsum("bcto,bti->bcoi", delta, x).flatten(2)


# ----------------------------------------------------------------------------- solvers

class Prediction(NamedTuple):
    labels: Tensor  # [M] long, in 0..C-1 (0/1 when C = 1)
    scores: Tensor  # [M, C] float64: regression outputs / log-odds / ±1 decisions (svc); see ``solve``


def solve(k_train: Tensor, y_train: Tensor, k_eval: Tensor, *,
          solver: Literal["lstsq", "logistic", "svc", "svr", "asym"] = "lstsq", reg: float = 0.0,
          f0_train: Tensor | None = None, f0_eval: Tensor | None = None, f0_scaling: float = 1.0,
          kernel_lambda: float = 0.5, kernel_gamma: float = 1.0, logistic_cv: int = 5,
          sklearn_c: float = 1.0, class_layout: Literal["flattened", "per_class"] = "flattened") -> Prediction:
    """Fit on the train kernel [N, C, N, C] and labels [N]; predict from k_eval [N, C, M, C] (train × eval).

    As the reference (LM-Kernel-FT's kernel_trainer.evaluate and kernel_solvers): the kernels are
    the matrices K [N·C, N·C] and K_eval [N·C, M·C] (row n·C + c), the targets Y [N·C] one-hot
    (C > 1) or ±1 (C = 1: binary f = logit1 − logit0, labels {0, 1}); every solver fits on
    K + reg·σ_max(K)·I; its scores [M·C] become [M, C], the label is the argmax (ties: the first
    class; C = 1: label 1 iff the score is > 0). With f0 (the logits at θ0, [N, C] and [M, C];
    ``adjust_for_init``) lstsq, svr and asym fit Y − f0_train/s and add f0_eval/s (s = ``f0_scaling``).

    lstsq: minimum-norm α = K⁺(Y − f0/s), scores K_evalᵀα + f0_eval/s. logistic: binary logistic
    regression of the 0/1 targets (±1 → 0/1) on the rows of K — LogisticRegressionCV(cv=
    ``logistic_cv``, max_iter=10000, random_state=0), or with ``logistic_cv=0`` a plain
    LogisticRegression(C=``sklearn_c``) — scores log p1 − log p0 of K_eval's columns. svc:
    SVC(kernel="precomputed", C=``sklearn_c``) on the 0/1 targets, scores its predictions as ±1. svr:
    one SVR(kernel="precomputed", C=``sklearn_c``) on Y − f0/s, scores its predictions + f0_eval/s.
    logistic and svc take no f0. asym: the A-SignGD solver on the 2-pass kernels [2, N, 1, ·, 1] from
    asymmetric_signgd (``_solve_asym``), with ``kernel_lambda`` (λ) and ``kernel_gamma`` (γ).

    ``class_layout="per_class"`` (C > 1; logistic, svc, svr) is raysel's former treatment instead:
    logistic a multinomial regression of the labels on per-example rows [N, N·C·C] (scores
    log-probabilities), svc one SVC of the labels on Σ_c K[:, c, :, c] (scores its decision values),
    svr one SVR per logit on K[:, c, :, c]; reg on the [N·C, N·C] kernel first and f0 (svr) as above.
    With C = 1 the two layouts are the same.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if class_layout not in CLASS_LAYOUTS:
        raise ValueError(f"class_layout must be one of {', '.join(CLASS_LAYOUTS)}, got {class_layout!r}")
    y_train = torch.as_tensor(y_train, dtype=torch.long).cpu()
    classes = max(2, k_train.shape[-1])
    if y_train.numel() and not (0 <= int(y_train.min()) and int(y_train.max()) < classes):
        raise ValueError(f"labels must lie in 0..{classes - 1} (0/1 for C = 1), got {y_train.unique().tolist()}")
    if (f0_train is None) != (f0_eval is None):
        raise ValueError("give both f0_train [N, C] and f0_eval [M, C], or neither")
    if f0_train is not None and solver in ("logistic", "svc"):
        raise ValueError(f"solver {solver!r} takes no f0 (adjust_for_init is for lstsq, svr and asym)")
    if solver == "asym":
        return _solve_asym(k_train, y_train, k_eval, reg, f0_train, f0_eval, f0_scaling, kernel_lambda, kernel_gamma)
    with _one_blas_thread():
        return _solve(k_train, y_train, k_eval, solver, reg, f0_train, f0_eval, f0_scaling, logistic_cv, sklearn_c,
                      class_layout)


def _one_blas_thread():
    """numpy / scipy BLAS on one thread inside the block: the solvers' matrices are small, and
    OpenBLAS threads on busy cores made one LogisticRegression fit on a 100 × 100 kernel take 113 s
    instead of 0.8 s (measured)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _solve(k_train: Tensor, y_train: Tensor, k_eval: Tensor, solver: str, reg: float, f0_train: Tensor | None,
           f0_eval: Tensor | None, f0_scaling: float, logistic_cv: int, sklearn_c: float,
           class_layout: str) -> Prediction:
    if k_train.dim() != 4 or k_eval.dim() != 4:
        raise ValueError(f"solver {solver!r} needs kernels [N, C, N, C] and [N, C, M, C]; got shapes "
                         f"{tuple(k_train.shape)} and {tuple(k_eval.shape)} (asym takes the 2-pass kernels)")
    n, c, m = k_train.shape[0], k_train.shape[1], k_eval.shape[2]
    kt = _regularised(k_train.double().cpu().reshape(n * c, n * c), reg)
    ke = k_eval.double().cpu().reshape(n * c, m * c)
    targets = _targets(y_train, c)  # [N, C]
    f0t = f0_train.double().cpu().reshape(n, c) / f0_scaling if f0_train is not None else torch.zeros(n, c).double()
    f0e = f0_eval.double().cpu().reshape(m, c) / f0_scaling if f0_eval is not None else torch.zeros(m, c).double()
    if solver == "lstsq":
        alpha = torch.linalg.pinv(kt, hermitian=True) @ (targets - f0t).reshape(-1)  # minimum-norm solution
        return _prediction((ke.T @ alpha).reshape(m, c) + f0e)
    if class_layout == "per_class" and c > 1:
        return _solve_per_class(solver, kt.reshape(n, c, n, c), y_train, k_eval.double().cpu(), targets - f0t, f0e,
                                logistic_cv, sklearn_c)
    zero_one = _binary_targets(y_train, c).numpy()  # [N·C]
    x_eval = ke.T.numpy()  # [M·C, N·C]: column m·C + c of K_eval, against the train rows
    if solver == "logistic":
        model = _logistic(kt.numpy(), zero_one, logistic_cv, sklearn_c)
        log_p = model.predict_log_proba(x_eval)
        scores = torch.from_numpy(log_p[:, 1] - log_p[:, 0]).double()
    elif solver == "svc":
        from sklearn.svm import SVC

        model = SVC(kernel="precomputed", C=sklearn_c).fit(kt.numpy(), zero_one)
        scores = 2.0 * torch.from_numpy(model.predict(x_eval)).double() - 1.0  # {0, 1} → ±1
    else:
        from sklearn.svm import SVR

        model = SVR(kernel="precomputed", C=sklearn_c).fit(kt.numpy(), (targets - f0t).reshape(-1).numpy())
        scores = torch.from_numpy(model.predict(x_eval)).double()
    return _prediction(scores.reshape(m, c) + (f0e if solver == "svr" else 0.0))


def _regularised(k: Tensor, reg: float) -> Tensor:
    """K + reg·σ_max(K)·I (the reference's kernel_regularization); K itself when reg is 0."""
    if not reg:
        return k
    return k + reg * torch.linalg.matrix_norm(k, ord=2) * torch.eye(k.shape[0], dtype=k.dtype)


def _targets(y: Tensor, classes: int) -> Tensor:
    """[N, C] float64: ±1 for C = 1, one-hot otherwise."""
    if classes == 1:
        return (2.0 * y - 1.0).double()[:, None]
    return torch.nn.functional.one_hot(y, classes).double()


def _binary_targets(y: Tensor, classes: int) -> Tensor:
    """[N·C] long: the targets as 0/1 (±1 → 0/1 for C = 1; the one-hot entries otherwise)."""
    return y.clone() if classes == 1 else torch.nn.functional.one_hot(y, classes).reshape(-1)


def _labels(scores: Tensor) -> Tensor:
    return (scores[:, 0] > 0).long() if scores.shape[1] == 1 else scores.argmax(1)


def _prediction(scores: Tensor) -> Prediction:
    return Prediction(_labels(scores), scores)


def _logistic(x: np.ndarray, y: np.ndarray, cv: int, c_reg: float):
    """LogisticRegressionCV(cv, max_iter=10000, random_state=0) (the reference's) when ``cv`` > 0,
    else LogisticRegression(C=c_reg, max_iter=10000); fitted."""
    from sklearn.linear_model import LogisticRegression

    if cv:
        return _logistic_cv(x, y, folds=cv, max_iter=10_000)
    return LogisticRegression(C=c_reg, max_iter=10_000).fit(x, y)


def _solve_per_class(solver: str, k_train: Tensor, y: Tensor, k_eval: Tensor, residual: Tensor, f0e: Tensor,
                     cv: int, c_reg: float) -> Prediction:
    """raysel's former layout for C > 1 (``class_layout="per_class"``; k_train regularised already)."""
    n, c, m = k_train.shape[0], k_train.shape[1], k_eval.shape[2]
    if solver == "logistic":
        x_train = k_train.permute(0, 1, 3, 2).reshape(n, -1).numpy()  # per example: its [C, N, C] block
        x_eval = k_eval.permute(2, 0, 1, 3).reshape(m, -1).numpy()
        model = _logistic(x_train, y.numpy(), cv, c_reg)
        log_p = torch.from_numpy(model.predict_log_proba(x_eval)).double()
        return Prediction(torch.as_tensor(model.classes_)[log_p.argmax(1)].long(), log_p)
    if solver == "svc":
        from sklearn.svm import SVC

        gram, cross = k_train.diagonal(dim1=1, dim2=3).sum(-1), k_eval.diagonal(dim1=1, dim2=3).sum(-1)
        model = SVC(kernel="precomputed", C=c_reg).fit(gram.numpy(), y.numpy())
        scores = torch.from_numpy(model.decision_function(cross.T.numpy())).double()
        labels = torch.from_numpy(model.predict(cross.T.numpy())).long()
        return Prediction(labels, scores.reshape(m, -1))
    from sklearn.svm import SVR

    columns = []
    for k in range(c):
        model = SVR(kernel="precomputed", C=c_reg).fit(k_train[:, k, :, k].numpy(), residual[:, k].numpy())
        columns.append(torch.from_numpy(model.predict(k_eval[:, k, :, k].T.numpy())))
    return _prediction(torch.stack(columns, dim=1).double() + f0e)


def _solve_asym(k_train: Tensor, y: Tensor, k_eval: Tensor, reg: float, f0_train: Tensor | None,
                f0_eval: Tensor | None, s: float, lam: float, gamma: float) -> Prediction:
    """A-SignGD, as the reference's AsymmetricLstsqKernelSolver: K0 = pass 0 of the train kernel,
    K(x_i, x_j) = ⟨sign g(x_i), g(x_j)⟩, regularised (K0 + reg·σ_max(K0)·I); Y = ±1 − f0_train/s;
    H_ij = Y_i K0_ij Y_j; [[I/γ, H], [Hᵀ, I/γ]]·[α; β] = 1 by least squares (torch.linalg.lstsq);
    the score of x is λ Σ α_i Y_i K0(x_i, x) + (1 − λ) Σ β_i Y_i K1(x_i, x) + f0(x)/s, with K1 the
    flipped pass ⟨g(x_i), sign g(x)⟩. (The train kernel's flipped pass is not used: Hᵀ stands for it.)"""
    if k_train.dim() != 5 or k_train.shape[0] != 2 or k_train.shape[2] != 1:
        raise ValueError(f"asym needs the 2-pass binary kernels [2, N, 1, N, 1] from asymmetric_signgd, "
                         f"got {tuple(k_train.shape)}")
    n, m = k_train.shape[1], k_eval.shape[3]
    k0 = _regularised(k_train.double().cpu()[0].reshape(n, n), reg)
    ke = k_eval.double().cpu().reshape(2, n, m)
    targets = 2.0 * y.double() - 1.0
    if f0_train is not None:
        targets = targets - f0_train.double().cpu().reshape(n) / s
    h = targets[:, None] * k0 * targets[None]
    eye = torch.eye(n, dtype=torch.float64) / gamma
    system = torch.cat([torch.cat([eye, h], 1), torch.cat([h.T, eye], 1)], 0)
    solution = torch.linalg.lstsq(system, torch.ones(2 * n, 1, dtype=torch.float64)).solution[:, 0]
    alpha, beta = solution[:n], solution[n:]
    scores = lam * ((alpha * targets) @ ke[0]) + (1 - lam) * ((beta * targets) @ ke[1])
    if f0_eval is not None:
        scores = scores + f0_eval.double().cpu().reshape(m) / s
    return _prediction(scores[:, None])
