"""Tiny random-weight checkpoints in the Hugging Face layout, built inside the tests.

Owns:
  make_tokenizer_json(path, fim=True) -> Path of a byte-level BPE tokenizer.json trained (deterministically)
      with `tokenizers` on a small built-in code corpus, with the special tokens of Qwen2.5-Coder.
  make_tiny_checkpoint(path, family, *, quant=None, tie=None, seed=0, dtype=torch.float32, num_shards=1,
                       **config_overrides) -> Path of a folder with config.json, tokenizer.json,
      tokenizer_config.json, generation_config.json and model.safetensors (or shards plus
      model.safetensors.index.json). Random weights; fp32 unless `dtype` says otherwise.
  dequantize_gptq_checkpoint(src, dst) -> Path of a float copy of a GPTQ checkpoint (what `transformers`
      loads as the reference for the engine's GPTQ path).

The GPTQ packer and unpacker here are written independently of engine/quant on purpose: a test that
used the engine's packing to build its inputs could not catch a packing bug.

GPTQ on disk (AutoGPTQ / GPTQModel), K = in_features, N = out_features, pw = 32 // bits:
  qweight int32 (K / pw, N): value k of column n in word k // pw, bits (k % pw) * bits, low first
  qzeros  int32 (G, N / pw): zero of group g, column n in word n // pw, bits (n % pw) * bits;
          checkpoint_format "gptq" stores zero - 1, "gptq_v2" stores the zero itself
  scales  float16 (G, N); g_idx int32 (K,): the group of each input feature
  W[k, n] = (q[k, n] - zero[g_idx[k], n]) * scale[g_idx[k], n];  the float weight is W.T, (N, K)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FIM_TOKENS = (
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
ENDOFTEXT = "<|endoftext|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# ~3 kB of Python, JavaScript and C: enough merges for a few hundred code-shaped tokens.
CORPUS = '''\
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()

    def __len__(self):
        return len(self.items)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\\n") for line in f]


import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    x: float
    y: float

    def distance(self, other: "Point") -> float:
        return ((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5


if __name__ == "__main__":
    print(fibonacci(10), file=sys.stderr)
    print(os.getcwd())
'''
CORPUS += """\
function debounce(fn, delayMs) {
  let timer = null;
  return function (...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), delayMs);
  };
}

const sum = (values) => values.reduce((acc, x) => acc + x, 0);

export async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`request failed: ${response.status}`);
  }
  return response.json();
}

class EventEmitter {
  constructor() {
    this.listeners = new Map();
  }
  on(name, listener) {
    if (!this.listeners.has(name)) this.listeners.set(name, []);
    this.listeners.get(name).push(listener);
  }
  emit(name, ...args) {
    for (const listener of this.listeners.get(name) || []) listener(...args);
  }
}
"""
CORPUS += """\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node {
    int value;
    struct node *next;
};

static struct node *push(struct node *head, int value) {
    struct node *n = malloc(sizeof(*n));
    if (n == NULL) {
        return head;
    }
    n->value = value;
    n->next = head;
    return n;
}

int main(int argc, char **argv) {
    struct node *list = NULL;
    for (int i = 0; i < argc; i++) {
        list = push(list, (int)strlen(argv[i]));
    }
    while (list != NULL) {
        struct node *next = list->next;
        printf("%d\\n", list->value);
        free(list);
        list = next;
    }
    return 0;
}
"""


def special_tokens(fim: bool = True) -> list[str]:
    """The special tokens in id order (they take ids 0, 1, 2, ...)."""
    return [ENDOFTEXT, *(FIM_TOKENS if fim else ()), *CHAT_TOKENS]


def make_tokenizer_json(path: str | Path, fim: bool = True, vocab_size: int = 640) -> Path:
    """Train a byte-level BPE on CORPUS and write it; `path` is a folder or a file name."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "tokenizer.json"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens(fim),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS], trainer=trainer)
    tokenizer.save(str(path))
    return path


