"""Drivable-area monitor: boundary-crossing parity of the footprint corners.

Method family: geometric boundary crossing. Inputs: ``drivable_edges`` / ``drivable_edge_valid``
(the drivable-area polygon edges near the ego), ``ego_dims`` and the plan.

Each corner of the ego footprint moves along a polyline through the planned poses (now, then
``dt, 2 dt, ...`` up to ``horizon_s``). Every proper crossing of a drivable-area edge flips the
corner between inside and outside; the plan is vetoed at the first step where a corner has
crossed an odd number of times, i.e. has left the area it started in. Counting crossings, unlike
a point-in-polygon test, stays correct when the observation holds only the nearest edges of a
ring. (A corner already outside at "now" cannot be judged by parity; the evaluator's drivable-area
metric and :mod:`safety.monitors.lanes` cover that case.)

Diversity: deliberately different from the evaluator's drivable-area compliance (distance of the
footprint to the area, point-in-ring) and from the lane-keeping monitor, which reads the lane
centrelines instead of these edges (ASIL decomposition DEC-02).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from av.monitor import Verdict
from av.observation import Observation, Trajectory


def _cross(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return ax * by - ay * bx


def segments_cross(p0: Tensor, p1: Tensor, q0: Tensor, q1: Tensor) -> Tensor:
    """Proper intersection (touching excluded) of segments ``p0-p1`` and ``q0-q1`` ``[..., 2]``
    (broadcastable); bool ``[...]``."""
    rx, ry = p1[..., 0] - p0[..., 0], p1[..., 1] - p0[..., 1]
    sx, sy = q1[..., 0] - q0[..., 0], q1[..., 1] - q0[..., 1]
    d1 = _cross(sx, sy, p0[..., 0] - q0[..., 0], p0[..., 1] - q0[..., 1])
    d2 = _cross(sx, sy, p1[..., 0] - q0[..., 0], p1[..., 1] - q0[..., 1])
    d3 = _cross(rx, ry, q0[..., 0] - p0[..., 0], q0[..., 1] - p0[..., 1])
    d4 = _cross(rx, ry, q1[..., 0] - p0[..., 0], q1[..., 1] - p0[..., 1])
    return (d1 * d2 < 0) & (d3 * d4 < 0)


@dataclass
class DrivableAreaMonitor:
    """Veto plans whose footprint corners leave the drivable area within ``horizon_s`` (s)."""

    horizon_s: float = 3.0

    name: ClassVar[str] = "drivable_area"
    inputs: ClassVar[tuple[str, ...]] = ("drivable_edges", "ego_dims", "trajectory")
    method: ClassVar[str] = "geometric boundary crossing (parity)"
    requirements: ClassVar[tuple[str, ...]] = ("SR-DA-01",)

    def corners(self, observation: Observation, trajectory: Trajectory) -> Tensor:
        """Footprint corners ``[B, K+1, 4, 2]`` at now and the planned steps ``1..K``."""
        K = max(1, min(trajectory.poses.shape[1], int(round(self.horizon_s / trajectory.dt))))
        poses = trajectory.poses[:, :K].to(observation.drivable_edges.dtype)
        ego = torch.cat([torch.zeros_like(poses[:, :1]), poses], 1)  # [B, K+1, 3]
        length, width, rac = (observation.ego_dims[:, i, None, None] for i in (0, 1, 3))
        c, s = ego[..., 2].cos()[..., None], ego[..., 2].sin()[..., None]  # [B, K+1, 1]
        lon = torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=ego.dtype, device=ego.device) * length + rac  # [B,1,4]
        lat = torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=ego.dtype, device=ego.device) * width
        x = ego[..., :1] + c * lon - s * lat
        y = ego[..., 1:2] + s * lon + c * lat
        return torch.stack([x, y], -1)

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        corners = self.corners(observation, trajectory)  # [B, K+1, 4, 2]
        edges, ok = observation.drivable_edges, observation.drivable_edge_valid  # [B, E, 4], [B, E]
        p0, p1 = corners[:, :-1, :, None], corners[:, 1:, :, None]  # [B, K, 4, 1, 2]
        q0, q1 = edges[:, None, None, :, :2], edges[:, None, None, :, 2:]  # [B, 1, 1, E, 2]
        hits = (segments_cross(p0, p1, q0, q1) & ok[:, None, None]).sum(-1)  # [B, K, 4]
        outside = (hits.cumsum(1) % 2) == 1
        veto = outside.flatten(1).any(1)
        reasons = []
        for b in range(veto.shape[0]):
            if not veto[b]:
                reasons.append("")
                continue
            k, corner = (int(i) for i in outside[b].nonzero()[0])
            name = ("front-left", "front-right", "rear-right", "rear-left")[corner]
            reasons.append(f"leaves the drivable area at t = {(k + 1) * trajectory.dt:.1f} s ({name} corner "
                           "crosses the boundary)")
        return Verdict(veto, tuple(reasons))
