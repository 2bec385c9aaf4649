"""Options declared once: a dataclass field carries its default, its help text and its check.

    lr: float = option(1e-5, "peak learning rate", check=positive)

The command-line arguments (`add_arguments`, `from_args`), the study YAML sections (`from_mapping`) and the
validation (`check`) of UnlearnConfig, TrackerConfig, FinetuneConfig and EvalConfig are derived from these
declarations, so adding an option is one edit. A field's `study` metadata says where a study sets it:
`SECTION` (its own key in the section, e.g. `training.lr`), or the study key that provides it (e.g.
`forget_splits` for `forget`): such fields are not keys of the section.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import MISSING, Field
from typing import Any, Callable, Sequence

from geffect.errors import UsageError
from geffect.schema import convert, fail

SECTION = "section"
BY_STUDY = "(set by the study)"  # `study` of a field the study sets from its own layout (paths, resume, ...)
Check = Callable[[Any], "str | None"]  # a value -> None when fine, else what is wrong ("must be >= 1, got 0")


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    check: Check | None = None,
    choices: Sequence[str] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    study: str = SECTION,
    required: bool = False,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field declaring one option. `flag`: the command-line flag when it is not `--field-name`
    (with the class's prefix); `study`: where a study YAML sets it (SECTION or the key that provides it);
    `required`: the command line must give it even though Python callers have a default."""
    metadata = {
        "help": help,
        "check": check,
        "choices": tuple(choices) if choices else None,
        "flag": flag,
        "metavar": metavar,
        "study": study,
        "required": required,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --- checks ------------------------------------------------------------------------------------------------


def at_least(low: float) -> Check:
    return lambda v: None if v is None or v >= low else f"must be >= {low:g}, got {v}"


def positive(v: Any) -> str | None:
    return None if v is None or (math.isfinite(v) and v > 0) else f"must be a positive number, got {v}"


def non_negative(v: Any) -> str | None:
    return None if v is None or (math.isfinite(v) and v >= 0) else f"must be >= 0, got {v}"


# --- the declarations, read ----------------------------------------------------------------------------------


def fields(cls: type) -> list[Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def section_fields(cls: type) -> list[Field]:
    """The fields a study sets as keys of the class's own section."""
    return [f for f in fields(cls) if f.metadata.get("study", SECTION) == SECTION]


def flag_of(cls: type, f: Field) -> str:
    explicit = f.metadata.get("flag")
    if explicit:
        return explicit
    prefix = getattr(cls, "CLI_PREFIX", "")
    return f"--{prefix}{f.name.replace('_', '-')}"


def _base_type(hint: Any) -> Any:
    """`X` of `X | None`; any other hint as it is."""
    args = typing.get_args(hint)
    if len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return hint


def has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


# --- command line --------------------------------------------------------------------------------------------


def parse_pairs(
    items: Sequence[str], flag: str, value_type: Callable[[str], Any], what: str = "a number"
) -> dict[str, Any]:
    """`KEY=VALUE` items of a repeatable flag as a mapping."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE, e.g. {flag} beta=0.5")
        try:
            values[key.strip()] = value_type(text)
        except ValueError:
            raise UsageError(f"{flag} {item!r}: {text!r} is not {what}") from None
    return values


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(text) from None


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, only: Sequence[str] | None = None) -> None:
    """One argument per field of `cls` (or of the fields named in `only`), with the help, default and
    choices of its declaration."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        hint, flag, meta = _base_type(hints[f.name]), flag_of(cls, f), f.metadata
        text = meta.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "help": text}
        if hint is bool:
            if has_default(f) and default_of(f):
                parser.add_argument(flag if meta.get("flag") else f"--no-{flag[2:]}", action="store_false", **kwargs)
            else:
                parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if typing.get_origin(hint) is dict:
            parser.add_argument(flag, action="append", default=[], metavar=meta.get("metavar") or "KEY=VALUE", **kwargs)
            continue
        kwargs["type"] = hint
        # Choices are checked by `check` (a one-line error), not by argparse (usage text and a second line).
        choices = meta.get("choices")
        if meta.get("metavar") or choices:
            kwargs["metavar"] = meta.get("metavar") or "{" + ",".join(choices) + "}"
        if meta.get("required"):
            kwargs["required"] = True
        elif has_default(f):
            kwargs["default"] = default_of(f)
            if kwargs["default"] is not None and "default" not in text:
                kwargs["help"] = (
                    f"{text} (default {kwargs['default']:g})"
                    if hint is float
                    else f"{text} (default {kwargs['default']})"
                )
        else:
            kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def from_args(cls: type, args: argparse.Namespace, /, **values: Any) -> Any:
    """An instance of `cls` from parsed arguments (`values` take precedence: fields set another way)."""
    hints = typing.get_type_hints(cls)
    given: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in values or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        hint = _base_type(hints[f.name])
        if typing.get_origin(hint) is dict:
            item = typing.get_args(hint)[1]
            parse, what = (float, "a number") if item is float else (_yaml_value, "a YAML value")
            value = parse_pairs(value, flag_of(cls, f), parse, what)
        given[f.name] = value
    return cls(**{**given, **values})


# --- study YAML ----------------------------------------------------------------------------------------------


def from_mapping(cls: type, data: Any, path: str, /, **values: Any) -> Any:
    """An instance of `cls` from a study section: only its SECTION fields are keys (UsageError naming the
    key path, e.g. `training.lrr: unknown key`); `values` set the fields the study provides otherwise."""
    if data is None:
        data = {}
    allowed = {f.name: f for f in section_fields(cls)}
    if not isinstance(data, dict):
        raise fail(path, f"expected a mapping with keys {', '.join(allowed)}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in allowed:
            raise fail(f"{path}.{key}" if path else str(key), f"unknown key; known keys here: {', '.join(allowed)}")
    converted = {key: convert(hints[key], value, f"{path}.{key}" if path else key) for key, value in data.items()}
    return cls(**{**converted, **values})


# --- checks, run -----------------------------------------------------------------------------------------------


def check(obj: Any, section: str | None = None, by_key: bool = False) -> None:
    """Each field's declared check and choices. The error names the field by its flag (`--lr must be a
    positive number, got -1`), after `section` when given (`training: --lr must be ...`), or with `by_key`
    by its key in the section (`geffect.every: must be >= 1, got 0`)."""
    cls = type(obj)
    for f in fields(cls):
        value = getattr(obj, f.name)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            shown = f"{section}.{f.name}: unknown {f.name}" if by_key else f"unknown {flag_of(cls, f)}"
            _fail(section, by_key, f"{shown} {value!r}; choose one of {', '.join(map(str, choices))}")
        problem = f.metadata["check"](value) if f.metadata.get("check") is not None else None
        if problem:
            _fail(section, by_key, f"{section}.{f.name}: {problem}" if by_key else f"{flag_of(cls, f)} {problem}")


def _fail(section: str | None, by_key: bool, message: str) -> None:
    raise UsageError(message if by_key or section is None else f"{section}: {message}")


def section_values(cls: type, data: Any, path: str, by_key: bool = False) -> dict[str, Any]:
    """The options a study section gives for `cls`, converted and checked (errors name the key path); the
    fields the study provides otherwise take their defaults or placeholders for the check."""
    others = {
        f.name: default_of(f) if has_default(f) else ""
        for f in fields(cls)
        if f.metadata.get("study", SECTION) != SECTION
    }
    obj = from_mapping(cls, data, path, **others)
    check(obj, path, by_key)
    return {key: getattr(obj, key) for key in (data or {})}
