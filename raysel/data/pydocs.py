"""`pydocs`: an LM corpus of the English prose that ships with Python.

Articles are the pydoc topic pages (`pydoc_data.topics`) and, per standard-library module, its
module/class/function docstrings. Long pages are cut at paragraph boundaries into articles of at
most about MAX_CHARS characters; articles shorter than MIN_CHARS are dropped. Every page is assigned
to one part by a stable hash (sha256) of its key, so the build is identical in every process.

The build imports ~230 modules and takes about half a second; every process after the first on a
machine reads it from ``cache_dir()/corpora`` instead (a JSON file named by a hash of what the build
depends on: this Python and the code of this module and ``_stdlib``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from raysel.cache import cache_dir, read_or_build
from raysel.data import _stdlib
from raysel.data.errors import DataError


PARTS: tuple[str, ...] = ("pretrain", "finetune", "objective", "test")
FRACTIONS: tuple[float, ...] = (0.55, 0.25, 0.10, 0.10)
MAX_CHARS = 3000
MIN_CHARS = 200


@dataclass(frozen=True)
class Article:
    """One document: a stable key (e.g. "topic:assert#0"), its text, and whether it is pydocs
    prose (True) or off-domain filler of the mixed pool (False)."""

    key: str
    text: str
    in_domain: bool = True


def stable_hash(key: str) -> float:
    """A number in [0, 1) from sha256(key): the same in every process and on every machine."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15


def part_of(key: str) -> str:
    """The part a page key belongs to."""
    x, edge = stable_hash(key), 0.0
    for part, fraction in zip(PARTS, FRACTIONS):
        edge += fraction
        if x < edge:
            return part
    return PARTS[-1]


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    """Cut a paragraph longer than max_chars at sentence ends, else at spaces."""
    pieces, current = [], ""
    for word in paragraph.split(" "):
        if current and len(current) + 1 + len(word) > max_chars:
            cut = current.rfind(". ", 0, max_chars)
            cut = cut + 1 if cut > max_chars // 2 else len(current)
            pieces.append(current[:cut].strip())
            current = current[cut:].strip()
        current = f"{current} {word}" if current else word
    return pieces + [current] if current else pieces


def chunk(text: str, max_chars: int = MAX_CHARS, min_chars: int = MIN_CHARS) -> list[str]:
    """Pack the paragraphs of a normalised text into pieces of at most max_chars; a too-short
    last piece is merged into the one before; pieces under min_chars are dropped."""
    paragraphs = [q for p in text.split("\n\n") for q in _split_long(p, max_chars)]
    pieces: list[str] = []
    current = ""
    for p in paragraphs:
        if current and len(current) + 2 + len(p) > max_chars:
            pieces.append(current)
            current = p
        else:
            current = f"{current}\n\n{p}" if current else p
    if current:
        merged = len(pieces[-1]) + 2 + len(current) if pieces else 0
        if pieces and len(current) < min_chars and merged <= 1.5 * max_chars:
            pieces[-1] = f"{pieces[-1]}\n\n{current}"
        else:
            pieces.append(current)
    return [p for p in pieces if len(p) >= min_chars]


