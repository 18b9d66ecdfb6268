"""IGF: Information Gain Filtration (Antonello et al., ACL 2021), the pure algorithm.

1. Split a tokenised corpus into an objective set and a pool (``objective_and_pool``).
2. IG(X) per context X: objective-set perplexity at θ0 minus the same after ONE optimizer step
   from θ0 on X alone (``information_gain``); z-score all IG values (``zscore``).
3. A small CNN, the secondary learner, regresses z(IG) from X's tokens (``SecondaryLearner``,
   ``train_secondary_learner``).
4. Fine-tune with filtering: the learner scores candidates, those below a threshold
   (``threshold_at``, ``accept``) are skipped, accepted ones fill the batch (``fill_batch``).

Deliberate differences from the reference code (information-gain-filtration/igf/igf.py):
- The context step runs with dropout off (eval mode). The reference takes it in train mode
  (GPT-2's dropout 0.1), so its IG values are noisy; eval mode makes IG a function of the
  context, and the exact engines (batched and per-context loop) agree exactly.
- The step is torch.optim.AdamW's (or SGD's). The reference uses transformers.AdamW, which adds
  eps to sqrt(v) before bias correction: on a fresh state its eps is in effect eps/sqrt(1-β2)
  ≈ 32·eps, which only matters for gradient entries below ~3e-7. Its linear schedule is at
  factor 1 on the first step, so the one step uses the full lr, as here.
- Windows start anywhere in an article (the reference never picks the last window).
- The learner keeps its best held-out checkpoint (the reference returns the last epoch) and
  scores candidates before any LM forward (the reference runs the LM on skipped contexts too).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import warnings
from typing import Callable, Iterable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

from raysel import cost
from raysel.methods.loop import eval_mode

ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the reference keeps
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ scales by max_norm / (norm + 1e-6)
STEPS = ("adamw", "sgd")
ENGINES = ("exact", "first_order", "loop")
THRESHOLD_MODES = ("none", "constant", "shifting")

Params = dict[str, Tensor]


# ----------------------------------------------------------------------------- objective set, pool

def objective_and_pool(token_arrays: Sequence[Tensor], *, size: int, context_len: int, min_len: int,
                       trim: bool, generator: torch.Generator) -> tuple[Tensor, list[Tensor]]:
    """The objective set [size, context_len] and the pool, split as the reference does.

    An article qualifies when it is longer than ``min_len`` tokens (and holds a whole window).
    The first ``size`` qualifying articles give one context each (a random window when ``trim``,
    else their first ``context_len`` tokens); the pool is every later qualifying article.
    """
    fits = [torch.as_tensor(a, dtype=torch.long) for a in token_arrays
            if len(a) > min_len and len(a) >= context_len]
    if len(fits) <= size:
        raise ValueError(
            f"IGF needs more than size={size} articles longer than min_len={min_len} tokens (and at least "
            f"context_len={context_len}): {size} for the objective set and the rest for the pool; "
            f"{len(fits)} of the {len(token_arrays)} articles qualify")
    windows = [_window(a, context_len, generator) if trim else a[:context_len] for a in fits[:size]]
    return torch.stack(windows), fits[size:]


def _window(article: Tensor, context_len: int, generator: torch.Generator) -> Tensor:
    start = int(torch.randint(0, len(article) - context_len + 1, (1,), generator=generator))
    return article[start:start + context_len]


def sample_context(pool: Sequence[Tensor], context_len: int, generator: torch.Generator) -> Tensor:
    """A random article of the pool (uniformly, like the reference) and a random window in it."""
    article = pool[int(torch.randint(0, len(pool), (1,), generator=generator))]
    return _window(article, context_len, generator)


# ----------------------------------------------------------------------------- losses, perplexity

def sequence_losses(logits: Tensor, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy per sequence: logits [B, L, V] and ids [B, L] → [B]."""
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)  # the last position predicts nothing
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # no logits copy
    return nll.view(ids.shape)[:, :-1].mean(1)


