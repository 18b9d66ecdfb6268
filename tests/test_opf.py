"""OPF's pure algorithms: MPO decomposition and contraction, MPOLinear, Fisher selection, schedules."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from raysel.methods.opf.algorithm import (MPOLinear, auto_shapes, decompose, decomposition_rounds, fisher_scores,
                                          matrix_candidates, merge_all, mpo_contract, mpo_contract_left_to_right,
                                          mpo_decompose, mpo_num_parameters, mpo_ranks, select_top,
                                          share_contractions, _contraction_plan)
from raysel.models import load_model

SHAPES = [([2, 3], [4, 5]), ([4, 1, 1, 3], [2, 1, 1, 5]), ([1, 6, 1], [3, 1, 4]), ([2, 2, 2, 2], [3, 1, 2, 2]),
          ([8, 1, 1, 1, 6], [16, 1, 1, 1, 12])]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("in_shape,out_shape", SHAPES)
@pytest.mark.parametrize("gauge", ["balanced", "left", "centre"])
def test_exact_decomposition_reconstructs_the_matrix_in_float64(in_shape, out_shape, gauge):
    w = torch.randn(torch.Size([torch.tensor(in_shape).prod(), torch.tensor(out_shape).prod()]),
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cores = mpo_decompose(w, in_shape, out_shape, gauge=gauge)
    assert [tuple(c.shape[1:3]) for c in cores] == list(zip(in_shape, out_shape))
    assert [c.shape[0] for c in cores] + [1] == mpo_ranks(in_shape, out_shape)
    assert rel_err(mpo_contract(cores), w) <= 1e-10
    assert rel_err(mpo_contract_left_to_right(cores), w) <= 1e-10


def test_the_gauge_makes_outer_cores_orthogonal_and_truncation_is_lossy():
    w = torch.randn(48, 60, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cores = mpo_decompose(w, [4, 3, 4], [3, 5, 4], gauge="centre")
    left = cores[0].reshape(-1, cores[0].shape[-1])  # (r0 i j, r1): orthonormal columns
    torch.testing.assert_close(left.T @ left, torch.eye(left.shape[1], dtype=torch.float64))
    right = cores[2].reshape(cores[2].shape[0], -1)  # (r2, i j r3): orthonormal rows
    torch.testing.assert_close(right @ right.T, torch.eye(right.shape[0], dtype=torch.float64))
    truncated = mpo_decompose(w, [4, 3, 4], [3, 5, 4], rank=4)
    assert sum(c.numel() for c in truncated) < sum(c.numel() for c in cores)
    assert rel_err(mpo_contract(truncated), w) > 1e-3


def test_parameter_counts_of_the_papers_bert_base_configs():
    middle = [1] * 13
    assert mpo_num_parameters([32, *middle, 24], [32, *middle, 24]) / 768 ** 2 == 8.875  # the paper: 8.88x
    assert mpo_num_parameters([32, *middle, 24], [64, *middle, 48]) / (768 * 3072) == 8.875
    assert mpo_num_parameters([16, 2, 2, 2, 2, 12], [8, 2, 2, 2, 2, 6]) / (3072 * 768) == pytest.approx(1.72, abs=5e-3)
    assert auto_shapes(768, 3072) == ([32, *middle, 24], [64, *middle, 48])  # the paper's config, derived
    assert auto_shapes(384, 1536, middle=2) == ([24, 1, 1, 16], [48, 1, 1, 32])


def test_the_contraction_order_is_cheaper_than_left_to_right_on_opf_shapes():
    shapes = tuple((r, i, j, s) for r, i, j, s in zip(
        mpo_ranks([32, *[1] * 13, 24], [64, *[1] * 13, 48])[:-1], [32, *[1] * 13, 24], [64, *[1] * 13, 48],
        mpo_ranks([32, *[1] * 13, 24], [64, *[1] * 13, 48])[1:]))
    plan = _contraction_plan(shapes)
    assert plan != _left_to_right(len(shapes))


def _left_to_right(n: int):
    plan = 0
    for k in range(1, n):
        plan = (plan, k)
    return plan


@pytest.mark.parametrize("mode", ["contract", "cores"])
def test_mpo_linear_equals_the_dense_layer_and_merges_back(mode):
    torch.manual_seed(0)
    linear = nn.Linear(12, 20).double()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    mpo = MPOLinear.from_layer(linear, [3, 1, 4], [5, 1, 4], mode=mode)
    torch.testing.assert_close(mpo(x), linear(x), rtol=1e-10, atol=1e-12)
    merged = mpo.merge()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), linear(x), rtol=1e-10, atol=1e-12)
    assert sum(c.numel() for c in mpo.cores) == mpo_num_parameters([3, 1, 4], [5, 1, 4]) > 12 * 20


def test_mpo_linear_decomposes_gpt2_conv1d_and_caches_w_outside_autograd():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(20, 12).double()  # (nf=out, nx=in): weight [12, 20]
    x = torch.randn(4, 12, dtype=torch.float64)
    mpo = MPOLinear.from_layer(conv)
    torch.testing.assert_close(mpo(x), conv(x), rtol=1e-10, atol=1e-12)
    assert type(mpo.merge()).__name__ == "Conv1D"
    with torch.no_grad():
        first = mpo.weight_matrix()
        assert mpo.weight_matrix() is first  # nothing changed: no new contraction
        mpo.cores[0].mul_(2.0)  # an optimizer step changes a core in place
        assert mpo.weight_matrix() is not first


def test_matrix_candidates_follow_bert_and_gpt2_names_without_the_reference_overlap():
    bert, _ = load_model("tiny-bert", "sequence_classification", num_labels=2)
    found = matrix_candidates(bert, ["FFN_1", "FFN_2", "attention"])
    assert found["FFN_2"] == {0: ["bert.encoder.layer.0.output.dense"], 1: ["bert.encoder.layer.1.output.dense"]}
    assert found["FFN_1"][1] == ["bert.encoder.layer.1.intermediate.dense"]
    assert sorted(found["attention"][0]) == [f"bert.encoder.layer.0.attention.{n}" for n in
                                             ("output.dense", "self.key", "self.query", "self.value")]
    gpt2, _ = load_model("tiny-gpt2-random", "causal_lm")
    found = matrix_candidates(gpt2, ["FFN_1", "attention"])
    assert found["FFN_1"][0] == ["transformer.h.0.mlp.c_fc"]
    assert found["attention"][1] == ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    with pytest.raises(ValueError, match="choose from FFN_1, FFN_2, attention"):
        matrix_candidates(bert, ["ffn"])


class TwoLayers(nn.Module):
    """BERT-named matrices whose contributions to the output are scaled 1 and ``scale``."""

    def __init__(self, scale: float):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList()
        for _ in range(2):
            block = nn.Module()
            block.intermediate = nn.Module()
            block.intermediate.dense = nn.Linear(6, 6)
            self.encoder.layer.append(block)
        self.scale = scale

    def forward(self, x, labels):
        a, b = (self.encoder.layer[i].intermediate.dense(x).sum(-1) for i in range(2))
        return SimpleNamespace(loss=((a + self.scale * b - labels) ** 2).mean())


def test_fisher_ranks_the_matrix_that_matters_more_first():
    torch.manual_seed(0)
    model = TwoLayers(scale=10.0)
    batches = [{"x": torch.randn(8, 6), "labels": torch.randn(8)} for _ in range(3)]
    candidates = matrix_candidates(model, ["FFN_1"])
    scores = fisher_scores(model, batches, [n for names in candidates["FFN_1"].values() for n in names],
                           max_grad_norm=None)
    assert scores["encoder.layer.1.intermediate.dense"] > 50 * scores["encoder.layer.0.intermediate.dense"]
    assert select_top(candidates, scores, 1) == ["encoder.layer.1.intermediate.dense"]
    # the dynamic schedule rescores the rest: layer 1 is taken, so layer 0 comes next
    assert select_top(candidates, scores, 1, exclude=["encoder.layer.1.intermediate.dense"]) == [
        "encoder.layer.0.intermediate.dense"]
    assert all(p.grad is None for p in model.parameters())


def test_static_and_dynamic_schedules():
    assert decomposition_rounds(6, 1, 3) == {0: 6}  # static
    assert decomposition_rounds(6, 2, 3) == {0: 3, 2: 3}  # the seed's example: epochs 0 and ceil(3/2) = 2
    assert decomposition_rounds(9, 3, 10) == {0: 3, 4: 3, 8: 3}
    with pytest.raises(ValueError, match="divisible"):
        decomposition_rounds(5, 2, 3)
    with pytest.raises(ValueError, match="3 rounds instead of 4"):
        decomposition_rounds(4, 4, 5)


def test_decompose_and_merge_a_model_in_place():
    model, _ = load_model("tiny-bert", "sequence_classification", num_labels=2)
    model = model.double().eval()
    ids = torch.randint(5, 2000, (2, 10))
    before = model(input_ids=ids).logits
    names = select_top(matrix_candidates(model, ["FFN_1", "attention"]), {n: 0.0 for n, _ in model.named_modules()}, 1)
    report = decompose(model, names)
    assert set(report) == set(names) and all(r["ratio"] > 1 for r in report.values())
    assert sum(isinstance(m, MPOLinear) for m in model.modules()) == 5  # 1 FFN_1 + 4 attention matrices
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-9, atol=1e-10)
    assert merge_all(model) == 5 and not any(isinstance(m, MPOLinear) for m in model.modules())
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-9, atol=1e-10)


def test_same_shaped_mpo_layers_contract_together_with_the_same_outputs_and_gradients():
    """A bank multiplies out all same-shaped layers at once; forward, gradients (also over two
    accumulated micro-batches) and the no-grad cache equal per-layer contraction."""
    from raysel.methods.opf.algorithm import MPOBank

    torch.manual_seed(0)
    model, _ = load_model("tiny-bert", "sequence_classification", num_labels=2)
    model = model.double()
    alone = __import__("copy").deepcopy(model)
    names = [n for layers in matrix_candidates(model, ["attention"]).values() for g in layers.values() for n in g]
    decompose(model, names)
    decompose(alone, names)
    assert share_contractions(model, on_cpu=True) == 1  # (on the CPU layers stay alone by default)
    assert not any("_bank" in m.__dict__ for m in alone.modules())
    banks = {id(m.__dict__["_bank"]) for m in model.modules() if isinstance(m, MPOLinear)}
    assert len(banks) == 1 and isinstance(next(m for m in model.modules() if isinstance(m, MPOLinear))._bank, MPOBank)
    batches = [{"input_ids": torch.randint(5, 2000, (2, 9)), "labels": torch.tensor([0, 1])} for _ in range(2)]
    for net in (model, alone):
        net.train(False)
        for b in batches:  # two micro-batches, one accumulated gradient
            net(**b).loss.backward()
    for (name, p), q in zip(model.named_parameters(), alone.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(**batches[0]).logits, alone(**batches[0]).logits)
        first = model(**batches[0]).logits
        next(p for n, p in model.named_parameters() if ".cores." in n).mul_(1.5)  # a step changes a core
        assert not torch.equal(model(**batches[0]).logits, first)
