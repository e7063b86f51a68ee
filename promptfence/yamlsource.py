"""YAML loading that remembers where every key came from.

Config and policy errors must name the file, line and field; plain ``yaml.safe_load`` throws
the positions away, so we compose the node tree ourselves and keep the marks beside the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from promptfence.errors import ConfigError


class YamlMap(dict[str, Any]):
    """A mapping from a YAML file; ``where(key)`` gives the (line, column) of that key."""

    def __init__(self, source: str, line: int, column: int) -> None:
        super().__init__()
        self.source = source
        self.line = line
        self.column = column
        self.key_marks: dict[str, tuple[int, int]] = {}

    def where(self, key: str | None = None) -> tuple[int, int]:
        if key is not None and key in self.key_marks:
            return self.key_marks[key]
        return (self.line, self.column)

    def error(self, key: str | None, field: str, message: str) -> ConfigError:
        line, column = self.where(key)
        return ConfigError(message, source=self.source, line=line, column=column, field=field)


class YamlList(list[Any]):
    """A sequence from a YAML file; ``item_marks[i]`` gives the position of item ``i``."""

    def __init__(self, source: str, line: int, column: int) -> None:
        super().__init__()
        self.source = source
        self.line = line
        self.column = column
        self.item_marks: list[tuple[int, int]] = []

    def error(self, index: int | None, field: str, message: str) -> ConfigError:
        if index is not None and index < len(self.item_marks):
            line, column = self.item_marks[index]
        else:
            line, column = self.line, self.column
        return ConfigError(message, source=self.source, line=line, column=column, field=field)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(node: yaml.Node, source: str) -> Any:
    line, column = _mark(node)
    if isinstance(node, yaml.MappingNode):
        mapping = YamlMap(source, line, column)
        for key_node, value_node in node.value:
            key = _convert(key_node, source)
            if not isinstance(key, str):
                raise ConfigError(
                    f"keys must be strings, got {type(key).__name__}",
                    source=source,
                    line=_mark(key_node)[0],
                    column=_mark(key_node)[1],
                )
            if key in mapping:
                raise ConfigError(
                    "duplicate key",
                    source=source,
                    line=_mark(key_node)[0],
                    column=_mark(key_node)[1],
                    field=key,
                )
            mapping[key] = _convert(value_node, source)
            mapping.key_marks[key] = _mark(key_node)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        seq = YamlList(source, line, column)
        for item in node.value:
            seq.append(_convert(item, source))
            seq.item_marks.append(_mark(item))
        return seq
    assert isinstance(node, yaml.ScalarNode)
    return yaml.SafeLoader(b"").construct_object(node, deep=True)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document, keeping positions; syntax errors become ConfigError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"invalid YAML: {exc.problem}",
            source=source,
            line=None if mark is None else mark.line + 1,
            column=None if mark is None else mark.column + 1,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from None
    if node is None:
        return None
    return _convert(node, source)


def load_yaml_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("file is not UTF-8 text", source=str(path)) from None
    return load_yaml_text(text, str(path))
