"""The simulator protocol every backend implements, its configuration, and the backend registry.

A backend turns a :class:`~av.batch.ScenarioBatch` into a state (``reset``), advances that state
one 10 Hz step given an optional new plan (``step``), reports the world now (``snapshot``) and
releases what it holds (``close``; backends are context managers). The loop itself (observe,
plan, monitors, fallback, step) is :func:`closedloop.driver.rollout`, the same for every backend.
Backends register by name and are imported only when asked for (CARLA stays optional).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Protocol, runtime_checkable

from torch import Tensor

from av.batch import ScenarioBatch
from av.errors import AvError
from av.observation import Trajectory
from av.vehicle import VehicleLimits
from closedloop.sim.agents import IDMParams


# The defaults of the vehicle-limit and reactive-agent options are those of their own classes.
_LIMITS, _AGENT_IDM = VehicleLimits(), IDMParams()


@dataclass(frozen=True)
class SimConfig:
    """Settings of a closed-loop simulation (SI units: m, s, rad).

    Vehicle limits apply to the ego's kinematic bicycle model (the "perfect" controller ignores
    them: it exists to debug planners). What planners see is set by their
    :class:`~av.observe.ObservationSpec`, how often they plan by the driver, not here.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    agents: Literal["log", "idm"] = field(
        default="log", metadata={"help": "background agents: log replay (non-reactive) or IDM (reactive)"})
    controller: Literal["lqr", "perfect"] = field(
        default="lqr", metadata={"help": "ego tracking: LQR tracker + bicycle model, or place the ego on the plan"})
    max_accel: float = field(default=_LIMITS.max_accel, metadata={"help": "ego max acceleration, m/s^2"})
    max_decel: float = field(default=_LIMITS.max_decel, metadata={"help": "ego max deceleration (positive), m/s^2"})
    max_jerk: float = field(default=_LIMITS.max_jerk, metadata={"help": "ego max jerk, m/s^3"})
    max_steer: float = field(default=_LIMITS.max_steer, metadata={"help": "ego max front-wheel steering angle, rad"})
    max_steer_rate: float = field(default=_LIMITS.max_steer_rate, metadata={"help": "ego max steering rate, rad/s"})
    idm_min_gap: float = field(default=_AGENT_IDM.min_gap, metadata={"help": "reactive agents: standstill gap s0, m"})
    idm_headway: float = field(default=_AGENT_IDM.headway, metadata={"help": "reactive agents: time headway T, s"})
    idm_accel: float = field(default=_AGENT_IDM.accel, metadata={"help": "reactive agents: IDM acceleration a, m/s^2"})
    idm_decel: float = field(default=_AGENT_IDM.decel, metadata={"help": "reactive agents: comfortable deceleration b, m/s^2"})
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
        if self.max_steer >= 1.5:
            raise AvError(f"sim config: max_steer must be < 1.5 rad, got {self.max_steer}")
        return self


@dataclass(frozen=True)
class Snapshot:
    """The simulated world now, for ``B`` scenarios and ``N`` agents (local frame, SI units).

    * ``batch``: the scenarios being simulated, on the simulation device.
    * ``t`` long ``[B]``: the log step index of now (it may pass a scenario's last step).
    * ``ego`` ``[B, 5]``: ego rear-axle state (x, y, yaw, vx, vy).
    * ``ego_accel`` ``[B, 2]``: body-frame acceleration (longitudinal, lateral), m/s^2.
    * ``ego_yaw_rate`` ``[B]`` rad/s, ``ego_yaw_accel`` ``[B]`` rad/s^2.
    * ``agents`` ``[B, N, 5]``: agent box-centre states (x, y, yaw, vx, vy), zero where invalid;
      ``agent_valid`` bool ``[B, N]``.
    """

    batch: ScenarioBatch
    t: Tensor
    ego: Tensor
    ego_accel: Tensor
    ego_yaw_rate: Tensor
    ego_yaw_accel: Tensor
    agents: Tensor
    agent_valid: Tensor


@runtime_checkable
class Simulator(Protocol):
    """A closed-loop simulation backend; its state type is the backend's own (immutable) value.

    Used as a context manager: ``with make_simulator("builtin", agents="idm") as sim: ...``;
    ``close`` releases whatever the backend holds (a server connection, spawned actors).
    """

    name: str
    agent_mode: str  # "log" (non-reactive) or "idm" (reactive), recorded in rollouts

    def reset(self, batch: ScenarioBatch) -> Any:
        """The state at each scenario's ``history_steps`` (ego and agents as logged there)."""
        ...

    def step(self, state: Any, trajectory: Trajectory | None = None) -> Any:
        """Advance one 10 Hz step; a new ``trajectory`` (ego frame now) replaces the tracked
        plan, ``None`` keeps it."""
        ...

    def snapshot(self, state: Any) -> Snapshot:
        """The world in ``state`` (what the driver records and observes from)."""
        ...

    def close(self) -> None:
        """Release the backend's resources; idempotent."""
        ...

    def __enter__(self) -> "Simulator":
        ...

    def __exit__(self, *exc: object) -> None:
        ...


# name -> "module:factory"; the factory takes the backend's settings as keyword arguments.
_BACKENDS: dict[str, str] = {
    "builtin": "closedloop.sim.builtin:BuiltinSimulator",
    "carla": "closedloop.sim.carla_backend:CarlaSimulator",  # settings: scenarios=..., host=..., port=...
}


def register_simulator(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:factory"``, called with the settings) as ``name``."""
    _BACKENDS[name] = target


def simulator_names() -> list[str]:
    return sorted(_BACKENDS)


def make_simulator(name: str = "builtin", **settings: Any) -> Simulator:
    """Build the backend ``name`` with its ``settings`` (for ``builtin``: the fields of
    :class:`SimConfig`). Raises :class:`AvError` for unknown names, settings or values."""
    if name not in _BACKENDS:
        raise AvError(f"unknown simulator {name!r}; choose from {', '.join(simulator_names())}")
    module, attr = _BACKENDS[name].split(":")
    factory: Callable[..., Simulator] = getattr(importlib.import_module(module), attr)
    try:
        return factory(**settings)
    except TypeError as e:
        raise AvError(f"simulator {name!r}: bad settings ({e})") from None
