"""Reading the config file: YAML without the 1.1 traps, `${VAR}` interpolation, key-path errors."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config import GatewayConfig, semantic_errors
from gateway.contract_check import compile_contracts
from gateway.monitor_setup import load_monitors


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists every (key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path or '<root>'}: {message}" for path, message in problems)
        super().__init__(f"{source}: {len(problems)} error(s)\n{lines}")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars.

    YAML 1.1 turns `on`, `off`, `yes`, `no` into booleans, `0777` into octal and `1:30` into 90;
    a key named `on` silently becoming `True` is the classic trap. Here only true/false are booleans.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    return int(loader.construct_scalar(node))


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float(text)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str], problems: list[tuple[str, str]]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in string scalars (after parsing, so values cannot inject YAML)."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)"))
            return ""

        return _VAR.sub(substitute, node) if "${" in node else node
    if isinstance(node, dict):
        return {key: _interpolate(value, _join(path, key), env, problems) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(value, f"{path}[{i}]", env, problems) for i, value in enumerate(node)]
    return node


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def key_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's ('routes', 0, 'backends', 1, 'weight') as routes[0].backends[1].weight."""
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out


def parse_config(
    text: str, source: str = "<config>", env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> GatewayConfig:
    """Validate a config document; raise ConfigError listing every problem with its key path."""
    try:
        raw = yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the top level must be a mapping of keys")])
    problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, "", os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(source, problems)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            source, [(key_path(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        ) from None
    problems = semantic_errors(config)
    # Contract files are compiled here too, so `gateway check` and a reload reject a bad schema.
    problems += compile_contracts(config, base_dir or Path.cwd())[1]
    problems += load_monitors(config, base_dir or Path.cwd())[1]
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), [("", "the file is not UTF-8 text")]) from None
    return parse_config(text, str(path), env, path.parent)
