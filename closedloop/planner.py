"""The one planner protocol, and the registry every planner is found through by name.

A planner is anything with a ``name``, a ``privileged`` flag and
``plan(observation, privileged=None) -> Trajectory`` over a batch. Privileged planners
(log replay, the teacher's search) receive a :class:`~av.observation.Privileged` value; all
others receive ``None`` and must not need it.

Planners are found by name (:func:`make_planner`): the built-in ones, those that installed
packages declare in the ``av.planners`` entry-point group, or any ``package.module:factory``.
A factory takes one frozen settings dataclass (or nothing); ``make_planner(name, **settings)``
builds and checks the settings from loose values, so the command line, a config file and Python
all set a planner up the same way; :func:`planner_settings` gives the value a run records.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import typing
from typing import Any, Callable, Protocol, runtime_checkable

from av.errors import AvError
from av.settings import build_settings
from av.observation import Observation, Privileged, Trajectory


@runtime_checkable
class Planner(Protocol):
    """Batched planner: ``B`` observations in, ``B`` trajectories out."""

    name: str
    privileged: bool

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        ...


# name -> "module:factory"; factories are imported only when the planner is asked for.
_REGISTRY: dict[str, str] = {}
ENTRY_POINT_GROUP = "av.planners"


def register_planner(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:factory"``) as ``name``; see :func:`make_planner`."""
    _REGISTRY[name] = target


def _load_builtins() -> None:
    importlib.import_module("closedloop.planners")


def _entry_points() -> dict[str, str]:
    """Planners that installed packages declare in the ``av.planners`` entry-point group."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def planner_names() -> list[str]:
    """Registered planners and those of the ``av.planners`` entry-point group."""
    _load_builtins()
    return sorted({**_entry_points(), **_REGISTRY})


def planner_factory(name: str) -> Callable[..., Planner]:
    """The factory of planner ``name``: a registered name, an ``av.planners`` entry point, or a
    ``package.module:factory`` path to any importable factory."""
    _load_builtins()
    target = _REGISTRY.get(name) or _entry_points().get(name)
    if target is None and ":" not in name:
        raise AvError(f"unknown planner {name!r}; choose from {', '.join(planner_names())} "
                      "or give package.module:factory")
    module, _, attr = (target or name).partition(":")
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if not e.name or not (module == e.name or module.startswith(e.name + ".")):
            raise  # the module exists but is broken inside: a programming error, not bad input
        raise AvError(f"planner {name!r}: cannot import {module!r} ({e})") from None
    factory = getattr(imported, attr, None)
    if factory is None:
        raise AvError(f"planner {name!r}: module {module!r} has no {attr!r}")
    if not callable(factory):
        raise AvError(f"planner {name!r}: {module}:{attr} is not callable")
    return factory


def settings_type(factory: Callable[..., Planner]) -> type | None:
    """The settings dataclass a factory takes (its one parameter's annotation), or ``None`` when
    it takes no arguments."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = [p for p in inspect.signature(factory).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not params:
        return None
    hint = typing.get_type_hints(target).get(params[0].name)
    if len(params) > 1 or not dataclasses.is_dataclass(hint):
        raise AvError(f"planner factory {getattr(factory, '__qualname__', factory)!r} must take no "
                      "arguments or one settings dataclass (annotated)")
    return hint


def planner_settings(name: str, **settings: Any) -> Any:
    """The checked settings value of planner ``name`` with ``settings`` applied (``None`` when the
    planner takes none). Values may be strings (``"60"``), JSON/TOML values or Python values;
    nested settings are set with dotted keys (``idm.accel``)."""
    cls = settings_type(planner_factory(name))
    if cls is None:
        if settings:
            raise AvError(f"planner {name!r} takes no settings, got {', '.join(settings)}")
        return None
    return build_settings(cls, settings)


def make_planner(name: str, **settings: Any) -> Planner:
    """Build planner ``name`` (see :func:`planner_factory`) with ``settings`` applied.

    A planner factory is a callable (usually the planner class) that takes either nothing or
    one frozen settings dataclass, annotated, whose fields carry defaults and help text and
    which may have a ``validate()``. Unknown names and bad settings raise :class:`AvError`.
    The result is checked against the :class:`Planner` protocol.
    """
    factory = planner_factory(name)
    value = planner_settings(name, **settings)
    planner = factory() if value is None else factory(value)
    if not isinstance(planner, Planner):
        raise AvError(f"planner {name!r}: the factory returned {type(planner).__name__}, which lacks "
                      "name, privileged or plan()")
    return planner
