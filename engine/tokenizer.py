"""A checkpoint's tokenizer: the `tokenizers` library plus the special tokens spread over three files.

Sources, read once at load:
  tokenizer.json          the vocabulary, merges and `added_tokens` (FIM, chat, end-of-text markers)
  tokenizer_config.json   bos_token / eos_token (a string or {"content": ...}), add_bos_token, chat_template
  generation_config.json  eos_token_id (an int or a list: chat models stop on several), bos_token_id
EOS ids are the union of all three. FIM tokens are found by name for the families that have them
(Qwen2.5-Coder / StarCoder `<|fim_prefix|>`..., CodeLlama `<PRE> <SUF> <MID>` + `<EOT>`,
DeepSeek-Coder `<｜fim▁begin｜>`...). The chat template is rendered with Jinja when the checkpoint has
one, else as plain ChatML.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError


@dataclass(frozen=True)
class FimTokens:
    """Fill-in-the-middle markers: strings and their ids. A prompt is prefix + text + suffix + text
    + middle (the PSM order all three families use)."""

    prefix: str
    suffix: str
    middle: str
    prefix_id: int
    suffix_id: int
    middle_id: int
    pad: str | None = None
    pad_id: int | None = None
    repo_name: str | None = None  # Qwen2.5-Coder / StarCoder repository-level prompts
    repo_name_id: int | None = None
    file_sep: str | None = None
    file_sep_id: int | None = None
    eot: str | None = None  # CodeLlama's end of infill
    eot_id: int | None = None


@dataclass(frozen=True)
class FimFamily:
    """One model family's fill-in-the-middle special tokens (the one table of them: the engine finds
    a tokenizer's markers here and exlsp/prompt.py builds its prompts from the same entries)."""

    name: str
    prefix: str
    suffix: str
    middle: str
    repo_names: tuple[str, ...] = ()  # repository-level prompts: first one the tokenizer has
    file_seps: tuple[str, ...] = ()
    pad: str | None = None
    eot: str | None = None  # CodeLlama's end of infill
    stops: tuple[str, ...] = ()  # other special tokens that end an infill besides the EOS ids


FIM_FAMILIES: tuple[FimFamily, ...] = (
    FimFamily(
        "qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", ("<|repo_name|>",), ("<|file_sep|>",),
        pad="<|fim_pad|>", stops=("<|endoftext|>", "<|im_end|>"),
    ),
    FimFamily(
        "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", ("<repo_name>", "<reponame>"), ("<file_sep>",),
        pad="<fim_pad>", stops=("<|endoftext|>",),
    ),
    FimFamily("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", eot="▁<EOT>"),  # SentencePiece pieces
    FimFamily("codellama", "<PRE>", "<SUF>", "<MID>", eot="<EOT>"),
    FimFamily(
        "deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", stops=("<|EOT|>", "<｜end▁of▁sentence｜>")
    ),
)  # fmt: skip

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class Tokenizer:
    def __init__(
        self,
        tokenizer_json: str | Path,
        tokenizer_config: dict[str, Any] | None = None,
        generation_config: dict[str, Any] | None = None,
        model_eos_token_ids: Sequence[int] = (),
    ) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        path = Path(tokenizer_json)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer.json not found in {path.parent}: exlsp needs the fast-tokenizer file "
                "(tokenizer.json) next to config.json"
            )
        try:
            self._tok = HfTokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on malformed files
            raise CheckpointError(f"{path} is not a valid tokenizer.json: {exc}") from exc
        tcfg = tokenizer_config or {}
        gcfg = generation_config or {}

        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_token_ids: frozenset[int] = frozenset(
            i for i, t in self._tok.get_added_tokens_decoder().items() if t.special
        )
        bos = self.token_to_id(_token_content(tcfg.get("bos_token")) or "")
        self.bos_id: int | None = bos if bos is not None else _first_int(gcfg.get("bos_token_id"))
        self.add_bos: bool = bool(tcfg.get("add_bos_token", False)) and self.bos_id is not None
        eos: set[int] = set(_int_list(gcfg.get("eos_token_id"))) | set(model_eos_token_ids)
        eos_from_config = self.token_to_id(_token_content(tcfg.get("eos_token")) or "")
        if eos_from_config is not None:
            eos.add(eos_from_config)
        self.eos_ids: frozenset[int] = frozenset(i for i in eos if 0 <= i < self.vocab_size)
        self.fim: FimTokens | None = self._find_fim()
        template = tcfg.get("chat_template")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self.chat_template: str | None = template if isinstance(template, str) else None

    @classmethod
    def from_folder(cls, folder: str | Path, model_eos_token_ids: Sequence[int] = ()) -> Tokenizer:
        folder = Path(folder)
        return cls(
            folder / "tokenizer.json",
            _optional_json(folder / "tokenizer_config.json"),
            _optional_json(folder / "generation_config.json"),
            model_eos_token_ids,
        )

    # ---- text <-> ids ----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings inside `text` map to their ids;
        add_special_tokens prepends BOS where the model wants one."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token) if token else None

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    # ---- chat ------------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text for a conversation ([{"role": ..., "content": ...}, ...])."""
        import jinja2
        import jinja2.sandbox

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise ValueError(f"chat template: {message}")

        env.globals["raise_exception"] = raise_exception
        try:
            template = env.from_string(self.chat_template or CHATML_FALLBACK)
            return template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.id_to_token(self.bos_id) if self.bos_id is not None else "",
                eos_token=self.id_to_token(min(self.eos_ids)) if self.eos_ids else "",
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"the model's chat template failed to render: {exc}") from exc

    # ---- internals -------------------------------------------------------------------------------

    def _find_fim(self) -> FimTokens | None:
        for family in FIM_FAMILIES:
            ids = [self.token_to_id(t) for t in (family.prefix, family.suffix, family.middle)]
            if any(i is None for i in ids):
                continue

            def first(*tokens: str | None) -> tuple[str | None, int | None]:
                for token in tokens:
                    token_id = self.token_to_id(token) if token else None
                    if token_id is not None:
                        return token, token_id
                return None, None

            pad_s, pad_i = first(family.pad)
            repo_s, repo_i = first(*family.repo_names)
            sep_s, sep_i = first(*family.file_seps)
            eot_s, eot_i = first(family.eot)
            return FimTokens(
                family.prefix, family.suffix, family.middle, ids[0], ids[1], ids[2],
                pad_s, pad_i, repo_s, repo_i, sep_s, sep_i, eot_s, eot_i,
            )  # fmt: skip
        return None


def _optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} in {path.parent} is not valid JSON: {exc}") from exc
    return value if isinstance(value, dict) else {}


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _int_list(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _first_int(value: Any) -> int | None:
    values = _int_list(value)
    return values[0] if values else None
