"""GGUF -> a float checkpoint in the Hugging Face layout (config.json, tokenizer.json, model.safetensors).

GGUF (llama.cpp's format) stores tensors in ggml order, shape (ne0, ne1) with ne0 innermost, which
is the torch (rows, cols) = (ne1, ne0) of the same bytes; quantized blocks are dequantized here with
the `gguf` package. Names map blk.N.attn_q -> model.layers.N.self_attn.q_proj and so on.

llama.cpp's converter permutes the rows of llama's Q and K projections, per head, from the Hugging
Face "rotate halves" rope layout to its interleaved-pairs layout; `unpermute_rows` restores them.
Qwen2 is stored unpermuted. config.json is rebuilt from the `{arch}.*` metadata, the tokenizer from
the `tokenizer.*` metadata (engine/gguf_tokenizer.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.gguf_tokenizer import GgufVocab, eos_token_ids, tokenizer_files

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SUPPORTED_TYPES = frozenset(
    "F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K".split()
)  # every type gguf.quants can dequantize that llama.cpp's common quantizations use

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


class GgufImportError(ValueError):
    pass


def read_metadata(reader) -> dict[str, Any]:
    """Every key/value field of a GGUFReader as plain Python values (arrays as lists)."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def hf_tensor_name(gguf_name: str, arch: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")  # suffix: weight | bias
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    raise GgufImportError(
        f"tensor {gguf_name} of architecture {arch!r} has no known equivalent; not supported"
    )


def unpermute_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row permutation of a Q or K projection (weight (rows, K) or bias (rows,)).

    Per head, llama.cpp orders rows as pairs (0, d/2), (1, d/2 + 1), ...; Hugging Face keeps the two
    halves apart.
    """
    rows = w.shape[0]
    head_dim = rows // num_heads
    rest = w.shape[1:]
    return w.reshape(num_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def vocab_from_metadata(meta: dict[str, Any]) -> GgufVocab:
    if "tokenizer.ggml.tokens" not in meta:
        raise GgufImportError("the GGUF file has no tokenizer (tokenizer.ggml.tokens missing)")
    return GgufVocab(
        model=meta.get("tokenizer.ggml.model", "gpt2"),
        pre=meta.get("tokenizer.ggml.pre", "default"),
        tokens=list(meta["tokenizer.ggml.tokens"]),
        token_types=list(meta.get("tokenizer.ggml.token_type") or []),
        merges=list(meta.get("tokenizer.ggml.merges") or []),
        bos_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_id=meta.get("tokenizer.ggml.padding_token_id"),
        eot_id=meta.get("tokenizer.ggml.eot_token_id"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def model_config(
    meta: dict[str, Any], tensor_names: set[str], vocab_size: int, eos_ids: list[int], dtype: str
) -> dict:
    arch = meta["general.architecture"]
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)
    hidden = int(key("embedding_length"))
    num_heads = int(key("attention.head_count"))
    num_layers = int(key("block_count"))
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(key("attention.head_count_kv", num_heads)),
        "head_dim": int(key("attention.key_length", hidden // num_heads)),
        "vocab_size": vocab_size,
        "max_position_embeddings": int(key("context_length", 4096)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        "torch_dtype": dtype,
    }
    scaling = key("rope.scaling.type")
    if scaling and scaling != "none":
        config["rope_scaling"] = {
            "rope_type": scaling,
            "factor": float(key("rope.scaling.factor", 1.0)),
            **(
                {"original_max_position_embeddings": int(v)}
                if (v := key("rope.scaling.original_context_length"))
                else {}
            ),
        }
    if arch == "llama":
        config.update(attention_bias="blk.0.attn_q.bias" in tensor_names, mlp_bias=False)
    if arch == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=num_layers)
    return config


def check_supported(reader, meta: dict[str, Any]) -> str:
    """The architecture, after checking it and every tensor's type (before any work is done)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GgufImportError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in SUPPORTED_TYPES:
            raise GgufImportError(
                f"tensor {tensor.name} has type {type_name}, which is not supported "
                f"(architecture {arch}; supported types: {', '.join(sorted(SUPPORTED_TYPES))})"
            )
        hf_tensor_name(tensor.name, arch)
    return arch


def dequantized_tensors(
    reader, meta: dict[str, Any], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor in `dtype`) for every tensor, Q/K rows restored for llama."""
    from gguf.quants import dequantize

    arch = meta["general.architecture"]
    num_heads = int(meta[f"{arch}.attention.head_count"])
    num_kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", num_heads))
    for tensor in reader.tensors:
        values = dequantize(np.asarray(tensor.data), tensor.tensor_type)  # float32, last dim = ne0
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # ggml (ne0, ne1) -> (ne1, ne0)
        w = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy
        name = hf_tensor_name(tensor.name, arch)
        if arch == "llama" and ".self_attn.q_proj." in name:
            w = unpermute_rows(w, num_heads)
        elif arch == "llama" and ".self_attn.k_proj." in name:
            w = unpermute_rows(w, num_kv_heads)
        yield name, w.to(dtype)


def convert_gguf(path: Path, folder: Path, dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write the float checkpoint of the GGUF file `path` into the existing empty `folder`.

    Returns facts for the model store's manifest (architecture, name, tensor types).
    """
    from gguf import GGUFReader

    from engine.quant.gptq_writer import write_checkpoint

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as exc:
        raise GgufImportError(f"{path} is not a readable GGUF file ({exc})") from exc
    meta = read_metadata(reader)
    arch = check_supported(reader, meta)
    vocab = vocab_from_metadata(meta)
    eos_ids = eos_token_ids(vocab)
    tensor_names = {t.name for t in reader.tensors}
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab_size = int(embed.shape[1])
    dtype_name = str(dtype).removeprefix("torch.")
    config = model_config(meta, tensor_names, vocab_size, eos_ids, dtype_name)
    files: dict[str, bytes | str] = dict(tokenizer_files(vocab, config["max_position_embeddings"]))
    generation = {"bos_token_id": vocab.bos_id, "eos_token_id": eos_ids, "do_sample": False}
    files["generation_config.json"] = json.dumps(generation, indent=2) + "\n"
    tensors = dict(dequantized_tensors(reader, meta, dtype))
    write_checkpoint(folder, tensors, config, files)
    types = sorted({t.tensor_type.name for t in reader.tensors})
    return {"architecture": arch, "name": meta.get("general.name"), "gguf_tensor_types": types}
