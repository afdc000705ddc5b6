"""Reading the configuration's YAML files, and the errors that name a file and a key.

Shared by ``hw.config`` (defaults and site file) and ``hw.config.boardfile``: a SafeLoader that
refuses duplicate and non-scalar keys, the deep merge that records which file supplied every key
path, and the text of each finding. Nothing here is read at import time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A configuration that must not be used. ``problems`` holds one ``Problem`` per finding."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        shown = "<missing>" if self.value is _MISSING else repr(self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{self.file}: {self.key or '<top level>'} = {shown}: {self.allowed}"


_MISSING = object()


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a key must be a plain name, not {type(key).__name__}",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> dict:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(name, "", _MISSING, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(name, "", _MISSING, f"cannot be read: {e}")]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except RecursionError:
        raise ConfigError([Problem(name, "", _MISSING, "broken YAML: nested too deeply")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([Problem(name, where, _MISSING, f"broken YAML: {problem}")]) from None
    if data is None:
        raise ConfigError([Problem(name, "", _MISSING, "the file is empty; expected a mapping")])
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(name, "", type(data).__name__, "the top level must be a mapping of sections")]
        )
    return data


def _merge(base: dict, over: Mapping, origin: dict, over_name: str, prefix: str = "") -> dict:
    """Deep-merge ``over`` into a copy of ``base``; record which file supplied every key path."""
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value, origin, over_name, path)
        else:
            out[key] = value
            for p in [p for p in origin if p == path or p.startswith((path + ".", path + "["))]:
                del origin[p]
            origin[path] = over_name
    return out


def _origins(tree: Any, name: str, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            yield path, name
            yield from _origins(v, name, path)


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _file_for(path: str, origin: dict[str, str], fallback: str) -> str:
    probe = path
    while probe:
        if probe in origin:
            return origin[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return fallback


def _allowed_text(err: dict) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (not part of the schema; check the spelling)"
    if kind in ("tuple_type", "list_type"):
        return "must be a list (YAML '- item' entries)"
    if kind == "missing":
        return "required key is missing"
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        bounds = {
            "less_than_equal": "at most",
            "less_than": "below",
            "greater_than_equal": "at least",
            "greater_than": "above",
        }
        limit = next(iter(ctx.values())) if ctx else "?"
        return f"must be {bounds[kind]} {limit} (a ceiling in hw/config/__init__.py)"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}" if "expected" in ctx else err["msg"]
    return err["msg"]
