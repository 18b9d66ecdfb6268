"""Loaders for the data users bring. Every problem raises DataError with one message that names
the file (and line/column) and says what is allowed."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysel.data.errors import DataError

Label = str | int | bool
LM_BFF_SPLITS = ("train", "dev", "test")
QA_COLUMNS = ("text", "question", "answers")
ANSWER_SEP = "\\"


@dataclass(frozen=True)
class LabeledSplits:
    """A classification task: (text, label index) per split; labels[i] is the label string."""
    train: list[tuple[str, int]]
    dev: list[tuple[str, int]]
    test: list[tuple[str, int]]
    labels: tuple[str, ...]
    source_labels: tuple[str, ...] = ()  # a label subset (data.labels): the full task's labels


def _read(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file (expected a regular file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return path, text


def load_text_file(path: str | Path, one_per_line: bool = False) -> list[str]:
    """Plain text: articles separated by blank lines, or one article per line (one_per_line).
    Whitespace inside an article is kept; surrounding whitespace is stripped."""
    path, text = _read(path)
    text = text.replace("\r\n", "\n")
    if one_per_line:
        return [line.strip() for line in text.split("\n") if line.strip()]
    articles, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            articles.append("\n".join(current).strip())
            current = []
    if current:
        articles.append("\n".join(current).strip())
    return articles


def _check_label(value: Any, where: str, field: str) -> Label:
    if isinstance(value, (str, int, bool)):
        return value
    raise DataError(f"{where}: field {field!r} must be a string or an integer label, "
                    f"got {type(value).__name__}")


def load_jsonl(path: str | Path, text_field: str = "text", label_field: str | None = None
               ) -> list[str] | list[tuple[str, Label]]:
    """One JSON object per line (blank lines skipped). Returns the texts, or (text, label) pairs
    when label_field is given."""
    path, content = _read(path)
    out: list[Any] = []
    required = [text_field] + ([label_field] if label_field else [])
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: line {n} is not valid JSON ({e.msg}); "
                            f"each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: line {n} is a JSON {type(record).__name__}, "
                            f"expected an object with fields {required}")
        missing = [f for f in required if f not in record]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}; found {sorted(record)}, "
                            f"required {required}")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} must be a string, "
                            f"got {type(text).__name__}")
        if label_field:
            out.append((text, _check_label(record[label_field], where, label_field)))
        else:
            out.append(text)
    return out


# ------------------------------------------------------------------------------------ LM-BFF

_TEXT_COLUMNS = ("sentence", "text")


def _read_tsv(path: Path) -> list[tuple[str, str]]:
    """(text, label) rows of an LM-BFF/GLUE single-sentence TSV. A first row containing a
    `label` column is a header (text column `sentence` or `text`); without a header the rows
    must be `sentence<TAB>label`."""
    _, content = _read(path)
    rows = csv.reader(content.replace("\r\n", "\n").split("\n"), delimiter="\t",
                      quoting=csv.QUOTE_NONE)
    lines = list(enumerate(rows, start=1))
    lines = [(n, r) for n, r in lines if any(c.strip() for c in r)]
    header = [c.strip().lower() for c in lines[0][1]]
    text_col, label_col, width = 0, 1, 2
    if "label" in header:
        text_cols = [c for c in _TEXT_COLUMNS if c in header]
        if not text_cols:
            raise DataError(f"{path}: no text column; found columns {lines[0][1]}, required "
                            f"one of {list(_TEXT_COLUMNS)} and 'label'")
        text_col, label_col, width = header.index(text_cols[0]), header.index("label"), len(header)
        lines = lines[1:]
    elif any(c in header for c in _TEXT_COLUMNS):
        raise DataError(f"{path}: no 'label' column; found columns {lines[0][1]}, required "
                        f"'sentence' (or 'text') and 'label'")
    out = []
    for n, row in lines:
        if len(row) != width:
            raise DataError(f"{path}:{n}: expected {width} tab-separated columns "
                            f"({'as in the header' if width != 2 else 'sentence<TAB>label'}), "
                            f"got {len(row)}")
        if not row[label_col].strip():
            raise DataError(f"{path}:{n}: empty label (column {label_col + 1})")
        out.append((row[text_col], row[label_col].strip()))
    if not out:
        raise DataError(f"{path}: file is empty (only a header)")
    return out


def _label_order(labels: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(labels, key=int))
    except ValueError:
        return tuple(sorted(labels))


def load_lm_bff_dir(task_dir: str | Path) -> LabeledSplits:
    """An LM-BFF k-shot directory ({train,dev,test}.tsv). Labels are indexed in sorted order
    (numerically when they are integers) of the train labels; dev/test labels must be among them."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise DataError(f"{task_dir}: directory not found (expected a folder with "
                        f"train.tsv, dev.tsv and test.tsv)")
    missing = [f"{s}.tsv" for s in LM_BFF_SPLITS if not (task_dir / f"{s}.tsv").is_file()]
    if missing:
        raise DataError(f"{task_dir}: missing {', '.join(missing)} (an LM-BFF task directory "
                        f"holds train.tsv, dev.tsv and test.tsv)")
    raw = {s: _read_tsv(task_dir / f"{s}.tsv") for s in LM_BFF_SPLITS}
    labels = _label_order({label for _, label in raw["train"]})
    index = {label: i for i, label in enumerate(labels)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, rows in raw.items():
        for n, (_, label) in enumerate(rows, start=1):
            if label not in index:
                raise DataError(f"{task_dir / f'{split}.tsv'}: example {n} has label {label!r}, "
                                f"which is not in the train label set {list(labels)}")
        splits[split] = [(text, index[label]) for text, label in rows]
    return LabeledSplits(splits["train"], splits["dev"], splits["test"], labels)


# ------------------------------------------------------------------------------- StreamingQA

def load_streamingqa_csv(path: str | Path) -> list[dict[str, Any]]:
    """A StreamingQA/CaMeLS CSV: rows {text, question, answers: list[str]}; the answers column
    holds alternatives separated by one backslash. Other columns are ignored."""
    path, content = _read(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(io.StringIO(content, newline=""))
    found = reader.fieldnames or []
    missing = [c for c in QA_COLUMNS if c not in found]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {found}, "
                        f"required {list(QA_COLUMNS)}")
    out = []
    for row in reader:
        answers = [a for a in (row["answers"] or "").split(ANSWER_SEP) if a.strip()]
        if not answers:
            raise DataError(f"{path}:{reader.line_num}: empty 'answers' (alternatives are "
                            f"separated by a backslash)")
        out.append({"text": row["text"], "question": row["question"], "answers": answers})
    if not out:
        raise DataError(f"{path}: file is empty (only a header)")
    return out


# ------------------------------------------------------------------------------ HF datasets

def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on") or \
        os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def load_hf_dataset(name: str, config: str | None = None, split: str = "train",
                    text_field: str = "text", label_field: str | None = None,
                    data_files: Any = None, cache_dir: str | Path | None = None
                    ) -> list[str] | list[tuple[str, Label]]:
    """A split of a Hugging Face dataset through datasets.load_dataset: a hub name (cached, or
    downloaded when online), a local dataset folder, or a packaged builder ("json", "csv",
    "text", "parquet") with data_files. Returns texts, or (text, label) pairs with label_field."""
    import datasets

    label = f"{name!r}" + (f" (config {config!r})" if config else "")
    try:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files,
                                   cache_dir=str(cache_dir) if cache_dir else None)
    except (ConnectionError, TimeoutError) as e:
        how = (f"run once with network access: python -c \"import datasets; "
               f"datasets.load_dataset({name!r}{', ' + repr(config) if config else ''})\" "
               f"(it is then cached), or pass local files: name='json' or 'csv' with data_files=")
        if _offline():
            raise DataError(f"dataset {label} is not available offline: it is not in the "
                            f"local cache ({cache_dir or datasets.config.HF_DATASETS_CACHE}) and "
                            f"HF_HUB_OFFLINE=1 forbids downloading; {how}") from None
        raise DataError(f"dataset {label} could not be downloaded ({e}); {how}") from None
    except FileNotFoundError as e:
        raise DataError(f"dataset {label}: {e}; give a hub name, a local dataset folder, or "
                        f"a builder ('json', 'csv', 'text', 'parquet') with data_files") from None
    except ValueError as e:
        raise DataError(f"dataset {label}, split {split!r}: {e}") from None
    missing = [f for f in (text_field, label_field) if f and f not in ds.column_names]
    if missing:
        raise DataError(f"dataset {label}: missing column(s) {missing}; found "
                        f"{ds.column_names}, required text_field={text_field!r}"
                        + (f" and label_field={label_field!r}" if label_field else ""))
    texts = ds[text_field]
    if label_field:
        return list(zip(texts, ds[label_field]))
    return list(texts)