def _logits(model: nn.Module, ids: Tensor, params: tuple[Params, Params] | None = None) -> Tensor:
    """Logits of ``model`` (with ``params`` = (trainable, frozen) if given) on unpadded ``ids``.

    The all-ones mask is explicit: without one, transformers inspects the ids for padding, a
    data-dependent branch that vmap cannot run.
    """
    kwargs = {"input_ids": ids, "attention_mask": torch.ones(ids.shape, dtype=torch.long, device=ids.device)}
    if params is None:
        return model(**kwargs).logits
    return functional_call(model, params, (), kwargs).logits


@torch.no_grad()
def objective_perplexity(model: nn.Module, objective: Tensor, batch_size: int = 32) -> float:
    """exp(mean over the objective contexts of each context's mean token loss), in eval mode.

    The reference evaluates one context at a time; every ``batch_size`` gives that number.
    """
    device = next(model.parameters()).device
    with eval_mode(model):
        losses = [sequence_losses(_logits(model, ids), ids) for ids in objective.to(device).split(batch_size)]
    return math.exp(float(torch.cat(losses).double().mean()))


# ----------------------------------------------------------------------------- information gain

def information_gain(model: nn.Module, contexts: Tensor, objective: Tensor, *, lr: float = 5e-5,
                     step: Literal["adamw", "sgd"] = "adamw", max_grad_norm: float | None = 3.0,
                     eps: float = 1e-8, weight_decay: float = 0.0,
                     engine: Literal["exact", "first_order", "loop"] = "exact", chunk_size: int = 8,
                     eval_batch_size: int | None = None, compile: bool = False) -> Tensor:
    """IG of each context [N, L] on the objective set [O, L']: a float64 tensor [N].

    IG(x) = ppl(θ0) − ppl(θ0 + Δ(x)), where ppl is ``objective_perplexity`` and Δ(x) is one step
    of a fresh optimizer from θ0 on x alone: mean token loss on x, gradient clipped to a total
    norm of ``max_grad_norm`` (None: no clipping), then AdamW (bias-corrected first step, so
    Δ ≈ −lr·g/(|g|+eps)) or SGD. Positive IG: the objective perplexity went down. Dropout is off.

    engine "loop": the reference formulation, one context at a time on a deep copy of the model
    with a real torch.optim step (the ground truth). "exact": the same numbers, ``chunk_size``
    contexts at a time with torch.func (vmapped per-context gradients, the update as tensor math,
    the objective evaluated under the chunk's parameter sets: one vmapped forward on an
    accelerator, one set after another on CPU). "first_order": the
    approximation IG ≈ −ppl(θ0)·⟨∇L_obj(θ0), Δ(x)⟩, a first-order Taylor expansion of
    exp(L_obj) around θ0 (L_obj = log ppl): one objective gradient, then a dot product per context.

    ``eval_batch_size``: objective contexts per forward; None: 1 for "loop" (the reference's
    batch 1); for the batched engines all of them on an accelerator (a forward there holds
    chunk_size × eval_batch_size × L' × vocab logits: lower it to bound memory) and slices of
    about 512 tokens on CPU (cache-sized: measured faster there than larger slices).

    ``compile`` (exact engine): the objective's forward and loss through ``torch.compile`` (its
    elementwise work fused): 1.14x faster for tiny-gpt2 on CPU once compiled, which takes tens of
    seconds: worth it for hundreds of contexts. The numbers are the same up to float rounding.
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    device = next(model.parameters()).device
    contexts, objective = contexts.to(device), objective.to(device)
    hyper = dict(lr=lr, step=step, max_grad_norm=max_grad_norm, eps=eps, weight_decay=weight_decay)
    with eval_mode(model):
        if engine == "loop":
            return _ig_loop(model, contexts, objective, eval_batch_size or 1, **hyper)
        batch_size = eval_batch_size or _default_eval_batch(objective)
        if engine == "exact":
            return _ig_exact(model, contexts, objective, chunk_size, batch_size, compile=compile, **hyper)
        return _ig_first_order(model, contexts, objective, chunk_size, batch_size, **hyper)


def _default_eval_batch(objective: Tensor) -> int:
    """All objective contexts in one forward on an accelerator, ~512-token slices on CPU."""
    return max(1, 512 // objective.shape[1]) if objective.device.type == "cpu" else len(objective)


def _ig_loop(model: nn.Module, contexts: Tensor, objective: Tensor, batch_size: int, *, lr: float,
             step: str, max_grad_norm: float | None, eps: float, weight_decay: float) -> Tensor:
    ppl0 = objective_perplexity(model, objective, batch_size)
    gains = []
    for ids in contexts:
        work = copy.deepcopy(model)  # θ0 again for every context, as the reference's recopy
        if step == "adamw":
            optimizer = torch.optim.AdamW(work.parameters(), lr=lr, betas=ADAM_BETAS, eps=eps,
                                          weight_decay=weight_decay)
        else:
            optimizer = torch.optim.SGD(work.parameters(), lr=lr, weight_decay=weight_decay)
        sequence_losses(_logits(work, ids[None]), ids[None]).sum().backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(work.parameters(), max_grad_norm)
        optimizer.step()
        gains.append(ppl0 - objective_perplexity(work, objective, batch_size))
    return torch.tensor(gains, dtype=torch.float64)


def _split_params(model: nn.Module) -> tuple[Params, Params]:
    """(trainable parameters, frozen parameters and buffers), detached, for functional_call."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    return trainable, frozen | {n: b for n, b in model.named_buffers()}


