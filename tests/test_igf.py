"""IGF's pure algorithm (raysel.methods.igf): information gain engines, objective set, learner, filter."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from raysel.methods import igf
from raysel.models import load_model

VOCAB = 2000  # tiny-gpt2-random's and tiny-llama-random's


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["tiny-gpt2-random", "tiny-llama-random"])
def model64(request):
    """The tiny random GPT-2, and LLaMA (smollm2-135m's architecture), in float64 (IG is a small difference
    of two perplexities), in train mode so that the tests also see that IG switches dropout off."""
    model, _ = load_model(request.param, "causal_lm")
    return model.double().train()


def tokens(*shape: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def assert_same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9):
    """Equal per element to rtol, with an absolute floor scaled by the largest value."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


# ----------------------------------------------------------------------------- information gain

@pytest.mark.parametrize("step, lr", [("adamw", 1e-3), ("sgd", 0.5)])
@pytest.mark.parametrize("max_grad_norm", [1e-2, None], ids=["clipped", "unclipped"])
def test_exact_engine_equals_the_reference_loop(model64, step, lr, max_grad_norm):
    contexts, objective = tokens(5, 12, seed=0), tokens(4, 12, seed=1)
    hyper = dict(lr=lr, step=step, max_grad_norm=max_grad_norm)
    loop = igf.information_gain(model64, contexts, objective, engine="loop", **hyper)
    for chunk_size, eval_batch_size in ((2, None), (3, 3), (5, 1)):  # chunks and slices that don't divide
        exact = igf.information_gain(model64, contexts, objective, engine="exact", chunk_size=chunk_size,
                                     eval_batch_size=eval_batch_size, **hyper)
        assert_same(exact, loop)
    assert model64.training  # the caller's mode comes back
    assert loop.abs().min() > 0


@pytest.mark.slow
def test_the_compiled_exact_engine_equals_the_reference_loop(model64):
    """compile=True (torch.compile of the objective's forward, ~10 s to compile here) in float64. LLaMA's
    RMSNorm computes in float32 in transformers, and compiled code rounds it in another order."""
    contexts, objective = tokens(5, 12, seed=0), tokens(4, 12, seed=1)
    hyper = dict(lr=1e-3, step="adamw", max_grad_norm=1e-2)
    loop = igf.information_gain(model64, contexts, objective, engine="loop", **hyper)
    compiled = igf.information_gain(model64, contexts, objective, chunk_size=2, eval_batch_size=3, compile=True,
                                    **hyper)
    assert_same(compiled, loop, rtol=1e-10 if model64.config.model_type == "gpt2" else 1e-4)


def test_clipping_and_weight_decay_change_ig_the_same_way_in_both_engines(model64):
    contexts, objective = tokens(3, 10, seed=2), tokens(3, 10, seed=3)
    results = {}
    for name, hyper in {"plain": dict(max_grad_norm=None), "clipped": dict(max_grad_norm=1e-2),
                        "decay": dict(max_grad_norm=None, weight_decay=0.1)}.items():
        for step in ("adamw", "sgd"):
            kw = dict(lr=1e-3 if step == "adamw" else 0.5, step=step, **hyper)
            loop = igf.information_gain(model64, contexts, objective, engine="loop", eval_batch_size=3, **kw)
            assert_same(igf.information_gain(model64, contexts, objective, chunk_size=2, **kw), loop)
            results[name, step] = loop
    for step in ("adamw", "sgd"):
        assert not torch.allclose(results["plain", step], results["clipped", step])  # the clip was active
        assert not torch.allclose(results["plain", step], results["decay", step])


def test_ig_is_positive_when_the_context_is_the_objective_and_first_order_agrees(model64):
    objective = tokens(4, 12, seed=4)
    for step, lr in (("sgd", 1e-4), ("adamw", 1e-6)):
        kw = dict(lr=lr, step=step, max_grad_norm=None)
        exact = igf.information_gain(model64, objective, objective, **kw)
        first = igf.information_gain(model64, objective, objective, engine="first_order", chunk_size=3, **kw)
        assert (exact > 0).all() and (first > 0).all()  # a step on the objective itself lowers its perplexity
        torch.testing.assert_close(first, exact, rtol=1e-2, atol=0)


