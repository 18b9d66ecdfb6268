"""Bad names, paths, tasks and hub names raise ModelError with a message that says what to do."""
from __future__ import annotations

import json

import pytest

from raysel.models import BUILTIN_MODELS, ModelError, load_model


def test_model_error_is_value_error():
    assert issubclass(ModelError, ValueError)


def test_unknown_builtin_lists_names():
    with pytest.raises(ModelError) as e:
        load_model("tiny-gpt3", "causal_lm")
    msg = str(e.value)
    assert "did you mean 'tiny-gpt2'" in msg
    assert all(name in msg for name in BUILTIN_MODELS)


def test_unknown_task_lists_tasks():
    with pytest.raises(ModelError, match="unknown task 'lm'.*causal_lm, sequence_classification, masked_lm"):
        load_model("tiny-gpt2-random", "lm")


def test_empty_dir_says_which_files(tmp_path):
    with pytest.raises(ModelError, match="config.json.*model.safetensors"):
        load_model(str(tmp_path), "causal_lm")


def test_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match="no weights; expected one of: model.safetensors"):
        load_model(str(tmp_path), "causal_lm")


def test_missing_path():
    with pytest.raises(ModelError, match="does not exist"):
        load_model("./no/such/model/dir", "causal_lm")


def test_hub_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        load_model("raysel-tests/never-cached-model", "causal_lm")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "hf download raysel-tests/never-cached-model" in msg
    assert isinstance(e.value.__cause__, OSError)


def test_tiny_gpt2_not_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="raysel prepare"):
        load_model("tiny-gpt2", "causal_lm")


def test_bad_num_labels():
    with pytest.raises(ModelError, match="num_labels"):
        load_model("tiny-bert", "sequence_classification", num_labels=0)


def test_check_model_rejects_what_load_model_rejects_without_loading(tmp_path, monkeypatch):
    from raysel.models import check_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model("tiny-gpt2-random", "causal_lm")  # fine: no error
    for name, task, message in [("minilm", "causal_lm", "cannot do task"),
                                ("gpt2", "causal_lm", "HF_HUB_OFFLINE"),
                                (str(tmp_path / "missing"), "causal_lm", "does not exist"),
                                (str(tmp_path), "causal_lm", "config.json"),
                                ("tiny-gpt2-random", "translation", "translation")]:
        with pytest.raises(ModelError, match=message):
            check_model(name, task)
