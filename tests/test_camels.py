"""CaMeLS's pure functions: the weighted loss, the functional inner loop (against a plain optimizer step),
meta-gradients (against finite differences, float64), the baseline weightings on known text, and the
SQuAD scores."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from raysel.methods.camels import (TfidfScorer, TokenWeightModel, apply_min_threshold, char_scores_weights,
                                   inner_loop, kl_locality, meta_step, outer_loss, rule_based_spans, sgd_step,
                                   span_weights, trainable_params, weighted_lm_loss)
from raysel.methods.camels.algorithm import lm_labels
from raysel.methods.camels.qa import encode_documents, encode_qa, sample_stream, score_answers
from raysel.metrics import normalize_answer, squad_em, squad_em_prefix, squad_f1
from raysel.models import load_model


@pytest.fixture(scope="module", params=["tiny-gpt2-random", "tiny-llama-random"])
def tiny(request):
    """The tiny random GPT-2, and LLaMA (smollm2-135m's architecture)."""
    model, tokenizer = load_model(request.param, "causal_lm")
    return model.eval(), tokenizer


def documents(tokenizer, texts=("The Ferry Company of Brexdrath was founded in 1758.", "Ada Lovelace wrote notes.")):
    return {k: v for k, v in encode_documents(tokenizer, list(texts), 64).items() if k != "offset_mapping"}


# ---------------------------------------------------------------- weighted loss
def test_weighted_loss_with_unit_weights_is_the_plain_lm_loss(tiny):
    model, tokenizer = tiny
    docs = documents(tokenizer)
    assert docs["attention_mask"].min() == 0  # the two documents differ in length: padding is masked
    labels = lm_labels(docs["input_ids"], docs["attention_mask"])
    out = model(input_ids=docs["input_ids"], attention_mask=docs["attention_mask"], labels=labels)
    ones = torch.ones(docs["input_ids"].shape)
    assert float(weighted_lm_loss(out.logits, labels, ones)) == pytest.approx(float(out.loss), rel=1e-6)
    # a weight scales its own token's loss only; weight 0 everywhere gives 0
    assert float(weighted_lm_loss(out.logits, labels, torch.zeros_like(ones))) == 0.0
    doubled = ones.clone()
    doubled[0, 3] = 2.0
    nll = torch.nn.functional.cross_entropy(out.logits[0, 2], docs["input_ids"][0, 3])
    real = int((labels[:, 1:] != -100).sum())
    assert float(weighted_lm_loss(out.logits, labels, doubled)) == pytest.approx(float(out.loss + nll / real), rel=1e-5)


def test_weight_model_starts_at_ln2_over_beta_on_real_tokens(tiny):
    model, tokenizer = tiny
    weight_model = TokenWeightModel(copy.deepcopy(model.base_model), model.config.hidden_size)
    docs = documents(tokenizer)
    weights = weight_model(docs["input_ids"], docs["attention_mask"])
    real = docs["attention_mask"].bool()
    assert torch.allclose(weights[real], torch.full_like(weights[real], math.log(2) / 3))
    assert float(weights[~real].abs().sum()) == 0.0


# ---------------------------------------------------------------- inner loop
def test_functional_sgd_step_equals_a_plain_optimizer_step(tiny):
    model, tokenizer = tiny
    model = copy.deepcopy(model).double()
    docs = documents(tokenizer)
    weights = torch.rand(docs["input_ids"].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    new = sgd_step(model, trainable_params(model), docs, weights, lr=0.1, create_graph=False)

    plain = copy.deepcopy(model)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    out = plain(input_ids=docs["input_ids"], attention_mask=docs["attention_mask"])
    weighted_lm_loss(out.logits, lm_labels(docs["input_ids"], docs["attention_mask"]), weights).backward()
    optimizer.step()
    changed = 0
    for name, p in plain.named_parameters():
        assert torch.allclose(new[name], p, atol=1e-12, rtol=1e-10), name
        changed += int(not torch.equal(p, dict(model.named_parameters())[name]))
    assert changed > 0


def test_sequential_inner_loop_is_one_step_per_document_without_padding(tiny):
    model, tokenizer = tiny
    model = copy.deepcopy(model).double()
    docs = documents(tokenizer)
    weights = torch.rand(docs["input_ids"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    adapted = inner_loop(model, trainable_params(model), docs, weights, 0.05, sequential=True, create_graph=False)
    by_hand = trainable_params(model)
    for i in range(2):
        n = int(docs["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :n] for k, v in docs.items()}
        by_hand = sgd_step(model, by_hand, one, weights[i:i + 1, :n], 0.05, create_graph=False)
    for name in adapted:
        assert torch.allclose(adapted[name], by_hand[name], atol=1e-12), name
    batch_step = inner_loop(model, trainable_params(model), docs, weights, 0.05, sequential=False, create_graph=False)
    embedding = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert not torch.allclose(batch_step[embedding], adapted[embedding])


# ---------------------------------------------------------------- meta-gradients
def rms_norm_in_input_dtype(self, hidden_states):
    """LlamaRMSNorm's computation without its cast to float32 (which makes a float64 LLaMA float32 there)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def test_meta_gradients_reach_the_weight_model_and_match_finite_differences(tiny, monkeypatch):
    """d(outer loss)/d(weight model) through two sequential inner SGD steps and the KL term, against
    central differences along a random direction in the weight model's parameters (float64; LLaMA's
    RMSNorm, which transformers computes in float32 whatever the model's dtype, kept in float64)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    monkeypatch.setattr(LlamaRMSNorm, "forward", rms_norm_in_input_dtype)
    base, tokenizer = tiny
    base = copy.deepcopy(base).double()
    for p in base.parameters():
        p.requires_grad_(False)
    encoder = copy.deepcopy(base.base_model).requires_grad_(True)
    weight_model = TokenWeightModel(encoder, base.config.hidden_size, head_size=8).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the zero init, so that the encoder's gradients are not all zero
        for p in weight_model.head.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    weight_model.eval()
    docs = documents(tokenizer)
    questions = encode_qa(tokenizer, [("Who founded the company?", "Ada"), ("When?", "1758")])
    unrelated = documents(tokenizer, ("Unrelated text about tables.", "More unrelated text here."))
    start = trainable_params(base)
    kwargs = dict(inner_lr=0.5, sequential=True, c_kl=0.1, c_norm=0.01)

    weight_model.zero_grad()
    meta_step(base, weight_model, start, docs, questions, unrelated, **kwargs)
    grads = {n: p.grad.clone() for n, p in weight_model.named_parameters()}
    first_layer = [n for n in grads if n.startswith(("encoder.h.0.", "encoder.layers.0."))]
    assert first_layer and all(float(grads[n].abs().sum()) > 0 for n in first_layer)  # reaches the first layer
    direction = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64)
                 for n, p in weight_model.named_parameters()}
    length = math.sqrt(sum(float((v ** 2).sum()) for v in direction.values()))
    direction = {n: v / length for n, v in direction.items()}  # a unit step: small second-order error
    analytic = sum(float((grads[n] * direction[n]).sum()) for n in grads)

    def loss_at(epsilon: float) -> float:
        moved = copy.deepcopy(weight_model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(epsilon * direction[n])
            weights = moved(docs["input_ids"], docs["attention_mask"])
        adapted = inner_loop(base, start, docs, weights, kwargs["inner_lr"], sequential=True, create_graph=False)
        with torch.no_grad():
            return float(outer_loss(base, start, adapted, questions, unrelated, weights, docs["attention_mask"],
                                    c_kl=0.1, c_norm=0.01)["loss"])

    epsilon = 1e-5
    numeric = (loss_at(epsilon) - loss_at(-epsilon)) / (2 * epsilon)
    assert abs(analytic) > 1e-6
    assert numeric == pytest.approx(analytic, rel=1e-5)


def test_kl_locality_is_zero_for_the_same_model_and_positive_otherwise():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5)
    assert float(kl_locality(logits, logits, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_locality(logits, logits + torch.randn(logits.shape), mask)) > 0


# ---------------------------------------------------------------- baselines
def test_rule_based_salient_spans_on_known_text():
    text = ("Ada Lovelace (born 10 December 1815) was a mathematician from London. In 1843, Lovelace "
            "published notes for the Analytical Engine; the Bank of England has 300 staff.")
    spans = [text[s:e] for s, e in rule_based_spans(text)]
    assert spans == ["Ada Lovelace", "10 December 1815", "London", "1843", "Lovelace", "Analytical Engine",
                     "Bank of England"]  # "In" (sentence-initial) and the number 300 are not entities


def test_span_weights_mark_the_tokens_inside_spans(tiny):
    _, tokenizer = tiny
    text = "Notes by Ada Lovelace in 1843 were long."
    enc = encode_documents(tokenizer, [text], 64)
    weights = span_weights(enc["offset_mapping"][0], rule_based_spans(text))
    marked = "".join(text[s:e] for (s, e), w in zip(enc["offset_mapping"][0].tolist(), weights) if w == 1)
    assert marked.replace(" ", "") == "AdaLovelace1843"
    assert set(weights.tolist()) == {0.0, 1.0}


def test_tfidf_weights_rare_words_above_common_ones_and_min_threshold_applies(tiny):
    _, tokenizer = tiny
    corpus = ["the town lies on the river", "the river is long", "the town of Zorbath has a mill"]
    scorer = TfidfScorer(corpus)
    text = corpus[2]
    scores = scorer.char_scores(text)
    assert float(scores[text.index("Zorbath")]) > float(scores[text.index("town")]) > 0
    assert float(scores[text.index(" ")]) == 0.0  # spaces belong to no word
    enc = encode_documents(tokenizer, [text], 64)
    weights = char_scores_weights(enc["offset_mapping"][0], scores)
    assert float(weights.max()) == pytest.approx(float(scores.max()))
    thresholded = apply_min_threshold(weights, 0.5)
    nonzero = weights[weights > 0]
    assert int((thresholded > 0).sum()) < int((weights > 0).sum())
    assert float(thresholded[thresholded > 0].min()) >= float(torch.quantile(nonzero.double(), 0.5)) - 1e-6
    assert torch.equal(apply_min_threshold(weights, 0.0), weights)


# ---------------------------------------------------------------- QA scores
@pytest.mark.parametrize("text, expected", [
    ("The Cat!", "cat"), ("  a  big   dog. ", "big dog"), ("An apple, the pear", "apple pear"), ("Ü-Bahn", "übahn")])
def test_squad_normalisation(text, expected):
    assert normalize_answer(text) == expected


def test_squad_f1_and_both_exact_matches():
    assert squad_f1("the cat sat", ["a cat sat on the mat"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert squad_f1("Paris", ["London", "paris."]) == 1.0
    assert squad_f1("", ["x"]) == 0.0
    assert squad_em("The Cat", ["cat"]) == 1.0 and squad_em("cat sat", ["cat"]) == 0.0
    assert squad_em_prefix("cat sat", ["cat"]) == 1.0  # the reference's EM: the prediction starts with the answer
    assert squad_em_prefix("a", ["the"]) == 0.0  # an answer that normalises to nothing matches nothing
    scores = score_answers(["cat", "dog sat"], [["cat"], ["dog"]], "best")
    assert scores == {"f1": pytest.approx(100 * (1 + 2 / 3) / 2), "em": 50.0, "em_prefix": 100.0}


def test_qa_encoding_targets_only_the_answer(tiny):
    _, tokenizer = tiny
    batch = encode_qa(tokenizer, [("Who?", "Ada Lovelace"), ("When was it?", "1843")])
    for row, (question, answer) in enumerate([("Who?", "Ada Lovelace"), ("When was it?", "1843")]):
        targets = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert targets[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(targets[:-1]) == " " + answer
        assert batch["input_ids"][row, :len(tokenizer(question)["input_ids"])].tolist() == tokenizer(question)["input_ids"]


def test_streams_are_seeded_samples_without_replacement():
    docs = [{"text": str(i)} for i in range(20)]
    a, b, c = sample_stream(docs, 5, 0), sample_stream(docs, 5, 0), sample_stream(docs, 5, 1)
    assert a == b and a != c and len({d["text"] for d in a}) == 5
    assert len(sample_stream(docs, None, 0)) == 20


def test_meta_training_resumes_from_its_checkpoint(tmp_path):
    """A meta-training trial that died after step 2's checkpoint and restarted ends exactly where an
    uninterrupted one does: weight model, optimizer state, the carried base model, the counters and the
    dropout RNG are all restored (with any of them left out, step 3 and 4 would differ)."""
    from raysel.inputs import DataSpec, ModelSpec
    from raysel.methods.camels import Camels, CamelsParams
    from raysel.run_context import LocalRun

    params = CamelsParams(phase="meta_train", base_model="tiny-gpt2-random", outer_steps=4, val_every=2,
                          grad_acc_steps=1, update_batch_size=2, val_batches=1, outer_lr=1e-2, locality_tokens=16,
                          reset_base_freq=4)

    class Dies(Exception):
        pass

    class DiesAfterStep2(LocalRun):
        def report(self, step, **metrics):
            super().report(step, **metrics)
            if step == 2:
                raise Dies

    def local_run(cls=LocalRun, name="trial") -> LocalRun:
        return cls(seed=0, model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="synthetic-facts"),
                   artifact_dir=tmp_path / name, shared_dir=tmp_path / f"shared-{name}")

    torch.manual_seed(0)  # as a trial's seed_everything does: the weight model's dropout
    full = local_run(name="full")
    Camels().train_loop(params, full)
    torch.manual_seed(0)
    crashed = local_run(DiesAfterStep2, "crashed")
    with pytest.raises(Dies):
        Camels().train_loop(params, crashed)
    assert crashed.saved_state["step"] == 2
    restarted = local_run(name="crashed")
    restarted.saved_state = crashed.saved_state
    torch.manual_seed(12345)  # the global RNG must not matter
    Camels().train_loop(params, restarted)

    assert [r["step"] for r in restarted.results] == [3, 4]  # no step 0 validation, no repeated steps
    for key in ("train_loss", "val_loss", "best_val_loss"):
        assert restarted.results[-1][key] == pytest.approx(full.results[-1][key], rel=1e-9, abs=0), key
    end, expected = restarted.saved_state, full.saved_state  # the shared loop's checkpoints
    carried, carried_expected = end["extra"], expected["extra"]
    assert carried["docs_seen"] == carried_expected["docs_seen"]
    assert carried["best"] == pytest.approx(carried_expected["best"], rel=1e-9)
    for name, tensor in expected["model"].items():  # the weight model
        assert torch.allclose(end["model"][name], tensor, rtol=1e-7, atol=1e-9), name
    for name, tensor in carried_expected["current"].items():  # the carried base
        assert torch.allclose(carried["current"][name], tensor, rtol=1e-7, atol=1e-9), name
    assert end["optimizer"]["state"][0]["step"] == expected["optimizer"]["state"][0]["step"] == 4

def test_every_phase_runs_on_a_llama_base_with_a_weight_model_on_its_first_layer(tmp_path):
    """smollm2-135m's architecture (tiny-llama-random): QA tuning, meta-training a weight model whose
    encoder is the base's first layer (same tokenizer, a fraction of the size), online adaptation with it."""
    from raysel.inputs import DataSpec, ModelSpec
    from raysel.methods.camels import Camels, CamelsParams
    from raysel.methods.camels.artifacts import load_weight_model
    from raysel.run_context import LocalRun

    def run_phase(name: str, **params) -> LocalRun:
        run = LocalRun(seed=0, model=ModelSpec(name="tiny-llama-random"), data=DataSpec(name="synthetic-facts"),
                       artifact_dir=tmp_path / name, shared_dir=tmp_path / "shared")
        Camels().train_loop(CamelsParams(**params), run)
        return run

    run_phase("qa", phase="qa_tune", qa_steps=2, qa_eval_every=1, qa_batch_size=4, qa_eval_questions=4)
    meta = run_phase("meta", phase="meta_train", weight_encoder_layers=1, outer_steps=2, grad_acc_steps=1,
                     update_batch_size=2, val_every=1, val_batches=1, outer_lr=1e-2, locality_tokens=16)
    assert meta.results[-1]["val_loss"] > 0
    weight_model, _ = load_weight_model(tmp_path / "shared" / "camels" / "camels" / "weight-model.pt",
                                        torch.device("cpu"))
    assert len(weight_model.encoder.layers) == 1 and weight_model.encoder.config.num_hidden_layers == 1
    evaluated = run_phase("eval", phase="evaluate", weighting="camels", downsample_to=2, max_answer_tokens=3)
    final = evaluated.results[-1]
    assert 0 <= final["test_f1"] <= 100 and final["test_answer_nll"] > 0 and final["test_documents"] == 2


@pytest.mark.parametrize("name, blocks", [("tiny-gpt2-random", "h"), ("tiny-llama-random", "layers")])
def test_the_weight_encoder_keeps_its_first_layers_or_says_how_many_it_has(name, blocks):
    from raysel.methods.camels.artifacts import build_weight_model

    full, _ = build_weight_model(name)
    cut, _ = build_weight_model(name, layers=1)
    assert len(getattr(cut.encoder, blocks)) == 1 and len(getattr(full.encoder, blocks)) == 2
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters())
    ids = torch.tensor([[5, 6, 7]])
    assert cut(ids, torch.ones_like(ids)).shape == (1, 3)
    with pytest.raises(ValueError, match="weight_encoder_layers=5, but the encoder has 2 layers"):
        build_weight_model(name, layers=5)
