"""Provenance (issue 23, item 4): the code's commit and dirty flag, the spec's hash, the packages, and the
digests of what a trial loaded. The end-to-end check through a real MLflow server is in
tests/test_mlflow_server.py."""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from raysel.data import classification_splits, lm_splits, qa_splits
from raysel.inputs import DataSpec
from raysel.models import load_model
from raysel.provenance import (code_and_spec_tags, content_digest, git_state, load_tags, package_versions,
                               recording_loads, spec_sha256)

ROOT = Path(__file__).resolve().parents[1]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_state_gives_the_commit_and_whether_tracked_files_changed(tmp_path):
    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    _git(tmp_path / "repo", "init", "-q")
    assert git_state(package) == (None, None)  # not committed: not tracked
    _git(tmp_path / "repo", "add", "-A")
    _git(tmp_path / "repo", "commit", "-qm", "first")
    head = _git(tmp_path / "repo", "rev-parse", "HEAD")
    assert git_state(package) == (head, False)
    (tmp_path / "repo" / "notes.txt").write_text("untracked files do not make it dirty")
    assert git_state(package) == (head, False)
    (package / "code.py").write_text("x = 2\n")
    assert git_state(package) == (head, True)
    (tmp_path / "repo" / "venv").mkdir()  # an installed copy inside someone's checkout is not tracked there
    assert git_state(tmp_path / "repo" / "venv") == (None, None)
    assert git_state(tmp_path) == (None, None)


def test_code_and_spec_tags_name_this_checkouts_commit_and_the_specs_hash():
    spec = {"name": "s", "arms": [{"name": "a", "params": {"lr": 1e-4}}]}
    tags = code_and_spec_tags(spec)
    assert tags["raysel.spec_sha256"] == spec_sha256({"arms": [{"params": {"lr": 1e-4}, "name": "a"}], "name": "s"})
    assert tags["raysel.spec_sha256"] != spec_sha256({**spec, "name": "t"})
    commit, dirty = git_state(ROOT / "raysel")
    if commit is None:  # raysel installed from a wheel
        assert "mlflow.source.git.commit" not in tags and tags["raysel.git.commit"].startswith("none")
    else:
        assert tags["mlflow.source.git.commit"] == commit == _git(ROOT, "rev-parse", "HEAD")
        assert tags["raysel.git.dirty"] == str(dirty).lower()


def test_package_versions_are_this_environments():
    tags = package_versions()
    assert tags["raysel.pkg.torch"] == torch.__version__
    assert tags["raysel.version"] and tags["raysel.pkg.python"].count(".") == 2


def test_a_recording_holds_each_model_and_dataset_loaded_with_content_digests():
    facts, pydocs = DataSpec(name="synthetic-facts"), DataSpec(name="pydocs", max_examples=5)
    assert not load_tags([])
    load_model("tiny-gpt2-random", "causal_lm")  # outside a recording: nothing kept, nothing hashed
    with recording_loads() as loads:
        model, _ = load_model("tiny-gpt2-random", "causal_lm")
        load_model("tiny-gpt2-random", "causal_lm")  # the same model twice: one record
        splits = qa_splits(facts)
        lm_splits(pydocs)
        topics = classification_splits(DataSpec(name="pydocs-topics", k=4), seed=3)
    assert [(item.kind, item.name) for item in loads] == [
        ("model", "tiny-gpt2-random"), ("data", "synthetic-facts"), ("data", "pydocs"),
        ("data", "pydocs-topics (k=4, seed 3)")]
    model_record, facts_record, pydocs_record, topics_record = loads
    assert model_record.source == "built-in, random init"
    assert [(s, n) for s, n, _ in facts_record.splits] == [(s, len(splits[s])) for s in splits]
    assert {s: d for s, _, d in facts_record.splits} == {s: content_digest(rows) for s, rows in splits.items()}
    assert dict((s, n) for s, n, _ in pydocs_record.splits)["train"] == 5
    assert dict((s, d) for s, _, d in topics_record.splits)["train"] == content_digest(topics.train)
    with recording_loads() as again:  # the same content: the same digests, in another recording
        qa_splits(facts)
        classification_splits(DataSpec(name="pydocs-topics", k=4), seed=4)
    assert again[0] == facts_record and again[1].splits[0][2] != topics_record.splits[0][2]  # another k-shot draw
    tags = load_tags(loads)
    assert tags["raysel.data.synthetic-facts"] == f"{facts_record.digest} (built-in)"
    assert tags["raysel.model.tiny-gpt2-random"].startswith(model_record.digest)


def test_a_local_model_directorys_digest_follows_its_files(tmp_path):
    model, tokenizer = load_model("tiny-gpt2-random", "causal_lm")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    with recording_loads() as first:
        load_model(str(tmp_path / "m"), "causal_lm")
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    model.save_pretrained(tmp_path / "m")
    with recording_loads() as second:
        load_model(str(tmp_path / "m"), "causal_lm")
    assert first[0].source == second[0].source == str(tmp_path / "m")
    assert first[0].digest != second[0].digest
