"""The one planner protocol, and the registry every planner is found through by name.

A planner is anything with a ``name``, a ``privileged`` flag and
``plan(observation, privileged=None) -> Trajectory`` over a batch. Privileged planners
(log replay, the teacher's search) receive a :class:`~av.observation.Privileged` value; all
others receive ``None`` and must not need it.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol, runtime_checkable

from av.errors import AvError
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


def register_planner(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:factory"``, a no-argument callable) as ``name``."""
    _REGISTRY[name] = target


def _load_builtins() -> None:
    importlib.import_module("closedloop.planners")


def planner_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def make_planner(name: str) -> Planner:
    """Build the registered planner ``name`` (raises :class:`AvError` for unknown names)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise AvError(f"unknown planner {name!r}; choose from {', '.join(planner_names())}")
    module, attr = _REGISTRY[name].split(":")
    factory: Callable[[], Planner] = getattr(importlib.import_module(module), attr)
    return factory()