@contextlib.contextmanager
def _quiet_vmap() -> Iterator[None]:
    # Some kernels (e.g. CPU flash attention) have no vmap batching rule: torch loops over the
    # batch instead and warns; the numbers are the same.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        yield


def _context_grads(model: nn.Module, params: Params, frozen: Params, contexts: Tensor) -> Params:
    """Per-context gradients of the mean token loss: {name: [B, *shape]} for contexts [B, L]."""
    def loss(p: Params, ids: Tensor) -> Tensor:
        return sequence_losses(_logits(model, ids[None], (p, frozen)), ids[None])[0]

    with _quiet_vmap():
        return vmap(grad(loss), in_dims=(None, 0))(params, contexts)


def _update_deltas(params: Params, grads: Params, *, lr: float, step: str, max_grad_norm: float | None,
                   eps: float, weight_decay: float) -> Params:
    """θ' − θ0 of one step of a fresh optimizer per context, from stacked grads {name: [B, ...]}.

    What clip_grad_norm_ (scale s = min(1, max_norm / (‖g‖ + 1e-6))) then torch.optim.AdamW / SGD
    compute, up to rounding. A fresh AdamW has m = (1−β1)·s·g and v = (1−β2)·(s·g)², whose bias
    corrections cancel: the step is −lr·s·g/(|s·g|+eps) = −lr·g/(|g|+eps/s). SGD's is −lr·s·g.
    Both add −lr·wd·θ (AdamW's decoupled decay; SGD's L2 term, applied after clipping).
    """
    first = next(iter(grads.values()))
    scale = torch.ones(len(first), dtype=first.dtype, device=first.device)
    if max_grad_norm is not None:
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1).norm(dim=1)
        scale = (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    deltas = {}
    for n, g in grads.items():
        s = scale.view(-1, *[1] * (g.dim() - 1))
        if step == "adamw":
            delta = g.abs().add_(eps / s).reciprocal_().mul_(g).mul_(-lr)
        else:
            delta = g.mul(s * -lr)
        if weight_decay:
            delta.add_(params[n], alpha=-lr * weight_decay)
        deltas[n] = delta
    return deltas


def _objective_losses_fn(model: nn.Module, frozen: Params, device: torch.device, batch_size: int,
                         compile: bool) -> Callable[[Params, Tensor], Tensor]:
    """(B stacked parameter sets, the objective [O, L']) → each objective context's mean token loss
    under each set [B, O], ``batch_size`` objective contexts per forward.

    On an accelerator one vmapped forward per slice covers all B sets (B times fewer, larger kernels:
    4x faster than one set at a time for tiny-gpt2, B = 32, on an H100). On CPU the sets go one after
    another (each set's weights stay in cache over its slices): there the vmapped forward measured up
    to 1.8x slower (its B-times larger intermediates fall out of cache), never faster. ``compile``:
    through torch.compile (see information_gain).
    """
    def losses(p: Params, ids: Tensor) -> Tensor:
        return sequence_losses(_logits(model, ids, (p, frozen)), ids)

    if device.type != "cpu":
        batched = vmap(losses, in_dims=(0, None))
        batched = torch.compile(batched, dynamic=False) if compile else batched
        return lambda stacked, objective: torch.cat([batched(stacked, ids) for ids in objective.split(batch_size)],
                                                    dim=1)
    one = torch.compile(losses, dynamic=False) if compile else losses

    def each_set(stacked: Params, objective: Tensor) -> Tensor:
        sets = len(next(iter(stacked.values())))
        return torch.stack([torch.cat([one({n: v[b].contiguous() for n, v in stacked.items()}, ids)
                                       for ids in objective.split(batch_size)]) for b in range(sets)])
    return each_set


def _ig_exact(model: nn.Module, contexts: Tensor, objective: Tensor, chunk_size: int, batch_size: int, *,
              compile: bool = False, **hyper) -> Tensor:
    params, frozen = _split_params(model)
    losses = _objective_losses_fn(model, frozen, objective.device, batch_size, compile)
    with torch.no_grad(), _quiet_vmap():
        # θ0 goes through the same path as the updated sets, so IG = 0 exactly for Δ = 0.
        ppl0 = _perplexities(losses({n: p[None] for n, p in params.items()}, objective))
    gains = []
    for chunk in contexts.split(chunk_size):
        deltas = _update_deltas(params, _context_grads(model, params, frozen, chunk), **hyper)
        updated = {n: d.add_(params[n]) for n, d in deltas.items()}  # θ0 + Δ, in Δ's memory
        with torch.no_grad(), _quiet_vmap():
            gains.append(ppl0 - _perplexities(losses(updated, objective)))
    return torch.cat(gains).cpu()


def _perplexities(losses: Tensor) -> Tensor:
    """exp(mean over contexts) per parameter set, in float64: IG is a small difference of two."""
    return losses.double().mean(1).exp()


def _ig_first_order(model: nn.Module, contexts: Tensor, objective: Tensor, chunk_size: int, batch_size: int,
                    **hyper) -> Tensor:
    params, frozen = _split_params(model)
    objective_grad, objective_loss = _objective_grad(model, params, frozen, objective, batch_size)
    ppl0 = math.exp(objective_loss)
    gains = []
    for chunk in contexts.split(chunk_size):
        deltas = _update_deltas(params, _context_grads(model, params, frozen, chunk), **hyper)
        inner = sum((d * objective_grad[n]).flatten(1).sum(1, dtype=torch.float64) for n, d in deltas.items())
        gains.append(-ppl0 * inner)
    return torch.cat(gains).cpu()


def _objective_grad(model: nn.Module, params: Params, frozen: Params, objective: Tensor,
                    batch_size: int) -> tuple[Params, float]:
    """∇L_obj(θ0) and L_obj(θ0), L_obj = mean over objective contexts of their mean token loss."""
    def summed(p: Params, ids: Tensor) -> Tensor:
        return sequence_losses(_logits(model, ids, (p, frozen)), ids).sum()

    total, loss = {n: torch.zeros_like(p) for n, p in params.items()}, 0.0
    for ids in objective.split(batch_size):
        grads, value = grad_and_value(summed)(params, ids)
        for n, g in grads.items():
            total[n] += g
        loss += float(value.double())
    return {n: g / len(objective) for n, g in total.items()}, loss / len(objective)


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (e.g. first-order vs exact IG)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()).statistic)


