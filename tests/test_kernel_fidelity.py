"""The kernel method against the reference (princeton-nlp/LM-Kernel-FT), point by point:

- its prompt model's MLM decoder weight is a parameter of its own (the input embeddings' values at
  θ0, its own gradient), the decoder bias one parameter: raysel's kernel over transformers' tied
  masked LM equals a brute-force kernel over an untied copy, for every formula and subset, also when
  a label word occurs in the input; ``decoder="tied"`` is the former behaviour;
- its solvers see one [N·C, M·C] kernel with flattened targets, regularised, with f0 where it uses
  it: each raysel solver against scikit-learn / torch called on that matrix as the reference does;
  ``class_layout="per_class"`` is the former layout;
- its classifier without a prompt is a Linear on the first token's final hidden state, initialised
  by a logistic-regression probe;
- settings the chosen solver does not read are refused.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pydantic
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, RobertaConfig, RobertaForMaskedLM

from raysel.methods import kernel
from raysel.methods.kernel import KernelParams
from raysel.spec import SpecError, load_spec

WORDS = [7, 9, 12]  # the label words' ids (C = 3); binary: the first two
REFERENCE_SUBSETS = {  # LM-Kernel-FT's rules (kernel_trainer.convert_to_buffer) on full dotted names
    "all": lambda n: True,
    "exclude_embeddings": lambda n: "embed" not in n,
    "exclude_head": lambda n: "head" not in n,
    "only_biases": lambda n: "bias" in n,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mlm(kind: str) -> nn.Module:
    """A small random masked LM, float64, eval mode, its output embeddings tied to its input ones (as
    transformers builds it). Biases and LayerNorms get random values (else zero / one at init), and
    the attention key biases are removed: their gradient is zero up to rounding (softmax ignores a
    shift), and signgd would count the sign of that noise. RoBERTa's position embeddings are as long
    as its vocabulary on purpose: they are not indexed by token id, and must not be compacted."""
    torch.manual_seed(0)
    if kind == "bert":
        model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=16, max_position_embeddings=32))
    else:
        model = RobertaForMaskedLM(RobertaConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=16,
                                                 max_position_embeddings=40, pad_token_id=1))
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    for name, module in model.named_modules():
        if name.endswith("attention.self.key"):
            module.bias = None
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


def untied(model: nn.Module) -> nn.Module:
    """The reference's parameter layout: a copy whose decoder weight is a parameter of its own."""
    twin = copy.deepcopy(model)
    twin.get_output_embeddings().weight = nn.Parameter(twin.get_input_embeddings().weight.detach().clone())
    names = [n for n, _ in twin.named_parameters()]
    bert_decoder = "cls.predictions.decoder.weight"
    decoder = bert_decoder if bert_decoder in names else "lm_head.decoder.weight"
    assert decoder in names and sum("decoder.bias" in n for n in names) == 0  # the bias: one parameter
    return twin


def batch(rows: list[list[int]], mask_pos: list[int]) -> dict[str, torch.Tensor]:
    """Right-padded (pad id 1: RoBERTa's) with an attention mask and each example's mask position."""
    length = max(map(len, rows))
    ids = torch.tensor([r + [1] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "mask_pos": torch.tensor(mask_pos)}


# examples of different lengths; label words 7 and 9 occur in train inputs, 12 in an eval input
TRAIN = batch([[0, 5, 7, 3, 20, 2], [0, 14, 4, 2], [0, 9, 30, 4, 11, 25, 2], [0, 33, 6, 2, 18]], [3, 2, 4, 1])
EVAL = batch([[0, 22, 5, 2], [0, 12, 8, 3, 9, 2], [0, 17, 4, 2]], [1, 2, 2])


def brute_grads(model: nn.Module, data: dict, words: list[int], binary: bool) -> list[list[dict]]:
    """Per example (alone, unpadded) and logit: {name: gradient} over every parameter of ``model``
    (named_parameters: aliases once), by one torch.autograd.grad each, from the full MLM forward."""
    params = dict(model.named_parameters())
    out = []
    for i in range(len(data["input_ids"])):
        length = int(data["attention_mask"][i].sum())
        scores = model(input_ids=data["input_ids"][i:i + 1, :length]).logits[0, int(data["mask_pos"][i]), words]
        logits = scores[1:] - scores[:1] if binary else scores
        per_class = []
        for f in logits:
            grads = torch.autograd.grad(f, list(params.values()), retain_graph=True, allow_unused=True)
            per_class.append({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)})
        out.append(per_class)
    return out


