"""FIM prompt building: template detection, layout, budgets, and keystroke-to-keystroke stability."""

from __future__ import annotations

import pytest

from exlsp.prompt import (
    LINES_PER_BLOCK,
    Budgets,
    ContextChunk,
    FimInput,
    PromptBuilder,
    detect_fim,
    fim_status,
    shared_prefix_len,
)

QWEN = [
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|endoftext|>",
]


class CharTokenizer:
    """One token per character; special tokens get ids from 100000 up. Budgets become exact."""

    def __init__(self, specials: list[str]):
        self.specials = {name: 100000 + i for i, name in enumerate(specials)}
        self.names = {v: k for k, v in self.specials.items()}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def token_to_id(self, token: str) -> int | None:
        return self.specials.get(token)

    def render(self, ids) -> str:
        return "".join(self.names.get(i) or chr(i) for i in ids)


@pytest.mark.parametrize(
    ("specials", "family", "repo_level"),
    [
        (QWEN, "qwen", True),
        (QWEN[:3], "qwen", False),
        (["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<reponame>", "<file_sep>"], "starcoder", True),
        (["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], "codellama", False),
        (["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"], "deepseek", False),
    ],
)
def test_detects_the_fim_family_from_special_tokens(specials, family, repo_level):
    template = detect_fim(CharTokenizer(specials))
    assert template is not None
    assert (template.family, template.repo_level) == (family, repo_level)
    assert template.middle_id in template.stop_ids  # leaving the hole ends the suggestion


def test_no_fim_tokens_gives_a_clear_message_and_a_prefix_only_prompt():
    tok = CharTokenizer(["<|endoftext|>"])
    assert detect_fim(tok) is None
    assert "no fill-in-the-middle tokens" in fim_status(None)
    prompt = PromptBuilder(tok).build(
        FimInput(prefix="a = 1\nb = ", suffix="\nprint(b)\n", first_line=0, path="x.py")
    )
    assert tok.render(prompt.token_ids) == "a = 1\nb = "
    assert prompt.template == "none"


def test_repo_level_layout_orders_stable_to_volatile():
    tok = CharTokenizer(QWEN)
    fim = FimInput(
        prefix="import os\ndef f():\n    ",
        suffix="\n    return 1\n",
        first_line=0,
        path="pkg/main.py",
        language_id="python",
        repo_name="demo",
        context=(ContextChunk("pkg/util.py", 0, "def helper():\n    pass"),),
    )
    prompt = PromptBuilder(tok).build(fim)
    assert tok.render(prompt.token_ids) == (
        "<|repo_name|>demo\n"
        "<|file_sep|>pkg/util.py\ndef helper():\n    pass\n"
        "<|file_sep|>pkg/main.py\n"
        "<|fim_prefix|>import os\ndef f():\n    <|fim_suffix|>\n    return 1\n<|fim_middle|>"
    )
    assert prompt.template == "qwen/repo"


def test_plain_layout_puts_context_as_commented_files_inside_the_prefix():
    tok = CharTokenizer(["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"])
    fim = FimInput(
        prefix="let x = ",
        suffix=";\n",
        first_line=0,
        path="src/a.rs",
        language_id="rust",
        context=(ContextChunk("src/b.rs", 0, "fn b() {}"),),
    )
    assert tok.render(PromptBuilder(tok).build(fim).token_ids) == (
        "▁<PRE>// src/b.rs\nfn b() {}\n\n// src/a.rs\nlet x = ▁<SUF>;\n▁<MID>"
    )


def test_prefix_budget_drops_whole_blocks_at_the_start():
    tok = CharTokenizer(QWEN[:3])
    lines = [f"line{i:02d}\n" for i in range(40)]  # 7 tokens each
    prefix = "".join(lines) + "tail"
    builder = PromptBuilder(tok)
    ids = builder.prefix_tokens(prefix, first_line=0, budget=7 * 20)
    # Blocks are lines 0-15, 16-31 and 32-40 (cursor's); 16+9 lines fit in 140 tokens only without
    # the first block... but not the second either (16*7 + 8*7 + 4 = 172 > 140): only the cursor block.
    assert tok.render(ids) == "".join(lines[32:]) + "tail"
    ids = builder.prefix_tokens(prefix, first_line=0, budget=200)
    assert tok.render(ids) == "".join(lines[16:]) + "tail"


def test_the_cursor_block_alone_over_budget_is_cut_on_a_line_boundary():
    tok = CharTokenizer(QWEN[:3])
    prefix = "aaaa\nbbbb\ncccc\ndd"
    assert tok.render(PromptBuilder(tok).prefix_tokens(prefix, first_line=0, budget=8)) == "cccc\ndd"
    # One line longer than the budget keeps its last tokens.
    assert tok.render(PromptBuilder(tok).prefix_tokens("x" * 20, first_line=0, budget=5)) == "xxxxx"


def test_suffix_budget_cuts_at_the_end_on_a_line_boundary():
    tok = CharTokenizer(QWEN[:3])
    builder = PromptBuilder(tok)
    assert tok.render(builder.suffix_tokens(")\nnext line\nthird\n", budget=12)) == ")\nnext line\n"
    assert tok.render(builder.suffix_tokens("a very long rest of line", budget=6)) == "a very"
    assert builder.suffix_tokens("anything", budget=0) == []


def test_context_budget_skips_chunks_that_do_not_fit_and_orders_by_path():
    tok = CharTokenizer(QWEN)
    chunks = (
        ContextChunk("z.py", 0, "z" * 10),  # newest first (the ring's order)
        ContextChunk("big.py", 0, "b" * 100),
        ContextChunk("a.py", 0, "a" * 10),
    )
    fim = FimInput(prefix="", suffix="", first_line=0, path="m.py", context=chunks)
    rendered = tok.render(PromptBuilder(tok).context_tokens(fim, budget=40))
    assert rendered == "<|file_sep|>a.py\naaaaaaaaaa\n<|file_sep|>z.py\nzzzzzzzzzz\n"


def test_typing_keeps_every_token_before_the_cursor_block():
    """Consecutive keystrokes share the prompt up to the cursor's block: the prefix cache serves it."""
    tok = CharTokenizer(QWEN)
    builder = PromptBuilder(tok, Budgets(prefix_tokens=400, suffix_tokens=50, context_tokens=0))
    text = "".join(f"x{i} = {i}\n" for i in range(40))
    before = text + "total = x1 + x"
    first = builder.build(FimInput(prefix=before, suffix="\n", first_line=0, path="m.py")).token_ids
    second = builder.build(FimInput(prefix=before + "2", suffix="\n", first_line=0, path="m.py")).token_ids
    block_start = text.split("\n")
    kept_lines = 40 - 40 % LINES_PER_BLOCK  # lines before the cursor's block
    assert shared_prefix_len(first, second) >= len("".join(line + "\n" for line in block_start[:kept_lines]))
    # One token per character: everything but <|fim_suffix|>, "\n", <|fim_middle|> is shared.
    assert shared_prefix_len(first, second) == len(first) - 3


def test_real_tokenizer_layout(tmp_path):
    """With a real byte-level BPE tokenizer the special tokens survive as single ids."""
    tiny = pytest.importorskip("tests.tiny_models")
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tiny.make_tokenizer_json(tmp_path / "tokenizer.json")))

    class Adapter:
        def encode(self, text, add_special_tokens=False):
            return hf.encode(text, add_special_tokens=False).ids

        def token_to_id(self, token):
            return hf.token_to_id(token)

    fim = FimInput(
        prefix="def add(a, b):\n    return ", suffix="\n", first_line=0, path="m.py", repo_name="r"
    )
    prompt = PromptBuilder(Adapter()).build(fim)
    assert hf.decode(list(prompt.token_ids), skip_special_tokens=False) == (
        "<|repo_name|>r\n<|file_sep|>m.py\n<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>"
    )
    assert prompt.token_ids.count(hf.token_to_id("<|fim_middle|>")) == 1
