"""The simulator protocol every backend implements, its configuration, and the backend registry.

A backend turns a :class:`~av.batch.ScenarioBatch` into a state (``reset``), advances that state
one 10 Hz step given an optional new plan (``step``), shows a planner what it may see
(``observe``) and runs a planner closed-loop over whole scenarios (``run`` -> :class:`Rollout`).
Backends register by name and are imported only when asked for (CARLA stays optional).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Protocol, runtime_checkable

from av.batch import ScenarioBatch
from av.errors import AvError
from av.observation import Observation, Privileged, Trajectory
from closedloop.planner import Planner
from closedloop.rollout import Rollout


@dataclass(frozen=True)
class SimConfig:
    """Settings of a closed-loop simulation (SI units: m, s, rad).

    Vehicle limits apply to the ego's kinematic bicycle model (the "perfect" controller ignores
    them: it exists to debug planners). Observation sizes say how much a planner sees: the
    ``num_agents`` nearest agents, ``num_lanes`` nearest lanes of ``lane_points`` points each,
    ``route_points`` route points 1 m apart, ``num_edges`` nearest drivable-area edges.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    agents: Literal["log", "idm"] = field(
        default="log", metadata={"help": "background agents: log replay (non-reactive) or IDM (reactive)"})
    plan_every: int = field(default=1, metadata={"help": "call the planner every k steps (10 Hz steps)"})
    controller: Literal["lqr", "perfect"] = field(
        default="lqr", metadata={"help": "ego tracking: LQR tracker + bicycle model, or place the ego on the plan"})
    max_accel: float = field(default=3.5, metadata={"help": "ego max acceleration, m/s^2"})
    max_decel: float = field(default=8.0, metadata={"help": "ego max deceleration (positive), m/s^2"})
    max_jerk: float = field(default=15.0, metadata={"help": "ego max jerk, m/s^3"})
    max_steer: float = field(default=0.7, metadata={"help": "ego max front-wheel steering angle, rad"})
    max_steer_rate: float = field(default=1.0, metadata={"help": "ego max steering rate, rad/s"})
    history_steps: int = field(default=20, metadata={"help": "past steps in observations (plus the current one)"})
    future_steps: int = field(default=80, metadata={"help": "logged future steps in privileged inputs"})
    num_agents: int = field(default=32, metadata={"help": "nearest agents in observations"})
    num_lanes: int = field(default=16, metadata={"help": "nearest lanes in observations"})
    lane_points: int = field(default=20, metadata={"help": "points per observed lane"})
    route_points: int = field(default=100, metadata={"help": "route points (1 m apart) ahead of the ego"})
    num_edges: int = field(default=64, metadata={"help": "nearest drivable-area edges in observations"})
    idm_min_gap: float = field(default=2.0, metadata={"help": "reactive agents: standstill gap s0, m"})
    idm_headway: float = field(default=1.0, metadata={"help": "reactive agents: time headway T, s"})
    idm_accel: float = field(default=1.5, metadata={"help": "reactive agents: IDM acceleration a, m/s^2"})
    idm_decel: float = field(default=2.0, metadata={"help": "reactive agents: comfortable deceleration b, m/s^2"})
    record_plans: bool = field(default=True, metadata={"help": "keep every plan in the rollout"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: the batch's)"})

    def validate(self) -> "SimConfig":
        """Raise :class:`AvError` naming the first bad option; return ``self``."""
        if self.agents not in ("log", "idm"):
            raise AvError(f"sim config: agents must be 'log' or 'idm', got {self.agents!r}")
        if self.controller not in ("lqr", "perfect"):
            raise AvError(f"sim config: controller must be 'lqr' or 'perfect', got {self.controller!r}")
        positive = ("max_accel", "max_decel", "max_jerk", "max_steer", "max_steer_rate", "idm_min_gap",
                    "idm_headway", "idm_accel", "idm_decel")
        for name in positive:
            if not getattr(self, name) > 0:
                raise AvError(f"sim config: {name} must be > 0, got {getattr(self, name)}")
        at_least_one = ("plan_every", "future_steps", "num_agents", "num_lanes", "route_points", "num_edges")
        for name in at_least_one:
            if int(getattr(self, name)) < 1:
                raise AvError(f"sim config: {name} must be >= 1, got {getattr(self, name)}")
        if self.history_steps < 0:
            raise AvError(f"sim config: history_steps must be >= 0, got {self.history_steps}")
        if self.lane_points < 2:
            raise AvError(f"sim config: lane_points must be >= 2, got {self.lane_points}")
        if self.max_steer >= 1.5:
            raise AvError(f"sim config: max_steer must be < 1.5 rad, got {self.max_steer}")
        return self


@runtime_checkable
class Simulator(Protocol):
    """A closed-loop simulation backend; its state type is the backend's own (immutable) value."""

    name: str
    config: SimConfig

    def reset(self, batch: ScenarioBatch) -> Any:
        """The state at each scenario's ``history_steps`` (ego and agents as logged there)."""
        ...

    def step(self, state: Any, trajectory: Trajectory | None = None) -> Any:
        """Advance one 10 Hz step; a new ``trajectory`` replaces the tracked plan, ``None`` keeps it."""
        ...

    def observe(self, state: Any) -> Observation:
        """What the car can see now (ego frame)."""
        ...

    def privileged(self, state: Any) -> Privileged:
        """Logged futures for privileged planners."""
        ...

    def run(self, batch: ScenarioBatch, planner: Planner) -> Rollout:
        """Drive ``planner`` closed-loop through every scenario of ``batch``."""
        ...


# name -> "module:class"; the class takes a SimConfig.
_BACKENDS: dict[str, str] = {"builtin": "closedloop.sim.builtin:BuiltinSimulator"}


def register_simulator(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:factory"`` taking a :class:`SimConfig`) as ``name``."""
    _BACKENDS[name] = target


def simulator_names() -> list[str]:
    return sorted(_BACKENDS)


def make_simulator(name: str = "builtin", config: SimConfig | None = None) -> Simulator:
    """Build the backend ``name`` (raises :class:`AvError` for unknown names or bad configs)."""
    if name not in _BACKENDS:
        raise AvError(f"unknown simulator {name!r}; choose from {', '.join(simulator_names())}")
    module, attr = _BACKENDS[name].split(":")
    factory: Callable[[SimConfig], Simulator] = getattr(importlib.import_module(module), attr)
    return factory((config or SimConfig()).validate())
