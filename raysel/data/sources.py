"""From a spec's ``data:`` section to texts or labelled examples, whatever the source.

| data.name                     | LM splits (train / dev / test)            | classification              |
|-------------------------------|-------------------------------------------|-----------------------------|
| pydocs                        | finetune / objective / test parts         | –                           |
| pydocs-mixed                  | mixed pool / objective / test             | –                           |
| pydocs-topics                 | –                                         | built-in task (k-shot: k)   |
| synthetic-facts               | QA (``qa_splits``): qa_train / train / val / test documents with their questions |
| a local StreamingQA directory | QA: {qa_train,train,val,test}.csv (qa_train.csv optional: train.csv)      |
| a local .txt / .jsonl file    | 80 / 10 / 10 by a stable hash             | jsonl with label_field      |
| a local LM-BFF task directory | –                                         | {k}-{seed}/ or train/dev/test.tsv |
| anything else                 | HF dataset train / validation / test      | same, with label_field      |
"""
from __future__ import annotations

import re
from pathlib import Path

from raysel.data.errors import DataError
from raysel.data.facts import generate_facts
from raysel.data.loaders import (LabeledSplits, load_hf_dataset, load_jsonl, load_lm_bff_dir, load_streamingqa_csv,
                                 load_text_file)
from raysel.data.pydocs import load_mixed_pool, load_pydocs, stable_hash
from raysel.data.topics import LABELS as TOPIC_LABELS
from raysel.data.topics import k_shot_split, load_topics
from raysel.provenance import is_recording, loaded_data, record_load

BUILTIN_DATA = {
    "pydocs": "LM corpus: Python's own documentation pages and stdlib docstrings (English prose)",
    "pydocs-mixed": "pydocs fine-tuning pool mixed 50/50 with code, licence text and tables (for IGF)",
    "pydocs-topics": "classification: stdlib docstrings labelled by module family (5 classes)",
    "synthetic-facts": "QA: seeded documents of facts about invented people, towns and organisations, "
                       "2-4 questions each (for CaMeLS)",
}
FACTS_SPLIT_SIZES = {"qa_train": 400, "train": 400, "val": 200, "test": 300}  # documents
QA_SPLITS = tuple(FACTS_SPLIT_SIZES)
LM_SPLITS = ("train", "dev", "test")


def _hash_split(text: str) -> str:
    u = stable_hash(text)
    return "train" if u < 0.8 else "dev" if u < 0.9 else "test"


def _cap(items: list, data) -> list:
    return items[:data.max_examples] if data.max_examples else items


def _check_local_path(name: str) -> None:
    """A name written as a path (/…, ./…, ~/…) must exist: it is not a hub dataset either."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise DataError(f"data.name {name!r} does not exist (a path; built-ins: {', '.join(BUILTIN_DATA)})")


def _recorded(data, splits: dict[str, list], label: str | None = None) -> None:
    """Note the loaded splits in the trial's provenance (raysel.provenance), when a trial records it."""
    if is_recording():
        source = "built-in" if data.name in BUILTIN_DATA else (
            str(Path(data.name).expanduser().resolve()) if Path(data.name).expanduser().exists() else "hub")
        record_load(loaded_data(label or data.name, source, splits))


def lm_splits(data) -> dict[str, list[str]]:
    """Texts per split for causal-LM fine-tuning: {"train", "dev", "test"} → list of articles."""
    splits = _lm_splits(data)
    _recorded(data, splits)
    return splits


def _lm_splits(data) -> dict[str, list[str]]:
    _check_local_path(data.name)
    if data.name in ("pydocs", "pydocs-mixed"):
        train = load_mixed_pool() if data.name == "pydocs-mixed" else load_pydocs("finetune")
        return {"train": _cap([a.text for a in train], data), "dev": [a.text for a in load_pydocs("objective")],
                "test": [a.text for a in load_pydocs("test")]}
    if data.name in BUILTIN_DATA:
        raise DataError(f"data.name {data.name!r} is not an LM corpus ({BUILTIN_DATA[data.name]}); a causal-LM "
                        "method needs pydocs, pydocs-mixed, a text/jsonl file or an HF text dataset")
    path = Path(data.name)
    if path.is_file():
        texts = load_jsonl(path, data.text_field) if path.suffix == ".jsonl" else load_text_file(path)
        splits: dict[str, list[str]] = {s: [] for s in LM_SPLITS}
        for text in texts:
            splits[_hash_split(text)].append(text)
        empty = [s for s, t in splits.items() if not t]
        if empty:
            raise DataError(f"{path}: too few articles ({len(texts)}) to fill the {', '.join(empty)} split(s); "
                            "give at least ~20 articles separated by blank lines")
        splits["train"] = _cap(splits["train"], data)
        return splits
    hf_split = {"train": "train", "dev": "validation", "test": "test"}
    splits = {s: list(load_hf_dataset(data.name, data.config, split=hf_split[s], text_field=data.text_field))
              for s in LM_SPLITS}
    if data.name.rstrip("/").split("/")[-1] == "wikitext":  # one row per line: regroup into articles
        splits = {s: wikitext_articles(lines) for s, lines in splits.items()}
    splits["train"] = _cap(splits["train"], data)
    return splits


WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(lines: list[str]) -> list[str]:
    """WikiText's rows are lines; an article starts at a top-level heading line `` = Title = ``
    (IGF's objective set and min_len count tokens per article, as the reference's files do)."""
    articles: list[list[str]] = []
    for line in lines:
        if WIKITEXT_TITLE.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return [text for text in ("".join(a).strip() for a in articles) if text]


