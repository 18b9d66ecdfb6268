"""The pydocs corpus and its mixed pool."""

import pytest

from raysel.data import Article, DataError, corpus_stats, load_mixed_pool, load_pydocs
from raysel.data.pydocs import MAX_CHARS, MIN_CHARS, PARTS, chunk

import dataclasses


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
