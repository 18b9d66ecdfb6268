"""Over-parameterized fine-tuning (OPF): matrices in MPO form, Fisher selection, merge-back.

Pure functions and one module, no orchestration (the recipe composes them):

- ``mpo_decompose`` / ``mpo_contract``: a matrix [I, J] as a chain of 4-D cores (r_k, i_k, j_k, r_k+1)
  with I = ∏ i_k, J = ∏ j_k, through ``tensorly.decomposition.tensor_train_matrix``. Without
  truncation the bond dimensions are r_k = min(∏_{m≤k} i_m j_m, ∏_{m>k} i_m j_m): exact, and with
  size-1 middle modes the cores hold several times the matrix's parameters (the over-parameterization).
- ``MPOLinear``: a linear layer whose weight is the product of trainable cores; ``merge()`` gives the
  plain layer back, so inference costs what the original model costs.
- ``matrix_candidates`` / ``fisher_scores`` / ``select_top``: which matrices to decompose (the
  empirical Fisher, ChildTuning-D, each matrix ranked on its own), ``decomposition_rounds``: when
  (static or dynamic topN).

A matrix here is ``x @ W`` oriented: W is [in_features, out_features] (nn.Linear's weight
transposed, GPT-2's Conv1D weight as it is), ``in_shape`` factors the rows and ``out_shape`` the columns.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

# ---------------------------------------------------------------- shapes and bond dimensions


def mpo_ranks(in_shape: Sequence[int], out_shape: Sequence[int], rank: int | None = None) -> list[int]:
    """Bond dimensions r_0..r_n (r_0 = r_n = 1): exact ones, capped at ``rank`` when given."""
    if len(in_shape) != len(out_shape) or not in_shape:
        raise ValueError(f"in_shape {list(in_shape)} and out_shape {list(out_shape)} need the same, non-zero length")
    modes = [i * j for i, j in zip(in_shape, out_shape)]
    ranks = [1]
    for k in range(1, len(modes)):
        exact = min(math.prod(modes[:k]), math.prod(modes[k:]))
        ranks.append(exact if rank is None else min(exact, rank))
    return ranks + [1]


def mpo_num_parameters(in_shape: Sequence[int], out_shape: Sequence[int], rank: int | None = None) -> int:
    """How many numbers the cores hold (compare with ∏ in_shape · ∏ out_shape)."""
    r = mpo_ranks(in_shape, out_shape, rank)
    return sum(r[k] * i * j * r[k + 1] for k, (i, j) in enumerate(zip(in_shape, out_shape)))


def _two_factors(n: int) -> tuple[int, int]:
    """n = a · b with a the smallest divisor ≥ √n (768 → 32 · 24, 3072 → 64 · 48, as OPF's BERT configs)."""
    a = next(d for d in range(math.isqrt(n - 1) + 1 if n > 1 else 1, n + 1) if n % d == 0)
    return a, n // a


def auto_shapes(in_features: int, out_features: int, middle: int = 13) -> tuple[list[int], list[int]]:
    """OPF's shape config for any matrix: [a, 1 × middle, b] for each side (BERT-base: 8.88×)."""
    a, b = _two_factors(in_features)
    c, d = _two_factors(out_features)
    return [a] + [1] * middle + [b], [c] + [1] * middle + [d]


# ---------------------------------------------------------------- decompose and contract


GAUGES = ("balanced", "left", "centre")


def mpo_decompose(weight: Tensor, in_shape: Sequence[int], out_shape: Sequence[int], rank: int | None = None,
                  *, gauge: str = "balanced") -> list[Tensor]:
    """Cores (r_k, i_k, j_k, r_k+1) of ``weight`` [∏ in_shape, ∏ out_shape] by tensorly's TT-matrix SVD sweep.

    ``rank=None`` is exact (OPF: truncate_num 10000); an int caps every bond. The SVDs run in float64
    and the cores come back in the weight's dtype and device. The product is the same in every
    ``gauge``; where the norm sits (and so how AdamW moves the cores) is not:

    - ``"balanced"`` (the reference's trained form): at every bond the singular values λ are split
      as √λ to each side, so that the cores left and right of a bond both have Gram matrix diag(λ);
    - ``"left"``: tensorly's left-canonical output, every core but the last an isometry, the whole
      norm in the last core (the reference's form before its gauge step);
    - ``"centre"``: the orthogonality centre at core (n − 1) // 2, which holds the norm."""
    from tensorly.decomposition import tensor_train_matrix

    if gauge not in GAUGES:
        raise ValueError(f"gauge {gauge!r}: choose from {', '.join(GAUGES)}")
    rows, cols = math.prod(in_shape), math.prod(out_shape)
    if tuple(weight.shape) != (rows, cols):
        raise ValueError(f"weight {tuple(weight.shape)} is not ∏ in_shape × ∏ out_shape = ({rows}, {cols})")
    ranks = mpo_ranks(in_shape, out_shape, rank)
    tensor = weight.detach().to("cpu", torch.float64).numpy().reshape(*in_shape, *out_shape)
    cores = [torch.from_numpy(np.ascontiguousarray(f)) for f in tensor_train_matrix(tensor, ranks).factors]
    if gauge == "centre":
        cores = _centre_gauge(cores)
    elif gauge == "balanced":
        cores = _balanced_gauge(cores)
    return [c.to(device=weight.device, dtype=weight.dtype) for c in cores]


def _centre_gauge(cores: list[Tensor]) -> list[Tensor]:
    """Right-orthogonalise the cores right of the centre (RQ by QR of the transpose), pushing R leftwards."""
    cores = list(cores)
    centre = (len(cores) - 1) // 2
    for k in range(len(cores) - 1, centre, -1):
        r, i, j, s = cores[k].shape
        q, rr = torch.linalg.qr(cores[k].reshape(r, i * j * s).T)  # core = rr^T q^T
        cores[k] = q.T.reshape(-1, i, j, s)
        cores[k - 1] = torch.einsum("aijr,sr->aijs", cores[k - 1], rr)
    return cores


def _balanced_gauge(cores: list[Tensor]) -> list[Tensor]:
    """The Vidal form with √λ on each side of every bond (float64 cores in, same product out).

    A right-to-left sweep of QRs makes every core but the first right-orthogonal; a left-to-right
    sweep of SVDs then leaves core k left-orthogonal with the bond's singular vectors as its right
    basis (A_k = Λ_k-1 Γ_k) and yields the singular values λ_k of every bond; the balanced core is
    Λ_k-1^-1/2 A_k Λ_k^1/2. A zero singular value weighs a direction that carries nothing: its
    inverse is taken as 0."""
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        r, i, j, s = cores[k].shape
        q, rr = torch.linalg.qr(cores[k].reshape(r, i * j * s).T)
        cores[k] = q.T.reshape(-1, i, j, s)
        cores[k - 1] = torch.einsum("aijr,sr->aijs", cores[k - 1], rr)
    lambdas = [torch.ones(1, dtype=cores[0].dtype)]
    for k in range(len(cores) - 1):
        r, i, j, s = cores[k].shape
        u, sv, vh = torch.linalg.svd(cores[k].reshape(r * i * j, s), full_matrices=False)
        cores[k] = u.reshape(r, i, j, -1)
        cores[k + 1] = torch.einsum("ab,bijs->aijs", sv[:, None] * vh, cores[k + 1])
        lambdas.append(sv)
    lambdas.append(torch.ones(1, dtype=cores[0].dtype))
    balanced = []
    for k, core in enumerate(cores):
        left, right = lambdas[k], lambdas[k + 1]
        inverse = torch.where(left > left.max() * 1e-14, left.clamp_min(1e-300).rsqrt(), torch.zeros_like(left))
        balanced.append(inverse[:, None, None, None] * core * right.sqrt()[None, None, None, :])
    return balanced


@functools.lru_cache(maxsize=256)
def _contraction_plan(shapes: tuple[tuple[int, int, int, int], ...]) -> tuple:
    """The cheapest order to multiply out a chain of cores (matrix-chain dynamic programme).

    A segment k..m contracts to (r_k, ∏ i·j, r_m+1); joining k..m with m+1..n costs
    r_k · S(k..m) · r_m+1 · S(m+1..n) · r_n+1 multiply-adds. Left-to-right (the reference) is one of
    the orders; with OPF's wide end cores and square middle ones the best order is several times cheaper."""
    n = len(shapes)
    size = [s[1] * s[2] for s in shapes]
    left = [s[0] for s in shapes] + [shapes[-1][3]]
    cost = {(k, k): 0 for k in range(n)}
    split: dict[tuple[int, int], int] = {}
    for length in range(2, n + 1):
        for k in range(n - length + 1):
            m_end = k + length - 1
            best = None
            for m in range(k, m_end):
                c = (cost[k, m] + cost[m + 1, m_end]
                     + left[k] * math.prod(size[k:m + 1]) * left[m + 1] * math.prod(size[m + 1:m_end + 1]) * left[m_end + 1])
                if best is None or c < best[0]:
                    best = (c, m)
            cost[k, m_end], split[k, m_end] = best

    def plan(k: int, m_end: int):
        return k if k == m_end else (plan(k, split[k, m_end]), plan(split[k, m_end] + 1, m_end))
    return plan(0, n - 1)


def mpo_contract(cores: Sequence[Tensor]) -> Tensor:
    """The matrix [∏ i_k, ∏ j_k] the cores represent (autograd flows to every core)."""
    def run(node) -> Tensor:
        return cores[node] if isinstance(node, int) else _join(run(node[0]), run(node[1]))
    whole = run(_contraction_plan(tuple(tuple(c.shape[-4:]) for c in cores)))
    return whole.reshape(*whole.shape[:-4], whole.shape[-3], whole.shape[-2])


def _join(a: Tensor, b: Tensor) -> Tensor:
    """Two adjacent segments (…, r, I, J, s) · (…, s, K, L, t) → (…, r, I·K, J·L, t): one (batched)
    matmul over the bond, then the modes interleaved (a view when K or J is 1, as for OPF's size-1
    middle cores). Leading dimensions are a batch of same-shaped MPOs (see MPOBank)."""
    *lead, r, i, j, s = a.shape
    k, l_, t = b.shape[-3:]
    out = (a.reshape(*lead, r * i * j, s) @ b.reshape(*lead, s, k * l_ * t)).reshape(*lead, r, i, j, k, l_, t)
    return out.transpose(-3, -4).reshape(*lead, r, i * k, j * l_, t)


def mpo_contract_left_to_right(cores: Sequence[Tensor]) -> Tensor:
    """The reference's contraction: one core after another from the left (tensordot, then the
    modes reordered); for benchmarks and tests."""
    out = cores[0]
    for core in cores[1:]:
        out = torch.einsum("aijr,rklb->aikjlb", out, core)
        out = out.reshape(1, out.shape[1] * out.shape[2], out.shape[3] * out.shape[4], out.shape[5])
    return out.reshape(out.shape[1], out.shape[2])


# ---------------------------------------------------------------- the layer


def is_conv1d(layer: nn.Module) -> bool:
    """GPT-2's Conv1D: a linear layer whose weight is stored [in, out]."""
    return type(layer).__name__ == "Conv1D"


def layer_dims(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a Conv1D."""
    rows, cols = layer.weight.shape
    return (rows, cols) if is_conv1d(layer) else (cols, rows)


class MPOLinear(nn.Module):
    """``y = x @ W + b`` with W the product of trainable MPO cores.

    ``mode="contract"`` (default) multiplies the cores out once per forward and then does one matmul;
    ``mode="cores"`` pushes the input through the cores one by one and never forms W. Outside autograd
    (eval, ``torch.no_grad``) the contracted W is kept until a core changes, so evaluation costs what
    the dense layer costs. bench/opf.py measures both modes (``contract`` wins at OPF's bond dims)."""

    def __init__(self, cores: Sequence[Tensor], bias: Tensor | None, *, conv1d: bool = False,
                 mode: str = "contract"):
        super().__init__()
        if mode not in ("contract", "cores"):
            raise ValueError(f"MPOLinear mode {mode!r}: use 'contract' or 'cores'")
        self.cores = nn.ParameterList([nn.Parameter(c.detach().clone()) for c in cores])
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.in_shape = [c.shape[1] for c in cores]
        self.out_shape = [c.shape[2] for c in cores]
        self.in_features, self.out_features = math.prod(self.in_shape), math.prod(self.out_shape)
        self.conv1d, self.mode = conv1d, mode
        self._cached: tuple[tuple, Tensor] | None = None

    @classmethod
    def from_layer(cls, layer: nn.Module, in_shape: Sequence[int] | None = None,
                   out_shape: Sequence[int] | None = None, *, rank: int | None = None, gauge: str = "balanced",
                   mode: str = "contract") -> "MPOLinear":
        """Decompose an ``nn.Linear`` or a GPT-2 ``Conv1D`` exactly (shapes: ``auto_shapes`` when not given)."""
        conv1d = is_conv1d(layer)
        matrix = layer.weight if conv1d else layer.weight.T
        if in_shape is None or out_shape is None:
            in_shape, out_shape = auto_shapes(*matrix.shape)
        cores = mpo_decompose(matrix, in_shape, out_shape, rank, gauge=gauge)
        return cls(cores, layer.bias, conv1d=conv1d, mode=mode)

    def weight_matrix(self) -> Tensor:
        """W [in_features, out_features]; reused while no core has changed and no gradient is needed.
        In a bank (``share_contractions``) all same-shaped layers are multiplied out together."""
        bank = self.__dict__.get("_bank")
        if bank is not None:
            return bank.matrix(self)
        cores = list(self.cores)
        if torch.is_grad_enabled() and any(c.requires_grad for c in cores):
            self._cached = None
            return mpo_contract(cores)
        key = _version_key(cores)
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                self._cached = (key, mpo_contract(cores))
        return self._cached[1]

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "cores":
            y = _through_cores(x, list(self.cores))
            return y if self.bias is None else y + self.bias
        w = self.weight_matrix()
        return nn.functional.linear(x, w.T.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def merge(self) -> nn.Module:
        """The plain layer (nn.Linear, or Conv1D for GPT-2) with W multiplied out: same outputs, dense cost."""
        with torch.no_grad():
            w = mpo_contract(list(self.cores))
            if self.conv1d:
                from transformers.pytorch_utils import Conv1D

                layer = Conv1D(self.out_features, self.in_features)
                layer.weight.copy_(w)
            else:
                layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
                layer.weight.copy_(w.T)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.to(device=w.device, dtype=w.dtype)

    def extra_repr(self) -> str:
        n = sum(c.numel() for c in self.cores)
        return (f"in={self.in_shape}, out={self.out_shape}, ranks={[c.shape[0] for c in self.cores][1:]}, "
                f"parameters={n} ({n / (self.in_features * self.out_features):.2f}x dense), mode={self.mode}")


class MPOBank:
    """Same-shaped MPO layers multiplied out in one batched contraction per forward.

    A model's 12 attention matrices in MPO form are 12 chains of the same 15 cores: stacked, they
    take 14 batched matmuls instead of 168 small ones, which is what a GPU step is bound by. The
    stacked W is kept while no core changes (and, with autograd, until its backward has run: the
    next forward, e.g. a further micro-batch, builds a fresh graph)."""

    def __init__(self, layers: list[MPOLinear]):
        self.layers = layers
        # the Parameter objects stay the same through optimizer steps, load_state_dict and .to();
        # listing them once spares ParameterList indexing on every forward (it cost more than the matmuls)
        self._cores = [c for m in layers for c in m.cores]
        self._key: tuple | None = None
        self._stacked: Tensor | None = None

    def _mark_used(self, grad: Tensor) -> None:
        self._key = None

    def matrix(self, layer: MPOLinear) -> Tensor:
        cores = self._cores
        tracked = torch.is_grad_enabled() and any(c.requires_grad for c in cores)
        key = (tracked, *_version_key(cores))
        if self._key != key:
            with torch.set_grad_enabled(tracked):
                stacked = [torch.stack([m.cores[k] for m in self.layers]) for k in range(len(layer.cores))]
                self._stacked = mpo_contract(stacked)
            if tracked:
                self._stacked.register_hook(self._mark_used)
            self._key = key
        return self._stacked[layer.__dict__["_bank_index"]]


def _version_key(cores: list[Tensor]) -> tuple[int, int]:
    """Changes when any core is written (optimizer step, load_state_dict: versions only grow) or moved."""
    return sum(c._version for c in cores), sum(c.data_ptr() for c in cores)


def share_contractions(model: nn.Module, *, on_cpu: bool = False) -> int:
    """Group the model's ``contract``-mode MPO layers by core shapes (dtype, device) into MPOBanks;
    how many banks hold more than one layer. Call again after adding layers. Layers on the CPU stay
    on their own unless ``on_cpu``: there stacking the cores costs more than the calls it saves
    (bench/opf.py, minilm: 1.20x the dense step layer by layer, 1.48x banked; on an H100 the bank
    is the faster, 2.44x against 3.80x)."""
    groups: dict[tuple, list[MPOLinear]] = {}
    for module in model.modules():
        if isinstance(module, MPOLinear):
            module.__dict__.pop("_bank", None)
            module.__dict__.pop("_bank_index", None)
            if module.mode == "contract" and (on_cpu or module.cores[0].device.type != "cpu"):
                c = module.cores[0]
                key = (tuple(tuple(core.shape) for core in module.cores), c.dtype, c.device)
                groups.setdefault(key, []).append(module)
    shared = 0
    for layers in groups.values():
        if len(layers) > 1:
            bank = MPOBank(layers)
            for k, layer in enumerate(layers):  # plain attributes: not submodules, not in state_dict
                layer.__dict__["_bank"], layer.__dict__["_bank_index"] = bank, k
            shared += 1
    return shared


def _through_cores(x: Tensor, cores: list[Tensor]) -> Tensor:
    """x @ W without forming W: contract the input's modes with one core at a time."""
    lead = x.shape[:-1]
    in_shape = [c.shape[1] for c in cores]
    t = x.reshape(-1, *in_shape).unsqueeze(-1)  # [B, i_1 .. i_n, r_0 = 1]
    done = []  # output modes produced so far, kept right after the batch dimension
    for k, core in enumerate(cores):
        # t: [B, j_1..j_k-1, i_k .. i_n, r_k]; contract i_k and r_k with core (r_k, i_k, j_k, r_k+1)
        t = torch.movedim(t, 1 + len(done), -2)  # [B, j.., i_k+1 .. i_n, i_k, r_k]
        t = torch.tensordot(t, core, dims=([t.dim() - 2, t.dim() - 1], [1, 0]))  # [..., j_k, r_k+1]
        t = torch.movedim(t, -2, 1 + len(done))
        done.append(core.shape[2])
    return t.reshape(*lead, math.prod(done))


# ---------------------------------------------------------------- which matrices


# weight type -> per architecture a pattern whose group 1 is the layer index (anchored: the
# reference's "output.dense" also caught attention's output, which we do not repeat)
MATRIX_PATTERNS: dict[str, dict[str, str]] = {
    "FFN_1": {"bert": r"layer\.(\d+)\.intermediate\.dense", "gpt2": r"h\.(\d+)\.mlp\.c_fc"},
    "FFN_2": {"bert": r"layer\.(\d+)\.output\.dense", "gpt2": r"h\.(\d+)\.mlp\.c_proj"},
    "attention": {"bert": r"layer\.(\d+)\.attention\.(?:self\.(?:query|key|value)|output\.dense)",
                  "gpt2": r"h\.(\d+)\.attn\.c_(?:attn|proj)"},
}
WEIGHT_TYPES = tuple(MATRIX_PATTERNS)


def matrix_candidates(model: nn.Module, weight_types: Iterable[str]) -> dict[str, dict[int, list[str]]]:
    """Per weight type, per layer index, the module names of its matrices (nn.Linear or Conv1D)."""
    found: dict[str, dict[int, list[str]]] = {}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
    for kind in weight_types:
        if kind not in MATRIX_PATTERNS:
            raise ValueError(f"weight type {kind!r}: choose from {', '.join(WEIGHT_TYPES)}")
        layers: dict[int, list[str]] = {}
        for pattern in MATRIX_PATTERNS[kind].values():
            for name in names:
                hit = re.search(rf"(?:^|\.){pattern}$", name)
                if hit:
                    layers.setdefault(int(hit.group(1)), []).append(name)
        if not layers:
            raise ValueError(f"the model has no {kind} matrices (BERT-family and GPT-2-family names are known)")
        found[kind] = layers
    return found


FISHER_CLIPS = ("per_parameter", "global")
SELECTIONS = ("per_matrix", "per_layer")


def fisher_scores(model: nn.Module, batches: Iterable[dict[str, Tensor]], names: Iterable[str], *,
                  max_grad_norm: float | None = 1.0, clip: str = "per_parameter", dropout: bool = True,
                  seed: int | None = None) -> dict[str, float]:
    """Empirical Fisher of each named matrix: over one pass of ``batches``, the sum of mean(grad²) of
    its weight. The reference's defaults: each weight's gradient clipped to ``max_grad_norm`` on its
    own (``clip="per_parameter"``) with dropout on, so the scores are random: ``seed`` seeds them
    (the caller's RNG state is left as it was). ``clip="global"`` clips the norm of all gradients
    together, as in training; ``dropout=False`` makes the ranking deterministic. The model's
    gradients are cleared afterwards."""
    if clip not in FISHER_CLIPS:
        raise ValueError(f"clip {clip!r}: choose from {', '.join(FISHER_CLIPS)}")
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in names}
    scores = dict.fromkeys(weights, 0.0)
    parameters = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    device = next(model.parameters()).device
    model.train(dropout)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            for batch in batches:
                model.zero_grad(set_to_none=True)
                model(**batch).loss.backward()
                if max_grad_norm is not None and clip == "global":
                    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
                for name, w in weights.items():
                    if w.grad is None:
                        continue
                    if max_grad_norm is not None and clip == "per_parameter":
                        torch.nn.utils.clip_grad_norm_([w], max_grad_norm)
                    scores[name] += float(w.grad.double().pow(2).mean())
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


def matrix_slot(name: str, layer: int) -> str:
    """The name with its layer index starred: the same matrix of every layer (``…layer.*.attention.self.query``)."""
    return re.sub(rf"(^|\.){layer}\.", r"\g<1>*.", name, count=1)


def select_top(candidates: dict[str, dict[int, list[str]]], scores: dict[str, float], top_n: int,
               exclude: Iterable[str] = (), *, selection: str = "per_matrix") -> list[str]:
    """The matrices to decompose, by score, among those not in ``exclude``; module names, best first.

    ``per_matrix`` (the reference): every matrix of a weight type is ranked on its own (attention's
    query, key, value and output each take their ``top_n`` layers, which may differ). ``per_layer``:
    per weight type the ``top_n`` layers of highest mean score, a layer's matrices going together.
    Ties go to the lower layer."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r}: choose from {', '.join(SELECTIONS)}")
    excluded = set(exclude)
    chosen: list[str] = []
    for layers in candidates.values():
        if selection == "per_layer":
            open_layers = {i: names for i, names in layers.items() if not excluded & set(names)}
            ranked = sorted(open_layers,
                            key=lambda i: (-sum(scores[n] for n in open_layers[i]) / len(open_layers[i]), i))
            for i in ranked[:top_n]:
                chosen += open_layers[i]
            continue
        slots: dict[str, list[tuple[int, str]]] = {}
        for i, names in sorted(layers.items()):
            for name in names:
                if name not in excluded:
                    slots.setdefault(matrix_slot(name, i), []).append((i, name))
        for members in slots.values():
            chosen += [name for _, name in sorted(members, key=lambda m: (-scores[m[1]], m[0]))[:top_n]]
    return chosen


def decomposition_rounds(top_n: int, split_num: int, epochs: int) -> dict[int, int]:
    """{epoch: layers per weight type to decompose at its start}: OPF's static (split_num 1) and dynamic
    schedule — top_n // split_num more every ceil(epochs / split_num) epochs, split_num times."""
    if split_num < 1 or top_n % split_num:
        raise ValueError(f"top_n ({top_n}) must be divisible by split_num ({split_num})")
    every = math.ceil(epochs / split_num)
    rounds = {epoch: top_n // split_num for epoch in range(0, epochs, every)}
    if len(rounds) != split_num:
        raise ValueError(f"split_num {split_num} with {epochs} epochs decomposes at epochs {sorted(rounds)}, "
                         f"{len(rounds)} rounds instead of {split_num}: choose epochs ≥ {split_num} so that "
                         f"ceil(epochs / split_num) · (split_num − 1) < epochs")
    return rounds


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where module ``name`` is; return the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def decompose(model: nn.Module, names: Iterable[str], shapes: dict[str, tuple[list[int], list[int]]] | None = None,
              *, gauge: str = "balanced", mode: str = "contract") -> dict[str, dict[str, float]]:
    """Replace each named matrix by an exact MPOLinear; per matrix its parameter counts."""
    report = {}
    for name in names:
        layer = model.get_submodule(name)
        in_shape, out_shape = (shapes or {}).get(name, (None, None))
        mpo = MPOLinear.from_layer(layer, in_shape, out_shape, gauge=gauge, mode=mode)
        replace_module(model, name, mpo)
        dense = mpo.in_features * mpo.out_features
        cores = sum(c.numel() for c in mpo.cores)
        report[name] = {"dense": float(dense), "mpo": float(cores), "ratio": cores / dense}
    share_contractions(model)
    return report


def merge_all(model: nn.Module) -> int:
    """Multiply every MPOLinear out into its plain layer, in place; how many there were."""
    names = [n for n, m in model.named_modules() if isinstance(m, MPOLinear)]
    for name in names:
        replace_module(model, name, model.get_submodule(name).merge())
    return len(names)
