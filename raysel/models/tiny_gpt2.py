"""``tiny-gpt2``: a small GPT-2 pretrained locally on the built-in pydocs corpus (CPU, minutes).

``prepare_tiny_gpt2()`` trains a byte-level BPE (vocab 8192) on ``load_pydocs("pretrain")``,
pretrains a 4-layer GPT-2 on random 128-token windows of it (AdamW, warmup + cosine decay,
nanoGPT style), measures perplexity on ``load_pydocs("test")`` before and after, and saves
config, weights, tokenizer and ``manifest.json`` under ``cache_dir()/tiny-gpt2``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tokenizers as tk
import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from raysel.models import tokenizers as toks
from raysel.models.cache import install_prepared, prepared_manifest, preparing
from raysel.models.catalog import prepared_dir
from raysel.metrics import perplexity
from raysel.models.errors import ModelError
from raysel.models.hf import quiet

NAME = "tiny-gpt2"
RECIPE_VERSION = 2  # 2: a fixed 300-step budget (1 was time-capped)
VOCAB_SIZE = 8192
ARCH: dict[str, int] = {"n_layer": 4, "n_embd": 192, "n_head": 4, "n_positions": 256}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Pretraining hyperparameters (the defaults are what ``raysel prepare`` uses)."""

    steps: int = 300  # beyond ~300 steps the 190k-token corpus starts to overfit
    batch_size: int = 16
    context: int = 128
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_windows: int = 160


def model_dir(cache: str | Path | None = None) -> Path:
    """Where tiny-gpt2 lives: ``<cache>/tiny-gpt2`` (default cache: ``cache_dir()``)."""
    return prepared_dir(NAME, cache)


def read_manifest(cache: str | Path | None = None) -> dict[str, Any] | None:
    """The manifest of a prepared tiny-gpt2, or None if it is not (completely) prepared."""
    return prepared_manifest(model_dir(cache))


def pydocs_texts(part: str) -> list[str]:
    """Texts of ``raysel.data.load_pydocs(part)``."""
    try:
        from raysel.data import load_pydocs
    except ImportError as e:
        raise ModelError(f"tiny-gpt2 is pretrained on raysel.data.load_pydocs, which cannot be imported: {e}") from e
    return [a.text for a in load_pydocs(part)]


