"""pydocs-topics and the LM-BFF k-shot generator."""

from collections import Counter

import numpy as np
import pytest

from raysel.data import (
    TOPIC_LABELS,
    DataError,
    k_shot_split,
    load_lm_bff_dir,
    load_topics,
    write_k_shot,
)

SEEDS = (13, 21, 42, 87, 100)


def _read_tsv(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel"
    return [tuple(line.split("\t")) for line in lines[1:]]


def test_labels_and_balanced_disjoint_splits():
    assert TOPIC_LABELS == ("text", "network", "concurrency", "files", "math")
    seen = {}
    for split in ("train", "dev", "test"):
        examples = load_topics(split)
        counts = Counter(label for _, label in examples)
        assert set(counts) == set(range(len(TOPIC_LABELS)))
        assert len(set(counts.values())) == 1, f"{split} is not balanced: {counts}"
        for text, _ in examples:
            assert len(text) >= 40 and "\n" not in text
            assert seen.setdefault(text, split) == split, "text in two splits"
    assert len(load_topics("train")) >= 2 * 16 * len(TOPIC_LABELS)
    with pytest.raises(DataError, match="train, dev, test"):
        load_topics("validation")


def test_k_shot_split_follows_lm_bff():
    examples = [(f"text {i}", i % 3) for i in range(60)]
    train, dev = k_shot_split(examples, k=4, seed=13)
    assert Counter(label for _, label in train) == {0: 4, 1: 4, 2: 4}
    assert Counter(label for _, label in dev) == {0: 4, 1: 4, 2: 4}
    assert not set(train) & set(dev)
    # LM-BFF: numpy shuffle with the seed, then first k per label (labels in order of appearance)
    order = np.arange(60)
    np.random.RandomState(13).shuffle(order)
    shuffled = [examples[i] for i in order]
    first_label = shuffled[0][1]
    assert train[:4] == [e for e in shuffled if e[1] == first_label][:4]
    assert k_shot_split(examples, 4, 13) == (train, dev)
    assert k_shot_split(examples, 4, 21)[0] != train
    with pytest.raises(DataError, match="needs 50 examples per label"):
        k_shot_split(examples, k=25, seed=13)


def test_write_k_shot_layout_counts_and_test_set(tmp_path):
    task_dir = write_k_shot(tmp_path, k=16)
    assert task_dir == tmp_path / "pydocs-topics"
    assert sorted(p.name for p in task_dir.iterdir()) == sorted(f"16-{s}" for s in SEEDS)
    trains, tests = [], []
    for seed in SEEDS:
        setting = task_dir / f"16-{seed}"
        assert sorted(p.name for p in setting.iterdir()) == ["dev.tsv", "test.tsv", "train.tsv"]
        train, dev, test = (_read_tsv(setting / f"{s}.tsv") for s in ("train", "dev", "test"))
        for rows in (train, dev):
            assert Counter(label for _, label in rows) == {str(i): 16 for i in range(5)}
        assert not {t for t, _ in train} & {t for t, _ in dev}
        assert len(test) == min(1000, len(load_topics("test")))
        trains.append(train)
        tests.append(test)
    assert all(t == tests[0] for t in tests)
    assert len({tuple(t) for t in trains}) == len(SEEDS)
    data = load_lm_bff_dir(task_dir / "16-42")  # our own loader reads it back
    assert data.labels == ("0", "1", "2", "3", "4") and len(data.train) == 80


def test_write_k_shot_caps_test_with_seed_42(tmp_path):
    task_dir = write_k_shot(tmp_path, k=4, seeds=(13, 87), task="capped", test_cap=50)
    full = load_topics("test")
    keep = sorted(np.random.RandomState(42).permutation(len(full))[:50])
    expected = [(text, str(label)) for text, label in (full[i] for i in keep)]
    for seed in (13, 87):
        assert _read_tsv(task_dir / f"4-{seed}" / "test.tsv") == expected