def flat(grads: list[list[dict]], keep, sign: bool) -> torch.Tensor:
    """[B, C, P] over the kept names."""
    rows = []
    for per_class in grads:
        rows.append(torch.stack([torch.cat([g.flatten() for n, g in sorted(by_name.items()) if keep(n)])
                                 for by_name in per_class]))
    out = torch.stack(rows)
    return out.sign() if sign else out


def brute_kernel(model: nn.Module, formula: str, subset: str, words: list[int]) -> torch.Tensor:
    binary = formula == "asymmetric_signgd"
    a, b = (brute_grads(model, data, words, binary) for data in (TRAIN, EVAL))
    keep = REFERENCE_SUBSETS[subset]
    if binary:
        return torch.stack([torch.einsum("acp,bdp->acbd", flat(a, keep, True), flat(b, keep, False)),
                            torch.einsum("acp,bdp->acbd", flat(a, keep, False), flat(b, keep, True))])
    signed = formula == "signgd"
    return torch.einsum("acp,bdp->acbd", flat(a, keep, signed), flat(b, keep, signed))


def assert_same(a: torch.Tensor, b: torch.Tensor):
    assert a.dtype == torch.float64 and a.shape == b.shape
    torch.testing.assert_close(a, b.double(), rtol=1e-9, atol=1e-9 * float(b.abs().max()))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------- the decoder