def _encode(tok: tk.Tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All texts as one 1-D id stream, each followed by <|endoftext|>."""
    eot = tok.token_to_id(toks.EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(list(texts)):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(ids: torch.Tensor, context: int, limit: int) -> torch.Tensor:
    """Up to ``limit`` non-overlapping ``context``-token windows, evenly spread over ``ids``."""
    n = len(ids) // context
    if n == 0:
        raise ModelError(f"test text too short for one {context}-token window ({len(ids)} tokens)")
    all_windows = ids[: n * context].view(n, context)
    return all_windows[torch.linspace(0, n - 1, min(n, limit)).round().long()]


def _lr(r: Recipe, step: int, done: float) -> float:
    """Linear warmup over ``r.warmup`` steps, then cosine from lr to lr*min_lr_ratio as ``done`` goes 0→1."""
    warm = min(1.0, (step + 1) / r.warmup)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return r.lr * warm * (r.min_lr_ratio + (1.0 - r.min_lr_ratio) * cos)


def _optimizer(model: torch.nn.Module, r: Recipe) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": r.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=r.lr, betas=(0.9, 0.95))


@contextlib.contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Any]:
    """A rich progress bar (or a no-op) yielding ``update(advance, **fields)``."""
    if not enabled:
        yield lambda *a, **k: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("tiny-gpt2"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}")) as p:
        task = p.add_task("pretrain", total=total, info="")
        yield lambda advance=1, info="": p.update(task, advance=advance, info=info)


def _train(model: GPT2LMHeadModel, data: torch.Tensor, r: Recipe, max_seconds: float | None,
           progress: bool) -> dict[str, Any]:
    """The pretraining loop: random windows, AdamW, clipped grads; stops at r.steps or max_seconds."""
    gen = torch.Generator().manual_seed(r.seed)
    opt = _optimizer(model, r)
    model.train()
    start, step, loss_ema = time.monotonic(), 0, float("nan")
    stopped_by = "steps"
    with _bar(progress, r.steps) as update:
        while step < r.steps:
            done = step / r.steps
            if max_seconds is not None:
                done = max(done, (time.monotonic() - start) / max_seconds)
            if done >= 1.0:
                stopped_by = "time"
                break
            for g in opt.param_groups:
                g["lr"] = _lr(r, step, done)
            ix = torch.randint(len(data) - r.context - 1, (r.batch_size,), generator=gen)
            x = torch.stack([data[i : i + r.context] for i in ix])
            y = torch.stack([data[i + 1 : i + 1 + r.context] for i in ix])
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            opt.step()
            step += 1
            loss_ema = loss.item() if step == 1 else 0.95 * loss_ema + 0.05 * loss.item()
            update(1, f"loss {loss_ema:.3f}")
    return {"steps": step, "train_loss_ema": loss_ema, "train_time_s": time.monotonic() - start,
            "stopped_by": stopped_by, "tokens_seen": step * r.batch_size * r.context}


def build_model(vocab_size: int, eot_id: int, seed: int = 0) -> GPT2LMHeadModel:
    """The untrained tiny-gpt2 (dropout 0), initialised from ``seed`` without touching global RNG."""
    config = GPT2Config(vocab_size=vocab_size, **ARCH, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def prepare_tiny_gpt2(
    cache_dir: str | Path | None = None,
    *,
    max_minutes: float | None = None,
    steps: int | None = None,
    progress: bool = True,
    force: bool = False,
    recipe: Recipe | None = None,
    corpus: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Pretrain tiny-gpt2 and cache it; return its directory (at once if already prepared).

    Training runs ``steps`` optimizer steps (default ``Recipe.steps``, 300), so the model is the
    same on every machine; ``max_minutes`` optionally caps the time (the cosine schedule then
    follows whichever budget is further along, so a busy machine gets fewer steps, not a worse
    schedule). ``corpus`` may map
    "pretrain" and "test" to texts instead of ``raysel.data.load_pydocs``. ``force`` retrains.
    """
    t0 = time.monotonic()
    r = recipe or Recipe()
    r = dataclasses.replace(r, steps=steps) if steps is not None else r
    train_texts = list(corpus["pretrain"]) if corpus else pydocs_texts("pretrain")
    sha = toks.corpus_sha256(train_texts)
    final = model_dir(cache_dir)
    with preparing(final, NAME):
        old = read_manifest(final.parent)
        if old and old.get("corpus_sha256") == sha and old.get("recipe_version") == RECIPE_VERSION and not force:
            return final
        test_texts = list(corpus["test"]) if corpus else pydocs_texts("test")
        raw = toks.train_bpe(train_texts, VOCAB_SIZE, "gpt2")
        tok = toks.wrap(raw, "gpt2", max_length=ARCH["n_positions"])
        data, test = _encode(raw, train_texts), _encode(raw, test_texts)
        windows = eval_windows(test, r.context, r.eval_windows)
        model = build_model(len(tok), tok.eos_token_id, r.seed)
        with quiet():  # no "pass an attention_mask" warning: windows hold no padding
            ppl0 = perplexity(model, windows)
            stats = _train(model, data, r, None if max_minutes is None else max_minutes * 60.0, progress)
            ppl = perplexity(model, windows)
        manifest = {
            "name": NAME, "recipe_version": RECIPE_VERSION, "corpus_sha256": sha,
            "corpus": "raysel.data.load_pydocs('pretrain')" if corpus is None else "custom",
            "pretrain_tokens": len(data), "test_tokens": len(test), "eval_windows": len(windows),
            **stats, "untrained_test_perplexity": ppl0, "test_perplexity": ppl,
            "params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok),
            "arch": ARCH, "recipe": dataclasses.asdict(r), "max_minutes": max_minutes,
            "wall_time_s": time.monotonic() - t0,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "tokenizers": tk.__version__},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{NAME}-"))
        try:
            with quiet():
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            install_prepared(tmp, manifest, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