def test_frozen_parameters_stay_put_in_both_engines(model64):
    model = copy.deepcopy(model64)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied to the LM head: both frozen
    contexts, objective = tokens(3, 10, seed=13), tokens(3, 10, seed=14)
    loop = igf.information_gain(model, contexts, objective, engine="loop", eval_batch_size=3, lr=1e-3)
    assert_same(igf.information_gain(model, contexts, objective, lr=1e-3), loop)
    assert not torch.allclose(loop, igf.information_gain(model64, contexts, objective, lr=1e-3))


@pytest.mark.parametrize("step, lr", [("adamw", 1e-6), ("sgd", 3e-4)])
def test_first_order_ranks_contexts_like_exact_for_a_small_lr(model64, step, lr):
    contexts, objective = tokens(10, 12, seed=5), tokens(4, 12, seed=6)
    kw = dict(lr=lr, step=step, max_grad_norm=3.0)
    exact = igf.information_gain(model64, contexts, objective, chunk_size=5, **kw)
    first = igf.information_gain(model64, contexts, objective, engine="first_order", chunk_size=4, **kw)
    assert igf.rank_correlation(first, exact) > 0.95
    torch.testing.assert_close(first, exact, rtol=5e-2, atol=1e-2 * float(exact.abs().max()))


def test_information_gain_rejects_unknown_names(model64):
    ids = tokens(1, 8, seed=0)
    with pytest.raises(ValueError, match="engine must be one of exact, first_order, loop"):
        igf.information_gain(model64, ids, ids, engine="fast")
    with pytest.raises(ValueError, match="step must be one of adamw, sgd"):
        igf.information_gain(model64, ids, ids, step="adam")


def test_objective_perplexity_any_batch_size_equals_the_per_context_reference(model64):
    objective = tokens(7, 9, seed=7)
    model64.eval()
    with torch.no_grad():  # the reference: batch 1, mean of the per-context mean token losses
        losses = [torch.nn.functional.cross_entropy(model64(ids[None]).logits[0, :-1], ids[1:]) for ids in objective]
        reference = math.exp(sum(float(loss) for loss in losses) / 7)
    model64.train()
    for batch_size in (1, 3, 7, 32):
        assert igf.objective_perplexity(model64, objective, batch_size) == pytest.approx(reference, rel=1e-12)
    assert model64.training


# ----------------------------------------------------------------------------- objective set and pool

def articles(*lengths: int) -> list[torch.Tensor]:
    """Article i holds i*1000, i*1000+1, ...: a window's article and contiguity can be read off it."""
    return [torch.arange(i * 1000, i * 1000 + n) for i, n in enumerate(lengths)]


def test_objective_takes_the_first_qualifying_articles_and_the_pool_the_later_ones():
    corpus = articles(5, 50, 11, 60, 70, 3, 80, 90)  # longer than min_len=10: 1, 3, 4, 6, 7 (not 2: 11 > 10 but < 12)
    generator = torch.Generator().manual_seed(0)
    objective, pool = igf.objective_and_pool(corpus, size=2, context_len=12, min_len=10, trim=False,
                                             generator=generator)
    assert objective.dtype == torch.long and objective.shape == (2, 12)
    assert objective.tolist() == [list(range(1000, 1012)), list(range(3000, 3012))]
    assert [int(a[0]) for a in pool] == [4000, 6000, 7000]
    trimmed, pool2 = igf.objective_and_pool(corpus, size=2, context_len=12, min_len=10, trim=True,
                                            generator=generator)
    assert [int(a[0]) for a in pool2] == [4000, 6000, 7000]
    for row, article in zip(trimmed, (1, 3)):
        assert row[0] // 1000 == article and (row.diff() == 1).all()  # a window inside its article
    starts = {int(igf.objective_and_pool(corpus, size=2, context_len=12, min_len=10, trim=True,
                                         generator=torch.Generator().manual_seed(s))[0][0, 0]) for s in range(20)}
    assert len(starts) > 5 and min(starts) >= 1000 and max(starts) <= 1000 + 50 - 12


