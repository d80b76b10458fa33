"""Generate argparse options from frozen config dataclasses (one source of truth for defaults).

A field becomes ``--field-name``; its type (int, float, str, bool, Path, Literal) picks the
parser; ``field(metadata={"help": ...})`` supplies the help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of dataclass ``cls`` (except ``skip``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "help": f"{help_} (default: {default})" if not required else help_}
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = default
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["default"] = default
        else:
            kwargs["type"] = Path if tp in (Path, Path | None) else (tp if tp in (int, float, str) else str)
            kwargs["default"] = default
            kwargs["required"] = required
            kwargs["metavar"] = f.name.upper()
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type[C], ns: argparse.Namespace, **overrides: Any) -> C:
    """Build ``cls`` from parsed options (fields missing from ``ns`` keep their defaults)."""
    kw = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    kw.update(overrides)
    return cls(**kw)  # type: ignore[call-arg]
