"""The Intelligent Driver Model (Treiber, Hennecke, Helbing 2000): the one car-following law.

IDM's acceleration is a free-road term minus ``a (s* / s)^2``, with ``s`` the bumper-to-bumper
gap to the leader and the desired gap

    ``s* = s0 + max(0, v T + v (v - v_lead) / (2 sqrt(a b)))``

(``a`` maximum acceleration, ``b`` comfortable deceleration, ``s0`` standstill gap, ``T`` time
headway). Every car follower of the project uses these functions, each with its own NAMED
parameter set, because they model different drivers:

* the ego's IDM and PDM-style planners: :class:`closedloop.planners.common.IDMParams` (with the
  free-road term :func:`free_road` and route-speed limits);
* the simulator's reactive background agents: :class:`closedloop.sim.agents.IDMParams` (their
  free road is their logged speed profile);
* the synthetic-traffic generator: ``av.data.synth_traffic.STYLES`` per actor kind (per-actor
  values, so the parameters may be tensors).

All functions are elementwise and broadcast over any leading dimensions ``[...]``; speeds m/s,
gaps m, accelerations m/s^2. Parameters are floats or tensors broadcastable to the speeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Union

import torch
from torch import Tensor

Value = Union[float, Tensor]


class IDMParameters(Protocol):
    """What the law needs: ``accel`` a (m/s^2), ``decel`` b (m/s^2), ``min_gap`` s0 (m),
    ``headway`` T (s). Any object with these attributes (a parameter dataclass) will do."""

    @property
    def accel(self) -> Value: ...

    @property
    def decel(self) -> Value: ...

    @property
    def min_gap(self) -> Value: ...

    @property
    def headway(self) -> Value: ...


@dataclass(frozen=True)
class PerAgent:
    """IDM parameters with one value per agent, tensors ``[A]`` (units of :class:`IDMParameters`),
    for models whose agents each drive with their own set (synthetic traffic's actor kinds)."""

    accel: Tensor
    decel: Tensor
    min_gap: Tensor
    headway: Tensor


def _root(params: IDMParameters) -> Value:
    """``2 sqrt(a b)`` (m/s^2)."""
    ab = params.accel * params.decel
    return 2.0 * (torch.sqrt(ab) if isinstance(ab, Tensor) else math.sqrt(ab))


def desired_gap(speed: Tensor, lead_speed: Tensor | float, params: IDMParameters) -> Tensor:
    """IDM's desired gap ``s*`` ``[...]`` (m) at ``speed`` behind a leader at ``lead_speed`` (m/s).

    The ``max(0, ...)`` is a ``relu`` (no Max operator), so that the student network's
    car-following prior (:mod:`av.nets.route_frame`) exports to ONNX float16 with it."""
    return params.min_gap + torch.relu(speed * params.headway + speed * (speed - lead_speed) / _root(params))


def interaction(speed: Tensor, lead_speed: Tensor | float, gap: Tensor, params: IDMParameters) -> Tensor:
    """IDM's interaction ``(s* / gap)^2`` ``[...]`` (dimensionless; times ``a`` it is the braking).

    ``gap`` ``[...]`` (m) must be positive; each model floors it at its own small distance.
    """
    return (desired_gap(speed, lead_speed, params) / gap) ** 2


def free_road(speed: Tensor, desired_speed: Tensor, params: IDMParameters, exponent: float = 4.0) -> Tensor:
    """Free-road acceleration (m/s^2) ``[...]`` at ``speed`` towards ``desired_speed`` (m/s).

    Below the desired speed ``v0`` it is IDM's ``a (1 - (v / v0)^delta)``; above it the
    "improved IDM" branch ``-b (1 - (v0 / v)^(a delta / b))`` slows down at most at the
    comfortable deceleration b, so a lower desired speed (a curve ahead, a stop with ``v0 = 0``)
    never brakes harshly.
    """
    a, b = params.accel, params.decel
    below = a * (1.0 - (speed / desired_speed.clamp_min(1e-3)).clamp_max(1.0) ** exponent)
    above = -b * (1.0 - (desired_speed / speed.clamp_min(1e-3)).clamp_max(1.0) ** (a * exponent / b))
    stopping = torch.where(speed > 0, -b, 0.0)  # v0 = 0: brake at b, then stand still
    return torch.where(desired_speed <= 1e-3, stopping, torch.where(speed <= desired_speed, below, above))
