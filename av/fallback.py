"""The safe fallback plan: a comfortable stop along the route.

When a runtime monitor vetoes a plan, the model's output is not finite or the planning call
overran its deadline, the car drives this plan instead (in the vehicle runtime,
:mod:`av.runtime`, and in the closed-loop driver alike). It needs nothing but the
:class:`~av.observation.Observation`, so it cannot fail the way a learned planner can.

The ego keeps its lateral offset from the route centreline and brakes from its current
acceleration towards ``decel`` at no more than ``jerk``, easing off as it comes to rest. Where the
observation has no usable route (fewer than two valid, finite points) it stops straight ahead;
a non-finite speed or acceleration counts as zero.
Batched over ``B`` problems; the only Python loop is over the ``H`` plan steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from av.geometry import wrap_angle
from av.observation import Observation, Privileged, Trajectory

#: Default braking of the fallback (m/s^2, positive) and its onset jerk limit (m/s^3): well
#: inside the comfort bounds of :data:`av.checks.COMFORT_BOUNDS`.
COMFORT_DECEL = 2.5
COMFORT_JERK = 2.0


def stop_profile(speed: Tensor, accel: Tensor, horizon_steps: int, dt: float,
                 decel: float = COMFORT_DECEL, jerk: float = COMFORT_JERK) -> Tensor:
    """Distance travelled ``[B, H]`` (m) at ``dt, 2 dt, ..., H dt`` s by a vehicle at ``speed``
    ``[B]`` (m/s, clamped >= 0) and ``accel`` ``[B]`` (m/s^2) that brakes to a stop: its
    acceleration moves at ``jerk`` at most towards ``-decel``, and eases off towards zero as it
    comes to rest (``|a| <= sqrt(jerk v)``); it never reverses. One loop over the ``H`` steps."""
    v = speed.clamp_min(0.0)
    a = accel
    s = torch.zeros_like(v)
    out = []
    for _ in range(horizon_steps):
        target = -torch.minimum(torch.full_like(v, decel), (jerk * v).sqrt())
        a = torch.minimum(torch.maximum(target, a - jerk * dt), a + jerk * dt)
        v_next = (v + a * dt).clamp_min(0.0)
        s = s + 0.5 * (v + v_next) * dt
        v = v_next
        out.append(s)
    return torch.stack(out, 1)


def _usable_route(observation: Observation) -> tuple[Tensor, Tensor]:
    """Route points ``[B, R, 2]`` and segment validity ``[B, R-1]``; rows with fewer than two
    valid points get the ego's x axis instead."""
    xy = observation.route[..., :2]
    valid = observation.route_valid & torch.isfinite(xy).all(-1)
    xy = torch.nan_to_num(xy, nan=0.0, posinf=0.0, neginf=0.0)
    B, R = valid.shape
    if R < 2:
        xy = torch.zeros(B, 2, 2, dtype=xy.dtype, device=xy.device)
        valid = torch.zeros(B, 2, dtype=torch.bool, device=xy.device)
        R = 2
    usable = valid.sum(1) >= 2
    axis = torch.zeros_like(xy)
    axis[:, :, 0] = torch.arange(R, dtype=xy.dtype, device=xy.device)
    xy = torch.where(usable[:, None, None], xy, axis)
    valid = torch.where(usable[:, None], valid, torch.arange(R, device=xy.device) < 2)
    return xy, valid[:, :-1] & valid[:, 1:]


