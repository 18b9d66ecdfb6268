"""The baseline token weightings CaMeLS is compared with, as functions of text and token offsets.

- uniform: weight 1 on every token (standard fine-tuning on the document).
- ssm (salient span masking): weight 1 on tokens inside a named entity or date, else 0. With a trained
  spaCy pipeline installed (``en_core_web_sm``) its NER is used, without TIME, PERCENT, MONEY, QUANTITY,
  ORDINAL and CARDINAL entities, as in the reference; otherwise :func:`rule_based_spans`.
- tfidf: a token's weight is the largest TF-IDF of the words its characters belong to, in the document
  as truncated (the text up to the last kept token) and with the vectorizer fitted on the unique documents
  of every split, as in the reference; ``min_threshold`` q zeroes the weights below the q-quantile of the
  non-zero weights (the reference's config has it but never passes it on).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

Span = tuple[int, int]  # [start, end) character offsets
SPACY_EXCLUDED = ("TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL")

_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
# A date: "3 May 1901", "May 3, 1901", "May 1901", a month, or a year 1000-2099 standing alone.
_DATE = re.compile(rf"\b(?:\d{{1,2}} (?:{_MONTHS})(?: \d{{4}})?|(?:{_MONTHS})(?: \d{{1,2}},?)?(?: \d{{4}})?|"
                   r"(?:1\d|20)\d{2}s?)\b")
# A run of capitalised words, joined by spaces, hyphens or "of"/"de"/"van" ("Bank of England").
_CAPITALISED = re.compile(r"\b[A-Z][\w'’]*(?:(?:\s+(?:of|de|van|von|the)\s+|[ \t]+|-)[A-Z][\w'’]*)*")
_SENTENCE_END = re.compile(r"[.!?;:]\s+|\n\s*")
# Capitalised only because they start a sentence (not names on their own).
_FUNCTION_WORDS = frozenset(
    "A An The In On At By For From To Of With Before After During Since Until While When Where Which Who "
    "What Why How It Its This That These Those There Here He She They We I You His Her Their Our My Your "
    "But And Or So Yet If As Today Yesterday Tomorrow Then Now Also However Although Because".split())


def rule_based_spans(text: str) -> list[Span]:
    """Named entities and dates found by rules, for when no spaCy pipeline is installed: dates, and runs
    of capitalised words (names of people, places, organisations), less what is capitalised only because
    it starts a sentence: a leading function word ("In", "The") is dropped, and a lone word at a sentence
    start counts only if the document also capitalises it mid-sentence. Lower-case entities are missed;
    numbers are not entities (spaCy's CARDINAL etc. are excluded anyway)."""
    sentence_starts = {0} | {m.end() for m in _SENTENCE_END.finditer(text)}
    candidates = []
    for match in _CAPITALISED.finditer(text):
        start, end = match.span()
        words = match.group().split()
        while words and words[0] in _FUNCTION_WORDS:  # "In Ashford" → "Ashford"
            start = text.index(words[1], start + len(words[0])) if len(words) > 1 else end
            words = words[1:]
        if words:
            candidates.append((start, end, match.start() in sentence_starts and len(words) == 1))
    mid_sentence = {text[s:e] for s, e, initial in candidates if not initial}
    spans = [(s, e) for s, e, initial in candidates if not initial or text[s:e] in mid_sentence]
    return merge_spans(spans + [m.span() for m in _DATE.finditer(text)])


def spacy_spans(text: str, nlp) -> list[Span]:
    """The spans of a spaCy pipeline's entities, without the numeric types the reference excludes."""
    return merge_spans([(e.start_char, e.end_char) for e in nlp(text).ents if e.label_ not in SPACY_EXCLUDED])


def load_spacy(name: str = "en_core_web_sm"):
    """The trained spaCy pipeline ``name``, or None when spaCy or the pipeline is not installed."""
    try:
        import spacy

        return spacy.load(name)
    except (ImportError, OSError):
        return None


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    merged: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def span_weights(offsets: torch.Tensor, spans: Sequence[Span]) -> torch.Tensor:
    """1.0 for tokens whose characters [start, end) overlap a span (leading spaces aside), else 0.0."""
    weights = torch.zeros(len(offsets))
    for i, (start, end) in enumerate(offsets.tolist()):
        weights[i] = float(any(start < s_end and s_start < end for s_start, s_end in spans))
    return weights


def char_scores_weights(offsets: torch.Tensor, char_scores: torch.Tensor) -> torch.Tensor:
    """Per token, the largest score of its characters (0 for a token without characters)."""
    weights = torch.zeros(len(offsets))
    for i, (start, end) in enumerate(offsets.tolist()):
        if end > start:
            weights[i] = char_scores[start:end].max()
    return weights


def tfidf_corpus(splits: dict[str, list[dict]]) -> list[str]:
    """The unique document texts of every split, by split name then order of appearance."""
    return list(dict.fromkeys(d["text"] for split in sorted(splits) for d in splits[split]))


class TfidfScorer:
    """Word TF-IDF fitted on a set of documents (scikit-learn's ``TfidfVectorizer`` defaults), read per character."""

    def __init__(self, documents: Sequence[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer()
        self.vectorizer.fit(documents)
        self.pattern = re.compile(self.vectorizer.token_pattern)
        self.vocabulary = self.vectorizer.vocabulary_

    def char_scores(self, text: str) -> torch.Tensor:
        """Every character's score: the TF-IDF (in this document) of the word it belongs to, 0 outside words."""
        row = self.vectorizer.transform([text])
        scores = torch.zeros(len(text))
        for match in self.pattern.finditer(text.lower()):
            column = self.vocabulary.get(match.group())
            if column is not None:
                scores[match.start():match.end()] = float(row[0, column])
        return scores

    def token_weights(self, text: str, offsets: torch.Tensor) -> torch.Tensor:
        """Per token of a (possibly truncated) encoding with character ``offsets`` [T, 2], the largest
        TF-IDF of its words in the kept text: ``text`` up to the end of the last kept token."""
        kept = text[:int(offsets[:, 1].max())] if len(offsets) else ""
        return char_scores_weights(offsets, self.char_scores(kept))


def apply_min_threshold(weights: torch.Tensor, quantile: float) -> torch.Tensor:
    """Zero the weights below the ``quantile`` of the non-zero weights (``quantile`` 0 keeps them all)."""
    nonzero = weights[weights > 0]
    if quantile <= 0 or len(nonzero) == 0:
        return weights
    cut = torch.quantile(nonzero.double(), quantile).to(weights.dtype)
    return torch.where(weights >= cut, weights, torch.zeros_like(weights))
