"""The pydocs corpus, its cache and its mixed pool."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from raysel.data import Article, DataError, corpus_stats, load_mixed_pool, load_pydocs
from raysel.data.pydocs import MAX_CHARS, MIN_CHARS, PARTS, chunk


def test_every_part_is_nonempty_and_stats_match():
    stats = corpus_stats()
    assert set(stats) == set(PARTS)
    for part in PARTS:
        articles = load_pydocs(part)
        assert len(articles) >= 20, part
        assert stats[part] == {"articles": len(articles),
                               "chars": sum(len(a.text) for a in articles)}
    # pretrain is the largest part, as the 55/25/10/10 split intends
    assert stats["pretrain"]["chars"] > stats["finetune"]["chars"] > stats["test"]["chars"]


def test_parts_are_disjoint_in_keys_pages_and_texts():
    keys, texts, pages = {}, {}, {}
    for part in PARTS:
        for a in load_pydocs(part):
            assert keys.setdefault(a.key, part) == part and a.key not in texts
            assert texts.setdefault(a.text, part) == part
            page = a.key.split("#")[0]
            assert pages.setdefault(page, part) == part, f"{page} is in two parts"
    assert len(texts) == len(keys)  # no duplicate texts anywhere (exact dedup)


def test_articles_are_clean_prose_of_bounded_length():
    articles = [a for p in PARTS for a in load_pydocs(p)]
    assert all(isinstance(a, Article) and a.in_domain for a in articles)
    assert all(MIN_CHARS <= len(a.text) <= 1.5 * MAX_CHARS for a in articles)
    assert all("\t" not in a.text and "\n\n\n" not in a.text for a in articles)
    assert all(a.text == a.text.strip() for a in articles)
    sources = {a.key.split(":")[0] for a in articles}
    assert sources == {"topic", "module"}
    assert any("assert" in a.text and a.key.startswith("topic:") for a in articles)


def test_article_is_frozen_and_unknown_part_is_rejected():
    a = load_pydocs("test")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.text = "x"  # type: ignore[misc]
    with pytest.raises(DataError, match="pretrain, finetune, objective, test"):
        load_pydocs("train")


def test_chunk_cuts_at_paragraphs_and_drops_short():
    para = ("word " * 150).strip()  # 749 chars
    pieces = chunk("\n\n".join([para] * 10), max_chars=2000, min_chars=200)
    assert pieces == ["\n\n".join([para] * 2)] * 5  # paragraphs are never cut when they fit
    long = "A sentence here. " * 300  # one 5100-char paragraph: cut at sentence ends
    pieces = chunk(long.strip(), max_chars=2000, min_chars=200)
    assert len(pieces) == 3 and all(p.endswith(".") and len(p) <= 2000 for p in pieces)
    tail = chunk("x" * 1900 + "\n\n" + "y" * 150, max_chars=2000, min_chars=200)
    assert tail == ["x" * 1900 + "\n\n" + "y" * 150]  # a short last piece joins the one before
    assert chunk("too short", max_chars=2000, min_chars=200) == []


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.8])
def test_mixed_pool_proportion(fraction):
    pool = load_mixed_pool(off_domain_fraction=fraction, seed=0)
    finetune = load_pydocs("finetune")
    in_domain = [a for a in pool if a.in_domain]
    off = [a for a in pool if not a.in_domain]
    assert sorted(a.key for a in in_domain) == sorted(a.key for a in finetune)
    assert abs(len(off) / len(pool) - fraction) < 0.01
    assert len({a.key for a in pool}) == len(pool)


def test_mixed_pool_off_domain_kinds_and_seed():
    pool = load_mixed_pool(0.5, seed=1)
    kinds = {a.key.split(":")[0] for a in pool if not a.in_domain}
    assert kinds == {"code", "license", "table"}
    code = next(a for a in pool if a.key.startswith("code:"))
    assert "def " in code.text or "import " in code.text or "class " in code.text
    assert [a.key for a in load_mixed_pool(0.5, seed=1)] == [a.key for a in pool]
    assert [a.key for a in load_mixed_pool(0.5, seed=2)] != [a.key for a in pool]
    with pytest.raises(DataError, match="off_domain_fraction"):
        load_mixed_pool(1.0)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A private RAYSEL_CACHE and an empty in-process cache (restored empty afterwards)."""
    from raysel.data import pydocs

    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path / "cache"))
    pydocs._corpus.cache_clear()
    yield tmp_path / "cache"
    pydocs._corpus.cache_clear()


def _refuse_to_build(monkeypatch):
    from raysel.data import pydocs

    def build():
        raise AssertionError("built again instead of reading the cached corpus")

    monkeypatch.setattr(pydocs, "_build", build)


def test_the_corpus_is_built_once_and_read_back_identical_from_the_cache(private_cache, monkeypatch):
    from raysel.data import pydocs

    built = pydocs._corpus()
    path = pydocs.cached_corpus_file()
    assert path.parent == private_cache / "corpora" and path.is_file()
    assert path.stat().st_mode & 0o777 == 0o644  # other users' trials read a shared cache
    pydocs._corpus.cache_clear()
    _refuse_to_build(monkeypatch)
    assert pydocs._corpus() == built  # every Article equal: key, text, in_domain
    assert [type(a) for a in pydocs._corpus()["test"]] == [Article] * len(built["test"])


def test_a_change_to_the_build_code_names_a_new_cache_file(private_cache, monkeypatch, tmp_path):
    from raysel.data import pydocs

    before = pydocs.cached_corpus_file()
    edited = tmp_path / "pydocs.py"
    edited.write_text(Path(pydocs.__file__).read_text() + "\n# MAX_CHARS changed\n")
    monkeypatch.setattr(pydocs, "__file__", str(edited))
    assert pydocs.cached_corpus_file() != before
    assert pydocs.cached_corpus_file().parent == before.parent


def test_an_unreadable_cached_corpus_is_built_again_and_an_unwritable_cache_is_no_error(private_cache, caplog):
    from raysel.data import pydocs

    built = pydocs._corpus()
    path = pydocs.cached_corpus_file()
    path.write_text('{"pretrain": [["only a key"]]}')
    pydocs._corpus.cache_clear()
    assert pydocs._corpus() == built
    assert "ignoring the unreadable cached pydocs corpus" in caplog.text
    assert json.loads(path.read_text())["test"][0] == [built["test"][0].key, built["test"][0].text]  # rewritten

    shutil.rmtree(private_cache)
    private_cache.write_text("a file where the cache folder would be")
    pydocs._corpus.cache_clear()
    assert pydocs._corpus() == built
    assert "could not cache the pydocs corpus" in caplog.text
