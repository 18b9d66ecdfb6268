"""`pydocs-topics`: classify a standard-library docstring by the family of its module.

Texts are the first paragraph of module/class/function docstrings (at least MIN_CHARS long).
Texts found in two families are dropped, duplicates kept once; every label is downsampled to
the smallest one, and each label is split 70/10/20 into train/dev/test by a stable hash.
`write_k_shot` writes the LM-BFF k-shot layout from it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raysel.data import _stdlib
from raysel.data.errors import DataError

# Modules per family; an entry may also name one class of a module (builtins.str).
FAMILIES: dict[str, tuple[str, ...]] = {
    "text": ("builtins.str", "codecs", "csv", "difflib", "gettext", "html", "html.parser",
             "json", "json.decoder", "json.encoder", "re", "shlex", "string", "stringprep",
             "textwrap", "unicodedata"),
    "network": ("email", "email.charset", "email.generator", "email.header",
                "email.headerregistry", "email.message", "email.parser", "email.policy",
                "email.utils", "ftplib", "http.client", "http.cookiejar", "http.cookies",
                "http.server", "imaplib", "ipaddress", "mimetypes", "poplib", "smtplib", "socket",
                "socketserver", "ssl", "urllib.error", "urllib.parse", "urllib.request",
                "urllib.robotparser", "wsgiref.handlers", "wsgiref.headers",
                "wsgiref.simple_server", "wsgiref.util", "xmlrpc.client", "xmlrpc.server"),
    "concurrency": ("asyncio", "asyncio.base_events", "asyncio.events", "asyncio.futures",
                    "asyncio.locks", "asyncio.protocols", "asyncio.queues", "asyncio.runners",
                    "asyncio.streams", "asyncio.subprocess", "asyncio.taskgroups",
                    "asyncio.tasks", "asyncio.timeouts", "asyncio.transports",
                    "concurrent.futures", "concurrent.futures._base",
                    "concurrent.futures.process", "concurrent.futures.thread", "contextvars",
                    "multiprocessing.connection", "multiprocessing.context",
                    "multiprocessing.managers", "multiprocessing.pool", "multiprocessing.process",
                    "multiprocessing.shared_memory", "multiprocessing.sharedctypes", "queue",
                    "sched", "subprocess", "threading"),
    "files": ("bz2", "filecmp", "fileinput", "fnmatch", "glob", "gzip", "io", "lzma", "os",
              "pathlib", "posixpath", "shutil", "stat", "tarfile", "tempfile", "zipfile"),
    "math": ("cmath", "decimal", "fractions", "math", "numbers", "random", "statistics"),
}
LABELS: tuple[str, ...] = tuple(FAMILIES)
SPLITS: tuple[str, ...] = ("train", "dev", "test")
MIN_CHARS = 40


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _dataset() -> dict[str, tuple[tuple[str, int], ...]]:
    labels_of: dict[str, set[int]] = {}
    for label, modules in enumerate(FAMILIES.values()):
        for entry in modules:
            module = entry if entry in _stdlib.MODULES else entry.rpartition(".")[0]
            for qualname, doc in _stdlib.docstrings(module):
                if module != entry and not (qualname + ".").startswith(entry + "."):
                    continue
                text = _stdlib.summary(doc)
                if len(text) >= MIN_CHARS:
                    labels_of.setdefault(text, set()).add(label)
    by_label: list[list[str]] = [[] for _ in LABELS]
    for text, labels in labels_of.items():
        if len(labels) == 1:  # texts shared by two families are ambiguous: dropped
            by_label[labels.pop()].append(text)
    n = min(len(texts) for texts in by_label)
    splits: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    n_train, n_dev = round(0.7 * n), round(0.1 * n)
    for label, texts in enumerate(by_label):
        texts = sorted(texts, key=_sha)[:n]  # deterministic downsampling
        splits["train"] += [(t, label) for t in texts[:n_train]]
        splits["dev"] += [(t, label) for t in texts[n_train:n_train + n_dev]]
        splits["test"] += [(t, label) for t in texts[n_train + n_dev:]]
    return {s: tuple(sorted(ex, key=lambda e: _sha(e[0]))) for s, ex in splits.items()}


def load_topics(split: str) -> list[tuple[str, int]]:
    """(text, label index into LABELS) for split train, dev or test."""
    if split not in SPLITS:
        raise DataError(f"pydocs-topics has no split {split!r}; the splits are {', '.join(SPLITS)}")
    return list(_dataset()[split])


def k_shot_split(examples: Sequence[tuple[str, int]], k: int, seed: int
                 ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """LM-BFF's generator: shuffle with numpy RandomState(seed); per label (in order of first
    appearance) train takes the first k examples and dev the next k."""
    rows = list(examples)
    order = np.arange(len(rows))
    np.random.RandomState(seed).shuffle(order)
    by_label: dict[int, list[tuple[str, int]]] = {}
    for i in order:
        by_label.setdefault(rows[i][1], []).append(rows[i])
    short = {label: len(r) for label, r in by_label.items() if len(r) < 2 * k}
    if short:
        raise DataError(f"k={k} needs {2 * k} examples per label (train + dev); "
                        f"labels with fewer: {short}")
    train = [r for rows_ in by_label.values() for r in rows_[:k]]
    dev = [r for rows_ in by_label.values() for r in rows_[k:2 * k]]
    return train, dev


def _write_tsv(path: Path, rows: Sequence[tuple[str, int]]) -> None:
    """GLUE/LM-BFF TSV: no quoting; whitespace (tabs, newlines) inside a text becomes a space."""
    lines = ["sentence\tlabel"]
    lines += [f"{' '.join(text.split())}\t{int(label)}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_k_shot(out_dir: str | Path, k: int = 16, seeds: Sequence[int] = (13, 21, 42, 87, 100),
                 task: str = "pydocs-topics", test_cap: int = 1000) -> Path:
    """Write {out_dir}/{task}/{k}-{seed}/{train,dev,test}.tsv (header `sentence<TAB>label`).
    The test file is the test split capped at test_cap examples chosen with seed 42 (the same
    subset, in the split's order, for every seed). Returns the task directory."""
    train, test = load_topics("train"), load_topics("test")
    if len(test) > test_cap:
        keep = np.sort(np.random.RandomState(42).permutation(len(test))[:test_cap])
        test = [test[i] for i in keep]
    task_dir = Path(out_dir) / task
    for seed in seeds:
        setting = task_dir / f"{k}-{seed}"
        setting.mkdir(parents=True, exist_ok=True)
        k_train, k_dev = k_shot_split(train, k, seed)
        _write_tsv(setting / "train.tsv", k_train)
        _write_tsv(setting / "dev.tsv", k_dev)
        _write_tsv(setting / "test.tsv", test)
    return task_dir
