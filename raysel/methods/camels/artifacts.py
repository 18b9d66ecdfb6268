"""Where CaMeLS's trained models are and how they are saved and loaded: the QA-tuned base
(``<artifacts>/qa-model``) and the weight model (``<artifacts>/weight-model.pt``) in a sweep's shared
directory, written by one phase's arm and read by a later one's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from raysel.data.errors import DataError
from raysel.methods.base import RunContext, shared_dir_of
from raysel.methods.camels.algorithm import TokenWeightModel
from raysel.methods.camels.params import QA_MODEL, WEIGHT_MODEL, CamelsParams
from raysel.methods.camels.qa import encode_documents
from raysel.methods.collective import atomic_save
from raysel import models


def artifacts_dir(params: CamelsParams, run: RunContext | None) -> Path:
    """``<shared>/camels/<artifacts>`` of this sweep (``run``) or of ``from_sweep``."""
    shared = shared_dir_of(Path(params.from_sweep).expanduser().resolve()) if params.from_sweep else run.shared_dir
    return shared / "camels" / params.artifacts


def weight_model_path(params: CamelsParams, run: RunContext | None) -> Path:
    """The weight model an evaluation uses: ``weight_model``, else the meta-training arm's."""
    return Path(params.weight_model) if params.weight_model else artifacts_dir(params, run) / WEIGHT_MODEL


def save_meta_train_cost(weight_model: Path, flops: float) -> None:
    """Beside a weight model, the FLOPs meta-training spent (what its evaluation arms' weights cost)."""
    weight_model.with_suffix(".json").write_text(json.dumps({"meta_train_flops_est": flops}) + "\n")


def meta_train_cost(weight_model: Path) -> float | None:
    """The FLOPs meta-training spent on ``weight_model`` (None: a weight model saved without them)."""
    sidecar = weight_model.with_suffix(".json")
    return json.loads(sidecar.read_text())["meta_train_flops_est"] if sidecar.is_file() else None


def base_model_source(params: CamelsParams, run: RunContext) -> str:
    if params.base_model:
        return params.base_model
    path = artifacts_dir(params, run) / QA_MODEL
    if not path.is_dir():
        raise DataError(f"camels: no QA-tuned model at {path}: a phase 'qa_tune' arm must run first "
                        "(list it in this arm's after:) or set from_sweep / base_model")
    return str(path)


def save_weight_model(weight_model: TokenWeightModel, encoder_name: str, path: Path) -> None:
    atomic_save({"encoder": encoder_name, "encoder_layers": encoder_layers(weight_model.encoder)[1],
                 "hidden_size": weight_model.head[0].in_features,
                 "head_size": weight_model.head[0].out_features, "beta": weight_model.softplus.beta,
                 "state_dict": {k: v.detach().cpu() for k, v in weight_model.state_dict().items()}}, path)


def encoder_layers(encoder: torch.nn.Module) -> tuple[str, int]:
    """The attribute holding a Hugging Face transformer's blocks (``layers`` in LLaMA, ``h`` in GPT-2) and
    how many there are."""
    for name in ("layers", "h", "layer"):
        blocks = getattr(encoder, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return name, len(blocks)
    raise ValueError(f"camels: cannot find the transformer blocks of {type(encoder).__name__} (no layers / h / layer)")


def keep_first_layers(encoder: torch.nn.Module, count: int) -> None:
    """Cut ``encoder`` to its first ``count`` transformer blocks (its config follows)."""
    name, total = encoder_layers(encoder)
    if count > total:
        raise ValueError(f"camels: weight_encoder_layers={count}, but the encoder has {total} layers")
    setattr(encoder, name, getattr(encoder, name)[:count])
    config = encoder.config
    for field in ("num_hidden_layers", "n_layer"):
        if hasattr(config, field):
            setattr(config, field, count)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:count]


def build_weight_model(encoder_name: str, head_size: int = 128, beta: float = 3.0, layers: int | None = None):
    """A fresh weight model on ``encoder_name``'s transformer (the LM head dropped; its first ``layers``
    blocks when given), and its tokenizer."""
    lm, tokenizer = models.load_model(encoder_name, "causal_lm")
    encoder = lm.base_model
    if layers is not None:
        keep_first_layers(encoder, layers)
    return TokenWeightModel(encoder, encoder.config.hidden_size, head_size, beta), tokenizer


def load_weight_model(path: Path, device: torch.device):
    saved = torch.load(path, map_location="cpu", weights_only=False)
    weight_model, tokenizer = build_weight_model(saved["encoder"], saved["head_size"], saved["beta"],
                                                 saved.get("encoder_layers"))
    weight_model.load_state_dict(saved["state_dict"])
    return weight_model.to(device).eval(), tokenizer


def check_same_tokenizer(base_tokenizer, weight_tokenizer, what: str) -> None:
    if base_tokenizer.get_vocab() != weight_tokenizer.get_vocab():
        raise DataError(f"camels: the {what} and the base model tokenize differently; token weights need "
                        "one tokenizer (e.g. distilgpt2 for a gpt2-xl base)")


@torch.no_grad()
def token_weights(weight_model: TokenWeightModel, tokenizer, texts: list[str], max_tokens: int):
    """Per document its tokens (strings) and learned weights."""
    device = next(weight_model.parameters()).device
    docs = encode_documents(tokenizer, texts, max_tokens)
    weights = weight_model(docs["input_ids"].to(device), docs["attention_mask"].to(device)).cpu()
    tokens, values = [], []
    for i in range(len(texts)):
        n = int(docs["attention_mask"][i].sum())
        tokens.append([tokenizer.decode([t]) for t in docs["input_ids"][i, :n].tolist()])
        values.append(weights[i, :n].tolist())
    return tokens, values


def save_pretrained_atomic(model: torch.nn.Module, tokenizer, target: Path) -> None:
    """save_pretrained into a fresh folder, then swapped in: a reader never sees half a model."""
    fresh = target.with_name(target.name + ".tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    model.save_pretrained(fresh)
    tokenizer.save_pretrained(fresh)
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.replace(old)
    fresh.replace(target)
    shutil.rmtree(old, ignore_errors=True)
