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
