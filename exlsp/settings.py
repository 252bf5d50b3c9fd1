"""User settings: parsed once at the edge into a frozen dataclass, never mutated.

Settings arrive as camelCase JSON-ish mappings from four layers, later ones winning:
defaults < the TOML file in the user config dir < initializationOptions < workspace configuration
(didChangeConfiguration / workspace/configuration pull). `parse_settings` never raises: each invalid
key is reported as a message and replaced by its default, so a typo never takes the server down.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE_NAME = "config.toml"
SECTION = "exlsp"  # the workspace/configuration section editors store our keys under


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # model store name or checkpoint folder; None = the default model
    device: str | None = None  # "cuda", "cuda:1", "cpu"; None = cuda when available
    # language id -> enabled; "*" is the default for languages not listed.
    enable: Mapping[str, bool] = field(default_factory=lambda: {"*": True})
    time_budget_ms: float = 2000.0  # a completion returns what it has after this long
    max_tokens: int = 64  # new tokens per inline completion
    debounce_ms: float = 30.0  # a request waits this long; a newer one for the same document wins
    prefix_tokens: int = 1024  # prompt budget for the text before the cursor
    suffix_tokens: int = 256  # prompt budget for the text after the cursor
    extra_context_tokens: int = 512  # prompt budget for other open/recent files
    temperature: float = 0.0  # 0 = greedy
    chat_max_tokens: int = 512  # new tokens per chat answer or code action

    def is_enabled(self, language_id: str | None) -> bool:
        if language_id is not None and language_id in self.enable:
            return self.enable[language_id]
        return self.enable.get("*", True)


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _check_number(value: Any, *, minimum: float, integer: bool) -> Any:
    # bool is an int subclass; `maxTokens = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if integer and value != int(value):
        raise ValueError(f"expected a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"must be >= {minimum:g}, got {value!r}")
    return int(value) if integer else float(value)


def _check_optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _check_enable(value: Any) -> Mapping[str, bool]:
    if isinstance(value, bool):
        return {"*": value}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in value.items()
    ):
        raise ValueError(f"expected true/false or a table of language id -> true/false, got {value!r}")
    return {"*": True, **value}


# snake_case field -> validator returning the converted value or raising ValueError.
_VALIDATORS = {
    "model": _check_optional_str,
    "device": _check_optional_str,
    "enable": _check_enable,
    "time_budget_ms": lambda v: _check_number(v, minimum=1, integer=False),
    "max_tokens": lambda v: _check_number(v, minimum=1, integer=True),
    "debounce_ms": lambda v: _check_number(v, minimum=0, integer=False),
    "prefix_tokens": lambda v: _check_number(v, minimum=16, integer=True),
    "suffix_tokens": lambda v: _check_number(v, minimum=0, integer=True),
    "extra_context_tokens": lambda v: _check_number(v, minimum=0, integer=True),
    "temperature": lambda v: _check_number(v, minimum=0, integer=False),
    "chat_max_tokens": lambda v: _check_number(v, minimum=1, integer=True),
}
assert set(_VALIDATORS) == {f.name for f in dataclasses.fields(Settings)}


def merge_layers(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Shallow merge of raw camelCase layers, later wins. A layer may nest its keys under "exlsp"."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        if isinstance(layer.get(SECTION), Mapping):
            layer = layer[SECTION]
        merged.update(layer)
    return merged


def parse_settings(raw: Mapping[str, Any] | None) -> tuple[Settings, list[str]]:
    """camelCase mapping -> (Settings, one message per problem). Bad keys fall back to defaults."""
    problems: list[str] = []
    if raw is None:
        return Settings(), problems
    if not isinstance(raw, Mapping):
        return Settings(), [f"settings must be an object, got {type(raw).__name__}"]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = camel_to_snake(str(key))
        validator = _VALIDATORS.get(name)
        if validator is None:
            problems.append(f"unknown setting {key!r}")
            continue
        try:
            values[name] = validator(value)
        except ValueError as exc:
            problems.append(f"setting {key!r}: {exc}; using the default")
    return Settings(**values), problems


def read_config_file(config_dir: Path | None) -> tuple[dict[str, Any], list[str]]:
    """The TOML layer: {} when there is no file; a parse error is a problem, never an exception."""
    if config_dir is None:
        return {}, []
    path = config_dir / CONFIG_FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"cannot read {path.name}: {exc}"]
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"{path.name} is not valid TOML ({exc}); ignoring it"]


def default_config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("exlsp"))
