"""CaMeLS against the reference's conventions: several gold answers (the shortest trained on and scored,
or SQuAD's best), TF-IDF of the truncated document fitted on every split's unique documents, and the
loss normalised per real target or, as the reference, by B·(max_doc_tokens − 1); the trial's tags."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from raysel.methods.camels import (Camels, CamelsParams, TfidfScorer, TokenWeightModel, char_scores_weights,
                                   inner_loop, meta_step, padded_denominator, sgd_step, tfidf_corpus,
                                   trainable_params, weighted_lm_loss)
from raysel.methods.camels import evaluate, meta_train, qa_tune, recipe
from raysel.methods.camels.algorithm import lm_labels
from raysel.methods.camels.qa import encode_documents, score_answers
from raysel.metrics import squad_em, squad_em_prefix, squad_f1, target_answer
from raysel.models import load_model
from raysel.inputs import DataSpec, ModelSpec
from raysel.tracking import NullLogger
from raysel.run_context import LocalRun

BANK = ["Bank of England", "the Bank", "BoE"]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny-gpt2-random", "causal_lm")
    return model.eval(), tokenizer


# ---------------------------------------------------------------- several gold answers
def test_target_answer_is_the_first_shortest_or_the_first():
    assert target_answer(BANK, "shortest") == "BoE"
    assert target_answer(BANK, "best") == "Bank of England"
    assert target_answer(["Paris", "Rome", "Oslo", "Lima"], "shortest") == "Rome"  # a tie: the first shortest


@pytest.mark.parametrize("metric", [squad_f1, squad_em, squad_em_prefix])
def test_metrics_score_the_best_answer_or_only_the_shortest(metric):
    assert metric("Bank of England", BANK, rule="shortest") == 0.0
    assert metric("Bank of England", BANK, rule="best") == 1.0
    assert metric("Bank of England", BANK) == 1.0  # the metrics' own default is SQuAD's
    assert metric("BoE", BANK, rule="shortest") == 1.0


def test_score_answers_takes_the_rule_explicitly():
    predictions, answers = ["Bank of England", "BoE"], [BANK, BANK]
    assert score_answers(predictions, answers, "shortest") == {"f1": 50.0, "em": 50.0, "em_prefix": 50.0}
    assert score_answers(predictions, answers, "best") == {"f1": 100.0, "em": 100.0, "em_prefix": 100.0}
    with pytest.raises(TypeError):
        score_answers(predictions, answers)


def _document(answers: list[str], text: str = "The Bank of England was founded in 1694.") -> dict:
    return {"text": text, "questions": [{"question": "Which bank was founded in 1694?", "answers": answers}]}


def _answer_targets(tokenizer, batch) -> list[str]:
    return [tokenizer.decode([t for t in row.tolist() if t != -100][:-1]).strip() for row in batch["labels"]]


class _Locality:
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros(n, 4, dtype=torch.long)


@pytest.mark.parametrize("rule, expected", [("shortest", "BoE"), ("best", "Bank of England")])
def test_the_outer_loss_questions_carry_the_target_answer(tiny, rule, expected):
    _, tokenizer = tiny
    params = CamelsParams(phase="meta_train", answer_scoring=rule, update_batch_size=2)
    _, questions, _ = meta_train._meta_batch([_document(BANK), _document(BANK)], tokenizer, _Locality(), params,
                                         torch.Generator().manual_seed(0), torch.device("cpu"))
    assert _answer_targets(tokenizer, questions) == [expected, expected]


@pytest.mark.parametrize("rule, expected", [("shortest", "BoE"), ("best", "Bank of England")])
def test_evaluation_scores_and_answer_nll_follow_the_rule(tiny, monkeypatch, rule, expected):
    model, tokenizer = tiny
    nll_pairs: list = []
    monkeypatch.setattr(evaluate, "generate_answers", lambda *a, **k: ["Bank of England"])
    monkeypatch.setattr(evaluate, "answer_nll", lambda m, t, pairs: nll_pairs.extend(pairs) or 1.0)
    answered = evaluate._answer(model, tokenizer, [("Which bank?", BANK)], CamelsParams(answer_scoring=rule))
    assert answered["scores"]["f1"] == (0.0 if rule == "shortest" else 100.0)
    assert nll_pairs == [("Which bank?", expected)]


@pytest.mark.parametrize("rule, expected", [("shortest", "BoE"), ("best", "Bank of England")])
def test_qa_tuning_and_light_tuning_train_on_the_target_answer(tiny, monkeypatch, tmp_path, rule, expected):
    model, tokenizer = tiny
    trained, rules = [], []
    real_encode, real_nll, real_score = qa_tune.encode_qa, qa_tune.answer_nll, qa_tune.score_answers
    for phase in (qa_tune, evaluate):  # QA pre-tuning and the light tuning of the evaluation phase
        monkeypatch.setattr(phase, "encode_qa", lambda t, pairs: trained.extend(x for _, x in pairs) or
                            real_encode(t, pairs))
        monkeypatch.setattr(phase, "answer_nll", lambda m, t, pairs: trained.extend(x for _, x in pairs) or
                            real_nll(m, t, pairs))
        monkeypatch.setattr(phase, "score_answers", lambda p, a, r: rules.append(r) or real_score(p, a, r))
    documents = [_document(BANK) for _ in range(70)]  # light tuning holds out the first 64 questions
    params = CamelsParams(phase="qa_tune", answer_scoring=rule, qa_steps=1, qa_eval_every=1, qa_batch_size=2,
                          qa_eval_questions=2, max_answer_tokens=2, qa_lt_max_steps=1, qa_lt_eval_every=1,
                          qa_lt_batch_size=2)
    run = LocalRun(seed=0, model=ModelSpec(name="tiny-gpt2-random"), artifact_dir=tmp_path / "trial",
                   shared_dir=tmp_path / "shared")
    qa_tune.qa_tune(params, run, {"qa_train": documents, "val": documents[:2]})
    evaluate.light_tune(copy.deepcopy(model), tokenizer, documents, params, run)
    assert trained and set(trained) == {expected}  # QA pre-tuning, its validation NLL, light tuning
    assert rules and set(rules) == {rule}


# ---------------------------------------------------------------- TF-IDF of the truncated document
LONG = ("Zorbath lies on the river Quell. The mill of Zorbath grinds corn. " * 3
        + "Later the Vantrel family bought the Quell mill and renamed Zorbath after Vantrel.")
CORPUS = ["the town lies on the river", "the river is long", "a mill grinds corn on the river", LONG]


def _expected_weights(vectorizer: TfidfVectorizer, kept: str, offsets: torch.Tensor) -> torch.Tensor:
    """Per token, the largest TF-IDF (of ``kept`` alone) of the words whose characters it overlaps."""
    row = vectorizer.transform([kept])
    words = [(m.start(), m.end(), vectorizer.vocabulary_.get(m.group()))
             for m in re.finditer(vectorizer.token_pattern, kept.lower())]
    expected = torch.zeros(len(offsets))
    for i, (start, end) in enumerate(offsets.tolist()):
        scores = [float(row[0, c]) for s, e, c in words if c is not None and start < end and s < end and start < e]
        expected[i] = max(scores, default=0.0)
    return expected


def test_tfidf_weights_are_those_of_the_kept_prefix(tiny):
    _, tokenizer = tiny
    enc = encode_documents(tokenizer, [LONG], 24)
    offsets = enc["offset_mapping"][0]
    kept = LONG[:int(offsets[:, 1].max())]
    assert len(tokenizer(LONG)["input_ids"]) > 24 and "Vantrel" not in kept  # truncation happens
    scorer = TfidfScorer(CORPUS)
    weights = scorer.token_weights(LONG, offsets)
    assert torch.allclose(weights, _expected_weights(scorer.vectorizer, kept, offsets), atol=1e-6)
    full_text = char_scores_weights(offsets, scorer.char_scores(LONG))
    assert (weights - full_text).abs().max() > 1e-3  # the full text's TF-IDF weighs the kept words differently
    whole = encode_documents(tokenizer, [CORPUS[0]], 24)["offset_mapping"][0]  # nothing cut: the full text's
    assert torch.equal(scorer.token_weights(CORPUS[0], whole),
                       char_scores_weights(whole, scorer.char_scores(CORPUS[0])))


def test_tfidf_fits_on_the_unique_documents_of_every_split(tiny):
    _, tokenizer = tiny
    splits = {"qa_train": [{"text": CORPUS[0]}, {"text": CORPUS[2]}], "train": [{"text": CORPUS[0]}],
              "val": [{"text": LONG}], "test": [{"text": CORPUS[1]}, {"text": LONG}]}
    assert tfidf_corpus(splits) == [CORPUS[0], CORPUS[2], CORPUS[1], LONG]  # qa_train, test, train, val
    weigh, _ = evaluate.make_weigher(CamelsParams(weighting="tfidf", max_doc_tokens=24), None, tokenizer, splits)
    batch = encode_documents(tokenizer, [LONG], 24)
    offsets = batch["offset_mapping"][0]
    kept = LONG[:int(offsets[:, 1].max())]
    weights = weigh(LONG, batch)[0]
    assert torch.allclose(weights, _expected_weights(TfidfVectorizer().fit(tfidf_corpus(splits)), kept, offsets),
                          atol=1e-6)
    old_corpus = [d["text"] for split in ("train", "val", "test") for d in splits[split]]  # duplicates, no qa_train
    assert not torch.allclose(weights, _expected_weights(TfidfVectorizer().fit(old_corpus), kept, offsets), atol=1e-4)


# ---------------------------------------------------------------- loss normalisation
MAX_TOKENS, LENGTH = 20, 7


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).double().eval()


def _padded_document(seed: int = 0) -> tuple[dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(50, (1, MAX_TOKENS), generator=generator)
    mask = torch.zeros(1, MAX_TOKENS, dtype=torch.long)
    mask[:, :LENGTH] = 1
    weights = torch.rand(1, MAX_TOKENS, generator=generator, dtype=torch.float64) * mask
    return {"input_ids": ids, "attention_mask": mask}, weights


def test_padded_loss_is_the_references_sum_over_b_times_max_length_minus_one(tiny_lm):
    batch, weights = _padded_document()
    with torch.no_grad():
        logits = tiny_lm(**batch).logits
    labels = lm_labels(batch["input_ids"], batch["attention_mask"])
    tokens = weighted_lm_loss(logits, labels, weights)
    padded = weighted_lm_loss(logits, labels, weights, denominator=padded_denominator(1, MAX_TOKENS))
    assert float(padded * (MAX_TOKENS - 1) / (LENGTH - 1)) == pytest.approx(float(tokens), rel=1e-12)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none")
    assert float(padded) == pytest.approx(float((nll * weights[0, 1:]).mean()), rel=1e-12)  # mean over T−1
    assert padded_denominator(3, MAX_TOKENS) == 3 * (MAX_TOKENS - 1) and padded_denominator(3, None) is None


def _moved(start: dict, end: dict) -> torch.Tensor:
    return torch.cat([(end[n] - start[n]).detach().flatten() for n in start])


def test_a_padded_inner_step_is_the_tokens_step_times_l_minus_one_over_max_minus_one(tiny_lm):
    batch, weights = _padded_document()
    start = trainable_params(tiny_lm)
    factor = (LENGTH - 1) / (MAX_TOKENS - 1)
    for step in (lambda **k: sgd_step(tiny_lm, start, batch, weights, 0.1, create_graph=False, **k),
                 lambda **k: inner_loop(tiny_lm, start, batch, weights, 0.1, create_graph=False, **k),
                 lambda **k: inner_loop(tiny_lm, start, batch, weights, 0.1, sequential=False, create_graph=False,
                                        **k)):
        tokens, padded = _moved(start, step()), _moved(start, step(padded_length=MAX_TOKENS))
        assert float(tokens.abs().max()) > 0
        assert torch.allclose(padded, factor * tokens, rtol=1e-9, atol=1e-15)


def test_meta_step_and_evaluation_adaptation_use_the_normalisation(tiny_lm, tiny):
    batch, weights = _padded_document()
    weight_model = TokenWeightModel(copy.deepcopy(tiny_lm.base_model), 16, head_size=4).double()
    questions = {"input_ids": batch["input_ids"][:, :6], "attention_mask": torch.ones(1, 6, dtype=torch.long),
                 "labels": torch.cat([torch.full((1, 3), -100), batch["input_ids"][:, 3:6]], 1)}
    start = trainable_params(tiny_lm)
    steps = {length: meta_step(tiny_lm, weight_model, start, batch, questions, None, inner_lr=0.1, sequential=True,
                               c_kl=0.0, c_norm=0.0, padded_length=length)[0] for length in (None, MAX_TOKENS)}
    factor = (LENGTH - 1) / (MAX_TOKENS - 1)
    assert torch.allclose(_moved(start, steps[MAX_TOKENS]), factor * _moved(start, steps[None]), rtol=1e-9, atol=1e-15)

    model, tokenizer = tiny
    stream = [{"text": "Ada Lovelace wrote notes on the Analytical Engine in 1843."}]
    n = len(tokenizer(stream[0]["text"])["input_ids"])

    def first_loss(normalization: str) -> float:
        torch.manual_seed(0)  # the same dropout masks
        return evaluate.adapt(copy.deepcopy(model), tokenizer, stream, lambda text, b: b["attention_mask"].float(),
                              CamelsParams(loss_normalization=normalization, max_doc_tokens=64),
                              LocalRun(seed=0, device=torch.device("cpu")))[0]
    losses = {normalization: first_loss(normalization) for normalization in ("tokens", "padded")}
    assert losses["padded"] == pytest.approx(losses["tokens"] * (n - 1) / 63, rel=1e-5)


def test_meta_training_and_its_validation_adapt_with_the_normalisation(tmp_path, monkeypatch):
    seen = []
    for name in ("meta_step", "inner_loop"):
        real = getattr(meta_train, name)
        monkeypatch.setattr(meta_train, name, lambda *a, _real=real, _name=name, **k:
                            seen.append((_name, k.get("padded_length"))) or _real(*a, **k))
    params = CamelsParams(phase="meta_train", base_model="tiny-gpt2-random", loss_normalization="padded",
                          max_doc_tokens=48, outer_steps=1, grad_acc_steps=1, update_batch_size=1, val_batches=1,
                          locality_tokens=16)
    run = LocalRun(seed=0, model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="synthetic-facts"),
                   artifact_dir=tmp_path / "trial", shared_dir=tmp_path / "shared")
    Camels().train_loop(params, run)
    assert {name for name, _ in seen} == {"meta_step", "inner_loop"} and {length for _, length in seen} == {48}


# ---------------------------------------------------------------- the trial says which rules ran
class _Tags(NullLogger):
    def __init__(self):
        self.tags: dict[str, str] = {}

    def set_tags(self, tags) -> None:
        self.tags.update(tags)


def test_an_evaluation_trial_is_tagged_with_its_rules(tmp_path):
    logger = _Tags()
    run = LocalRun(seed=0, model=ModelSpec(name="tiny-gpt2-random"), data=DataSpec(name="synthetic-facts"),
                   artifact_dir=tmp_path / "trial", shared_dir=tmp_path / "shared", logger=logger)
    params = CamelsParams(phase="evaluate", base_model="tiny-gpt2-random", weighting="tfidf", downsample_to=2,
                          splits=["val"], max_answer_tokens=2, answer_scoring="best", loss_normalization="padded")
    final = Camels().train_loop(params, run)
    assert 0 <= final["val_f1"] <= 100 and final["val_adapt_loss"] > 0
    assert logger.tags["camels.answer_scoring"] == "best" and logger.tags["camels.loss_normalization"] == "padded"
    assert logger.tags["camels.phase"] == "evaluate" and logger.tags["camels.weighting"] == "tfidf"
    assert recipe.run_tags(CamelsParams(phase="qa_tune"))["camels.answer_scoring"] == "shortest"
