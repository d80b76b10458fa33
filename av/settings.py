"""Typed settings: build a frozen settings dataclass from loose values, and turn it back into JSON.

Planners, simulators and other registered components describe their tunable parameters as a
frozen dataclass (defaults, ``field(metadata={"help": ...})`` help text, ``validate()``).
Values arrive as strings from the command line (``--planner-arg horizon_steps=60``), as JSON
or TOML values from a config file, or as Python values; :func:`build_settings` checks each key
against the dataclass, converts the value to the field's type and validates the result::

    build_settings(IDMSettings, {"horizon_steps": "60", "idm.accel": 2.0})

Nested settings dataclasses are addressed with dotted keys (``idm.accel``) or nested tables.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from av.errors import AvError

S = TypeVar("S")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _nest(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"a.b": 1, "a": {"c": 2}}`` -> ``{"a": {"b": 1, "c": 2}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = str(key).partition(".")
        if rest:
            value = {rest: value}
        if isinstance(value, Mapping) and isinstance(out.get(head), dict):
            out[head] = {**out[head], **_nest(value, f"{where}{head}.")}
        elif isinstance(value, Mapping):
            out[head] = _nest(value, f"{where}{head}.")
        else:
            out[head] = value
    return out


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` (a string, JSON/TOML value or Python value) as type ``tp``; AvError if it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = AvError(f"setting {key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except AvError:
                continue
        raise bad
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
        raise AvError(f"setting {key}: choose from {', '.join(map(str, args))}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise bad
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise bad
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise bad
        return Path(value)
    if tp is Any:
        return value
    raise AvError(f"setting {key}: type {_type_name(tp)} cannot be set from {value!r}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin is tuple:
        return f"list of {_type_name(args[0])}" if args else "list"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def build_settings(cls: type[S], values: Mapping[str, Any] | None = None, base: S | None = None,
                   where: str = "") -> S:
    """The settings ``cls`` (a dataclass) with ``values`` applied over ``base`` (default: ``cls()``).

    ``values`` keys are field names or dotted paths into nested settings dataclasses; values
    are converted to the field types. Unknown keys and unconvertible values raise
    :class:`AvError` naming the key; so does the dataclass's ``validate()``, which is called on
    every settings dataclass built (nested ones first).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a settings dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    given = _nest(values or {}, where)
    unknown = [k for k in given if k not in fields]
    if unknown:
        known = ", ".join(where + k for k in settings_keys(cls)) or "none"
        raise AvError(f"unknown setting {where}{unknown[0]}; known settings: {known}")
    changes: dict[str, Any] = {}
    for name, value in given.items():
        tp, key = hints[name], f"{where}{name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise AvError(f"setting {key}: expected a table of settings, got {value!r}")
            current = getattr(base, name) if base is not None else _default(fields[name])
            changes[name] = build_settings(tp, value, current, f"{key}.")
        else:
            changes[name] = _convert(tp, value, key)
    try:
        settings = dataclasses.replace(base, **changes) if base is not None else cls(**changes)
    except TypeError as e:  # a required field without a value
        raise AvError(f"settings {cls.__name__}: {e}") from None
    validate = getattr(settings, "validate", None)
    if callable(validate):
        validate()
    return settings


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def settings_keys(cls: type) -> list[str]:
    """Every settable key of ``cls``, nested ones dotted (``idm.accel``)."""
    return [key for key, _, _, _ in settings_help(cls)]


def settings_help(cls: type, defaults: Any = None) -> list[tuple[str, str, Any, str]]:
    """``(key, type name, default, help)`` for every leaf setting of dataclass ``cls``.

    Defaults are read from ``defaults`` (an instance of ``cls``) where given, else from the fields.
    """
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, str, Any, str]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if dataclasses.is_dataclass(tp):
            see = f"{f.metadata.get('help', f.name)} (see {tp.__name__})"
            rows += [(f"{f.name}.{key}", name, value, help_ or see)
                     for key, name, value, help_ in settings_help(tp, default)]
        else:
            rows.append((f.name, _type_name(tp), default, f.metadata.get("help", "")))
    return rows


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as plain JSON values (tuples as lists, paths as strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(settings)
