"""Rebuild a Hugging Face tokenizer (tokenizer.json and friends) from a GGUF file's tokenizer metadata.

GGUF keeps a byte-level BPE tokenizer ("gpt2" model) as parallel arrays: tokenizer.ggml.tokens (id ->
string), tokenizer.ggml.token_type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)
and tokenizer.ggml.merges ("left right", by rank), plus tokenizer.ggml.pre naming the pre-tokenizer
(the regex that splits text before BPE), bos/eos/pad ids and tokenizer.chat_template. Control and
user-defined tokens (<|endoftext|>, <|fim_prefix|>, <|im_start|>, ...) become added special tokens
so they encode as one id. Input here is plain Python data, not the GGUF reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4

# The split regexes of the pre-tokenizers llama.cpp names in tokenizer.ggml.pre.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_NAMES = frozenset({"gpt2", "default", "gpt-2", "starcoder", "refact", "codeshell", "olmo"})
SUPPORTED_PRE = frozenset({"qwen2", "llama-bpe", "llama3", "smollm", *_GPT2_NAMES})


class UnsupportedTokenizer(ValueError):
    pass


@dataclass(frozen=True)
class GgufVocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre ("default" when absent)
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    eot_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None
    extra_eos_ids: list[int] = field(default_factory=list)


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    if pre == "qwen2":
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, byte_level])
    if pre in ("llama-bpe", "llama3"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, byte_level])
    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in _GPT2_NAMES:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    raise UnsupportedTokenizer(
        f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(SUPPORTED_PRE))})"
    )


def special_token_ids(vocab: GgufVocab) -> list[int]:
    return [i for i, t in enumerate(vocab.token_types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]


def build_tokenizer(vocab: GgufVocab) -> Tokenizer:
    if vocab.model != "gpt2":
        kind = "SentencePiece" if vocab.model == "llama" else "unknown"
        raise UnsupportedTokenizer(
            f"GGUF tokenizer model {vocab.model!r} ({kind}) is not supported; only byte-level BPE ('gpt2')"
        )
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    bpe = models.BPE(
        vocab=ids, merges=merges, fuse_unk=False, ignore_merges=vocab.pre in ("llama-bpe", "llama3")
    )
    tokenizer = Tokenizer(bpe)
    if vocab.pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(vocab.pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(vocab.tokens[i], special=True, normalized=False) for i in special_token_ids(vocab)]
    )
    return tokenizer


def eos_token_ids(vocab: GgufVocab) -> list[int]:
    """EOS and end-of-turn ids, plus the usual end tokens of chat and FIM when the vocabulary has them:
    an instruct model ends a chat turn with <|im_end|> but a FIM answer with <|endoftext|>."""
    found = [vocab.eos_id, vocab.eot_id, *vocab.extra_eos_ids]
    specials = set(special_token_ids(vocab))
    for name in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        token_id = next((i for i in specials if vocab.tokens[i] == name), None)
        found.append(token_id)
    out: list[int] = []
    for token_id in found:
        if token_id is not None and token_id not in out:
            out.append(token_id)
    return out


def tokenizer_files(vocab: GgufVocab, max_positions: int) -> dict[str, str]:
    """file name -> content of tokenizer.json, tokenizer_config.json (chat template, special tokens)."""
    import json

    tokenizer = build_tokenizer(vocab)
    name = lambda i: None if i is None else vocab.tokens[i]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(vocab.bos_id),
        "eos_token": name(vocab.eos_id),
        "pad_token": name(vocab.pad_id),
        "unk_token": None,
        "add_bos_token": vocab.add_bos,
        "model_max_length": max_positions,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": vocab.tokens[i], "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for i in special_token_ids(vocab)
        },
    }  # fmt: skip
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    return {
        "tokenizer.json": tokenizer.to_str(pretty=False),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
    }