def _config(family: str, vocab_size: int, tie: bool, token_ids: dict[str, int], dtype, overrides) -> dict:
    config = {
        "architectures": [FAMILIES[family]],
        "model_type": family,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": tie,
        "bos_token_id": token_ids[ENDOFTEXT],
        "eos_token_id": token_ids[ENDOFTEXT],
        "torch_dtype": str(dtype).removeprefix("torch."),
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if family == "llama":
        config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    if family == "mistral":
        config.update(sliding_window=None)
    if family == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=0)
    config.update(overrides)
    return config


def _float_weights(
    config: dict, tie: bool, gen: torch.Generator, qkv_bias: bool, o_bias: bool
) -> dict[str, torch.Tensor]:
    h, i_size, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // n_heads

    def randn(*shape, std=0.1):
        return torch.randn(*shape, generator=gen) * std

    def norm_weight():
        return 1.0 + randn(h)  # not all ones, so a skipped or misplaced norm changes the logits

    weights = {"model.embed_tokens.weight": randn(v, h, std=0.5)}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        weights[p + "input_layernorm.weight"] = norm_weight()
        weights[p + "self_attn.q_proj.weight"] = randn(n_heads * head_dim, h)
        weights[p + "self_attn.k_proj.weight"] = randn(n_kv * head_dim, h)
        weights[p + "self_attn.v_proj.weight"] = randn(n_kv * head_dim, h)
        weights[p + "self_attn.o_proj.weight"] = randn(h, n_heads * head_dim)
        if qkv_bias:
            weights[p + "self_attn.q_proj.bias"] = randn(n_heads * head_dim)
            weights[p + "self_attn.k_proj.bias"] = randn(n_kv * head_dim)
            weights[p + "self_attn.v_proj.bias"] = randn(n_kv * head_dim)
        if o_bias:
            weights[p + "self_attn.o_proj.bias"] = randn(h)
        weights[p + "post_attention_layernorm.weight"] = norm_weight()
        weights[p + "mlp.gate_proj.weight"] = randn(i_size, h)
        weights[p + "mlp.up_proj.weight"] = randn(i_size, h)
        weights[p + "mlp.down_proj.weight"] = randn(h, i_size)
    weights["model.norm.weight"] = norm_weight()
    if not tie:
        weights["lm_head.weight"] = randn(v, h)
    return weights


# --- independent GPTQ packer ------------------------------------------------------------------------


