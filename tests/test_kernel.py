"""The kernel method's pure algorithm (raysel.methods.kernel): eNTK formulas, subsets, solvers."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from raysel.methods import kernel
from raysel.models import load_model


pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """Embedding → mean → Linear → tanh → dropout → head; named so that every subset bites."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 5)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(5, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.tanh(self.body(self.embed(ids).mean(1)))))


def tiny(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return Tiny(classes).double().train()  # train mode: ntk must switch dropout off


def logits_of(model: nn.Module) -> kernel.LogitsFn:
    return lambda params, batch: functional_call(model, params, (batch["ids"],))


def ids(n: int, seed: int) -> dict[str, torch.Tensor]:
    return {"ids": torch.randint(0, 10, (n, 3), generator=torch.Generator().manual_seed(seed))}


def brute_grads(model: nn.Module, fn: kernel.LogitsFn, batch: dict, keep=lambda n: True) -> torch.Tensor:
    """[B, C, P]: ∇ f_c(x_i) one example and one logit at a time, by torch.autograd.grad, eval mode,
    over the parameters as the logits function reads them (a masked LM's decoder weight its own
    parameter by default: test_kernel_fidelity.py checks that layout against an untied model)."""
    was_training = model.training
    model.eval()
    params = {n: p.detach().clone().requires_grad_() for n, p in
              kernel.select_params(model, "all", decoder=getattr(fn, "decoder", "separate")).items()}
    named = [(n, p) for n, p in params.items() if keep(n)]
    rows = []
    for i in range(len(next(iter(batch.values())))):
        f = fn(params, {k: v[i:i + 1] for k, v in batch.items()})[0]
        rows.append(torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(f[c], [p for _, p in named],
                                                                                     retain_graph=True)])
                                 for c in range(len(f))]))
    model.train(was_training)
    return torch.stack(rows).double()


