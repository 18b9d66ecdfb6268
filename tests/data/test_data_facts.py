"""synthetic-facts and its StreamingQA CSVs."""

import csv

from raysel.data import generate_facts, load_streamingqa_csv, write_streamingqa


def test_every_answer_is_in_its_document():
    docs = generate_facts(200, seed=5)
    assert len(docs) == 200
    for doc in docs:
        assert 2 <= len(doc["questions"]) <= 4
        assert len(doc["text"]) > 150
        for qa in doc["questions"]:
            assert qa["question"].endswith("?") and qa["answers"]
            for answer in qa["answers"]:
                assert answer in doc["text"] and "\\" not in answer
    assert len({doc["text"] for doc in docs}) == 200


def test_generation_is_seeded():
    assert generate_facts(30, seed=1) == generate_facts(30, seed=1)
    assert generate_facts(30, seed=1) != generate_facts(30, seed=2)


def test_streamingqa_csv_layout_and_disjoint_splits(tmp_path):
    paths = write_streamingqa(tmp_path, n_train=40, n_val=10, n_test=10, seed=3)
    assert set(paths) == {"train", "val", "test"}
    entities = {}
    for split, path in paths.items():
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        assert reader.fieldnames == ["text", "question", "answers"]
        docs = {r["text"] for r in rows}
        assert len(docs) == {"train": 40, "val": 10, "test": 10}[split]
        assert any("\\" in r["answers"] for r in rows)  # alternatives joined by one backslash
        loaded = load_streamingqa_csv(path)
        assert len(loaded) == len(rows)
        for qa in loaded:
            assert all(a in qa["text"] for a in qa["answers"])
        entities[split] = {e for d in generate_facts(60, 3) if d["text"] in docs
                           for e in d["entities"]}
    assert not entities["train"] & entities["val"]
    assert not entities["train"] & entities["test"]
    assert not entities["val"] & entities["test"]
    again = write_streamingqa(tmp_path / "again", n_train=40, n_val=10, n_test=10, seed=3)
    assert again["test"].read_bytes() == paths["test"].read_bytes()


def test_qa_splits_from_the_builtin_and_from_a_streamingqa_directory(tmp_path):
    import pytest

    from raysel.data import DataError, qa_splits
    from raysel.spec import DataSpec

    builtin = qa_splits(DataSpec(name="synthetic-facts"))
    assert {k: len(v) for k, v in builtin.items()} == {"qa_train": 400, "train": 400, "val": 200, "test": 300}
    texts = [{d["text"] for d in split} for split in builtin.values()]
    assert sum(map(len, texts)) == len(set().union(*texts))  # no document in two splits
    assert len(qa_splits(DataSpec(name="synthetic-facts", max_examples=7))["train"]) == 7

    write_streamingqa(tmp_path, n_train=5, n_val=3, n_test=4, seed=1)
    splits = qa_splits(DataSpec(name=str(tmp_path)))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 3, 4]  # rows grouped back into documents
    assert splits["qa_train"] == splits["train"]  # no qa_train.csv: QA pre-tuning on train.csv, as the reference
    assert all(2 <= len(d["questions"]) <= 4 and d["questions"][0]["answers"] for d in splits["test"])
    (tmp_path / "val.csv").unlink()
    with pytest.raises(DataError, match=r"missing val.csv; a StreamingQA directory holds train.csv"):
        qa_splits(DataSpec(name=str(tmp_path)))
    with pytest.raises(DataError, match=r"a QA method needs 'synthetic-facts' or a directory"):
        qa_splits(DataSpec(name="pydocs"))