def comfortable_stop(observation: Observation, horizon_steps: int = 80, dt: float = 0.1,
                     decel: float = COMFORT_DECEL, jerk: float = COMFORT_JERK) -> Trajectory:
    """Stop comfortably along the route: :class:`Trajectory` ``[B, horizon_steps, 3]`` (ego frame).

    The ego rear axle (the origin) is projected onto the valid route polyline; the plan follows
    the polyline from there, at the ego's lateral offset, over the distances of
    :func:`stop_profile` (current speed and acceleration from ``ego_history``); beyond the last
    valid point the last segment is extended straight.
    """
    obs = observation
    hist = obs.ego_history
    speed = hist[:, -1, 3]
    if hist.shape[1] >= 2:
        accel = (hist[:, -1, 3] - hist[:, -2, 3]) / obs.dt
    else:
        accel = torch.zeros_like(speed)
    # A perception fault must not break the fallback: unknown speed or acceleration counts as 0.
    speed, accel = torch.nan_to_num(speed, 0.0, 0.0, 0.0), torch.nan_to_num(accel, 0.0, 0.0, 0.0)
    s = stop_profile(speed, accel, horizon_steps, dt, decel, jerk)  # [B, H]

    xy, seg_valid = _usable_route(obs)  # [B, R, 2], [B, R-1]
    a, b = xy[:, :-1], xy[:, 1:]
    ab = b - a
    length = torch.where(seg_valid, ab.norm(dim=-1), torch.zeros_like(ab[..., 0]))  # [B, R-1]
    start = torch.cat([torch.zeros_like(length[:, :1]), length.cumsum(1)[:, :-1]], 1)  # [B, R-1]
    # Projection of the origin onto every valid segment; the nearest one wins.
    # The route starts at its point nearest the ego, which can lie up to half a spacing ahead:
    # the first valid segment extends backwards, so the plan starts at the ego, not ahead of it.
    first = seg_valid.long().argmax(1, keepdim=True) == torch.arange(seg_valid.shape[1], device=xy.device)
    t = ((-a * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp_max(1.0)
    t = torch.where(first, t, t.clamp_min(0.0))
    dist = (a + t[..., None] * ab).norm(dim=-1).masked_fill(~seg_valid, float("inf"))
    j = dist.argmin(1, keepdim=True)  # [B, 1]
    s0 = start.gather(1, j) + t.gather(1, j) * length.gather(1, j)  # [B, 1]
    u = ab.gather(1, j[..., None].expand(-1, -1, 2)).squeeze(1)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    pa = a.gather(1, j[..., None].expand(-1, -1, 2)).squeeze(1)
    offset = u[:, 0] * -pa[:, 1] - u[:, 1] * -pa[:, 0]  # [B] signed lateral offset (left +) of the ego

    # Sample the polyline at s0 + s; the last valid segment extends beyond the route's end.
    q = s0 + s  # [B, H]
    last = (seg_valid.long().cumsum(1).argmax(1, keepdim=True))  # [B, 1] index of the last valid segment
    i = (torch.searchsorted(start.contiguous(), q.contiguous(), right=True) - 1).clamp_min(0)
    i = torch.minimum(i, last)
    ai = a.gather(1, i[..., None].expand(-1, -1, 2))
    ui = ab.gather(1, i[..., None].expand(-1, -1, 2))
    li = length.gather(1, i).clamp_min(1e-9)
    ui = ui / li[..., None]
    along = (q - start.gather(1, i))[..., None]
    normal = torch.stack([-ui[..., 1], ui[..., 0]], -1)
    points = ai + along * ui + offset[:, None, None] * normal
    yaw = wrap_angle(torch.atan2(ui[..., 1], ui[..., 0]))
    return Trajectory(poses=torch.cat([points, yaw[..., None]], -1), dt=dt)


@dataclass(frozen=True)
class ComfortableStopPlanner:
    """:func:`comfortable_stop` as a planner (the fallback of the closed-loop driver and of
    :class:`av.runtime.VehiclePlanner`). ``decel`` m/s^2, ``jerk`` m/s^3, ``dt`` s."""

    horizon_steps: int = 80
    dt: float = 0.1
    decel: float = COMFORT_DECEL
    jerk: float = COMFORT_JERK
    name: ClassVar[str] = "comfortable_stop"
    privileged: ClassVar[bool] = False

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        return comfortable_stop(observation, self.horizon_steps, self.dt, self.decel, self.jerk)
