"""What a planner sees (:class:`Observation`), what only a privileged planner may add
(:class:`Privileged`), and what every planner returns (:class:`Trajectory`).

All ``Observation`` tensors are in the *ego frame at plan time*: origin at the ego rear axle,
x forward, y left, yaw relative to the ego heading. ``B`` is the batch, ``H`` history steps
(oldest first, the last one is "now"), ``N`` agents, ``L`` lanes, ``P`` points per lane,
``R`` route points, ``E`` drivable-area edges. SI units throughout.

The student and every exported model only ever receive an ``Observation``; the teacher and the
log-replay reference may also receive a ``Privileged`` value. Keeping them as separate types is
how the code base keeps privileged information out of what the car can run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from av.errors import AvError
from av.geometry import from_frame, wrap_angle


@dataclass(frozen=True)
class Observation:
    """Car-visible inputs for ``B`` planning problems, ego frame at plan time.

    * ``ego_history`` ``[B, H, 5]``: ego rear-axle states (x, y, yaw, vx, vy); the last row is
      the current state, ``(0, 0, 0, v, 0)`` up to the lateral velocity.
    * ``ego_dims`` ``[B, 4]``: length, width, wheelbase, rear-axle-to-centre (m).
    * ``agents`` ``[B, N, H, 5]`` box-centre states of perceived agents; ``agent_valid`` bool
      ``[B, N, H]``; ``agent_types`` long ``[B, N]`` (-1 padding); ``agent_sizes`` ``[B, N, 2]``.
    * ``lanes`` ``[B, L, P, 3]`` nearby lane centrelines (x, y, heading), each resampled to ``P``
      points; ``lane_valid`` bool ``[B, L]``; ``lane_speed_limit`` ``[B, L]`` m/s (NaN unknown);
      ``lane_on_route`` bool ``[B, L]``.
    * ``route`` ``[B, R, 3]`` the route centreline ahead (x, y, heading) at ``route_spacing`` m;
      ``route_valid`` bool ``[B, R]``.
    * ``drivable_edges`` ``[B, E, 4]`` nearby drivable-area boundary segments (x0, y0, x1, y1),
      ``drivable_edge_valid`` bool ``[B, E]``.
    * ``pose`` ``[B, 3]`` the ego's map pose (x, y, yaw) from localisation, to place plans.
    * ``dt`` history step (s); ``route_spacing`` (m).
    """

    ego_history: Tensor
    ego_dims: Tensor
    agents: Tensor
    agent_valid: Tensor
    agent_types: Tensor
    agent_sizes: Tensor
    lanes: Tensor
    lane_valid: Tensor
    lane_speed_limit: Tensor
    lane_on_route: Tensor
    route: Tensor
    route_valid: Tensor
    drivable_edges: Tensor
    drivable_edge_valid: Tensor
    pose: Tensor
    dt: float
    route_spacing: float

    @property
    def batch_size(self) -> int:
        return int(self.ego_history.shape[0])

    @property
    def speed(self) -> Tensor:
        """Current ego speed ``[B]`` m/s."""
        return self.ego_history[:, -1, 3:5].norm(dim=-1)


@dataclass(frozen=True)
class Privileged:
    """Ground truth a privileged planner (log replay, teacher) may use; never the student.

    * ``ego_future`` ``[B, F, 5]``: the logged ego states after now, ego frame at plan time;
      ``ego_future_valid`` bool ``[B, F]``.
    * ``agents_future`` ``[B, N, F, 5]``: logged agent states after now (same agent order as
      the observation); ``agents_future_valid`` bool ``[B, N, F]``.
    """

    ego_future: Tensor
    ego_future_valid: Tensor
    agents_future: Tensor
    agents_future_valid: Tensor


@dataclass(frozen=True)
class Trajectory:
    """Planned ego rear-axle poses ``[B, H, 3]`` (x, y, yaw) in the ego frame at plan time,
    at times ``dt, 2 dt, ..., H dt`` seconds after now."""

    poses: Tensor
    dt: float

    @property
    def horizon_s(self) -> float:
        return float(self.poses.shape[1]) * self.dt

    def resampled(self, dt: float) -> Tensor:
        """Poses ``[B, H', 3]`` at ``dt, 2 dt, ...`` (linear in time; the plan's origin, the ego at
        plan time, is the pose at time 0). Unchanged when ``self.dt == dt``."""
        poses = self.poses
        if abs(self.dt - dt) < 1e-9:
            return poses
        H = poses.shape[1]
        full = torch.cat([torch.zeros_like(poses[:, :1]), poses], 1)  # times 0, self.dt, ...
        count = int(math.floor(H * self.dt / dt + 1e-9))
        if count < 1:
            raise AvError(f"planner trajectory of {H} x {self.dt} s is shorter than one {dt} s step")
        pos = torch.arange(1, count + 1, dtype=poses.dtype, device=poses.device) * (dt / self.dt)
        i = pos.floor().long().clamp_max(H - 1)
        frac = (pos - i).to(poses.dtype)[None, :]
        a, b = full[:, i], full[:, i + 1]
        xy = a[..., :2] + frac[..., None] * (b[..., :2] - a[..., :2])
        yaw = wrap_angle(a[..., 2] + frac * wrap_angle(b[..., 2] - a[..., 2]))
        return torch.cat([xy, yaw[..., None]], -1)

    def in_world(self, pose: Tensor, dt: float) -> Tensor:
        """The plan resampled at ``dt`` (:meth:`resampled`) in the frame ``pose`` ``[B, 3]`` (the
        ego's pose at plan time) is given in: ``[B, H', 3]``."""
        poses = self.resampled(dt).to(pose)
        p = pose[:, None, :]
        return torch.cat([from_frame(poses[..., :2], p), wrap_angle(poses[..., 2:] + p[..., 2:])], -1)