def zscore(values: Tensor) -> tuple[Tensor, float, float]:
    """(z, mean, std) with the population std (ddof 0: numpy's default, as the reference)."""
    values = values.double()
    mean, std = values.mean(), values.std(correction=0)
    if not std > 0:
        raise ValueError(f"cannot z-score {len(values)} values with standard deviation {float(std)}")
    return (values - mean) / std, float(mean), float(std)


def information_gain_flops(model: nn.Module, contexts: int, objective: int, context_len: int, *,
                           engine: Literal["exact", "first_order", "loop"] = "exact", check_contexts: int = 0) -> float:
    """Estimated FLOPs of ``information_gain`` over ``contexts`` contexts with an objective set of
    ``objective`` contexts (all ``context_len`` tokens; raysel.cost's estimate of a forward/training pass).

    Exact engines: the objective under θ0 once, then per context a training pass on it and the objective
    under the updated weights. First order: the objective's gradient once and a training pass per context
    (plus ``check_contexts`` exact ones, the rank-correlation check). Within a few percent of torch's
    FLOP counter (tests/test_cost.py)."""
    one_step = cost.train_flops(model, 1, context_len)
    objective_forward = cost.forward_flops(model, objective, context_len)
    if engine == "first_order":
        exact_check = information_gain_flops(model, check_contexts, objective, context_len) if check_contexts else 0.0
        return cost.train_flops(model, objective, context_len) + contexts * one_step + exact_check
    return objective_forward + contexts * (one_step + objective_forward)