def test_too_few_qualifying_articles_is_an_error_with_the_numbers():
    with pytest.raises(ValueError, match=r"more than size=3 articles longer than min_len=20 .* 2 of the 4 articles"):
        igf.objective_and_pool(articles(30, 5, 40, 10), size=3, context_len=8, min_len=20, trim=True,
                               generator=torch.Generator())
    with pytest.raises(ValueError, match="size=2"):  # the pool would be empty
        igf.objective_and_pool(articles(30, 40), size=2, context_len=8, min_len=20, trim=True,
                               generator=torch.Generator())


def test_sample_context_is_a_window_of_a_pool_article():
    pool = articles(40, 50, 60)
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(30):
        window = igf.sample_context(pool, 16, generator)
        article = int(window[0]) // 1000
        assert window.shape == (16,) and (window.diff() == 1).all()
        assert int(window[-1]) < article * 1000 + len(pool[article])
        seen.add(article)
    assert seen == {0, 1, 2}


# ----------------------------------------------------------------------------- z-scores, learner

def test_zscore_uses_the_population_std_like_numpy():
    values = torch.tensor([1.0, 2.0, 4.0, 9.0])
    z, mean, std = igf.zscore(values)
    assert mean == pytest.approx(4.0) and std == pytest.approx(float(np.std(values.numpy())))
    np.testing.assert_allclose(z.numpy(), (values.numpy() - 4.0) / np.std(values.numpy()))
    with pytest.raises(ValueError, match="standard deviation 0"):
        igf.zscore(torch.ones(3))


def test_learner_embedding_is_a_trainable_copy_and_shapes():
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    learner = igf.SecondaryLearner.from_model(model)
    wte = model.get_input_embeddings().weight
    assert torch.equal(learner.embed.weight, wte) and learner.embed.weight.data_ptr() != wte.data_ptr()
    assert learner.embed.weight.requires_grad
    assert learner.conv.in_channels == wte.shape[1] and learner.conv.out_channels == 256
    assert learner(tokens(5, 32, seed=0)).shape == (5,)


