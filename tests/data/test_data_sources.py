"""From a spec's data section to splits: built-ins, local files, LM-BFF directories, wrong kinds."""
from __future__ import annotations

import pytest

from raysel.data import DataError, classification_splits, lm_splits, write_k_shot
from raysel.spec import DataSpec


def test_pydocs_splits_are_the_corpus_parts():
    splits = lm_splits(DataSpec(name="pydocs"))
    assert all(splits[s] for s in ("train", "dev", "test"))
    assert not set(splits["train"]) & set(splits["test"])
    assert len(lm_splits(DataSpec(name="pydocs", max_examples=5))["train"]) == 5
    mixed = lm_splits(DataSpec(name="pydocs-mixed"))
    assert len(mixed["train"]) > len(splits["train"]) and mixed["test"] == splits["test"]


def test_a_local_text_file_is_split_by_a_stable_hash(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Article number {i} talks about topic {i % 7}." for i in range(200)))
    first, second = lm_splits(DataSpec(name=str(path))), lm_splits(DataSpec(name=str(path)))
    assert first == second
    sizes = {s: len(t) for s, t in first.items()}
    assert sum(sizes.values()) == 200 and 120 < sizes["train"] < 190 and sizes["dev"] and sizes["test"]
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("only one article")
    with pytest.raises(DataError, match="too few articles"):
        lm_splits(DataSpec(name=str(tiny)))


def test_k_shot_directories_follow_the_protocol_seed(tmp_path):
    task_dir = write_k_shot(tmp_path, k=4, seeds=(13, 21))
    a = classification_splits(DataSpec(name=str(task_dir), k=4), seed=13)
    b = classification_splits(DataSpec(name=str(task_dir), k=4), seed=21)
    assert len(a.train) == len(b.train) == 4 * len(a.labels)
    assert a.train != b.train and a.test == b.test
    with pytest.raises(DataError, match="4-42"):
        classification_splits(DataSpec(name=str(task_dir), k=4), seed=42)


def test_builtin_k_shot_and_wrong_kinds():
    data = classification_splits(DataSpec(name="pydocs-topics", k=8), seed=100)
    assert len(data.train) == len(data.dev) == 8 * 5 and len(data.labels) == 5
    with pytest.raises(DataError, match=r"'pydocs-topics' is not an LM corpus \(classification: "):
        lm_splits(DataSpec(name="pydocs-topics"))
    with pytest.raises(DataError, match=r"'pydocs' is not a classification task \(LM corpus: "):
        classification_splits(DataSpec(name="pydocs"), seed=0)
    with pytest.raises(DataError, match=r"'synthetic-facts' is not an LM corpus \(QA: "):
        lm_splits(DataSpec(name="synthetic-facts"))


def test_wikitext_lines_are_regrouped_into_articles():
    from raysel.data.sources import wikitext_articles

    lines = ["", " = Valkyria = \n", "", " = = Gameplay = = \n", " The game is ...\n", " = Tower Building = \n",
             " It stands ...\n"]
    articles = wikitext_articles(lines)
    assert len(articles) == 2
    assert articles[0].startswith("= Valkyria =") and "= = Gameplay = =" in articles[0]
    assert articles[1].startswith("= Tower Building =") and articles[1].endswith("It stands ...")
