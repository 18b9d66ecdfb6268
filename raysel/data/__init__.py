"""Data for raysel: the offline built-ins (pydocs, pydocs-topics, synthetic-facts), the LM-BFF
k-shot generator, and loaders for users' own files and Hugging Face datasets."""

from raysel.data.errors import DataError
from raysel.data.facts import generate_facts, write_streamingqa
from raysel.data.loaders import (
    LabeledSplits,
    load_hf_dataset,
    load_jsonl,
    load_lm_bff_dir,
    load_streamingqa_csv,
    load_text_file,
)
from raysel.data.pydocs import Article, corpus_stats, load_mixed_pool, load_pydocs
from raysel.data.sources import BUILTIN_DATA, classification_splits, lm_splits, qa_splits
from raysel.data.topics import LABELS as TOPIC_LABELS
from raysel.data.topics import k_shot_split, load_topics, write_k_shot

__all__ = [
    "Article",
    "BUILTIN_DATA",
    "classification_splits",
    "lm_splits",
    "qa_splits",
    "DataError",
    "LabeledSplits",
    "TOPIC_LABELS",
    "corpus_stats",
    "generate_facts",
    "k_shot_split",
    "load_hf_dataset",
    "load_jsonl",
    "load_lm_bff_dir",
    "load_mixed_pool",
    "load_pydocs",
    "load_streamingqa_csv",
    "load_text_file",
    "load_topics",
    "write_k_shot",
    "write_streamingqa",
]
