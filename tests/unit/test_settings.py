"""Settings: camelCase in, frozen dataclass out; bad values reported and replaced by defaults."""

from __future__ import annotations

import dataclasses

import pytest

from exlsp.settings import Settings, merge_layers, parse_settings, read_config_file


def test_camel_case_keys_convert_to_fields():
    settings, problems = parse_settings(
        {"timeBudgetMs": 250, "maxTokens": 16, "prefixTokens": 512, "extraContextTokens": 0, "model": "tiny"}
    )
    assert problems == []
    assert (settings.time_budget_ms, settings.max_tokens, settings.prefix_tokens) == (250.0, 16, 512)
    assert (settings.extra_context_tokens, settings.model) == (0, "tiny")


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().max_tokens = 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"maxTokens": "many"}, "setting 'maxTokens': expected a number, got 'many'; using the default"),
        ({"maxTokens": True}, "setting 'maxTokens': expected a number, got True; using the default"),
        ({"maxTokens": 1.5}, "setting 'maxTokens': expected a whole number, got 1.5; using the default"),
        ({"debounceMs": -1}, "setting 'debounceMs': must be >= 0, got -1; using the default"),
        ({"temprature": 0.2}, "unknown setting 'temprature'"),
        (
            {"enable": {"python": "yes"}},
            "setting 'enable': expected true/false or a table of language id -> "
            "true/false, got {'python': 'yes'}; using the default",
        ),
    ],
)
def test_invalid_values_are_reported_and_replaced_by_defaults(raw, message):
    settings, problems = parse_settings(raw)
    assert problems == [message]
    assert settings == Settings()


def test_not_an_object():
    assert parse_settings(["x"]) == (Settings(), ["settings must be an object, got list"])


def test_enable_per_language_with_a_default():
    settings, _ = parse_settings({"enable": {"markdown": False}})
    assert settings.is_enabled("python") and not settings.is_enabled("markdown")
    settings, _ = parse_settings({"enable": {"*": False, "python": True}})
    assert settings.is_enabled("python") and not settings.is_enabled("rust")
    settings, _ = parse_settings({"enable": False})
    assert not settings.is_enabled("python")


def test_later_layers_win_and_may_nest_under_the_section():
    merged = merge_layers({"maxTokens": 1, "debounceMs": 5}, {"exlsp": {"maxTokens": 2}}, None)
    assert merged == {"maxTokens": 2, "debounceMs": 5}


def test_config_file(tmp_path):
    assert read_config_file(tmp_path) == ({}, [])
    (tmp_path / "config.toml").write_text("maxTokens = 12\n[enable]\nmarkdown = false\n")
    assert read_config_file(tmp_path) == ({"maxTokens": 12, "enable": {"markdown": False}}, [])
    (tmp_path / "config.toml").write_text("maxTokens = = 1\n")
    raw, problems = read_config_file(tmp_path)
    assert raw == {} and len(problems) == 1 and problems[0].startswith("config.toml is not valid TOML")