def classification_splits(data, seed: int) -> LabeledSplits:
    """Labelled examples per split; with ``data.k`` the LM-BFF k-shot split of ``seed``; with
    ``data.labels`` only those labels (after the k-shot split, so a label subset keeps the same examples)."""
    splits = _classification_splits(data, seed)
    splits = select_labels(splits, data.labels) if getattr(data, "labels", None) else splits
    _recorded(data, {"train": splits.train, "dev": splits.dev, "test": splits.test},
              f"{data.name} (k={data.k}, seed {seed})" if data.k else None)
    return splits


def select_labels(splits: LabeledSplits, names: list[str]) -> LabeledSplits:
    """The examples of the labels ``names`` only, re-indexed in that order (e.g. a binary subset)."""
    unknown = [n for n in names if n not in splits.labels]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise DataError(f"data.labels {names}: give two or more distinct labels of this task; "
                        f"its labels are {list(splits.labels)}")
    index = {splits.labels.index(n): i for i, n in enumerate(names)}

    def keep(rows: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(text, index[label]) for text, label in rows if label in index]
    return LabeledSplits(keep(splits.train), keep(splits.dev), keep(splits.test), tuple(names),
                         source_labels=splits.source_labels or splits.labels)


def _classification_splits(data, seed: int) -> LabeledSplits:
    _check_local_path(data.name)
    if data.name == "pydocs-topics":
        train, dev = load_topics("train"), load_topics("dev")
        if data.k:
            train, dev = k_shot_split(train, data.k, seed)
        return LabeledSplits(_cap(train, data), dev, load_topics("test"), TOPIC_LABELS)
    if data.name in BUILTIN_DATA:
        raise DataError(f"data.name {data.name!r} is not a classification task ({BUILTIN_DATA[data.name]}); it "
                        "needs pydocs-topics, an LM-BFF directory, a labelled jsonl file or an HF dataset with "
                        "label_field")
    path = Path(data.name)
    if path.is_dir():
        task_dir = path / f"{data.k}-{seed}" if data.k else path
        if not task_dir.is_dir():
            raise DataError(f"{task_dir}: no such k-shot directory; LM-BFF layout is {{task}}/{{k}}-{{seed}}/"
                            "{train,dev,test}.tsv (write one with raysel.data.write_k_shot)")
        splits = load_lm_bff_dir(task_dir)
        return LabeledSplits(_cap(splits.train, data), splits.dev, splits.test, splits.labels)
    examples = {s: load_hf_dataset(data.name, data.config, split=hf, text_field=data.text_field,
                                   label_field=data.label_field)
                for s, hf in (("train", "train"), ("dev", "validation"), ("test", "test"))}
    labels = sorted({label for _, label in examples["train"]}, key=str)
    index = {label: i for i, label in enumerate(labels)}
    converted = {}
    for split, rows in examples.items():
        unknown = {label for _, label in rows} - set(index)
        if unknown:
            raise DataError(f"dataset {data.name!r} split {split!r}: labels {sorted(unknown, key=str)[:5]} "
                            f"are not in the training labels {labels}")
        converted[split] = [(text, index[label]) for text, label in rows]
    train = converted["train"]
    if data.k:
        train, converted["dev"] = k_shot_split(train, data.k, seed)
    return LabeledSplits(_cap(train, data), converted["dev"], converted["test"], tuple(map(str, labels)))


def qa_splits(data) -> dict[str, list[dict]]:
    """Documents with their questions per split ``qa_train`` (QA pre-tuning), ``train`` (meta-training),
    ``val`` and ``test`` (online-adaptation streams): [{text, questions: [{question, answers}]}].

    ``synthetic-facts`` generates them (no entity in two splits); a directory holds StreamingQA/CaMeLS
    CSVs (one row per question: text, question, answers) train.csv, val.csv, test.csv and optionally
    qa_train.csv (without it QA pre-tuning uses train.csv, as the reference does). ``max_examples``
    caps the train documents."""
    splits = _qa_splits(data)
    _recorded(data, splits)
    return splits


def _qa_splits(data) -> dict[str, list[dict]]:
    _check_local_path(data.name)
    if data.name == "synthetic-facts":
        docs = generate_facts(sum(FACTS_SPLIT_SIZES.values()), seed=0)
        splits, start = {}, 0
        for split, size in FACTS_SPLIT_SIZES.items():
            splits[split] = [{"text": d["text"], "questions": d["questions"]} for d in docs[start:start + size]]
            start += size
    elif Path(data.name).is_dir():
        directory = Path(data.name)
        missing = [f"{s}.csv" for s in ("train", "val", "test") if not (directory / f"{s}.csv").is_file()]
        if missing:
            raise DataError(f"{directory}: missing {', '.join(missing)}; a StreamingQA directory holds train.csv, "
                            "val.csv, test.csv (and optionally qa_train.csv) with columns text, question, answers")
        splits = {s: _documents(load_streamingqa_csv(directory / f"{s}.csv")) for s in ("train", "val", "test")}
        qa_train = directory / "qa_train.csv"
        splits["qa_train"] = _documents(load_streamingqa_csv(qa_train)) if qa_train.is_file() else splits["train"]
    else:
        raise DataError(f"data.name {data.name!r}: a QA method needs 'synthetic-facts' or a directory of "
                        "StreamingQA CSVs (train.csv, val.csv, test.csv; columns text, question, answers)")
    splits["train"] = _cap(splits["train"], data)
    return {s: splits[s] for s in QA_SPLITS}


def _documents(rows: list[dict]) -> list[dict]:
    """CSV rows (one per question) grouped into documents, in order of first appearance."""
    by_text: dict[str, dict] = {}
    for row in rows:
        doc = by_text.setdefault(row["text"], {"text": row["text"], "questions": []})
        doc["questions"].append({"question": row["question"], "answers": row["answers"]})
    return list(by_text.values())
