"""Small GGUF files written by the tests with gguf.GGUFWriter, and the tensors they should import as.

A tiny llama or qwen2 with hidden size 256 (K-quant blocks hold 256 values along a row), every tensor
in a different GGUF type. Types gguf.quants can quantize are quantized from random float weights;
K-quants (no quantizer in the package) are random blocks with sane fp16 scales. llama's Q and K are
permuted the way llama.cpp's converter does it, written here independently of engine/gguf_import.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFWriter
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from tests.tiny_models import CHAT_TEMPLATE, make_tokenizer_json

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LAYERS = 256, 512, 4, 2, 2
HEAD_DIM = HIDDEN // HEADS

# GGUF name -> type; the same type list for both architectures.
TYPES = {
    "token_embd.weight": T.Q8_0,
    "output_norm.weight": T.F32,
    "output.weight": T.Q6_K,
    "blk.0.attn_norm.weight": T.F32,
    "blk.0.attn_q.weight": T.Q4_0,
    "blk.0.attn_k.weight": T.Q4_1,
    "blk.0.attn_v.weight": T.Q5_0,
    "blk.0.attn_output.weight": T.Q8_0,
    "blk.0.ffn_norm.weight": T.F32,
    "blk.0.ffn_gate.weight": T.Q4_K,
    "blk.0.ffn_up.weight": T.Q5_K,
    "blk.0.ffn_down.weight": T.Q6_K,
    "blk.1.attn_norm.weight": T.F32,
    "blk.1.attn_q.weight": T.F32,
    "blk.1.attn_k.weight": T.F16,
    "blk.1.attn_v.weight": T.BF16,
    "blk.1.attn_output.weight": T.F16,
    "blk.1.ffn_norm.weight": T.F32,
    "blk.1.ffn_gate.weight": T.BF16,
    "blk.1.ffn_up.weight": T.Q4_K,
    "blk.1.ffn_down.weight": T.Q8_0,
}
SUPPORTED = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q4_K, T.Q5_K, T.Q6_K)
# Bytes per K-quant block of 256 values and the byte offsets of its fp16 scale fields.
_K_BLOCKS = {T.Q4_K: (144, (0, 2)), T.Q5_K: (176, (0, 2)), T.Q6_K: (210, (208,))}


def llama_cpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows: per head, interleave the two rope halves."""
    return w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _shape(name: str, vocab_size: int) -> tuple[int, int] | tuple[int]:
    """torch (rows, cols) of a tensor; norms are 1-D."""
    if name.endswith("norm.weight"):
        return (HIDDEN,)
    if name == "rope_freqs.weight":
        return (HEAD_DIM // 2,)
    kv = KV_HEADS * HEAD_DIM
    return {
        "token_embd": (vocab_size, HIDDEN),
        "output": (vocab_size, HIDDEN),
        "attn_q": (HIDDEN, HIDDEN),
        "attn_k": (kv, HIDDEN),
        "attn_v": (kv, HIDDEN),
        "attn_output": (HIDDEN, HIDDEN),
        "ffn_gate": (INTERMEDIATE, HIDDEN),
        "ffn_up": (INTERMEDIATE, HIDDEN),
        "ffn_down": (HIDDEN, INTERMEDIATE),
    }[name.split(".")[-2]]


def _encode(values: np.ndarray, qtype: T, rng: np.random.Generator) -> np.ndarray:
    """Raw GGUF data of `values` (rows, cols) in `qtype`; K-quants get random blocks instead."""
    if qtype in _K_BLOCKS:
        block_bytes, scale_offsets = _K_BLOCKS[qtype]
        rows, cols = values.shape
        blocks = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
        for offset in scale_offsets:
            scale = rng.uniform(0.001, 0.01, size=(rows, cols // 256)).astype(np.float16)
            blocks[:, :, offset : offset + 2] = scale.view(np.uint8).reshape(rows, cols // 256, 2)
        return blocks.reshape(rows, -1)
    try:
        return quantize(values.astype(np.float32), qtype)
    except NotImplementedError:  # e.g. IQ4_NL, for the "unsupported type" test: any bytes will do
        block_values, block_bytes = GGML_QUANT_SIZES[qtype]
        rows, cols = values.shape
        return rng.integers(0, 256, size=(rows, cols // block_values * block_bytes), dtype=np.uint8)


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    fim: bool = True,
    tie: bool = False,
    types: dict[str, T] | None = None,
    tokenizer_model: str = "gpt2",
) -> dict[str, np.ndarray]:
    """Write a tiny GGUF; return GGUF tensor name -> the float32 values it decodes to (rows, cols),
    before llama.cpp's permutation (i.e. what the import must produce)."""
    rng = np.random.default_rng(seed)
    tokenizer = json.loads(
        make_tokenizer_json(path.parent / f"{path.stem}-tokenizer.json", fim=fim).read_text()
    )
    vocab = tokenizer["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["id"] for t in tokenizer["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(1024)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)

    expected: dict[str, np.ndarray] = {}
    names = [n for n in (types or TYPES) if not (tie and n == "output.weight")]
    if arch == "qwen2":
        names += [f"blk.{i}.attn_{p}.bias" for i in range(LAYERS) for p in "qkv"]
    for name in names:
        qtype = (types or TYPES).get(name, T.F32)
        if name.endswith(".bias"):
            shape: tuple[int, ...] = (HIDDEN,) if ".attn_q." in name else (KV_HEADS * HEAD_DIM,)
        else:
            shape = _shape(name, len(tokens))
        values = rng.normal(0, 0.05, size=shape).astype(np.float32)
        if len(shape) == 1:
            values = values + 1.0 if name.endswith("norm.weight") else values
            writer.add_tensor(name, values)
            expected[name] = values
            continue
        raw = _encode(values, qtype, rng)  # (rows, bytes per row), or the float values themselves
        if qtype in SUPPORTED:
            expected[name] = dequantize(raw, qtype).reshape(shape).astype(np.float32)
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            # llama.cpp permutes rows before quantizing; a row's blocks stay whole, so permuting the
            # rows of the encoded data is the same thing.
            raw = llama_cpp_permute(raw, HEADS if ".attn_q." in name else KV_HEADS)
        raw_dtype = None if qtype in (T.F32, T.F16) else qtype
        writer.add_tensor(name, np.ascontiguousarray(raw), raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected
