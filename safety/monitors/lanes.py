"""Lane-keeping monitor: distance of the axle centres to the nearest lane centreline.

Method family: nearest-centreline distance. Inputs: ``lanes`` / ``lane_valid`` (the perceived
lane centrelines), ``ego_dims`` (wheelbase) and the plan.

At every planned step up to ``horizon_s`` the rear- and front-axle centres must lie within
``max_offset`` (m) of some valid lane centreline segment (half a 3.5 m lane plus a margin for
lane changes). Without any perceived lane the plan cannot be checked and is vetoed
(``veto_without_lanes``).

Diversity: reads the lane layer, not the drivable-area edges of
:mod:`safety.monitors.drivable` (ASIL decomposition DEC-02); the evaluator's lane queries
(driving direction, progress) should stay separate from this deliberately simple check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from av.monitor import Verdict
from av.observation import Observation, Trajectory


def distance_to_polylines(points: Tensor, lines: Tensor, valid: Tensor) -> Tensor:
    """Distance ``[B, M]`` (m) from points ``[B, M, 2]`` to the nearest segment of the valid
    polylines ``[B, L, P, >=2]`` (``valid`` bool ``[B, L]``); ``inf`` without a valid one."""
    a, b = lines[:, :, :-1, :2].flatten(1, 2), lines[:, :, 1:, :2].flatten(1, 2)  # [B, S, 2]
    seg_ok = valid[:, :, None].expand(-1, -1, lines.shape[2] - 1).flatten(1)  # [B, S]
    ab = (b - a)[:, None]  # [B, 1, S, 2]
    ap = points[:, :, None] - a[:, None]  # [B, M, S, 2]
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    d = (ap - t[..., None] * ab).norm(dim=-1)
    d = torch.where(seg_ok[:, None], d, torch.full_like(d, math.inf))
    return d.amin(-1) if d.shape[-1] else torch.full(d.shape[:-1], math.inf, dtype=d.dtype)


@dataclass
class LaneKeepingMonitor:
    """Veto plans whose axle centres leave every lane by more than ``max_offset`` (m) within
    ``horizon_s`` (s)."""

    max_offset: float = 2.5
    horizon_s: float = 3.0
    veto_without_lanes: bool = True

    name: ClassVar[str] = "lane_keeping"
    inputs: ClassVar[tuple[str, ...]] = ("lanes", "ego_dims", "trajectory")
    method: ClassVar[str] = "nearest-centreline distance"
    requirements: ClassVar[tuple[str, ...]] = ("SR-DA-02",)

    def offsets(self, observation: Observation, trajectory: Trajectory) -> Tensor:
        """Distance ``[B, K, 2]`` (m) of the rear and front axle centres to the nearest lane."""
        K = max(1, min(trajectory.poses.shape[1], int(round(self.horizon_s / trajectory.dt))))
        poses = trajectory.poses[:, :K].to(observation.lanes.dtype)
        wb = observation.ego_dims[:, 2, None, None]
        front = poses[..., :2] + wb * torch.stack([poses[..., 2].cos(), poses[..., 2].sin()], -1)
        pts = torch.stack([poses[..., :2], front], 2).flatten(1, 2)  # [B, 2K, 2]
        return distance_to_polylines(pts, observation.lanes, observation.lane_valid).view(-1, K, 2)

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        off = self.offsets(observation, trajectory)
        far = off > self.max_offset
        none = ~observation.lane_valid.any(1)
        veto = far.flatten(1).any(1) & (~none | torch.tensor(self.veto_without_lanes))
        reasons = []
        for b in range(veto.shape[0]):
            if not veto[b]:
                reasons.append("")
            elif none[b]:
                reasons.append("no lane perceived: lane keeping cannot be checked")
            else:
                k, which = (int(i) for i in far[b].nonzero()[0])
                reasons.append(f"{('rear', 'front')[which]} axle {float(off[b, k, which]):.1f} m from the nearest lane "
                               f"centreline (> {self.max_offset} m) at t = {(k + 1) * trajectory.dt:.1f} s")
        return Verdict(veto, tuple(reasons))
