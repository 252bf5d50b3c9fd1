"""Fill-in-the-middle prompts as token id lists. Pure: a tokenizer in, token ids out.

Layout, stable to volatile, so that consecutive keystrokes share the longest token prefix and the
engine's prefix cache serves it:

    repo-level (tokenizer has <|repo_name|> and <|file_sep|>, Qwen2.5-Coder / StarCoder2):
        <|repo_name|>repo\\n  (<|file_sep|>path\\ncontent\\n)*  <|file_sep|>path\\n
        <|fim_prefix|>PREFIX<|fim_suffix|>SUFFIX<|fim_middle|>
    plain FIM (CodeLlama <PRE>/<SUF>/<MID>, DeepSeek-Coder <｜fim▁begin｜>/…hole/…end):
        PRE  (# path\\ncontent\\n\\n)*  # path\\n  PREFIX  SUF SUFFIX  MID
    no FIM tokens: the extra context, header and PREFIX only (a plain continuation).

The prefix is tokenized in blocks of LINES_PER_BLOCK lines aligned to absolute line numbers, each
block on its own, so typing changes only the tokens of the cursor's block; the budget drops whole
blocks at the start, so the first token of the prefix moves rarely. The suffix is cut at its end
on a line boundary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.tokenizer import FIM_FAMILIES

LINES_PER_BLOCK = 16
_CACHE_ENTRIES = 4096


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def token_to_id(self, token: str) -> int | None: ...


@dataclass(frozen=True)
class FimTemplate:
    family: str  # "qwen", "starcoder", "codellama", "deepseek"
    prefix_id: int
    suffix_id: int
    middle_id: int
    repo_name_id: int | None  # both set: repo-level layout
    file_sep_id: int | None
    stop_ids: tuple[int, ...]  # special tokens that end an infill besides the tokenizer's EOS

    @property
    def repo_level(self) -> bool:
        return self.repo_name_id is not None and self.file_sep_id is not None


def detect_fim(tokenizer: TokenizerLike) -> FimTemplate | None:
    """The FIM template whose three special tokens this tokenizer has, or None."""
    for family in FIM_FAMILIES:
        names = (family.prefix, family.suffix, family.middle)
        ids = [tokenizer.token_to_id(n) for n in names]
        if any(i is None for i in ids):
            continue
        repo_id = next((i for n in family.repo_names if (i := tokenizer.token_to_id(n)) is not None), None)
        sep_id = next((i for n in family.file_seps if (i := tokenizer.token_to_id(n)) is not None), None)
        stop_names = tuple(n for n in (family.pad, *family.stops, family.eot) if n)
        stops = [i for n in stop_names if (i := tokenizer.token_to_id(n)) is not None]
        # Any FIM marker or file separator in the output means the model left the hole.
        stops += [i for i in (*ids, repo_id, sep_id) if i is not None]
        return FimTemplate(
            family=family.name,
            prefix_id=ids[0],
            suffix_id=ids[1],
            middle_id=ids[2],
            repo_name_id=repo_id,
            file_sep_id=sep_id,
            stop_ids=tuple(dict.fromkeys(stops)),
        )
    return None


def fim_status(template: FimTemplate | None) -> str:
    if template is None:
        return (
            "this model's tokenizer has no fill-in-the-middle tokens: inline completions see only the "
            "text before the cursor; use a code model with FIM (e.g. Qwen2.5-Coder) for better results"
        )
    layout = "repo-level" if template.repo_level else "plain"
    return f"fill-in-the-middle: {template.family} template, {layout} layout"


@dataclass(frozen=True)
class ContextChunk:
    """Text from another file shown to the model before the current file."""

    path: str  # workspace-relative, '/'-separated
    start_line: int  # 0-based, only for ordering
    text: str


@dataclass(frozen=True)
class FimInput:
    prefix: str  # text before the cursor; may start mid-document, always at a line start
    suffix: str  # text after the cursor; may be cut short by the caller
    first_line: int  # absolute line number of prefix's first line (aligns the token blocks)
    path: str  # workspace-relative path of the current file
    language_id: str = ""
    repo_name: str = ""
    context: tuple[ContextChunk, ...] = ()


@dataclass(frozen=True)
class Budgets:
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    context_tokens: int = 512


@dataclass(frozen=True)
class Prompt:
    token_ids: tuple[int, ...]
    stop_token_ids: tuple[int, ...]
    num_context_tokens: int
    num_prefix_tokens: int
    num_suffix_tokens: int
    template: str  # "qwen/repo", "codellama/plain", "none", ...
    context_paths: tuple[str, ...] = ()  # files whose chunks made it into the prompt


_LINE_COMMENT = {
    "python": "#",
    "ruby": "#",
    "shellscript": "#",
    "sh": "#",
    "bash": "#",
    "perl": "#",
    "r": "#",
    "yaml": "#",
    "toml": "#",
    "dockerfile": "#",
    "makefile": "#",
    "lua": "--",
    "sql": "--",
    "haskell": "--",
}


def line_comment(language_id: str) -> str:
    return _LINE_COMMENT.get(language_id, "//")


def split_lines(text: str) -> list[str]:
    """Lines keeping their '\\n'; the last one may lack it (and is '' when text ends in '\\n')."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


