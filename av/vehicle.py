"""The vehicle: its kinematic bicycle model, the model's physical limits, and where its box is.

One home for these rules: the simulator drives the ego with :func:`bicycle_step`, the PDM-style
planner predicts its proposals with the same step, and the evaluator, planners, runtime monitors
and viewers place the ego's box with :func:`box_centre` / :func:`ego_box`.

Conventions (SI units, batched over any leading dimensions ``[...]``):

* A pose is the REAR AXLE ``(x, y, yaw)`` (m, m, rad); the rear axle moves along the heading.
* ``dims`` ``[..., 4]`` are ``(length, width, wheelbase, rear_axle_to_center)`` (m), as in
  :attr:`av.batch.ScenarioBatch.ego_dims`; the box centre lies ``rear_axle_to_center`` ahead of
  the rear axle along the heading.
* A box is ``(x, y, yaw, length, width)`` with (x, y) its centre (see :mod:`av.geometry`).

Model (``state (x, y, yaw, v, steer, accel)``; inputs a commanded acceleration, realised through
at most ``max_jerk``, and a steering rate): each step drives an exact circular arc of curvature
``tan(steer_mid) / wheelbase`` (``steer_mid`` the mean of the step's start and end steering), so
a constant steering angle traces a circle of radius ``wheelbase / tan(steer)``. The speed never
goes negative (no reversing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from av.geometry import wrap_angle


@dataclass(frozen=True)
class VehicleLimits:
    """Physical limits of the vehicle model: accelerations m/s^2 (``max_decel`` positive), jerk
    m/s^3, front-wheel steering angle rad and steering rate rad/s."""

    max_accel: float = 3.5
    max_decel: float = 8.0
    max_jerk: float = 15.0
    max_steer: float = 0.7
    max_steer_rate: float = 1.0


@dataclass(frozen=True)
class VehicleState:
    """Batched vehicle model state (any batch shape ``[...]``; ``[B]`` in the simulator).

    * ``pose`` ``[..., 3]``: rear axle (x, y, yaw).
    * ``speed`` ``[...]`` m/s (>= 0 under the bicycle model); ``accel`` ``[...]`` m/s^2 (realised,
      longitudinal); ``steer`` ``[...]`` front-wheel angle, rad.
    * ``yaw_rate`` ``[...]`` rad/s and ``yaw_accel`` ``[...]`` rad/s^2 at this instant.
    """

    pose: Tensor
    speed: Tensor
    accel: Tensor
    steer: Tensor
    yaw_rate: Tensor
    yaw_accel: Tensor

    def state5(self) -> Tensor:
        """``[..., 5]`` (x, y, yaw, vx, vy): the rear axle moves along the heading."""
        yaw = self.pose[..., 2]
        return torch.cat(
            [self.pose, (self.speed * torch.cos(yaw))[..., None], (self.speed * torch.sin(yaw))[..., None]], -1
        )

    def body_accel(self) -> Tensor:
        """``[..., 2]`` rear-axle acceleration in the body frame: (longitudinal, lateral = v * yaw rate)."""
        return torch.stack([self.accel, self.speed * self.yaw_rate], -1)


def advance_arc(pose: Tensor, distance: Tensor, curvature: Tensor) -> Tensor:
    """Drive ``distance`` ``[...]`` m along an arc of ``curvature`` ``[...]`` 1/m from ``pose`` ``[..., 3]``."""
    half = 0.5 * distance * curvature
    chord = distance * torch.sinc(half / math.pi)  # 2 sin(h) / k, stable as k -> 0
    heading = pose[..., 2] + half
    return torch.stack(
        [pose[..., 0] + chord * torch.cos(heading), pose[..., 1] + chord * torch.sin(heading),
         wrap_angle(pose[..., 2] + 2.0 * half)], -1
    )


def bicycle_step(
    s: VehicleState, accel_cmd: Tensor, steer_rate_cmd: Tensor, wheelbase: Tensor, limits: VehicleLimits, dt: float
) -> VehicleState:
    """One ``dt`` (s) step of the kinematic bicycle; every limit of ``limits`` is enforced.

    ``accel_cmd`` (m/s^2), ``steer_rate_cmd`` (rad/s) ``[...]`` like ``s.speed``; ``wheelbase``
    (m) broadcastable to them. At a standstill a braking command realises zero acceleration.
    """
    want = accel_cmd.clamp(-limits.max_decel, limits.max_accel)
    jerk_step = limits.max_jerk * dt
    accel = s.accel + (want - s.accel).clamp(-jerk_step, jerk_step)
    accel = accel.clamp(-limits.max_decel, limits.max_accel)
    rate = steer_rate_cmd.clamp(-limits.max_steer_rate, limits.max_steer_rate)
    steer = (s.steer + rate * dt).clamp(-limits.max_steer, limits.max_steer)
    v_end = s.speed + accel * dt
    stops = v_end < 0
    # Distance of a constant-acceleration step; a step that would reverse stops where v = 0.
    distance = torch.where(
        stops, s.speed.square() / (2.0 * (-accel).clamp_min(1e-6)), 0.5 * (s.speed + v_end) * dt
    )
    v_end = v_end.clamp_min(0.0)
    accel = torch.where(stops | ((v_end <= 0) & (accel < 0)), torch.zeros_like(accel), accel)
    pose = advance_arc(s.pose, distance, torch.tan(0.5 * (s.steer + steer)) / wheelbase)
    yaw_rate = v_end * torch.tan(steer) / wheelbase
    return VehicleState(pose, v_end, accel, steer, yaw_rate, (yaw_rate - s.yaw_rate) / dt)


def steer_for(curvature: Tensor, wheelbase: Tensor) -> Tensor:
    """Front-wheel angle (rad) ``[...]`` that drives ``curvature`` (1/m) ``[...]`` with ``wheelbase`` (m)."""
    return torch.atan(wheelbase * curvature)


def box_centre(pose: Tensor, rear_axle_to_center: Tensor) -> Tensor:
    """Box centre ``[..., 2]`` of rear-axle poses ``[..., 3]``; ``rear_axle_to_center`` ``[...]`` m
    (broadcastable to ``pose[..., 0]``): the one rear-axle -> centre conversion."""
    yaw = pose[..., 2]
    return pose[..., :2] + rear_axle_to_center[..., None] * torch.stack([torch.cos(yaw), torch.sin(yaw)], -1)


def ego_box(pose: Tensor, dims: Tensor) -> Tensor:
    """Boxes ``[..., 5]`` (centre x, y, yaw, length, width) of rear-axle poses ``[..., 3]``.

    ``dims`` ``[..., 4]`` (length, width, wheelbase, rear_axle_to_center), broadcastable to the
    poses' leading dimensions (e.g. ``[B, 1, 1, 4]`` for poses ``[B, K, S, 3]``).
    """
    shape = pose.shape[:-1]
    dims = dims.expand(*shape, 4)
    return torch.cat([box_centre(pose, dims[..., 3]), pose[..., 2:3], dims[..., :2]], -1)


def front_overhang(dims: Tensor) -> Tensor:
    """Distance ``[...]`` (m) from the rear axle to the front bumper of vehicles ``dims`` ``[..., 4]``."""
    return dims[..., 3] + 0.5 * dims[..., 0]
