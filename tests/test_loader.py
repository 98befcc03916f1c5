from __future__ import annotations

from pathlib import Path

import pytest

from gateway.loader import ConfigError, key_path, load_config, parse_config

ROUTE = """
routes:
  - name: chat
    match: {path: /v1/chat/completions, model: small-chat}
    backends:
      - {name: v1, url: "http://127.0.0.1:9001", stable: true, weight: 95}
      - {name: v2, url: "http://127.0.0.1:9002/base/", weight: 5, model: other}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return caught.value.problems


def test_valid_config_parses_with_defaults() -> None:
    config = parse_config(ROUTE, env={})
    route = config.routes[0]
    assert route.backends[1].url == "http://127.0.0.1:9002/base"  # trailing slash dropped
    assert route.timeouts.request_s == 30.0
    assert config.listen.port == 8080
    assert config.listen.max_body_bytes == 10 * 1024 * 1024


def test_empty_document_is_the_default_config() -> None:
    assert parse_config("", env={}).routes == []


def test_every_error_is_reported_with_its_key_path() -> None:
    found = problems(
        """
listen: {port: 70000}
routes:
  - name: chat
    match: {path: no-slash}
    backends:
      - {name: v1, url: "ftp://x", weight: -1}
"""
    )
    paths = [path for path, _ in found]
    assert paths == ["listen.port", "routes[0].match.path", "routes[0].backends[0].url", "routes[0].backends[0].weight"]
    assert ("routes[0].backends[0].url", "must be an absolute http:// or https:// URL") in found


def test_unknown_keys_are_errors() -> None:
    assert problems("listen: {port: 1, prot: 2}") == [("listen.prot", "Extra inputs are not permitted")]


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "ON", "Yes"])
def test_yaml_11_boolean_words_stay_strings(word: str) -> None:
    # A key `on` must be reported as an unknown key named "on", never silently become True.
    assert problems(f"{word}: 1") == [(word, "Extra inputs are not permitted")]
    config = parse_config(ROUTE.replace("model: other", f"model: {word}"), env={})
    assert config.routes[0].backends[1].model == word


def test_yaml_11_octal_and_sexagesimal_do_not_apply() -> None:
    config = parse_config("listen: {port: 08080, host: 1:30}", env={})
    assert config.listen.port == 8080
    assert config.listen.host == "1:30"


def test_real_booleans_and_floats_still_work() -> None:
    config = parse_config(ROUTE.replace("stable: true", "stable: True").replace("weight: 95", "weight: 9.5e1"), env={})
    assert config.routes[0].backends[0].stable is True
    assert config.routes[0].backends[0].weight == 95.0


def test_environment_interpolation() -> None:
    text = 'admin: {token: "${TOKEN}", audit_log: "${AUDIT:-audit.jsonl}", host: "h-${SUFFIX:-}"}'
    config = parse_config(text, env={"TOKEN": "s3cret"})
    assert config.admin.token == "s3cret"
    assert config.admin.audit_log == "audit.jsonl"
    assert config.admin.host == "h-"


def test_missing_environment_variable_names_the_key() -> None:
    found = problems('routes: [{name: a, match: {path: /}, backends: [{name: b, url: "${URL}"}]}]')
    assert found[0][0] == "routes[0].backends[0].url"
    assert "URL is not set" in found[0][1]


def test_environment_values_cannot_inject_yaml() -> None:
    config = parse_config('admin: {token: "${TOKEN}"}', env={"TOKEN": "a\nlisten: {port: 1}"})
    assert config.admin.token == "a\nlisten: {port: 1}"
    assert config.listen.port == 8080


def test_semantic_errors() -> None:
    found = problems(
        """
routes:
  - name: a
    match: {path: /x}
    backends: [{name: b, url: "http://h", stable: true, weight: 0}, {name: b, url: "http://h", stable: true, weight: 0}]
  - name: a
    match: {path: /x/}
    backends: [{name: c, url: "http://h"}]
"""
    )
    assert found == [
        ("routes[0].backends[1].name", "duplicate backend name 'b'"),
        ("routes[0].backends[1].stable", "only one backend of a route can be stable"),
        ("routes[0].backends", "at least one backend needs a weight above 0"),
        ("routes[1].match", "same match as routes[0]: it would never be used"),
        ("routes[1].name", "duplicate route name 'a' (also routes[0])"),
    ]


def test_yaml_syntax_error_names_line_and_column() -> None:
    found = problems("listen: {port: 1\nadmin: [")
    assert found[0][0].startswith("line ")
    assert "not valid YAML" in found[0][1]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- 1") == [("", "the top level must be a mapping of keys")]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read the file" in caught.value.problems[0][1]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert caught.value.problems == [("", "the file is not UTF-8 text")]


def test_key_path_format() -> None:
    assert key_path(("routes", 0, "backends", 1, "weight")) == "routes[0].backends[1].weight"
    assert key_path(()) == ""


def test_shipped_configs_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "config"
    for name in ("gateway.yaml", "demo.yaml"):
        load_config(root / name, env={})