class PromptBuilder:
    """Builds FIM prompts for one tokenizer, remembering the tokens of recent text pieces."""

    def __init__(self, tokenizer: TokenizerLike, budgets: Budgets = Budgets()):
        self.tokenizer = tokenizer
        self.template = detect_fim(tokenizer)
        self.budgets = budgets
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def encode(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        ids = self._cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            self._cache[text] = ids
            if len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return ids

    # -- pieces -------------------------------------------------------------------------------

    def prefix_tokens(self, prefix: str, first_line: int, budget: int) -> list[int]:
        """Tokens of the text before the cursor: whole aligned blocks, newest kept, cut at the start."""
        lines = split_lines(prefix)
        # Block boundaries fall at absolute line numbers divisible by LINES_PER_BLOCK.
        blocks: list[str] = []
        start = 0
        while start < len(lines):
            end = start + LINES_PER_BLOCK - (first_line + start) % LINES_PER_BLOCK
            blocks.append("".join(lines[start:end]))
            start = end
        kept: list[tuple[int, ...]] = []
        total = 0
        for index in range(len(blocks) - 1, -1, -1):
            ids = self.encode(blocks[index])
            if total + len(ids) > budget:
                if index == len(blocks) - 1:  # the cursor's own block is too long: cut its lines
                    kept.append(self._cut_lines_at_start(blocks[index], budget))
                break
            kept.append(ids)
            total += len(ids)
        return [t for ids in reversed(kept) for t in ids]

    def _cut_lines_at_start(self, text: str, budget: int) -> tuple[int, ...]:
        lines = split_lines(text)
        for start in range(1, len(lines)):
            ids = self.encode("".join(lines[start:]))
            if len(ids) <= budget:
                return ids
        ids = self.encode(lines[-1])  # one line over budget: keep its last tokens
        return ids[len(ids) - budget :] if budget > 0 else ()

    def suffix_tokens(self, suffix: str, budget: int) -> list[int]:
        """Tokens of the text after the cursor, cut at the end on a line boundary."""
        if budget <= 0 or not suffix:
            return []
        lines = split_lines(suffix)
        kept = 0
        total = 0
        for line in lines:
            n = len(self.encode(line))
            if total + n > budget:
                break
            total += n
            kept += 1
        if kept == 0:  # the rest of the cursor's line alone is over budget
            return list(self.encode(lines[0])[:budget])
        ids = list(self.tokenizer.encode("".join(lines[:kept]), add_special_tokens=False))
        while len(ids) > budget and kept > 1:  # joined text may merge differently
            kept -= 1
            ids = list(self.tokenizer.encode("".join(lines[:kept]), add_special_tokens=False))
        return ids[:budget]

    def context_tokens(self, fim: FimInput, budget: int) -> list[int]:
        """Extra chunks that fit the budget, in caller priority, laid out in a stable order."""
        return [t for _, ids in self._select_context(fim, budget) for t in ids]

    def _select_context(self, fim: FimInput, budget: int) -> list[tuple[ContextChunk, tuple[int, ...]]]:
        repo = self.template is not None and self.template.repo_level
        comment = line_comment(fim.language_id)
        chosen: list[tuple[ContextChunk, tuple[int, ...]]] = []
        total = 0
        for chunk in fim.context:
            body = f"{chunk.path}\n{chunk.text}\n" if repo else f"{comment} {chunk.path}\n{chunk.text}\n\n"
            ids = self.encode(body)
            if repo:
                ids = (self.template.file_sep_id, *ids)
            if total + len(ids) > budget:
                continue
            chosen.append((chunk, ids))
            total += len(ids)
        chosen.sort(key=lambda item: (item[0].path, item[0].start_line))
        return chosen

    # -- whole prompt -------------------------------------------------------------------------

    def build(self, fim: FimInput, budgets: Budgets | None = None) -> Prompt:
        b = budgets or self.budgets
        t = self.template
        selected = self._select_context(fim, b.context_tokens) if b.context_tokens > 0 else []
        context = [t for _, ids in selected for t in ids]
        prefix = self.prefix_tokens(fim.prefix, fim.first_line, b.prefix_tokens)
        if t is not None and t.repo_level:
            head = [t.repo_name_id, *self.encode(f"{fim.repo_name}\n"), *context]
            head += [t.file_sep_id, *self.encode(f"{fim.path}\n")]
            suffix = self.suffix_tokens(fim.suffix, b.suffix_tokens)
            ids = [*head, t.prefix_id, *prefix, t.suffix_id, *suffix, t.middle_id]
            name = f"{t.family}/repo"
        else:
            header = list(self.encode(f"{line_comment(fim.language_id)} {fim.path}\n")) if context else []
            if t is not None:
                suffix = self.suffix_tokens(fim.suffix, b.suffix_tokens)
                ids = [t.prefix_id, *context, *header, *prefix, t.suffix_id, *suffix, t.middle_id]
                name = f"{t.family}/plain"
            else:
                suffix = []
                ids = [*context, *header, *prefix]
                name = "none"
        return Prompt(
            token_ids=tuple(ids),
            stop_token_ids=t.stop_ids if t is not None else (),
            num_context_tokens=len(context),
            num_prefix_tokens=len(prefix),
            num_suffix_tokens=len(suffix),
            template=name,
            context_paths=tuple(dict.fromkeys(chunk.path for chunk, _ in selected)),
        )


def shared_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
