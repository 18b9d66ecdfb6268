"""OPF against its reference code (zfgao66/OPF): Fisher scores clipped per parameter with dropout on,
each matrix ranked on its own, cores in the reference's balanced gauge. Brute-force checks in float64."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from raysel.methods.opf.algorithm import fisher_scores, matrix_candidates, mpo_contract, mpo_decompose, select_top
from raysel.models import load_model


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(6, 6)


class TwoLayers(nn.Module):
    """Two FFN_1 matrices with large gradients (norms well over 1) and an optional dropout."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([Block(), Block()])
        self.drop = nn.Dropout(p)

    def forward(self, x, labels):
        a = self.encoder.layer[0].intermediate.dense(self.drop(x)).sum(-1)
        b = self.encoder.layer[1].intermediate.dense(self.drop(x)).sum(-1)
        return SimpleNamespace(loss=((30 * a + 3 * b - labels) ** 2).mean())


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(8, 6, generator=g, dtype=torch.float64),
             "labels": torch.randn(8, generator=g, dtype=torch.float64)} for _ in range(3)]


def _names(model: nn.Module) -> list[str]:
    return [n for names in matrix_candidates(model, ["FFN_1"])["FFN_1"].values() for n in names]


def test_fisher_clips_each_matrix_gradient_on_its_own_like_the_reference():
    torch.manual_seed(0)
    model = TwoLayers().double()
    names = _names(model)
    expected = dict.fromkeys(names, 0.0)
    for batch in _batches():  # brute force: one backward per batch, every weight's gradient clipped alone
        model.zero_grad()
        model(**batch).loss.backward()
        for name in names:
            g = model.get_submodule(name).weight.grad
            g = g * min(1.0, 1.0 / (float(g.norm()) + 1e-6))
            expected[name] += float(g.pow(2).mean())
    model.zero_grad(set_to_none=True)
    scores = fisher_scores(model, _batches(), names, max_grad_norm=1.0)
    for name in names:
        assert scores[name] == pytest.approx(expected[name], rel=1e-12)
    # clipped alone, two matrices whose gradient norms exceed 1 score alike (1/numel per batch) ...
    assert scores[names[0]] == pytest.approx(scores[names[1]], rel=1e-6)  # (up to clip_grad_norm_'s eps)
    # ... while a global clip keeps their ratio (30² : 3²) and is not what the reference does
    global_ = fisher_scores(model, _batches(), names, max_grad_norm=1.0, clip="global")
    assert global_[names[0]] / global_[names[1]] == pytest.approx(100.0, rel=1e-6)