def _pages() -> list[tuple[str, str]]:
    """(page key, normalised text): topic pages, then one page per module; repeated docstrings
    are kept only the first time (sorted module order)."""
    from pydoc_data.topics import topics

    pages = [(f"topic:{name}", _stdlib.normalize(topics[name])) for name in sorted(topics)]
    seen: set[str] = set()
    for module in _stdlib.MODULES:
        blocks = []
        for qualname, doc in _stdlib.docstrings(module):
            digest = hashlib.sha256(doc.encode()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                blocks.append(f"{qualname}\n\n{doc}")
        if blocks:
            pages.append((f"module:{module}", "\n\n".join(blocks)))
    return pages


def _build() -> dict[str, tuple[Article, ...]]:
    parts: dict[str, list[Article]] = {p: [] for p in PARTS}
    seen: set[str] = set()
    for page, text in _pages():
        part = part_of(page)
        for i, piece in enumerate(chunk(text)):
            digest = hashlib.sha256(piece.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            parts[part].append(Article(f"{page}#{i}", piece))
    return {p: tuple(a) for p, a in parts.items()}


def cached_corpus_file() -> Path:
    """Where the built corpus is kept: named by this Python and the code the build runs, so that a
    change to either makes a new file rather than reading a stale one."""
    h = hashlib.sha256(f"{sys.version}\0{_stdlib_dir()}\0".encode())
    for source in (__file__, _stdlib.__file__):
        h.update(Path(source).read_bytes())
    return cache_dir() / "corpora" / f"pydocs-{h.hexdigest()[:16]}.json"


@functools.lru_cache(maxsize=1)
def _corpus() -> dict[str, tuple[Article, ...]]:
    def parse(file_text: str) -> dict[str, tuple[Article, ...]]:
        stored = json.loads(file_text)
        return {p: tuple(Article(key, text) for key, text in stored[p]) for p in PARTS}

    def dump(corpus: dict[str, tuple[Article, ...]]) -> str:
        return json.dumps({p: [[a.key, a.text] for a in corpus[p]] for p in PARTS})

    return read_or_build(cached_corpus_file(), parse, _build, dump, "pydocs corpus")


def load_pydocs(part: str) -> list[Article]:
    """The articles of one part: pretrain, finetune, objective or test."""
    if part not in PARTS:
        raise DataError(f"pydocs has no part {part!r}; the parts are {', '.join(PARTS)}")
    return list(_corpus()[part])


def corpus_stats() -> dict[str, dict[str, int]]:
    """Articles and characters per part."""
    return {p: {"articles": len(a), "chars": sum(len(x.text) for x in a)}
            for p, a in _corpus().items()}


# ----------------------------------------------------------------------------- the mixed pool

def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def _code_articles() -> tuple[Article, ...]:
    """Chunks of standard-library Python source (indentation kept)."""
    out = []
    for module in _stdlib.MODULES:
        mod = _stdlib.load_module(module)
        path = getattr(mod, "__file__", None) or ""
        if not path.endswith(".py"):
            continue
        source = Path(path).read_text(encoding="utf-8", errors="replace")
        blocks = [b.rstrip() for b in source.replace("\t", "    ").split("\n\n") if b.strip()]
        current, i = "", 0
        for block in blocks:
            if current and len(current) + 2 + len(block) > MAX_CHARS:
                if len(current) >= MIN_CHARS:
                    out.append(Article(f"code:{module}#{i}", current[:MAX_CHARS], in_domain=False))
                    i += 1
                current = block
            else:
                current = f"{current}\n\n{block}" if current else block
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _license_articles() -> tuple[Article, ...]:
    """The Python licence text of this installation (LICENSE.txt), falling back to copyright()."""
    path = _stdlib_dir() / "LICENSE.txt"
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        import builtins
        text = f"{builtins.copyright}\n\n{builtins.credits}"  # type: ignore[attr-defined]
    pieces = chunk(_stdlib.normalize(text))
    return tuple(Article(f"license:#{i}", p, in_domain=False) for i, p in enumerate(pieces))


def _table(rng: random.Random, key: str) -> Article:
    """A tabular dump of numbers: a header and rows of ints and floats."""
    ncols = rng.randint(3, 7)
    header = ",".join(f"col{j}" for j in range(ncols))
    rows, size, target = [header], len(header), rng.randint(800, MAX_CHARS)
    while size < target:
        rows.append(",".join(str(rng.randint(0, 99999)) if j % 2
                             else f"{rng.uniform(-1e3, 1e3):.4f}" for j in range(ncols)))
        size += len(rows[-1]) + 1
    return Article(key, "\n".join(rows), in_domain=False)


def load_mixed_pool(off_domain_fraction: float = 0.5, seed: int = 0) -> list[Article]:
    """The `finetune` articles (in_domain=True) mixed with off-domain text (in_domain=False):
    stdlib source code, licence boilerplate and number tables, so that a fraction
    `off_domain_fraction` of the pool is off-domain. Shuffled with `seed`."""
    if not 0.0 <= off_domain_fraction < 1.0:
        raise DataError(f"off_domain_fraction must be in [0, 1), got {off_domain_fraction}")
    in_domain = load_pydocs("finetune")
    n_off = round(len(in_domain) * off_domain_fraction / (1.0 - off_domain_fraction))
    rng = random.Random(seed)
    licences = list(_license_articles())[: n_off // 10]
    code = list(_code_articles())
    n_code = min(len(code), round(0.6 * n_off))
    off = licences + rng.sample(code, n_code)
    off += [_table(rng, f"table:{seed}#{i}") for i in range(n_off - len(off))]
    pool = in_domain + off
    rng.shuffle(pool)
    return pool