@pytest.mark.parametrize("formula", ["sgd", "signgd", "asymmetric_signgd"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_kernel_is_the_reference_kernel_over_an_untied_decoder_for_every_subset(kind, formula):
    model = tiny_mlm(kind)
    words = WORDS[:2] if formula == "asymmetric_signgd" else WORDS
    twin = untied(model)
    for subset in REFERENCE_SUBSETS:
        fn = kernel.prompt_logits_fn(model, words)
        if formula == "asymmetric_signgd":
            fn = kernel.binary(fn)
        got = kernel.ntk(model, TRAIN, EVAL, logits_fn=fn, formula=formula, subset=subset, chunk_size=2)
        assert_same(got, brute_kernel(twin, formula, subset, words))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # the model is untouched


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_every_path_gives_the_separate_decoder_kernel(kind):
    """vmap or loop, compact vocabulary (input embeddings at the chunk's ids, the decoder at the label
    words) or dense, train x train through the symmetric path."""
    model = tiny_mlm(kind)
    fn = kernel.prompt_logits_fn(model, WORDS)
    expected = brute_kernel(untied(model), "sgd", "all", WORDS)
    for options in ({}, {"sparse_rows": False}, {"vectorize": False, "chunk_size": 3}, {"row_chunk_size": 3}):
        assert_same(kernel.ntk(model, TRAIN, EVAL, logits_fn=fn, **{"chunk_size": 2, **options}), expected)
    square = kernel.ntk(model, TRAIN, logits_fn=fn, chunk_size=3)
    assert_same(square, kernel.ntk(model, TRAIN, dict(TRAIN), logits_fn=fn, sparse_rows=False))


@pytest.mark.parametrize("formula", ["sgd", "signgd"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_tied_decoder_is_the_former_kernel_and_differs_where_the_reviewer_said(kind, formula):
    """decoder="tied": one tensor for input embeddings and decoder (transformers' tied masked LM,
    differentiated as such by plain autograd) — what raysel computed before."""
    model = tiny_mlm(kind)
    a, b = (brute_grads(model, data, WORDS, False) for data in (TRAIN, EVAL))  # the tied model: one tensor
    signed = formula == "signgd"
    separate, tied = {}, {}
    for subset, keep in REFERENCE_SUBSETS.items():
        fn = kernel.prompt_logits_fn(model, WORDS, decoder="tied")
        tied[subset] = kernel.ntk(model, TRAIN, EVAL, logits_fn=fn, formula=formula, subset=subset, chunk_size=2)
        assert_same(tied[subset], torch.einsum("acp,bdp->acbd", flat(a, keep, signed), flat(b, keep, signed)))
        separate[subset] = kernel.ntk(model, TRAIN, EVAL, logits_fn=kernel.prompt_logits_fn(model, WORDS),
                                      formula=formula, subset=subset, chunk_size=2)
    # all: cross terms of the label words in the inputs; exclude_embeddings: the reference keeps the
    # decoder; exclude_head (RoBERTa's lm_head.*): the reference drops the decoder
    differing = ["all", "exclude_embeddings"] + (["exclude_head"] if kind == "roberta" else [])
    for subset in differing:
        assert relative(tied[subset], separate[subset]) > 1e-6, subset  # rounding: ~1e-15
    assert_same(tied["only_biases"], separate["only_biases"])
    if kind == "bert":  # BERT's head is cls.predictions.*: exclude_head excludes nothing there
        assert_same(separate["exclude_head"], separate["all"])


def test_parameter_listing_and_the_decoder_option_on_ntk():
    model = tiny_mlm("roberta")
    separate = kernel.select_params(model, "all")
    assert "lm_head.decoder.weight" in separate and "roberta.embeddings.word_embeddings.weight" in separate
    assert torch.equal(separate["lm_head.decoder.weight"], separate["roberta.embeddings.word_embeddings.weight"])
    assert "lm_head.bias" in separate and "lm_head.decoder.bias" not in separate  # one parameter, one name
    assert "lm_head.decoder.weight" not in kernel.select_params(model, "all", decoder="tied")
    assert not any("head" in n for n in kernel.select_params(model, "exclude_head"))
    assert set(kernel.select_params(model, "exclude_embeddings")) >= {"lm_head.decoder.weight"}
    fn = kernel.prompt_logits_fn(model, WORDS, decoder="tied")
    assert_same(kernel.ntk(model, TRAIN, EVAL, logits_fn=fn, decoder="tied"),
                kernel.ntk(model, TRAIN, EVAL, logits_fn=fn))
    with pytest.raises(ValueError, match="differs from the logits function"):
        kernel.ntk(model, TRAIN, EVAL, logits_fn=fn, decoder="separate")
    with pytest.raises(ValueError, match="decoder must be one of separate, tied"):
        kernel.select_params(model, "all", decoder="untied")


def test_prompt_logits_are_the_mlm_scores_with_either_decoder_setting():
    model = tiny_mlm("bert")
    with torch.no_grad():
        direct = torch.stack([model(input_ids=TRAIN["input_ids"][i:i + 1, :int(TRAIN["attention_mask"][i].sum())])
                              .logits[0, int(TRAIN["mask_pos"][i]), WORDS] for i in range(4)])
        for decoder in kernel.DECODERS:
            fn = kernel.prompt_logits_fn(model, WORDS, decoder=decoder)
            assert_same(fn(kernel.select_params(model, "all", decoder), TRAIN), direct)


# ----------------------------------------------------------------------------- solvers

def kernels(n: int, m: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A train kernel [N, C, N, C] (symmetric PSD) and a train x eval one [N, C, M, C] from random
    gradients [·, C, P]."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, classes, 40, generator=g, dtype=torch.float64)
    b = a[torch.arange(m) % n] + 0.5 * torch.randn(m, classes, 40, generator=g, dtype=torch.float64)
    return torch.einsum("acp,bdp->acbd", a, a), torch.einsum("acp,bdp->acbd", a, b)


def reference_layout(k_train, y, k_eval):
    """The reference's reshape_kernel_and_targets: [N·C, N·C], [N·C, M·C], targets one-hot or ±1 flattened."""
    n, c, m = k_train.shape[0], k_train.shape[1], k_eval.shape[2]
    targets = nn.functional.one_hot(y, c).double().reshape(-1) if c > 1 else 2.0 * y.double() - 1
    return k_train.reshape(n * c, n * c), targets, k_eval.reshape(n * c, m * c)


def reference_reg(k: torch.Tensor, reg: float) -> torch.Tensor:
    """BaseKernelSolver.get_regularized_kernel: K + reg·σ_max(K)·I (σ_max from the SVD)."""
    return k + reg * torch.linalg.svdvals(k).max() * torch.eye(k.shape[0], dtype=k.dtype) if reg else k


def reference_labels(preds: torch.Tensor, c: int) -> torch.Tensor:
    """kernel_trainer.evaluate: preds reshaped [M, C], argmax (binary: [−p, p] argmax, label 1 iff p > 0)."""
    preds = preds.reshape(-1, c)
    return (preds[:, 0] > 0).long() if c == 1 else torch.from_numpy(np.argmax(preds.numpy(), axis=1))


CASES = [(1, 12), (3, 12)]  # (C, N)


def labels_for(n: int, c: int) -> torch.Tensor:
    return torch.arange(n) % max(c, 2)


def f0(n: int, m: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return 0.3 * torch.randn(n, c, generator=g, dtype=torch.float64), 0.3 * torch.randn(m, c, generator=g,
                                                                                         dtype=torch.float64)


@pytest.mark.parametrize("c, n", CASES)
def test_lstsq_with_reg_and_f0_is_the_reference_lstsq(c, n):
    k_train, k_eval = kernels(n, 7, c)
    y = labels_for(n, c)
    f0_train, f0_eval = f0(n, 7, c)
    kt, targets, ke = reference_layout(k_train, y, k_eval)
    s = 2.0
    alpha = torch.linalg.lstsq(reference_reg(kt, 0.01), (targets - f0_train.reshape(-1) / s)[:, None]).solution[:, 0]
    preds = ke.T @ alpha + f0_eval.reshape(-1) / s
    got = kernel.solve(k_train, y, k_eval, solver="lstsq", reg=0.01, f0_train=f0_train, f0_eval=f0_eval,
                       f0_scaling=s)
    torch.testing.assert_close(got.scores.reshape(-1), preds, rtol=1e-7, atol=1e-9)
    assert torch.equal(got.labels, reference_labels(preds, c))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # sklearn's announced LogisticRegressionCV default changes
@pytest.mark.parametrize("reg", [0.0, 0.05])
@pytest.mark.parametrize("c, n", CASES)
def test_logistic_is_the_reference_cross_validated_logistic_regression_on_kernel_rows(c, n, reg):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    k_train, k_eval = kernels(n, 7, c, seed=1)
    y = labels_for(n, c)
    kt, targets, ke = reference_layout(k_train, y, k_eval)
    zero_one = ((targets + 1) / 2).int().numpy()  # the reference's {−1, 1} → {0, 1} (one-hot stays 0/1)
    for fitted, options in (
            (LogisticRegressionCV(max_iter=10000, random_state=0), {}),
            (LogisticRegression(C=0.5, max_iter=10000), {"logistic_cv": 0, "sklearn_c": 0.5})):
        fitted.fit(reference_reg(kt, reg).numpy(), zero_one)
        log_p = torch.from_numpy(fitted.predict_log_proba(ke.T.numpy()))
        preds = log_p[:, 1] - log_p[:, 0]
        got = kernel.solve(k_train, y, k_eval, solver="logistic", reg=reg, **options)
        torch.testing.assert_close(got.scores.reshape(-1), preds, rtol=1e-10, atol=1e-10)
        assert torch.equal(got.labels, reference_labels(preds, c))
        assert got.scores.shape == (7, c)


@pytest.mark.parametrize("reg", [0.0, 0.05])
@pytest.mark.parametrize("c, n", CASES)
def test_svc_and_svr_are_the_reference_ones_on_the_flattened_kernel(c, n, reg):
    from sklearn.svm import SVC, SVR

    k_train, k_eval = kernels(n, 7, c, seed=2)
    y = labels_for(n, c)
    kt, targets, ke = reference_layout(k_train, y, k_eval)
    svc = SVC(kernel="precomputed").fit(reference_reg(kt, reg).numpy(), ((targets + 1) / 2).int().numpy())
    preds = torch.from_numpy(svc.predict(ke.T.numpy())).double() * 2 - 1  # {0, 1} → {−1, 1}
    got = kernel.solve(k_train, y, k_eval, solver="svc", reg=reg)
    assert torch.equal(got.scores.reshape(-1), preds)
    assert torch.equal(got.labels, reference_labels(preds, c))

    f0_train, f0_eval = f0(n, 7, c)
    s = 0.5
    svr = SVR(kernel="precomputed", C=2.0).fit(reference_reg(kt, reg).numpy(),
                                               (targets - f0_train.reshape(-1) / s).numpy())
    preds = torch.from_numpy(svr.predict(ke.T.numpy())) + f0_eval.reshape(-1) / s
    got = kernel.solve(k_train, y, k_eval, solver="svr", reg=reg, f0_train=f0_train, f0_eval=f0_eval, f0_scaling=s,
                       sklearn_c=2.0)
    torch.testing.assert_close(got.scores.reshape(-1), preds, rtol=1e-12, atol=1e-12)
    assert torch.equal(got.labels, reference_labels(preds, c))


def test_svc_ties_go_to_the_first_class():
    # every eval column gets the same prediction for every class: all −1 → the first class
    k_train, k_eval = kernels(9, 4, 3, seed=3)
    got = kernel.solve(k_train, labels_for(9, 3), torch.zeros_like(k_eval), solver="svc")
    assert set(got.scores.unique().tolist()) <= {-1.0, 1.0} and (got.scores == got.scores[:, :1]).all()
    assert torch.equal(got.labels, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("with_f0", [False, True])
@pytest.mark.parametrize("reg", [0.0, 0.1])
def test_asym_is_the_reference_asymmetric_solver(reg, with_f0):
    n, m, gamma, lam, s = 10, 6, 0.5, 0.3, 2.0
    g = torch.Generator().manual_seed(4)
    signs, grads = torch.randn(n, 30, generator=g).sign().double(), torch.randn(n, 30, generator=g, dtype=torch.float64)
    eval_signs, eval_grads = torch.randn(m, 30, generator=g).sign().double(), torch.randn(m, 30, generator=g,
                                                                                            dtype=torch.float64)
    k_train = torch.stack([signs @ grads.T, (signs @ grads.T).T]).reshape(2, n, 1, n, 1)
    k_eval = torch.stack([signs @ eval_grads.T, grads @ eval_signs.T]).reshape(2, n, 1, m, 1)
    y = labels_for(n, 1)
    f0_train, f0_eval = f0(n, m, 1) if with_f0 else (None, None)
    # AsymmetricLstsqKernelSolver: reg on pass 0, Y = ±1 − f0/s, H = Y K Y, A = [[I/γ, H], [Hᵀ, I/γ]], lstsq
    kernel0 = reference_reg(k_train[0].reshape(n, n), reg)
    targets = 2.0 * y.double() - 1 - (f0_train.reshape(-1) / s if with_f0 else 0)
    h = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            h[i, j] = targets[i] * kernel0[i, j] * targets[j]
    a = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    a[:n, :n] = a[n:, n:] = torch.eye(n, dtype=torch.float64) / gamma
    a[:n, n:], a[n:, :n] = h, h.T
    solution = torch.linalg.lstsq(a, torch.ones(2 * n, dtype=torch.float64)).solution
    omega = k_eval[0].reshape(n, m).T @ (solution[:n] * targets)
    nu = k_eval[1].reshape(n, m).T @ (solution[n:] * targets)
    preds = lam * omega + (1 - lam) * nu + (f0_eval.reshape(-1) / s if with_f0 else 0)
    got = kernel.solve(k_train, y, k_eval, solver="asym", reg=reg, kernel_lambda=lam, kernel_gamma=gamma,
                       f0_train=f0_train, f0_eval=f0_eval, f0_scaling=s)
    torch.testing.assert_close(got.scores[:, 0], preds, rtol=1e-8, atol=1e-10)
    assert torch.equal(got.labels, (preds > 0).long())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_per_class_layout_is_the_former_treatment_of_several_classes():
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC, SVR

    n, m, c = 12, 7, 3
    k_train, k_eval = kernels(n, m, c, seed=6)
    y = labels_for(n, c)
    rows = k_train.permute(0, 1, 3, 2).reshape(n, -1).numpy(), k_eval.permute(2, 0, 1, 3).reshape(m, -1).numpy()
    logistic = LogisticRegression(C=2.0, max_iter=10000).fit(rows[0], y.numpy())
    got = kernel.solve(k_train, y, k_eval, solver="logistic", class_layout="per_class", logistic_cv=0, sklearn_c=2.0)
    torch.testing.assert_close(got.scores, torch.from_numpy(logistic.predict_log_proba(rows[1])), rtol=1e-10,
                               atol=1e-10)
    assert torch.equal(got.labels, torch.from_numpy(logistic.predict(rows[1])))
    svc = SVC(kernel="precomputed").fit(sum(k_train[:, i, :, i] for i in range(c)).numpy(), y.numpy())
    cross = sum(k_eval[:, i, :, i] for i in range(c)).T.numpy()
    got = kernel.solve(k_train, y, k_eval, solver="svc", class_layout="per_class")
    assert torch.equal(got.labels, torch.from_numpy(svc.predict(cross)))
    torch.testing.assert_close(got.scores, torch.from_numpy(svc.decision_function(cross)))
    got = kernel.solve(k_train, y, k_eval, solver="svr", class_layout="per_class")
    targets = nn.functional.one_hot(y, c).double()
    expected = torch.stack([torch.from_numpy(SVR(kernel="precomputed").fit(k_train[:, i, :, i].numpy(),
                                                                           targets[:, i].numpy())
                                             .predict(k_eval[:, i, :, i].T.numpy())) for i in range(c)], 1)
    torch.testing.assert_close(got.scores, expected)
    # C = 1: the layouts are the same; and the flattened layout is not the per-class one for C > 1
    k1, e1 = kernels(n, m, 1, seed=7)
    for solver in ("svc", "svr"):
        assert torch.equal(kernel.solve(k1, labels_for(n, 1), e1, solver=solver, class_layout="per_class").scores,
                           kernel.solve(k1, labels_for(n, 1), e1, solver=solver).scores)
    assert not torch.equal(kernel.solve(k_train, y, k_eval, solver="svr").scores, expected)


def test_solvers_that_take_no_f0_refuse_it():
    k_train, k_eval = kernels(6, 3, 1)
    f0_train, f0_eval = f0(6, 3, 1)
    for solver in ("logistic", "svc"):
        with pytest.raises(ValueError, match="takes no f0"):
            kernel.solve(k_train, labels_for(6, 1), k_eval, solver=solver, f0_train=f0_train, f0_eval=f0_eval)


# ----------------------------------------------------------------------------- settings


def refused(field: str, **params) -> str:
    with pytest.raises(pydantic.ValidationError) as info:
        KernelParams(**params)
    errors = [e for e in info.value.errors() if e["loc"] == (field,)]
    assert errors, info.value.errors()
    return errors[0]["msg"]


def test_settings_the_solver_does_not_read_are_refused_and_defaults_never_are():
    asym = dict(formula="asymmetric_signgd", solver="asym", binary_classification=True)
    assert "asym" in refused("kernel_lambda", kernel_lambda=0.2)
    assert "asym" in refused("kernel_gamma", solver="svr", kernel_gamma=0.1)
    assert "lstsq / svr / asym" in refused("adjust_for_init", solver="svc", adjust_for_init=True)
    refused("adjust_for_init", solver="logistic", adjust_for_init=False)  # set at all: refused
    refused("f0_scaling", solver="logistic", f0_scaling=2.0)
    assert "logistic_cv: 0" in refused("sklearn_c", solver="logistic", sklearn_c=2.0)
    refused("sklearn_c", sklearn_c=2.0)  # lstsq
    refused("logistic_cv", solver="svc", logistic_cv=3)
    refused("class_layout", class_layout="per_class")  # lstsq: always flattened
    refused("class_layout", **asym, class_layout="flattened")
    refused("decoder", prompt=False, decoder="tied")
    refused("classifier_head", classifier_head="model")
    # several at once: one error each
    with pytest.raises(pydantic.ValidationError) as info:
        KernelParams(kernel_lambda=0.2, kernel_gamma=0.3, logistic_cv=2)
    assert {e["loc"] for e in info.value.errors()} == {("kernel_lambda",), ("kernel_gamma",), ("logistic_cv",)}
    # what each solver reads is accepted; defaults of the others are never refused
    KernelParams(**asym, kernel_lambda=0.2, kernel_gamma=0.3, adjust_for_init=True, f0_scaling=2.0, reg=0.1)
    KernelParams(solver="logistic", logistic_cv=0, sklearn_c=2.0, class_layout="per_class", reg=0.1)
    KernelParams(solver="svr", sklearn_c=2.0, adjust_for_init=True, f0_scaling=2.0, class_layout="per_class")
    KernelParams(solver="svc", sklearn_c=2.0, class_layout="flattened")
    KernelParams(reg=0.1, adjust_for_init=True, decoder="tied")
    KernelParams(prompt=False, classifier_head="model")
    params = KernelParams(solver="svc")
    assert params.logistic_cv == 5 and params.decoder == "separate" and params.classifier_head == "linear_probe"


def test_a_spec_whose_search_space_sets_an_unread_setting_is_refused_and_the_shipped_specs_validate(tmp_path):
    from pathlib import Path

    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nmethod: kernel\nmodel: {name: tiny-bert}\ndata: {name: pydocs-topics, k: 4}\n"
                    "params: {solver: lstsq}\n"
                    "search_space: {kernel_gamma: {distribution: categorical, choices: [0.1, 1.0]}}\n"
                    "protocol: {kind: per_seed_grid, seeds: [13], metric: dev_accuracy, mode: max}\n")
    with pytest.raises(SpecError, match="kernel_gamma is read by solver asym only"):
        load_spec(spec)
    for shipped in sorted((Path(__file__).parents[1] / "tune_configs").glob("kernel_*.yaml")):
        load_spec(shipped)


def test_kernel_key_holds_the_decoder_and_the_classifier_head():
    from raysel.spec import DataSpec, ModelSpec

    model, data = ModelSpec(name="tiny-bert"), DataSpec(name="pydocs-topics", k=4)
    keys = {KernelParams().kernel_key(model, data, 13), KernelParams(decoder="tied").kernel_key(model, data, 13),
            KernelParams(prompt=False).kernel_key(model, data, 13),
            KernelParams(prompt=False, classifier_head="model").kernel_key(model, data, 13)}
    assert len(keys) == 4


# ----------------------------------------------------------------------------- the classifier without a prompt

def tiny_classifier(classes: int) -> nn.Module:
    torch.manual_seed(1)
    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                        max_position_embeddings=32, num_labels=classes)
    return BertForSequenceClassification(config).double().eval()


def plain_inputs(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 8, (n,), generator=g)
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()
    return {"input_ids": torch.randint(3, 40, mask.shape, generator=g) * mask, "attention_mask": mask}


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_linear_probe_head_is_the_references_first_token_logistic_probe():
    from sklearn.linear_model import LogisticRegressionCV

    model = tiny_classifier(3)
    train = plain_inputs(15, 0)
    y = torch.arange(15) % 3
    with torch.no_grad():  # the final hidden state of the first token, each example alone
        features = torch.cat([model.bert(input_ids=train["input_ids"][i:i + 1, :int(train["attention_mask"][i].sum())])
                              .last_hidden_state[:, 0] for i in range(15)])
    probe = LogisticRegressionCV(max_iter=5000, random_state=0).fit(features.numpy(), y.numpy())  # multinomial
    classifier = kernel.linear_probe_classifier(model, train, y)
    assert isinstance(classifier, kernel.FirstTokenClassifier)
    torch.testing.assert_close(classifier.classifier.weight, torch.from_numpy(probe.coef_), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(classifier.classifier.bias, torch.from_numpy(probe.intercept_), rtol=1e-6, atol=1e-8)
    # the logits: a bare Linear on the first token (no pooler, no dense + tanh), the reference's names
    fn = kernel.classifier_logits_fn(classifier)
    names = set(kernel.select_params(classifier, "all"))
    assert {"classifier.weight", "classifier.bias"} <= names and not any("pooler" in n for n in names)
    assert all(n.startswith(("bert.", "classifier.")) for n in names)
    with torch.no_grad():
        logits = fn(kernel.select_params(classifier, "all"), train)
    torch.testing.assert_close(logits, features @ classifier.classifier.weight.T + classifier.classifier.bias,
                               rtol=1e-10, atol=1e-10)
    # its kernel: the brute-force one (one autograd.grad per example and logit)
    evals = plain_inputs(4, 1)
    params = dict(classifier.named_parameters())

    def grads(data):
        out = []
        for i in range(len(data["input_ids"])):
            length = int(data["attention_mask"][i].sum())
            f = classifier(input_ids=data["input_ids"][i:i + 1, :length]).logits[0]
            out.append(torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(f[c], list(params.values()),
                                                                                        retain_graph=True)])
                                    for c in range(3)]))
        return torch.stack(out)
    k = kernel.ntk(classifier, train, evals, logits_fn=fn, chunk_size=4)
    assert_same(k, torch.einsum("acp,bdp->acbd", grads(train), grads(evals)))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_two_class_probe_is_the_multinomial_models_halved_coefficients():
    """The reference fits a multinomial model to two classes (P(1) = σ(2(w·x + b)), penalty ||w||²/C)
    and assigns [−w/2, w/2]; scikit-learn ≥ 1.5 fits binomially: the binomial model with C doubled is
    that model with (2w, 2b)."""
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    g = np.random.default_rng(0)
    x = g.normal(size=(20, 4))
    y = (x[:, 0] + 0.5 * g.normal(size=20) > 0).astype(int)
    c = 0.7
    signs = 2 * y - 1

    def objective(wb):  # the multinomial cross-entropy with rows ±w, intercepts ±b, L2 on both rows
        z = x @ wb[:4] + wb[4]
        return np.logaddexp(0, -2 * signs * z).sum() + (wb[:4] @ wb[:4]) / c

    w = minimize(objective, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    binomial = LogisticRegression(C=2 * c, tol=1e-10, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(binomial.coef_[0] / 2, w[:4], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(binomial.intercept_[0] / 2, w[4], rtol=1e-4, atol=1e-6)
    # the probe: LogisticRegressionCV over the default C grid, each doubled, and [−w/2, w/2]
    model = tiny_classifier(2)
    train = plain_inputs(10, 2)
    labels = torch.arange(10) % 2
    classifier = kernel.linear_probe_classifier(model, train, labels)
    features = kernel.first_token_features(model.base_model, train).numpy()
    fit = LogisticRegressionCV(Cs=2 * np.logspace(-4, 4, 10), max_iter=5000, random_state=0).fit(features,
                                                                                                  labels.numpy())
    half = torch.from_numpy(fit.coef_[0] / 4)
    torch.testing.assert_close(classifier.classifier.weight, torch.stack([-half, half]), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(classifier.classifier.bias[1], torch.tensor(fit.intercept_[0] / 4, dtype=torch.float64),
                               rtol=1e-6, atol=1e-9)


def test_linear_probe_refuses_a_causal_model():
    from raysel.models import load_model

    model, _ = load_model("tiny-gpt2-random", "sequence_classification", num_labels=2)
    with pytest.raises(ValueError, match="causal"):
        kernel.linear_probe_classifier(model, {"input_ids": torch.randint(3, 100, (4, 5))}, torch.tensor([0, 1, 0, 1]))


def test_kernel_trials_without_a_prompt_use_the_probe_or_the_models_head(tmp_path):
    from test_kernel_recipe import WORDS as _  # noqa: F401  (the recipe tests' helpers)
    from test_kernel_recipe import kernel_trial

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k = 4: the probe's CV uses 4 folds (warned), sklearn's FutureWarnings
        probe, rec = kernel_trial(tmp_path, "probe", prompt=False, solver="svc")
        head, rec2 = kernel_trial(tmp_path, "head", prompt=False, classifier_head="model")
    assert rec.tags["kernel.source"] == rec2.tags["kernel.source"] == "built"
    assert rec.tags["kernel.key"] != rec2.tags["kernel.key"]
    assert probe["n_train"] == head["n_train"] == 20 and 0 <= probe["test_accuracy"] <= 1
