"""RSS monitor: Responsibility-Sensitive Safety safe distances (Shalev-Shwartz, Shammah, Shashua,
"On a Formal Model of Safe and Scalable Self-driving Cars", 2017, definitions 1, 2 and 6).

Method family: rule-based safe distance. Inputs: the agents' current boxes and their *reported*
velocities (``agents`` x, y, yaw, vx, vy at "now"), ``agent_valid``, ``agent_sizes``, the ego's
current velocity (``ego_history``), ``ego_dims`` and the plan.

Along the first ``horizon_s`` of the plan (agents extrapolated at constant velocity) it measures,
in the observation's ego frame (x along the lane the ego drives now, y left), the longitudinal and
lateral gaps between the footprints. A situation is *dangerous* where both are below the RSS
minimum safe distances. The plan is vetoed where, in a dangerous situation, it accelerates above
``response_accel`` (RSS's proper response forbids it), moves the ego laterally towards the agent,
or the footprints overlap. ``response_accel = -a_brake_min`` gives RSS's strict proper response.

Diversity: this is deliberately *not* the evaluator's box-overlap/TTC check (collision monitors
SR-COL-01 and SR-COL-02 form an ASIL decomposition, DEC-01); it shares nothing with
:mod:`safety.monitors.ttc` but ``av.observation`` and ``torch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from av.monitor import Verdict
from av.observation import Observation, Trajectory


@dataclass(frozen=True)
class RssParams:
    """RSS parameters (SI units): response time ``rho`` (s), longitudinal ``a_accel_max``,
    ``a_brake_min``, ``a_brake_max``, lateral ``lat_accel_max``, ``lat_brake_min`` (m/s^2) and
    the lateral fluctuation margin ``mu`` (m)."""

    rho: float = 1.0
    a_accel_max: float = 3.5
    a_brake_min: float = 4.0
    a_brake_max: float = 8.0
    lat_accel_max: float = 0.2
    lat_brake_min: float = 0.8
    mu: float = 0.1


def longitudinal_same_direction(v_rear: Tensor, v_front: Tensor, p: RssParams = RssParams()) -> Tensor:
    """RSS definition 1: minimal safe gap (m) between a rear car at ``v_rear`` and a front car at
    ``v_front`` (m/s, >= 0) driving the same way; any broadcastable shapes.

    ``[v_r rho + a_acc rho^2 / 2 + (v_r + rho a_acc)^2 / (2 a_brake_min) - v_f^2 / (2 a_brake_max)]_+``
    """
    v_r_rho = v_rear + p.rho * p.a_accel_max
    d = (v_rear * p.rho + 0.5 * p.a_accel_max * p.rho**2 + v_r_rho**2 / (2 * p.a_brake_min)
         - v_front**2 / (2 * p.a_brake_max))
    return d.clamp_min(0.0)


def longitudinal_opposite_direction(v_1: Tensor, v_2: Tensor, p: RssParams = RssParams()) -> Tensor:
    """RSS definition 2: minimal safe gap (m) between two cars driving towards each other at speeds
    ``v_1``, ``v_2`` (m/s, >= 0); both brake at least ``a_brake_min`` after ``rho`` (the paper's
    separate a_brake,min,correct is taken equal to a_brake,min).

    ``(v_1 + v_1,rho) rho / 2 + v_1,rho^2 / (2 a_brake_min) + (v_2 + v_2,rho) rho / 2 + v_2,rho^2 / (2 a_brake_min)``
    with ``v_i,rho = v_i + rho a_accel_max``.
    """
    v1r, v2r = v_1 + p.rho * p.a_accel_max, v_2 + p.rho * p.a_accel_max
    return ((v_1 + v1r) * p.rho / 2 + v1r**2 / (2 * p.a_brake_min)
            + (v_2 + v2r) * p.rho / 2 + v2r**2 / (2 * p.a_brake_min))


def lateral(v_1: Tensor, v_2: Tensor, p: RssParams = RssParams()) -> Tensor:
    """RSS definition 6: minimal safe lateral gap (m) between car 1 on the left and car 2 on the
    right; ``v_1``, ``v_2`` their lateral velocities (m/s), positive towards the right.

    ``mu + [(v_1 + v_1,rho) rho / 2 + v_1,rho^2 / (2 a_lat_brake_min)
    - ((v_2 + v_2,rho) rho / 2 - v_2,rho^2 / (2 a_lat_brake_min))]_+`` with
    ``v_1,rho = v_1 + rho a_lat_accel_max``, ``v_2,rho = v_2 - rho a_lat_accel_max``.
    """
    v1r, v2r = v_1 + p.rho * p.lat_accel_max, v_2 - p.rho * p.lat_accel_max
    d = ((v_1 + v1r) * p.rho / 2 + v1r**2 / (2 * p.lat_brake_min)
         - ((v_2 + v2r) * p.rho / 2 - v2r**2 / (2 * p.lat_brake_min)))
    return p.mu + d.clamp_min(0.0)


@dataclass
class RssMonitor:
    """Veto plans that keep or make an RSS-dangerous situation unsafe (module docstring).

    ``horizon_s`` (s) of the plan checked; ``response_accel`` (m/s^2) the highest acceleration
    allowed in a dangerous situation; ``lateral_tolerance`` (m/s) of lateral motion towards an
    agent that still counts as none.
    """

    params: RssParams = RssParams()
    horizon_s: float = 3.0
    response_accel: float = 0.0
    lateral_tolerance: float = 0.1

    name: ClassVar[str] = "rss"
    inputs: ClassVar[tuple[str, ...]] = ("agents.pose", "agents.velocity", "agent_valid", "agent_sizes",
                                         "ego_history.velocity", "ego_dims", "trajectory")
    method: ClassVar[str] = "rule-based safe distance (RSS)"
    requirements: ClassVar[tuple[str, ...]] = ("SR-COL-01",)

    def dangerous(self, observation: Observation, trajectory: Trajectory) -> dict[str, Tensor]:
        """Per plan step ``k = 0..K`` (0 = now) and agent: ``danger`` bool ``[B, K+1, N]``,
        ``overlap`` bool ``[B, K+1, N]``, ``lon_gap``, ``lat_gap``, ``lon_min``, ``lat_min``
        ``[B, K+1, N]`` (m), ``side`` ``[B, K+1, N]`` (+1 agent on the left, -1 right), the ego's ``accel`` ``[B, K+1]`` (m/s^2) and lateral velocity
        ``ego_vy`` ``[B, K+1]`` (m/s)."""
        p = self.params
        dt = trajectory.dt
        K = max(1, min(trajectory.poses.shape[1], int(round(self.horizon_s / dt))))
        poses = trajectory.poses[:, :K].to(observation.ego_history.dtype)
        B = poses.shape[0]
        now = observation.ego_history[:, -1]
        start = torch.zeros(B, 1, 3, dtype=poses.dtype, device=poses.device)
        ego = torch.cat([start, poses], 1)  # [B, K+1, 3] rear axle
        vel = torch.cat([now[:, None, 3:5], (ego[:, 1:, :2] - ego[:, :-1, :2]) / dt], 1)  # [B, K+1, 2]
        speed = vel.norm(dim=-1)
        accel = torch.cat([(speed[:, 1:2] - speed[:, :1]) / (0.5 * dt), (speed[:, 2:] - speed[:, 1:-1]) / dt], 1)
        accel = torch.cat([accel[:, :1], accel], 1)  # [B, K+1]
        length, width, rac = observation.ego_dims[:, 0], observation.ego_dims[:, 1], observation.ego_dims[:, 3]
        yaw = ego[..., 2]
        centre = ego[..., :2] + rac[:, None, None] * torch.stack([yaw.cos(), yaw.sin()], -1)
        e_lon = (0.5 * length[:, None] * yaw.cos()).abs() + (0.5 * width[:, None] * yaw.sin()).abs()  # [B, K+1]
        e_lat = (0.5 * length[:, None] * yaw.sin()).abs() + (0.5 * width[:, None] * yaw.cos()).abs()

        a = observation.agents[:, :, -1]  # [B, N, 5]
        valid = observation.agent_valid[:, :, -1]
        t = torch.arange(K + 1, dtype=poses.dtype, device=poses.device) * dt
        a_xy = a[:, None, :, :2] + t[None, :, None, None] * a[:, None, :, 3:5]  # [B, K+1, N, 2]
        d = a_xy - centre[:, :, None]  # [B, K+1, N, 2]
        a_yaw = a[..., 2][:, None]  # [B, 1, N]
        al, aw = 0.5 * observation.agent_sizes[..., 0][:, None], 0.5 * observation.agent_sizes[..., 1][:, None]
        a_lon = (al * a_yaw.cos()).abs() + (aw * a_yaw.sin()).abs()
        a_lat = (al * a_yaw.sin()).abs() + (aw * a_yaw.cos()).abs()
        lon_gap = d[..., 0].abs() - e_lon[..., None] - a_lon
        lat_gap = d[..., 1].abs() - e_lat[..., None] - a_lat

        v_e = vel[..., 0].clamp_min(0.0)[..., None]  # [B, K+1, 1] ego forward speed
        u_lon = a[:, None, :, 3]  # [B, 1, N]
        same = a_yaw.cos() >= 0
        ahead = (d[..., 0] > 0) | (lon_gap < 0)
        lon_min = torch.where(same, longitudinal_same_direction(v_e, u_lon.clamp_min(0.0), p),
                              longitudinal_opposite_direction(v_e, (-u_lon).clamp_min(0.0), p))
        # lateral: the agent left of the ego (d_y > 0) is car 1; velocities positive to the right (-y)
        ego_vy = vel[..., 1]
        u_lat = a[:, None, :, 4]
        left = d[..., 1] > 0
        v1 = torch.where(left, -u_lat, -ego_vy[..., None])
        v2 = torch.where(left, -ego_vy[..., None], -u_lat)
        lat_min = lateral(v1, v2, p)
        mask = valid[:, None]
        danger = mask & ahead & (lon_gap < lon_min) & (lat_gap < lat_min)
        overlap = mask & (lon_gap < 0) & (lat_gap < 0)
        return {"danger": danger, "overlap": overlap, "side": torch.where(left, 1.0, -1.0).to(d.dtype), "lon_gap": lon_gap, "lat_gap": lat_gap,
                "lon_min": lon_min.expand_as(lon_gap), "lat_min": lat_min, "accel": accel, "ego_vy": ego_vy}

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        """Veto ``[B]`` where a dangerous step (1..K) is met without the proper response."""
        r = self.dangerous(observation, trajectory)
        towards = r["side"] * r["ego_vy"][..., None] > self.lateral_tolerance
        bad = r["danger"] & ((r["accel"][..., None] > self.response_accel) | towards | r["overlap"])
        bad = bad[:, 1:]  # [B, K, N]
        veto = bad.flatten(1).any(1)
        first = torch.where(bad.any(2), torch.arange(1, bad.shape[1] + 1, device=bad.device), bad.shape[1] + 1).amin(1)
        reasons = []
        for b in range(veto.shape[0]):
            if not veto[b]:
                reasons.append("")
                continue
            k = int(first[b])
            n = int(bad[b, k - 1].nonzero()[0, 0])
            why = ("footprints overlap" if r["overlap"][b, k, n] else
                   f"accelerating {float(r['accel'][b, k]):.1f} m/s^2" if r["accel"][b, k] > self.response_accel else
                   "moving towards it laterally")
            reasons.append(f"RSS-dangerous to agent {n} at t = {k * trajectory.dt:.1f} s (longitudinal gap "
                           f"{float(r['lon_gap'][b, k, n]):.1f} m < {float(r['lon_min'][b, k, n]):.1f} m, lateral "
                           f"{float(r['lat_gap'][b, k, n]):.1f} m < {float(r['lat_min'][b, k, n]):.1f} m) while {why}")
        return Verdict(veto, tuple(reasons))