def brute_kernel(ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    return torch.einsum("acp,bdp->acbd", ga, gb)


def assert_same(a: torch.Tensor, b: torch.Tensor):
    assert a.dtype == torch.float64 and a.shape == b.shape
    torch.testing.assert_close(a, b.double(), rtol=1e-10, atol=1e-10 * float(b.abs().max()))


# ----------------------------------------------------------------------------- eNTK

@pytest.mark.parametrize("formula", ["sgd", "signgd"])
def test_kernel_equals_brute_force_dot_products(formula):
    model, train, test = tiny(), ids(5, 0), ids(3, 1)
    fn = logits_of(model)
    k = kernel.ntk(model, train, test, logits_fn=fn, formula=formula, chunk_size=2)  # chunks that don't divide
    ga, gb = brute_grads(model, fn, train), brute_grads(model, fn, test)
    if formula == "signgd":
        ga, gb = ga.sign(), gb.sign()
    assert_same(k, brute_kernel(ga, gb))
    assert k.shape == (5, 3, 3, 3) and model.training


def test_parameters_sliced_for_the_dot_products_give_the_same_kernel(monkeypatch):
    from raysel.methods.kernel import algorithm

    model, train, test = tiny(), ids(5, 0), ids(3, 1)
    whole = kernel.ntk(model, train, test, logits_fn=logits_of(model))
    monkeypatch.setattr(algorithm, "BLOCK_SLICE", 7)  # the body's 20 weights: slices of 7, 7 and 6
    assert_same(kernel.ntk(model, train, test, logits_fn=logits_of(model)), whole)


@pytest.mark.parametrize("formula", ["sgd", "signgd"])
def test_train_kernel_is_symmetric_and_the_fast_path_equals_the_full_one(formula):
    model, train = tiny(), ids(5, 2)
    fn = logits_of(model)
    fast = kernel.ntk(model, train, logits_fn=fn, formula=formula, chunk_size=2)
    full = kernel.ntk(model, train, dict(train), logits_fn=fn, formula=formula, chunk_size=2)  # not `is`
    assert_same(fast, full)
    assert torch.equal(fast, fast.permute(2, 3, 0, 1))


def test_asymmetric_signgd_both_passes_equal_brute_force():
    model, train, test = tiny(2), ids(4, 3), ids(3, 4)
    fn = kernel.binary(logits_of(model))
    ga, gb = brute_grads(model, fn, train), brute_grads(model, fn, test)
    k = kernel.ntk(model, train, test, logits_fn=fn, formula="asymmetric_signgd", chunk_size=3)
    assert k.shape == (2, 4, 1, 3, 1)
    assert_same(k[0], brute_kernel(ga.sign(), gb))
    assert_same(k[1], brute_kernel(ga, gb.sign()))  # ⟨sign g(x_eval_j), g(x_train_i)⟩
    square = kernel.ntk(model, train, logits_fn=fn, formula="asymmetric_signgd", chunk_size=3)
    assert_same(square[0], brute_kernel(ga.sign(), ga))
    assert_same(square[1], brute_kernel(ga, ga.sign()))
    with pytest.raises(ValueError, match="binary"):
        three = tiny(3)
        kernel.ntk(three, train, test, logits_fn=logits_of(three), formula="asymmetric_signgd")


def test_parameter_subsets():
    model, train, test = tiny(), ids(4, 5), ids(2, 6)
    fn = logits_of(model)
    k = {s: kernel.ntk(model, train, test, logits_fn=fn, subset=s) for s in kernel.SUBSETS}
    biases = brute_kernel(*(brute_grads(model, fn, b, lambda n: n.endswith("bias")) for b in (train, test)))
    assert_same(k["only_biases"], biases)
    no_embed = brute_kernel(*(brute_grads(model, fn, b, lambda n: "embed" not in n) for b in (train, test)))
    assert_same(k["exclude_embeddings"], no_embed)
    # sgd kernels add over disjoint parameter sets
    embed_only = kernel.ntk(model, train, test, logits_fn=fn, subset=lambda n: "embed" in n)
    assert_same(k["exclude_embeddings"] + embed_only, k["all"])
    head_only = kernel.ntk(model, train, test, logits_fn=fn, subset=lambda n: n.startswith("head"))
    assert_same(k["exclude_head"] + head_only, k["all"])
    assert_same(k["trainable"], k["all"])
    assert set(kernel.select_params(model, "only_biases")) == {"body.bias", "head.bias"}


def test_tiny_bert_classifier_prompt_and_binary_logits():
    model, _ = load_model("tiny-bert", "masked_lm")
    model = model.double().eval()
    # vmap needs mask-free inputs (transformers inspects a mask); the looped path takes padded ones
    batch = {"input_ids": torch.randint(5, 2000, (3, 6), generator=torch.Generator().manual_seed(7)),
             "mask_pos": torch.tensor([1, 4, 2])}
    padded = batch | {"attention_mask": torch.tensor([[1] * 6, [1] * 5 + [0], [1] * 4 + [0] * 2])}
    words = [11, 22]
    fn = kernel.prompt_logits_fn(model, words)
    params = dict(model.named_parameters())
    with torch.no_grad():
        direct = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        assert_same(fn(params, padded), direct[torch.arange(3), padded["mask_pos"]][:, words])
    for logits_fn in (fn, kernel.binary(fn)):
        for inputs, vectorize in ((batch, True), (padded, False)):
            k = kernel.ntk(model, inputs, logits_fn=logits_fn, subset="only_biases", chunk_size=2,
                           vectorize=vectorize)
            g = brute_grads(model, logits_fn, inputs, lambda n: n.endswith("bias"))
            assert_same(k, brute_kernel(g, g))
    classifier, _ = load_model("tiny-bert", "sequence_classification", num_labels=3)
    k = kernel.ntk(classifier.double(), {"input_ids": batch["input_ids"]},
                   logits_fn=kernel.classifier_logits_fn(classifier), subset="exclude_embeddings")
    assert k.shape == (3, 3, 3, 3) and torch.equal(k, k.permute(2, 3, 0, 1))


def padded_tiny_bert_inputs(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` examples of different lengths (4..9 tokens), right-padded, a mask position in each."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 10, (n,), generator=g)
    ids = torch.randint(5, 2000, (n, int(lengths.max())), generator=g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask,
            "mask_pos": (torch.rand(n, generator=g) * (lengths - 1)).long() + 1}


def per_example_kernel(model, fn, rows, cols, keep=lambda n: True):
    """Brute force on each example alone, unpadded (its own length, no attention mask)."""
    def alone(batch):
        out = []
        for i in range(len(batch["input_ids"])):
            length = int(batch["attention_mask"][i].sum())
            out.append(brute_grads(model, fn, {"input_ids": batch["input_ids"][i:i + 1, :length],
                                               **({"mask_pos": batch["mask_pos"][i:i + 1]} if "mask_pos" in batch
                                                  else {})}, keep))
        return torch.cat(out)
    return brute_kernel(alone(rows), alone(cols))


@pytest.mark.parametrize("mode", ["prompt", "classifier"])
def test_padded_batches_vectorized_with_sparse_embedding_rows_equal_each_example_alone(mode):
    """The fast path (vmap over padded chunks, vocabulary rows differentiated sparsely) against
    per-example autograd on unpadded inputs, over every parameter (the word embeddings, and the MLM
    decoder weight as a parameter of its own)."""
    if mode == "prompt":
        model, _ = load_model("tiny-bert", "masked_lm")
        model = model.double()
        fn = kernel.prompt_logits_fn(model, [11, 22, 33])
    else:
        model, _ = load_model("tiny-bert", "sequence_classification", num_labels=3)
        model = model.double()
        fn = kernel.classifier_logits_fn(model)
    train, test = padded_tiny_bert_inputs(5, 0), padded_tiny_bert_inputs(4, 1)
    if mode == "classifier":
        train, test = ({k: v for k, v in b.items() if k != "mask_pos"} for b in (train, test))
    expected = per_example_kernel(model, fn, train, test)
    fast = kernel.ntk(model, train, test, logits_fn=fn, chunk_size=2, row_chunk_size=3)
    assert_same(fast, expected)
    assert_same(kernel.ntk(model, train, test, logits_fn=fn, chunk_size=3, sparse_rows=False), expected)
    square = kernel.ntk(model, train, logits_fn=fn, chunk_size=2)
    assert_same(square, per_example_kernel(model, fn, train, train))
    # an attention key bias has a zero gradient (softmax ignores a shift) computed as ±1e-20 noise whose
    # sign depends on the padding: signgd is compared without it
    no_key_bias = lambda n: not n.endswith("key.bias")  # noqa: E731
    assert_same(kernel.ntk(model, train, logits_fn=fn, formula="signgd", chunk_size=2, row_chunk_size=3,
                           subset=no_key_bias),
                kernel.ntk(model, train, dict(train), logits_fn=fn, formula="signgd", chunk_size=4,
                           sparse_rows=False, vectorize=False, subset=no_key_bias))


def test_causal_model_padded_vectorized_equals_each_example_alone():
    model, _ = load_model("tiny-gpt2-random", "sequence_classification", num_labels=2)
    model = model.double()
    model.config.pad_token_id = 0
    fn = kernel.classifier_logits_fn(model)
    batch = {k: v for k, v in padded_tiny_bert_inputs(4, 2).items() if k != "mask_pos"}
    # GPT-2's classifier reads the last non-pad token: pad with the pad id (0), never used inside
    expected = per_example_kernel(model, fn, batch, batch, keep=lambda n: "wte" not in n)
    got = kernel.ntk(model, batch, logits_fn=fn, chunk_size=3, subset=lambda n: "wte" not in n)
    assert_same(got, expected)


class Reused(nn.Module):
    """A linear layer called twice per example and one whose weight another layer shares."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)
        self.twin = nn.Linear(4, 3)
        self.twin.weight = self.out.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.body(torch.tanh(self.body(self.embed(ids)))))
        return (self.out(hidden) + self.twin(hidden) ** 2).mean(1)


@pytest.mark.parametrize("branch", ["multiplied", "expanded"])
def test_linear_weights_held_as_factors_give_the_per_example_gradients_kernel(monkeypatch, branch):
    """factor_linears (the default) against brute force and against whole per-example gradients, with
    the factors multiplied, or expanded into gradients (forced either way): a layer called twice, a
    shared weight (not factored), padded transformers batches (BERT's Linear, GPT-2's Conv1D)."""
    from raysel.methods.kernel import algorithm

    monkeypatch.setattr(algorithm, "EXPANDED_FLOP_COST", 0 if branch == "expanded" else 10 ** 12)
    torch.manual_seed(0)
    model, train, test = Reused().double(), ids(5, 0), ids(3, 1)
    fn = logits_of(model)
    params = kernel.select_params(model)
    assert list(algorithm._linear_factors(model, params, algorithm._Vocabulary({}, {}))) == ["body.weight"]
    ga, gb = brute_grads(model, fn, train), brute_grads(model, fn, test)
    for formula, sign in (("sgd", lambda g: g), ("signgd", torch.sign)):
        assert_same(kernel.ntk(model, train, test, logits_fn=fn, formula=formula, chunk_size=2),
                    brute_kernel(sign(ga), sign(gb)))
        assert_same(kernel.ntk(model, train, logits_fn=fn, formula=formula, chunk_size=2, vectorize=False),
                    brute_kernel(sign(ga), sign(ga)))

    bert, _ = load_model("tiny-bert", "masked_lm")
    gpt2, _ = load_model("tiny-gpt2-random", "sequence_classification", num_labels=2)
    gpt2.config.pad_token_id = 0
    prompts = padded_tiny_bert_inputs(5, 3)
    for model, fn, batch in ((bert.double(), kernel.prompt_logits_fn(bert, [11, 22]), prompts),
                             (gpt2.double(), kernel.classifier_logits_fn(gpt2),
                              {k: v for k, v in prompts.items() if k != "mask_pos"})):
        assert algorithm._linear_factors(model, kernel.select_params(model), algorithm._Vocabulary({}, {}))
        rows, cols = ({k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()})
        for options in ({}, {"sparse_rows": False}, {"vectorize": False, "chunk_size": 2}):
            assert_same(kernel.ntk(model, rows, cols, logits_fn=fn, **options),
                        kernel.ntk(model, rows, cols, logits_fn=fn, factor_linears=False, **options))
        assert_same(kernel.ntk(model, batch, logits_fn=fn, chunk_size=2),
                    kernel.ntk(model, batch, logits_fn=fn, chunk_size=2, factor_linears=False))


@pytest.mark.parametrize("formula", ["sgd", "asymmetric_signgd"])
@pytest.mark.parametrize("world", [2, 3, 5])
def test_shards_sum_to_the_single_worker_kernel_entry_for_entry(formula, world):
    model, train, test = tiny(2), ids(7, 8), ids(4, 9)
    fn = kernel.binary(logits_of(model)) if formula == "asymmetric_signgd" else logits_of(model)
    for eval_batch in (None, test):
        whole = kernel.ntk(model, train, eval_batch, logits_fn=fn, formula=formula, chunk_size=2, row_chunk_size=3)
        parts = [kernel.ntk(model, train, eval_batch, logits_fn=fn, formula=formula, chunk_size=2, row_chunk_size=3,
                            shard=(rank, world)) for rank in range(world)]
        assert torch.equal(sum(parts), whole)  # each entry computed by exactly one rank, zeros elsewhere
        assert sum(bool(p.any()) for p in parts) >= 2


@pytest.mark.parametrize("formula", ["sgd", "signgd", "asymmetric_signgd"])
def test_both_kernels_in_one_pass_equal_the_two_calls_with_the_train_jacobians_formed_once(monkeypatch, formula):
    """ntk(..., with_train=True): (train × train, train × eval) entry for entry as the two calls, on
    padded tiny-bert prompts (chunks of different lengths, row chunks that don't divide), also
    sharded; the train rows' Jacobians are formed once, not once per kernel."""
    from raysel.methods.kernel import algorithm

    bert, _ = load_model("tiny-bert", "masked_lm")
    bert = bert.double()
    fn = kernel.prompt_logits_fn(bert, [11, 22])
    fn = kernel.binary(fn) if formula == "asymmetric_signgd" else fn
    batch = padded_tiny_bert_inputs(8, 4)
    train, evals = {k: v[:5] for k, v in batch.items()}, {k: v[5:] for k, v in batch.items()}
    formed = []  # examples whose Jacobians were formed, per call
    jacobian_fn = algorithm._jacobian_fn

    def counting(*args, **kwargs):
        jac = jacobian_fn(*args, **kwargs)
        return lambda chunk: formed.append(algorithm._size(chunk)) or jac(chunk)
    monkeypatch.setattr(algorithm, "_jacobian_fn", counting)
    options = dict(logits_fn=fn, formula=formula, chunk_size=2, row_chunk_size=3)
    k_train, k_eval = kernel.ntk(bert, train, logits_fn=fn, formula=formula, chunk_size=2, row_chunk_size=3), None
    separately = sum(formed)
    k_eval = kernel.ntk(bert, train, evals, **options)
    separately, formed = sum(formed), []
    both = kernel.ntk(bert, train, evals, with_train=True, **options)
    assert torch.equal(both[0], k_train) and torch.equal(both[1], k_eval)
    assert sum(formed) == separately - 5  # the 5 train rows once: 5 + 2 (mirrored columns) + 2 × 3 eval columns
    shares = [kernel.ntk(bert, train, evals, with_train=True, shard=(rank, 3), **options) for rank in range(3)]
    assert all(torch.equal(sum(share[i] for share in shares), both[i]) for i in (0, 1))
    seen = []
    kernel.ntk(bert, train, evals, with_train=True, on_block=lambda done, total: seen.append((done, total)), **options)
    # 2 row chunks (3 + 2 rows); train columns mirrored (3 blocks) or, asymmetric, all 3 chunks of 2 (6);
    # eval columns: 2 chunks, once per pass (asymmetric: two)
    blocks = 6 + 2 * 2 * 2 if formula == "asymmetric_signgd" else 3 + 2 * 2
    assert seen == [(i, blocks) for i in range(1, blocks + 1)]
    with pytest.raises(ValueError, match="with_train needs an eval batch"):
        kernel.ntk(bert, train, with_train=True, logits_fn=fn)


def test_progress_callback_counts_this_ranks_blocks():
    model, train, test = tiny(), ids(5, 0), ids(3, 1)
    seen = []
    kernel.ntk(model, train, test, logits_fn=logits_of(model), chunk_size=2,
               on_block=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]  # 3 row chunks × 2 column chunks


def test_bad_names_list_the_allowed_ones():
    model, batch = tiny(), ids(2, 0)
    with pytest.raises(ValueError, match="sgd, signgd, asymmetric_signgd"):
        kernel.ntk(model, batch, logits_fn=logits_of(model), formula="adam")
    with pytest.raises(ValueError, match="all, exclude_embeddings"):
        kernel.ntk(model, batch, logits_fn=logits_of(model), subset="lora")
    with pytest.raises(ValueError, match="lstsq, logistic, svc, svr, asym"):
        kernel.solve(torch.eye(2).view(2, 1, 2, 1), torch.tensor([0, 1]), torch.eye(2).view(2, 1, 2, 1),
                     solver="ridge")
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        kernel.solve(torch.eye(2).view(2, 1, 2, 1), torch.tensor([-1, 1]), torch.eye(2).view(2, 1, 2, 1))


# ----------------------------------------------------------------------------- solvers

def linear_kernels(x_train: torch.Tensor, x_eval: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sgd eNTK of f(x) = Wx: K[i,c,j,c'] = δ_cc' x_i·x_j, computed by ntk on a bias-free Linear."""
    model = nn.Linear(x_train.shape[1], classes, bias=False).double()
    fn = lambda params, batch: functional_call(model, params, (batch["x"],))  # noqa: E731
    k_train = kernel.ntk(model, {"x": x_train}, logits_fn=fn)
    k_eval = kernel.ntk(model, {"x": x_train}, {"x": x_eval}, logits_fn=fn)
    eye = torch.eye(classes, dtype=torch.float64)
    assert_same(k_eval, torch.einsum("ip,jp,cd->icjd", x_train, x_eval, eye))
    return k_train, k_eval


def clusters(n: int, seed: int, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated Gaussian clusters around ±2·1, labels 0/1 alternating."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (2.0 * y - 1.0)[:, None].double() * 2.0 + 0.3 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("classes", [1, 3])
def test_lstsq_is_minimum_norm_linear_regression_on_the_features(classes):
    g = torch.Generator().manual_seed(0)
    x_train, x_eval = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g,
                                                                                      dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0]) if classes == 1 else torch.tensor([0, 2, 1, 2])
    k_train, k_eval = linear_kernels(x_train, x_eval, classes)
    result = kernel.solve(k_train, y, k_eval, solver="lstsq")
    targets = 2.0 * y[:, None].double() - 1 if classes == 1 else nn.functional.one_hot(y, classes).double()
    w = torch.linalg.lstsq(x_train, targets, driver="gelsd").solution  # N < D: the minimum-norm W
    assert_same(result.scores, x_eval @ w)
    expected = (x_eval @ w)[:, 0].gt(0).long() if classes == 1 else (x_eval @ w).argmax(1)
    assert torch.equal(result.labels, expected)
    assert torch.equal(kernel.solve(k_train, y, k_train, solver="lstsq").labels, y)  # interpolates


def test_ridge_and_f0_change_lstsq_as_documented():
    x_train, y = clusters(6, 1)
    x_eval, _ = clusters(4, 2)
    k_train, k_eval = linear_kernels(x_train, x_eval, 2)
    plain = kernel.solve(k_train, y, k_eval).scores
    kt, ke = k_train.reshape(12, 12), k_eval.reshape(12, 8)
    targets = nn.functional.one_hot(y, 2).double().reshape(-1)
    ridge = kernel.solve(k_train, y, k_eval, reg=0.1).scores
    sigma = torch.linalg.svdvals(kt)[0]
    assert_same(ridge.reshape(-1), ke.T @ torch.linalg.solve(kt + 0.1 * sigma * torch.eye(12, dtype=torch.float64),
                                                             targets))
    assert not torch.allclose(ridge, plain)
    g = torch.Generator().manual_seed(3)
    f0_train, f0_eval = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g,
                                                                                         dtype=torch.float64)
    for s in (1.0, 4.0):
        shifted = kernel.solve(k_train, y, k_eval, f0_train=f0_train, f0_eval=f0_eval, f0_scaling=s).scores
        residual = targets - f0_train.reshape(-1) / s
        assert_same(shifted.reshape(-1), ke.T @ torch.linalg.pinv(kt) @ residual + f0_eval.reshape(-1) / s)
        assert not torch.allclose(shifted, plain)
    zero = kernel.solve(k_train, y, k_eval, f0_train=torch.zeros(6, 2), f0_eval=torch.zeros(4, 2)).scores
    assert_same(zero, plain)
    with pytest.raises(ValueError, match="both"):
        kernel.solve(k_train, y, k_eval, f0_train=f0_train)


@pytest.mark.parametrize("classes", [1, 2])
@pytest.mark.parametrize("solver", ["logistic", "svc", "svr", "lstsq"])
def test_solvers_separate_an_easy_set(solver, classes):
    x_train, y_train = clusters(10, 4)
    x_eval, y_eval = clusters(8, 5)
    k_train, k_eval = linear_kernels(x_train, x_eval, classes)
    result = kernel.solve(k_train, y_train, k_eval, solver=solver)
    assert torch.equal(result.labels, y_eval)
    assert result.scores.shape[0] == 8 and result.scores.dtype == torch.float64


@pytest.mark.filterwarnings("ignore::FutureWarning")  # sklearn's announced LogisticRegressionCV changes
def test_logistic_cv_runs():
    x_train, y_train = clusters(10, 6)
    k_train, k_eval = linear_kernels(x_train, x_train, 1)
    assert torch.equal(kernel.solve(k_train, y_train, k_eval, solver="logistic", logistic_cv=3).labels, y_train)


def test_asym_solver_on_a_separable_binary_set():
    x_train, y_train = clusters(8, 7, dim=3)
    x_eval, y_eval = clusters(6, 8, dim=3)
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    fn = lambda params, batch: functional_call(model, params, (batch["x"],))  # noqa: E731
    k_train = kernel.ntk(model, {"x": x_train}, logits_fn=fn, formula="asymmetric_signgd")
    k_eval = kernel.ntk(model, {"x": x_train}, {"x": x_eval}, logits_fn=fn, formula="asymmetric_signgd")
    for lam in (0.0, 0.5, 1.0):
        result = kernel.solve(k_train, y_train, k_eval, solver="asym", kernel_lambda=lam, kernel_gamma=1.0)
        assert torch.equal(result.labels, y_eval)
    # the solution satisfies the documented system, and λ = 1 uses α only
    gamma, s = 0.5, 2.0 * y_train.double() - 1
    h = s[:, None] * k_train[0].reshape(8, 8) * s[None]
    eye = torch.eye(8, dtype=torch.float64) / gamma
    sol = torch.linalg.solve(torch.cat([torch.cat([eye, h], 1), torch.cat([h.T, eye], 1)]),
                             torch.ones(16, dtype=torch.float64))
    result = kernel.solve(k_train, y_train, k_eval, solver="asym", kernel_lambda=1.0, kernel_gamma=gamma)
    assert_same(result.scores[:, 0], (sol[:8] * s) @ k_eval[0].reshape(8, 6))
    with pytest.raises(ValueError, match="2-pass"):
        kernel.solve(k_train[0], y_train, k_eval[0], solver="asym")


# ----------------------------------------------------------------------------- LM-BFF prompts
def test_lm_bff_prompts_put_one_mask_and_read_single_token_label_words():
    from raysel.data.prompts import PROMPTS, encode, fill, label_word_ids, prompt_for
    from raysel.models import load_model

    _, tokenizer = load_model("minilm", "masked_lm")
    for task in ("sst-2", "sst-5", "subj", "trec", "mnli", "qnli", "mrpc", "pydocs-topics"):
        prompt = prompt_for(task)
        assert len(label_word_ids(tokenizer, prompt.label_words)) == len(prompt.label_words)
    assert fill(PROMPTS["sst-2"], "<mask>", "A fine film") == "A fine film It was<mask>."
    assert fill(PROMPTS["mnli"], "<mask>", "He ran.", "The man moved") == "He ran?<mask>, the man moved"
    batch = encode(tokenizer, PROMPTS["sst-2"], [("a gripping story", None), ("dull " * 200, None)],
                   max_length=32)
    assert batch["input_ids"].shape[1] <= 32
    for row, position in zip(batch["input_ids"], batch["mask_pos"]):
        assert row[position] == tokenizer.mask_token_id and (row == tokenizer.mask_token_id).sum() == 1
    with pytest.raises(ValueError, match="tasks with a prompt: sst-2"):
        prompt_for("cola")
    with pytest.raises(ValueError, match="needs a sentence pair"):
        fill(PROMPTS["rte"], "<mask>", "only one")
    with pytest.raises(ValueError, match="not a single token"):
        label_word_ids(tokenizer, ("antidisestablishmentarianism",))
