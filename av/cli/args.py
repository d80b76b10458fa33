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


def add_planner_settings_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--planner-arg [PLANNER:]KEY=VALUE`` (repeatable) and ``--planner-config FILE``."""
    parser.add_argument(
        "--planner-arg", action="append", default=[], metavar="[PLANNER:]KEY=VALUE", dest="planner_arg",
        help="set a planner setting (typed by the planner's settings; nested with dots, e.g. idm.accel=2); "
        "with several planners prefix the planner name, e.g. idm:horizon_steps=60; repeatable "
        "(`av closedloop planners` lists the settings)")
    parser.add_argument(
        "--planner-config", type=Path, default=None, metavar="FILE", dest="planner_config",
        help="JSON or TOML file of planner settings (with several planners: one table per planner name); "
        "--planner-arg overrides it")


def read_settings_file(path: Path) -> dict[str, Any]:
    """The table in a JSON (``.json``) or TOML (any other suffix) settings file."""
    import json
    import tomllib

    from av.errors import AvError

    try:
        text = path.read_text()
    except OSError as e:
        raise AvError(f"{path}: cannot read settings file ({e.strerror})") from None
    try:
        value = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise AvError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except tomllib.TOMLDecodeError as e:
        raise AvError(f"{path}: not valid TOML ({e})") from None
    if not isinstance(value, dict):
        raise AvError(f"{path}: expected a table of settings")
    return value


def planner_settings_from_args(planners: list[str], ns: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per planner, the raw settings given by ``--planner-config`` and ``--planner-arg``.

    With one planner a bare ``KEY=VALUE`` (and a flat config file) applies to it; with several,
    each key names its planner (``idm:horizon_steps=60``; a config table per planner). Values
    stay strings here: :func:`closedloop.planner.make_planner` types and checks them.
    """
    from av.errors import AvError

    out: dict[str, dict[str, Any]] = {name: {} for name in planners}
    if ns.planner_config is not None:
        table = read_settings_file(ns.planner_config)
        if len(planners) == 1 and not (set(table) <= set(planners) and table):
            out[planners[0]].update(table)
        else:
            for name, values in table.items():
                if name not in out or not isinstance(values, dict):
                    raise AvError(f"{ns.planner_config}: with planners {', '.join(planners)} the file needs "
                                  f"one table per planner; {name!r} is not one of them")
                out[name].update(values)
    for item in ns.planner_arg:
        target, eq, value = item.partition("=")
        if not eq or not target.strip():
            raise AvError(f"--planner-arg {item!r}: expected [PLANNER:]KEY=VALUE")
        name, colon, key = target.strip().rpartition(":")
        if not colon:
            if len(planners) != 1:
                raise AvError(f"--planner-arg {item!r}: with several planners write PLANNER:KEY=VALUE")
            name = planners[0]
        if name not in out:
            raise AvError(f"--planner-arg {item!r}: planner {name!r} is not among {', '.join(planners)}")
        out[name][key] = value
    return out