def _pack_along_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """(R, C) ints in [0, 2**bits) -> (R * bits / 32, C) int32; row r * pw + j sits at bits j * bits."""
    per_word = 32 // bits
    rows, cols = values.shape
    words = np.zeros((rows // per_word, cols), dtype=np.uint32)
    for j in range(per_word):
        words |= values[j::per_word].astype(np.uint32) << np.uint32(j * bits)
    return words.view(np.int32)


def _unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    per_word = 32 // bits
    u = words.view(np.uint32)
    out = np.zeros((u.shape[0] * per_word, u.shape[1]), dtype=np.int64)
    for j in range(per_word):
        out[j::per_word] = (u >> np.uint32(j * bits)) & np.uint32((1 << bits) - 1)
    return out


def gptq_group_index(in_features: int, group_size: int, desc_act: bool, gen: torch.Generator) -> torch.Tensor:
    """(K,) int32 group of each input feature. Act-order: features were quantized in a random order
    `perm`, and the i-th quantized feature belongs to group i // group_size."""
    gs = in_features if group_size == -1 else group_size
    if not desc_act:
        return (torch.arange(in_features) // gs).to(torch.int32)
    perm = torch.randperm(in_features, generator=gen)
    position = torch.empty(in_features, dtype=torch.int64)
    position[perm] = torch.arange(in_features)
    return (position // gs).to(torch.int32)


def gptq_pack(
    out_features: int,
    in_features: int,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    checkpoint_format: str,
    g_idx: torch.Tensor,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Random quantized weight -> {qweight, qzeros, scales, g_idx} as GPTQ writes them."""
    k, n = in_features, out_features
    gs = k if group_size == -1 else group_size
    num_groups = math.ceil(k / gs)
    maxq = (1 << bits) - 1
    q = torch.randint(0, maxq + 1, (k, n), generator=gen)
    if sym:
        zeros = torch.full((num_groups, n), (maxq + 1) // 2)
    else:  # zero 0 cannot be stored in the "gptq" (v1) convention: it would wrap to 2**bits
        zeros = torch.randint(1, maxq + 1, (num_groups, n), generator=gen)
    scale_base = 0.04 / (1 << (bits - 4))  # keep weights ~0.1 for 4 and 8 bits
    scales = (scale_base * (0.5 + torch.rand(num_groups, n, generator=gen))).to(torch.float16)
    stored_zeros = zeros - 1 if checkpoint_format == "gptq" else zeros
    return {
        "qweight": torch.from_numpy(_pack_along_rows(q.numpy(), bits)),
        # qzeros pack along N: pack the transpose along its rows, transpose back
        "qzeros": torch.from_numpy(
            np.ascontiguousarray(_pack_along_rows((stored_zeros & maxq).numpy().T, bits).T)
        ),
        "scales": scales,
        "g_idx": g_idx.to(torch.int32).clone(),  # never share storage: safetensors refuses aliases
    }


def gptq_unpack(tensors: dict[str, torch.Tensor], bits: int, checkpoint_format: str) -> torch.Tensor:
    """GPTQ tensors of one layer -> float32 weight (N, K) as a float checkpoint stores it."""
    q = _unpack_rows(tensors["qweight"].numpy(), bits)  # (K, N)
    stored = _unpack_rows(np.ascontiguousarray(tensors["qzeros"].numpy().T), bits).T  # (G, N)
    zeros = stored + 1 if checkpoint_format == "gptq" else stored
    g = tensors["g_idx"].long().numpy()
    scales = tensors["scales"].float().numpy()
    w = (q - zeros[g]).astype(np.float32) * scales[g]  # (K, N)
    return torch.from_numpy(np.ascontiguousarray(w.T))


QUANT_DEFAULTS = {"bits": 4, "group_size": 32, "desc_act": True, "sym": False, "checkpoint_format": "gptq"}


def _quantize_linears(
    weights: dict[str, torch.Tensor], config: dict, quant: dict, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Replace every decoder linear weight by GPTQ tensors; biases become float16 as GPTQ stores them.

    `quant["shared_g_idx"]` (default True): q/k/v and gate/up share one g_idx, as a real act-order
    quantizer produces for layers that read the same input. False gives each its own.
    """
    out = dict(weights)
    shared = quant.get("shared_g_idx", True)
    for layer in range(config["num_hidden_layers"]):
        shared_g_idx: dict[int, torch.Tensor] = {}
        for name in LINEAR_NAMES:
            module = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            prefix = f"model.layers.{layer}.{module}.{name}"
            n, k = out.pop(prefix + ".weight").shape
            group_key = (
                0
                if name in ("q_proj", "k_proj", "v_proj")
                else 1
                if name in ("gate_proj", "up_proj")
                else None
            )
            if shared and group_key is not None and group_key in shared_g_idx:
                g_idx = shared_g_idx[group_key]
            else:
                g_idx = gptq_group_index(k, quant["group_size"], quant["desc_act"], gen)
                if group_key is not None:
                    shared_g_idx[group_key] = g_idx
            packed = gptq_pack(
                n, k, bits=quant["bits"], group_size=quant["group_size"], sym=quant["sym"],
                checkpoint_format=quant["checkpoint_format"], g_idx=g_idx, gen=gen,
            )  # fmt: skip
            for key, tensor in packed.items():
                out[f"{prefix}.{key}"] = tensor
            if prefix + ".bias" in out:
                out[prefix + ".bias"] = out[prefix + ".bias"].to(torch.float16)
    return out


def _write_safetensors(folder: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    if num_shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    weight_map = {}
    for shard in range(num_shards):
        file_name = f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[shard::num_shards]}
        save_file(part, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file_name))
    total_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def make_tiny_checkpoint(
    path: str | Path,
    family: str = "qwen2",
    *,
    quant: dict | None = None,
    tie: bool | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    num_shards: int = 1,
    fim: bool = True,
    **config_overrides,
) -> Path:
    """Write a tiny random-weight checkpoint of `family` into the folder `path` and return it.

    tie: tie lm_head to the embeddings (default: True for qwen2, as Qwen2.5-Coder-0.5B; else False).
    quant: None for float weights, or GPTQ settings (missing keys from QUANT_DEFAULTS), written as
        `quantization_config` in config.json.
    config_overrides: any config.json key (hidden_size=..., rope_scaling={...}, sliding_window=...).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; tiny models exist for {sorted(FAMILIES)}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tie = (family == "qwen2") if tie is None else tie

    tokenizer_path = make_tokenizer_json(folder / "tokenizer.json", fim=fim)
    vocab = json.loads(tokenizer_path.read_text())
    vocab_size = len(vocab["model"]["vocab"])
    token_ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}

    config = _config(family, vocab_size, tie, token_ids, dtype, config_overrides)
    gen = torch.Generator().manual_seed(seed)
    attention_bias = family == "llama" and config.get("attention_bias", False)  # Llama: q/k/v/o biases
    weights = _float_weights(
        config, tie, gen, qkv_bias=family == "qwen2" or attention_bias, o_bias=attention_bias
    )
    weights = {name: t.to(dtype) for name, t in weights.items()}
    if quant is not None:
        quant = {**QUANT_DEFAULTS, **quant}
        weights = _quantize_linears(weights, config, quant, gen)
        config["quantization_config"] = {
            "quant_method": "gptq",
            **{key: quant[key] for key in QUANT_DEFAULTS},
            "damp_percent": 0.01,
            "true_sequential": True,
            "static_groups": False,
        }
    _write_json(folder / "config.json", config)
    _write_safetensors(folder, weights, num_shards)

    eos_ids = [token_ids[ENDOFTEXT], token_ids["<|im_end|>"]]
    _write_json(
        folder / "generation_config.json",
        {"bos_token_id": token_ids[ENDOFTEXT], "eos_token_id": eos_ids, "do_sample": False},
    )
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": ENDOFTEXT,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "add_bos_token": False,
            "model_max_length": config["max_position_embeddings"],
            "chat_template": CHAT_TEMPLATE,
            "additional_special_tokens": special_tokens(fim)[1:],
            "added_tokens_decoder": {
                str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                         "normalized": False, "single_word": False}
                for t, i in token_ids.items()
            },
        },
    )  # fmt: skip
    return folder


def dequantize_gptq_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Float32 copy of a GPTQ checkpoint written by make_tiny_checkpoint (single file), for transformers."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    quant = config.pop("quantization_config")
    config["torch_dtype"] = "float32"
    tensors = load_file(str(src / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    prefixes = {name.removesuffix(".qweight") for name in tensors if name.endswith(".qweight")}
    for name, tensor in tensors.items():
        prefix = name.rsplit(".", 1)[0]
        if prefix in prefixes and not name.endswith(".bias"):
            continue
        out[name] = tensor.float()
    for prefix in prefixes:
        layer = {key: tensors[f"{prefix}.{key}"] for key in ("qweight", "qzeros", "scales", "g_idx")}
        out[prefix + ".weight"] = gptq_unpack(layer, quant["bits"], quant["checkpoint_format"])
    _write_json(dst / "config.json", config)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (dst / name).write_text((src / name).read_text())
    return dst
