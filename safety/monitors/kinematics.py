"""Kinematic-feasibility monitor: finite differences of the planned poses.

Method family: finite differences of poses. Inputs: the plan (x, y, yaw) and the ego's current
velocity (``ego_history``), so the first step is judged against the speed the car has now.

Speeds are the planned displacement per step along the mean heading (signed, so reversing is
seen), accelerations and jerks their differences; curvature is the yaw change per metre travelled.
The plan is vetoed where any step leaves the limits (defaults: the vehicle's drive/brake limits
as in the simulator, lateral 5 m/s^2, curvature 0.25 1/m, jerk 15 m/s^3). Jerk is not judged across a step
that comes to rest (below ``rest_speed``): stopping ends the braking in one step. A yaw change of more
than ``max_turn_in_place`` rad while moving less than 5 cm is also infeasible.

Sharing: the acceleration and jerk bounds are the evaluator's comfort quantities in spirit but
with vehicle *limits*, not nuPlan's comfort thresholds; when ``av`` gains the shared comfort
check (H1) the finite-difference kernel can be shared, the limits stay here. The steering monitor
(:mod:`safety.monitors.steering`) covers the same hazard with a different method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from av.monitor import Verdict
from av.observation import Observation, Trajectory
from av.vehicle import VehicleLimits

_LIMITS = VehicleLimits()


@dataclass
class KinematicsMonitor:
    """Veto plans outside the longitudinal/lateral/curvature/jerk limits (SI units)."""

    max_accel: float = _LIMITS.max_accel
    max_decel: float = _LIMITS.max_decel
    max_lat_accel: float = 5.0
    max_curvature: float = 0.25
    max_jerk: float = _LIMITS.max_jerk
    max_turn_in_place: float = 0.05
    rest_speed: float = 0.5
    tolerance: float = 1e-3

    name: ClassVar[str] = "kinematics"
    inputs: ClassVar[tuple[str, ...]] = ("ego_history.velocity", "trajectory.xy", "trajectory.yaw")
    method: ClassVar[str] = "finite differences of poses"
    requirements: ClassVar[tuple[str, ...]] = ("SR-KIN-01", "SR-KIN-02")

    def quantities(self, observation: Observation, trajectory: Trajectory) -> dict[str, Tensor]:
        """``speed``, ``accel``, ``lat_accel``, ``curvature`` ``[B, H]`` and ``jerk`` ``[B, H]``
        (0 at the first step and where a step ends or starts below ``rest_speed``: stopping) per
        planned step; ``turn_in_place`` bool ``[B, H]``."""
        dt = trajectory.dt
        poses = trajectory.poses.to(observation.ego_history.dtype)
        ext = torch.cat([torch.zeros_like(poses[:, :1]), poses], 1)
        d = ext[:, 1:, :2] - ext[:, :-1, :2]  # [B, H, 2]
        dyaw = torch.remainder(ext[:, 1:, 2] - ext[:, :-1, 2] + torch.pi, 2 * torch.pi) - torch.pi
        mid = ext[:, :-1, 2] + 0.5 * dyaw
        step = d[..., 0] * mid.cos() + d[..., 1] * mid.sin()  # signed metres per step
        speed = step / dt
        v_now = observation.ego_history[:, -1, 3:5].norm(dim=-1)
        # speed[k] is the mean over (k-1, k]: the first difference spans half a step
        accel = torch.cat([(speed[:, :1] - v_now[:, None]) / (0.5 * dt), (speed[:, 1:] - speed[:, :-1]) / dt], 1)
        jerk = torch.cat([torch.zeros_like(accel[:, :1]), (accel[:, 1:] - accel[:, :-1]) / dt], 1)
        # coming to rest ends the braking in one step: that jerk is the stop itself, not a fault
        rolling = torch.cat([torch.ones_like(speed[:, :1], dtype=torch.bool),
                             (speed[:, 1:].abs() > self.rest_speed) & (speed[:, :-1].abs() > self.rest_speed)], 1)
        jerk = torch.where(rolling, jerk, torch.zeros_like(jerk))
        moving = step.abs() > 0.05
        curvature = torch.where(moving, dyaw / step.abs().clamp_min(1e-6), torch.zeros_like(dyaw))
        return {"speed": speed, "accel": accel, "jerk": jerk, "curvature": curvature,
                "lat_accel": speed**2 * curvature, "turn_in_place": ~moving & (dyaw.abs() > self.max_turn_in_place)}

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        q = self.quantities(observation, trajectory)
        tol = self.tolerance
        checks = (
            ("non-finite plan", ~torch.isfinite(trajectory.poses).all(-1), None, None),
            ("acceleration", q["accel"] > self.max_accel + tol, q["accel"], f"> {self.max_accel}"),
            ("deceleration", q["accel"] < -self.max_decel - tol, q["accel"], f"< -{self.max_decel}"),
            ("lateral acceleration", q["lat_accel"].abs() > self.max_lat_accel + tol, q["lat_accel"], f"beyond ±{self.max_lat_accel}"),
            ("curvature", q["curvature"].abs() > self.max_curvature + tol, q["curvature"], f"beyond ±{self.max_curvature}"),
            ("jerk", q["jerk"].abs() > self.max_jerk + tol, q["jerk"], f"beyond ±{self.max_jerk}"),
            ("turn in place", q["turn_in_place"], None, None),
        )
        veto = torch.zeros(trajectory.poses.shape[0], dtype=torch.bool, device=trajectory.poses.device)
        for _, bad, _, _ in checks:
            veto |= bad.any(1)
        reasons = []
        for b in range(veto.shape[0]):
            why = ""
            if veto[b]:
                for label, bad, value, limit in checks:
                    if bad[b].any():
                        k = int(bad[b].nonzero()[0, 0])
                        val = "" if value is None else f" {float(value[b, k]):.2f} {limit}"
                        why = f"infeasible plan: {label}{val} at t = {(k + 1) * trajectory.dt:.1f} s"
                        break
            reasons.append(why)
        return Verdict(veto, tuple(reasons))