# ----------------------------------------------------------------------------- secondary learner

class SecondaryLearner(nn.Module):
    """The reference's CNN: token embedding (a trainable copy of the LM's), Conv1d(d→256, k=3),
    global max over time, then Linear(256,32) → Dropout(0.1) → Linear(32,32) → Linear(32,1),
    no nonlinearities. ids [B, L] → predicted z(IG) [B]."""

    def __init__(self, embedding: Tensor, channels: int = 256, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(embedding.detach().clone(), freeze=False)
        self.conv = nn.Conv1d(embedding.shape[1], channels, kernel_size=3, padding=1,
                              dtype=embedding.dtype, device=embedding.device)
        self.head = nn.Sequential(nn.Linear(channels, hidden), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                  nn.Linear(hidden, 1)).to(embedding.device, embedding.dtype)

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs) -> SecondaryLearner:
        """A learner whose embedding starts as a copy of ``model``'s input embedding matrix."""
        return cls(model.get_input_embeddings().weight, **kwargs)

    def forward(self, ids: Tensor) -> Tensor:
        features = self.conv(self.embed(ids).transpose(1, 2))  # [B, channels, L]
        return self.head(features.amax(dim=2)).squeeze(1)

    def forward_flops(self, context_len: int) -> float:
        """FLOPs of scoring one context: the convolution at every position, then the head once."""
        conv = 2.0 * self.conv.weight.numel() * context_len
        return conv + sum(2.0 * m.weight.numel() for m in self.head if isinstance(m, nn.Linear))

    def fit_flops(self, contexts: int, context_len: int, *, heldout: int = 512, batch_size: int = 128,
                  epochs: int = 15, eval_every: int | None = None) -> float:
        """Estimated FLOPs of ``train_secondary_learner`` on ``contexts`` pairs and scoring them all after."""
        held = min(heldout, contexts // 4)
        batches = epochs * -(-(contexts - held) // batch_size)
        evaluations = epochs + (batches // eval_every if eval_every else 0)
        per_context = self.forward_flops(context_len)
        return per_context * (3.0 * epochs * (contexts - held) + evaluations * held + contexts)


def train_secondary_learner(learner: SecondaryLearner, contexts: Tensor, targets: Tensor, *, heldout: int = 512,
                            lr: float = 1e-5, batch_size: int = 128, epochs: int = 15, eval_every: int | None = None,
                            seed: int = 42) -> tuple[dict[str, Tensor], dict]:
    """Fit the learner to (context, target) pairs by MSE with Adam; keep the best held-out checkpoint.

    The first ``heldout`` pairs (at most a quarter of them) are held out, as in the reference, and
    evaluated after every epoch and, with ``eval_every``, every that many training batches (the
    seed's eval_freq). The learner ends holding the best evaluation's weights, which are also
    returned with {heldout_mse, heldout_spearman, best_epoch, best_batch, train_mse: [per epoch],
    heldout_mse_per_epoch: [at each epoch's end]}. ``seed`` fixes the shuffling and the dropout masks.
    """
    held = min(heldout, len(contexts) // 4)
    if held < 1:
        raise ValueError(f"need at least 4 (context, target) pairs to hold some out, got {len(contexts)}")
    param = next(learner.parameters())
    contexts, targets = contexts.to(param.device), targets.to(param.device, param.dtype)
    test_x, test_y, train_x, train_y = contexts[:held], targets[:held], contexts[held:], targets[held:]
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    train_mse, test_mse, best, batches = [], [], None, 0

    def evaluate(epoch: int) -> float:
        nonlocal best
        predicted = predict(learner, test_x, batch_size)
        mse = float(F.mse_loss(predicted, test_y))
        if best is None or mse < best[0]:
            best = (mse, epoch, batches, copy.deepcopy(learner.state_dict()), predicted)
        learner.train()
        return mse

    with torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout masks, without touching the caller's RNG
        for epoch in range(1, epochs + 1):
            learner.train()
            total = 0.0
            for index in torch.randperm(len(train_x), generator=generator).split(batch_size):
                loss = F.mse_loss(learner(train_x[index]), train_y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                batches += 1
                if eval_every and batches % eval_every == 0:
                    evaluate(epoch)
            train_mse.append(total / len(train_x))
            test_mse.append(evaluate(epoch))
    mse, epoch, batch, state, predicted = best
    learner.load_state_dict(state)
    spearman = rank_correlation(predicted, test_y) if held > 1 else float("nan")
    return state, {"heldout_mse": mse, "heldout_spearman": spearman, "best_epoch": epoch, "best_batch": batch,
                   "train_mse": train_mse, "heldout_mse_per_epoch": test_mse, "heldout": held}


@torch.no_grad()
def predict(learner: nn.Module, contexts: Tensor, batch_size: int = 512) -> Tensor:
    """The learner's scores q [N] for contexts [N, L], in eval mode (dropout off)."""
    device = next(learner.parameters()).device
    with eval_mode(learner):
        return torch.cat([learner(ids.to(device)) for ids in contexts.split(batch_size)])


# ----------------------------------------------------------------------------- filtering

def threshold_at(mode: Literal["none", "constant", "shifting"], step: int, *, value: float = 1.0,
                 start: float = 1.0, end: float = -1.0, switch_step: int = 10) -> float | None:
    """The learner threshold while filling the batch for optimizer step ``step`` + 1.

    ``step`` counts optimizer steps already taken. "none": None (accept everything, standard
    fine-tuning); "constant": ``value``; "shifting": ``start`` before ``switch_step`` steps,
    ``end`` from then on (the reference sets 1.0 → −1.0 once global_step reaches 10).
    """
    if mode == "none":
        return None
    if mode == "constant":
        return value
    if mode == "shifting":
        return start if step < switch_step else end
    raise ValueError(f"threshold mode must be one of {', '.join(THRESHOLD_MODES)}, got {mode!r}")


def accept(q: Tensor, threshold: float | None) -> Tensor:
    """Which scores pass: q >= threshold (the reference skips q < threshold); None accepts all."""
    if threshold is None:
        return torch.ones_like(q, dtype=torch.bool)
    return q >= threshold


def fill_batch(candidates: Iterable[Tensor], score: Callable[[Tensor], Tensor] | None, threshold: float | None,
               batch_size: int, *, block: int = 64, max_candidates: int = 100_000) -> tuple[Tensor, int]:
    """The next ``batch_size`` accepted contexts of a candidate stream, and how many were examined.

    Candidates are taken ``block`` at a time and scored by ``score`` (the secondary learner: no
    LM forward for a skipped context), then examined in stream order until the batch is full,
    so the result is what one-at-a-time filtering gives. The count runs up to and including the
    last accepted candidate; the unexamined rest of the last block is dropped. ``score`` None
    (or threshold None) accepts every candidate unscored.
    """
    stream, accepted, examined = iter(candidates), [], 0
    unscored = score is None or threshold is None
    while len(accepted) < batch_size:
        take = batch_size - len(accepted) if unscored else block
        group = list(itertools.islice(stream, min(take, max_candidates - examined)))
        if not group:
            raise ValueError(f"only {len(accepted)} of {batch_size} contexts accepted after {examined} candidates "
                             f"at threshold {threshold} (stream exhausted or max_candidates={max_candidates})")
        passed = [True] * len(group) if unscored else accept(score(torch.stack(group)), threshold).tolist()
        for context, ok in zip(group, passed):
            examined += 1
            if ok:
                accepted.append(context)
                if len(accepted) == batch_size:
                    break
    return torch.stack(accepted), examined