def test_fisher_runs_with_dropout_seeded_and_leaves_the_callers_rng_alone():
    model = TwoLayers(p=0.5).double()
    names = _names(model)
    model.eval()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = fisher_scores(model, _batches(), names, max_grad_norm=None, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the trial's own RNG did not move
    assert not model.training  # the mode it had
    assert fisher_scores(model, _batches(), names, max_grad_norm=None, seed=7) == first
    other = fisher_scores(model, _batches(), names, max_grad_norm=None, seed=8)
    assert other != first  # dropout on: another seed, other scores
    off = fisher_scores(model, _batches(), names, max_grad_norm=None, dropout=False, seed=7)
    assert off == fisher_scores(model, _batches(), names, max_grad_norm=None, dropout=False, seed=8)
    assert off != first


ATTENTION = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")


def test_each_attention_matrix_takes_its_own_top_layers():
    """The review's case on hand-made scores: query scores best in layers 0 and 1, value in layers 2
    and 3; the reference decomposes query [0, 1] and value [2, 3]; the per-layer option takes one set
    of layers for all four matrices."""
    candidates = {"attention": {i: [f"bert.encoder.layer.{i}.{m}" for m in ATTENTION] for i in range(4)}}
    per_kind = {"query": [9, 8, 1, 1], "key": [2, 3, 4, 5], "value": [1, 1, 9, 8], "dense": [5, 4, 3, 2]}
    scores = {n: float(per_kind[n.rsplit(".", 1)[-1]][i]) for i, names in candidates["attention"].items()
              for n in names}

    def layers_by_kind(chosen: list[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name in chosen:
            out.setdefault(name.rsplit(".", 1)[-1], []).append(int(name.split(".")[3]))
        return out

    assert layers_by_kind(select_top(candidates, scores, 2)) == {
        "query": [0, 1], "key": [3, 2], "value": [2, 3], "dense": [0, 1]}
    grouped = select_top(candidates, scores, 2, selection="per_layer")  # layer means 4.25, 4, 4.25, 4
    assert layers_by_kind(grouped) == {k: [0, 2] for k in per_kind}
    # ties go to the lower layer; an excluded matrix is skipped and its slot takes the next layer
    flat = dict.fromkeys(scores, 1.0)
    assert layers_by_kind(select_top(candidates, flat, 1)) == {k: [0] for k in per_kind}
    again = layers_by_kind(select_top(candidates, flat, 1, exclude=["bert.encoder.layer.0.attention.self.query"]))
    assert again == {"query": [1], "key": [0], "value": [0], "dense": [0]}


def test_selection_per_matrix_on_a_real_model_takes_top_n_of_each_matrix():
    model, _ = load_model("tiny-bert", "sequence_classification", num_labels=2)
    candidates = matrix_candidates(model, ["attention", "FFN_1"])
    scores = {n: float(len(n) % 7) for layers in candidates.values() for names in layers.values() for n in names}
    chosen = select_top(candidates, scores, 1)
    slots = {n.replace(".layer.0.", ".layer.*.").replace(".layer.1.", ".layer.*.") for n in chosen}
    assert len(chosen) == len(slots) == 5  # one of each: query, key, value, attention output, FFN_1


def _bond_svd(w: torch.Tensor, in_shape: list[int], out_shape: list[int], k: int):
    """W's unfolding at bond k (after core k) in the interleaved (i1 j1 i2 j2 ...) order, and its SVD."""
    n = len(in_shape)
    t = w.reshape(*in_shape, *out_shape).permute(*[a for m in range(n) for a in (m, n + m)])
    left = math.prod(in_shape[m] * out_shape[m] for m in range(k + 1))
    return torch.linalg.svd(t.reshape(left, -1), full_matrices=False)


@pytest.mark.parametrize("in_shape,out_shape", [([4, 4, 6], [4, 4, 6]), ([8, 1, 1, 1, 6], [16, 1, 1, 1, 12]),
                                                ([2, 2, 2, 2], [3, 1, 2, 2])])
def test_balanced_gauge_splits_every_bonds_singular_values_to_both_sides(in_shape, out_shape):
    """The reference trains its cores in a balanced form: at every bond, the left part's and the right
    part's Gram matrices are both diag(λ) (λ: the singular values of W's unfolding at that bond), so
    each core's norm is fixed by W alone; checked against SVDs of W itself."""
    w = torch.randn(math.prod(in_shape), math.prod(out_shape), generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    cores = mpo_decompose(w, in_shape, out_shape)  # the default gauge
    assert float((mpo_contract(cores) - w).norm() / w.norm()) < 1e-12
    for k in range(len(cores) - 1):
        left = cores[0]
        for core in cores[1:k + 1]:
            left = torch.einsum("...a,aijb->...ijb", left, core)
        right = cores[-1]
        for core in reversed(cores[k + 1:-1]):
            right = torch.einsum("aijb,b...->aij...", core, right)
        left, right = left.reshape(-1, left.shape[-1]), right.reshape(right.shape[0], -1)
        singular = _bond_svd(w, in_shape, out_shape, k).S[:left.shape[1]]
        torch.testing.assert_close(left.T @ left, torch.diag(singular), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(right @ right.T, torch.diag(singular), atol=1e-10, rtol=1e-10)
    # the end cores are U√λ and √λVᵀ of the first and last bonds (up to signs): their norms are √Σλ
    first, last = _bond_svd(w, in_shape, out_shape, 0).S, _bond_svd(w, in_shape, out_shape, len(cores) - 2).S
    assert float(cores[0].norm()) == pytest.approx(float(first.sum().sqrt()), rel=1e-10)
    assert float(cores[-1].norm()) == pytest.approx(float(last.sum().sqrt()), rel=1e-10)
    left_form = mpo_decompose(w, in_shape, out_shape, gauge="left")  # tensorly's: the norm in the last core
    assert float(left_form[-1].norm()) == pytest.approx(float(w.norm()), rel=1e-10)
