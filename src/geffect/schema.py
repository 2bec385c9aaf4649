"""Build typed dataclasses from parsed YAML, naming the key path of the first bad value.

Supported field types: bool, int, float, str, `X | None`, `list[X]`, `dict[str, X]`, nested dataclasses and
`Any` (taken as is). Every error is a UsageError whose message starts with the key path, e.g.
``methods[2].grid.beta: a grid needs at least one value``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from geffect.errors import UsageError

TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def fail(path: str, message: str) -> UsageError:
    return UsageError(f"{path or 'config'}: {message}")


def build(cls: type, data: Any, path: str = "") -> Any:
    """An instance of dataclass `cls` from the mapping `data` (missing keys take the field defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail(
            path,
            f"expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}, got {_shown(data)}",
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise fail(_join(path, str(unknown[0])), f"unknown key; known keys here: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = convert(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise fail(_join(path, name), "this key is required")
    return cls(**values)


def convert(hint: Any, value: Any, path: str) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return convert(option, value, path)
            except UsageError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list):
            raise fail(path, f"expected a list, got {_shown(value)}")
        (item,) = typing.get_args(hint)
        return [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(path, f"expected a mapping, got {_shown(value)}")
        _, item = typing.get_args(hint)
        return {str(k): convert(item, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        # A section with its own rules (e.g. a study's `geffect:`) builds itself.
        return hint.from_section(value, path) if hasattr(hint, "from_section") else build(hint, value, path)
    return _scalar(hint, value, path)


def _scalar(hint: type, value: Any, path: str) -> Any:
    # bool is a subclass of int in Python; a YAML `true` is never a valid number here.
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, str):
        return value
    raise fail(path, f"expected {TYPE_NAMES.get(hint, hint)}, got {_shown(value)}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return repr(value)
