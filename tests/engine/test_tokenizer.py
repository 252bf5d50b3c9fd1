"""Tokenizer wrapper: special tokens from the three config files, FIM detection per family, chat template."""

from __future__ import annotations

import json

import pytest

from engine.errors import CheckpointError
from engine.tokenizer import Tokenizer
from tests.tiny_models import make_tokenizer_json, special_tokens


def _word_level_tokenizer(path, specials: list[str]):
    """A tiny tokenizer.json whose added special tokens are `specials` (ids 0..n-1)."""
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(specials)}
    for word in ("def", "x", "return"):
        vocab[word] = len(vocab)
    tok = HfTokenizer(models.WordLevel(vocab, unk_token="x"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen")
    make_tokenizer_json(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"eos_token": {"content": "<|endoftext|>"}, "chat_template": "{{ messages[0]['content'] }}!"}
        )
    )
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 8]}))
    return Tokenizer.from_folder(folder)


def test_special_token_ids_come_from_all_config_files(qwen_like):
    ids = {t: i for i, t in enumerate(special_tokens())}
    assert ids["<|endoftext|>"] == 0 and ids["<|im_end|>"] == 8
    assert qwen_like.eos_ids == frozenset({0, 8})
    assert qwen_like.bos_id is None and not qwen_like.add_bos
    assert qwen_like.special_token_ids == frozenset(range(9))
    assert qwen_like.token_to_id("<|fim_middle|>") == 2
    assert qwen_like.token_to_id("no such token") is None


def test_qwen_fim_tokens_with_repo_and_file_markers(qwen_like):
    fim = qwen_like.fim
    assert (fim.prefix, fim.suffix, fim.middle) == ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    assert (fim.prefix_id, fim.suffix_id, fim.middle_id, fim.pad_id) == (1, 3, 2, 4)
    assert (fim.repo_name, fim.repo_name_id, fim.file_sep, fim.file_sep_id) == (
        "<|repo_name|>",
        5,
        "<|file_sep|>",
        6,
    )
    assert fim.eot is None


def test_encode_decode_round_trip_and_special_tokens_in_text(qwen_like):
    text = "def f(x):\n    return x  # ünïcode →\n"
    ids = qwen_like.encode(text)
    assert qwen_like.decode(ids) == text
    ids = qwen_like.encode("<|fim_prefix|>def<|fim_suffix|>")
    assert ids[0] == 1 and ids[-1] == 3
    assert qwen_like.decode(ids, skip_special_tokens=True) == "def"


def test_jinja_chat_template_from_the_checkpoint(qwen_like):
    assert qwen_like.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


def test_chatml_fallback_without_a_template(tmp_path):
    make_tokenizer_json(tmp_path)
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.chat_template is None
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert tok.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_no_fim_tokens(tmp_path):
    make_tokenizer_json(tmp_path, fim=False)
    assert Tokenizer.from_folder(tmp_path).fim is None


def test_codellama_fim_and_bos(tmp_path):
    _word_level_tokenizer(tmp_path, ["<s>", "</s>", "<PRE>", "<SUF>", "<MID>", "<EOT>"])
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    tok = Tokenizer.from_folder(tmp_path)
    assert (tok.fim.prefix_id, tok.fim.suffix_id, tok.fim.middle_id, tok.fim.eot_id) == (2, 3, 4, 5)
    assert tok.fim.repo_name is None
    assert tok.bos_id == 0 and tok.eos_ids == frozenset({1})
    assert tok.encode("def x", add_special_tokens=True) == [0, 6, 7]
    assert tok.encode("def x") == [6, 7]


def test_deepseek_fim(tmp_path):
    _word_level_tokenizer(
        tmp_path, ["<｜begin▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>"]
    )
    fim = Tokenizer.from_folder(tmp_path).fim
    assert (fim.prefix, fim.prefix_id, fim.suffix_id, fim.middle_id) == ("<｜fim▁begin｜>", 2, 1, 3)


def test_model_config_eos_ids_are_included(tmp_path):
    make_tokenizer_json(tmp_path)
    assert Tokenizer.from_folder(tmp_path, model_eos_token_ids=[7]).eos_ids == frozenset({7})


def test_missing_tokenizer_json_is_a_clear_error(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"tokenizer.json not found in .*: exlsp needs the fast-tokenizer"
    ):
        Tokenizer.from_folder(tmp_path)


def test_corrupt_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a valid tokenizer.json"):
        Tokenizer.from_folder(tmp_path)