def test_learner_overfits_its_training_pairs_and_keeps_the_best_heldout_epoch():
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    torch.manual_seed(0)
    learner = igf.SecondaryLearner.from_model(model)
    contexts, targets = tokens(64, 8, seed=8), torch.randn(64, generator=torch.Generator().manual_seed(9))
    rng = torch.get_rng_state()
    state, info = igf.train_secondary_learner(learner, contexts, targets, heldout=512, lr=3e-3, batch_size=16,
                                              epochs=40, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    assert info["heldout"] == 16  # capped at a quarter of 64
    # random targets: nothing generalises, so held-out error rises as it overfits and the best epoch is early
    per_epoch = info["heldout_mse_per_epoch"]
    assert info["heldout_mse"] == min(per_epoch) and info["best_epoch"] == per_epoch.index(min(per_epoch)) + 1
    assert info["best_epoch"] < 40 and per_epoch[-1] > info["heldout_mse"]
    assert all(torch.equal(learner.state_dict()[k], v) for k, v in state.items())  # it holds the best state
    held = igf.predict(learner, contexts[:16])
    assert float(torch.nn.functional.mse_loss(held, targets[:16])) == pytest.approx(info["heldout_mse"], rel=1e-5)
    # held-out pairs that are copies of training pairs: the learner fits them almost exactly
    fitted = igf.SecondaryLearner.from_model(model)
    pairs = torch.cat([torch.arange(5), torch.arange(15)])
    _, info = igf.train_secondary_learner(fitted, contexts[pairs], targets[pairs], lr=3e-3, batch_size=16, epochs=100,
                                          seed=3)
    assert info["heldout"] == 5 and info["heldout_mse"] < 0.05 * float(targets[:5].var())
    assert info["heldout_spearman"] > 0.85 and info["train_mse"][-1] < 0.1 * info["train_mse"][0]


def test_learner_training_is_seeded_and_needs_a_few_pairs():
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    contexts, targets = tokens(20, 6, seed=10), torch.randn(20, generator=torch.Generator().manual_seed(11))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        learner = igf.SecondaryLearner.from_model(model)
        runs.append(igf.train_secondary_learner(learner, contexts, targets, epochs=3, batch_size=4, seed=5)[1])
    assert runs[0]["train_mse"] == runs[1]["train_mse"]
    with pytest.raises(ValueError, match="at least 4"):
        igf.train_secondary_learner(learner, contexts[:3], targets[:3])


# ----------------------------------------------------------------------------- thresholds, filling

def test_threshold_schedules():
    assert igf.threshold_at("none", 0) is None
    assert [igf.threshold_at("constant", s, value=0.5) for s in (0, 10, 99)] == [0.5, 0.5, 0.5]
    assert [igf.threshold_at("shifting", s) for s in (0, 9, 10, 60)] == [1.0, 1.0, -1.0, -1.0]
    assert [igf.threshold_at("shifting", s, start=2.0, end=0.0, switch_step=3) for s in (2, 3)] == [2.0, 0.0]
    with pytest.raises(ValueError, match="none, constant, shifting"):
        igf.threshold_at("linear", 0)


def test_accept_skips_only_scores_below_the_threshold():
    q = torch.tensor([-2.0, -1.0, 0.0, 1.0, 1.5])
    assert igf.accept(q, 1.0).tolist() == [False, False, False, True, True]
    assert igf.accept(q, -1.0).tolist() == [False, True, True, True, True]
    assert igf.accept(q, None).all()


def candidates(n: int):
    """Context i is [i, i, i, i]; its score is i % 3 (so every third passes threshold 2)."""
    return (torch.full((4,), i) for i in range(n))


def test_fill_batch_keeps_every_accepted_context_and_counts_what_it_examined():
    calls = []

    def score(ids):
        calls.append(len(ids))
        return (ids[:, 0] % 3).float()

    for block in (1, 5, 64):
        batch, examined = igf.fill_batch(candidates(100), score, 2.0, 4, block=block)
        assert batch[:, 0].tolist() == [2, 5, 8, 11] and examined == 12  # the same for any block size
    stream = candidates(100)
    first, n1 = igf.fill_batch(stream, score, 2.0, 2, block=1)
    second, n2 = igf.fill_batch(stream, score, 2.0, 2, block=1)  # one at a time: the stream continues
    assert first[:, 0].tolist() == [2, 5] and second[:, 0].tolist() == [8, 11] and (n1, n2) == (6, 6)


def test_fill_batch_without_a_threshold_takes_the_next_contexts_unscored():
    def score(ids):
        raise AssertionError("no scoring without a threshold")

    batch, examined = igf.fill_batch(candidates(100), score, None, 3)
    assert batch[:, 0].tolist() == [0, 1, 2] and examined == 3
    batch, examined = igf.fill_batch(candidates(100), None, 1.0, 3)
    assert examined == 3


def test_fill_batch_stops_when_too_few_pass():
    with pytest.raises(ValueError, match=r"only 3 of 4 contexts accepted after 10 candidates at threshold 2.0"):
        igf.fill_batch(candidates(10), lambda ids: (ids[:, 0] % 3).float(), 2.0, 4)
    with pytest.raises(ValueError, match="max_candidates=5"):
        igf.fill_batch(candidates(100), lambda ids: (ids[:, 0] % 3).float(), 2.0, 4, max_candidates=5)


def test_deep_copied_model_is_untouched_by_information_gain(model64):
    before = copy.deepcopy(model64.state_dict())
    ids = tokens(2, 8, seed=12)
    for engine in ("loop", "exact", "first_order"):
        igf.information_gain(model64, ids, ids, engine=engine, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in model64.state_dict().items())


def test_learner_checks_heldout_every_eval_every_batches_too():
    model, _ = load_model("tiny-gpt2-random", "causal_lm")
    contexts, targets = tokens(64, 8, seed=8), torch.randn(64, generator=torch.Generator().manual_seed(9))
    runs = {}
    for every in (None, 1):
        torch.manual_seed(0)
        learner = igf.SecondaryLearner.from_model(model)
        runs[every] = igf.train_secondary_learner(learner, contexts, targets, lr=3e-3, batch_size=16, epochs=6,
                                                  eval_every=every, seed=3)[1]
    # the same training; checking after every batch can only find an equal or better checkpoint
    assert runs[1]["heldout_mse_per_epoch"] == runs[None]["heldout_mse_per_epoch"]
    assert runs[1]["heldout_mse"] <= runs[None]["heldout_mse"]
    assert runs[None]["best_batch"] % 3 == 0  # 48 training pairs / 16 = 3 batches per epoch: epoch ends only
