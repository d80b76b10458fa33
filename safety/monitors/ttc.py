"""Time-to-collision monitor: kinematic prediction of disc-covered footprints.

Method family: kinematic prediction (time to contact at constant velocity). Inputs: the agents'
*position history* (their velocity is estimated here from the last two positions, not read from
the reported velocity channel the RSS monitor uses), ``agent_valid``, ``agent_sizes``,
``ego_dims`` and the plan.

Every footprint (ego and agents) is covered by three discs along its long axis (each of radius
``sqrt((L/6)^2 + (W/2)^2)``, so their union contains the box). From every planned state in the
first ``horizon_s`` (ego velocity from the plan, agents extrapolated at their estimated
velocity) the time until any ego disc touches any agent disc is solved in closed form (the
smaller root of ``|dp + dv t| = r_1 + r_2``); the plan is vetoed where it is below ``ttc_min``
(0 where the discs already touch). Because the discs cover the boxes, a predicted box overlap in
the horizon always gives TTC = 0.

Diversity: deliberately not the evaluator's oriented-box (separating-axis) collision check nor
its TTC metric, and not the RSS monitor's code (ASIL decomposition DEC-01): the evaluator's
shared check should stay the evaluator's; this one exists to fail differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from av.monitor import Verdict
from av.observation import Observation, Trajectory

DISCS = 3


def disc_cover(length: Tensor, width: Tensor) -> tuple[Tensor, Tensor]:
    """Offsets ``[..., 3]`` (m, along the long axis from the centre) and radius ``[...]`` (m) of
    three discs whose union covers a ``length`` x ``width`` box."""
    offsets = torch.stack([-length / 3, torch.zeros_like(length), length / 3], -1)
    radius = torch.sqrt((length / 6) ** 2 + (width / 2) ** 2)
    return offsets, radius


def time_to_contact(dp: Tensor, dv: Tensor, r: Tensor) -> Tensor:
    """Earliest ``t >= 0`` (s) at which two discs at relative position ``dp`` ``[..., 2]`` moving at
    relative velocity ``dv`` ``[..., 2]`` come within ``r`` ``[...]``: 0 if they already do,
    ``inf`` if never."""
    a = (dv * dv).sum(-1)
    b = 2 * (dp * dv).sum(-1)
    c = (dp * dp).sum(-1) - r * r
    disc = b * b - 4 * a * c
    root = (-b - disc.clamp_min(0.0).sqrt()) / (2 * a).clamp_min(1e-12)
    hit = (disc >= 0) & (a > 1e-12) & (root >= 0)
    t = torch.where(hit, root, torch.full_like(root, math.inf))
    return torch.where(c <= 0, torch.zeros_like(t), t)


@dataclass
class TtcMonitor:
    """Veto plans whose time to collision drops below ``ttc_min`` (s) within ``horizon_s`` (s)."""

    ttc_min: float = 1.0
    horizon_s: float = 3.0

    name: ClassVar[str] = "ttc"
    inputs: ClassVar[tuple[str, ...]] = ("agents.pose", "agents.history", "agent_valid", "agent_sizes",
                                         "ego_dims", "trajectory")
    method: ClassVar[str] = "kinematic prediction (time to contact)"
    requirements: ClassVar[tuple[str, ...]] = ("SR-COL-02",)

    def ttc(self, observation: Observation, trajectory: Trajectory) -> Tensor:
        """TTC ``[B, K, N]`` (s) from each planned state ``k = 1..K`` to each agent (``inf`` for
        invalid agents and where no contact is predicted)."""
        dt = trajectory.dt
        K = max(1, min(trajectory.poses.shape[1], int(round(self.horizon_s / dt))))
        poses = trajectory.poses.to(observation.agents.dtype)
        ext = torch.cat([torch.zeros_like(poses[:, :1]), poses], 1)  # [B, H+1, 3], index = step
        back = (ext[:, 1:, :2] - ext[:, :-1, :2]) / dt  # [B, H, 2]: step k's backward difference at k-1
        v_ego = torch.cat([back[:, 1:], back[:, -1:]], 1)[:, :K]  # forward difference at steps 1..K
        ego = poses[:, :K]  # [B, K, 3]
        length, width, rac = observation.ego_dims[:, 0], observation.ego_dims[:, 1], observation.ego_dims[:, 3]
        e_off, e_r = disc_cover(length, width)  # [B, 3], [B]
        heading = torch.stack([ego[..., 2].cos(), ego[..., 2].sin()], -1)  # [B, K, 2]
        e_pos = ego[..., None, :2] + (rac[:, None, None] + e_off[:, None, :])[..., None] * heading[..., None, :]  # [B,K,3,2]

        hist = observation.agents[..., :2]  # [B, N, H, 2]
        av_ = observation.agent_valid
        now_valid = av_[..., -1]
        two = now_valid & av_[..., -2] if av_.shape[-1] >= 2 else torch.zeros_like(now_valid)
        v_a = torch.where(two[..., None], (hist[..., -1, :] - hist[..., -2, :]) / observation.dt
                          if hist.shape[-2] >= 2 else torch.zeros_like(hist[..., -1, :]), torch.zeros_like(hist[..., -1, :]))
        a_pos0 = hist[..., -1, :]  # [B, N, 2]
        a_yaw = observation.agents[..., -1, 2]
        a_off, a_r = disc_cover(observation.agent_sizes[..., 0], observation.agent_sizes[..., 1])  # [B,N,3], [B,N]
        a_head = torch.stack([a_yaw.cos(), a_yaw.sin()], -1)  # [B, N, 2]
        a_discs0 = a_pos0[..., None, :] + a_off[..., None] * a_head[..., None, :]  # [B, N, 3, 2]
        t = (torch.arange(1, K + 1, dtype=poses.dtype, device=poses.device) * dt)  # [K]
        a_discs = a_discs0[:, None] + t[None, :, None, None, None] * v_a[:, None, :, None, :]  # [B, K, N, 3, 2]
        dp = a_discs[:, :, :, None, :, :] - e_pos[:, :, None, :, None, :]  # [B, K, N, 3e, 3a, 2]
        dv = (v_a[:, None, :, None, None, :] - v_ego[:, :, None, None, None, :])
        r = (e_r[:, None, None, None, None] + a_r[:, None, :, None, None])
        ttc = time_to_contact(dp, dv, r).flatten(-2).amin(-1)  # [B, K, N]
        return torch.where(now_valid[:, None], ttc, torch.full_like(ttc, math.inf))

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        ttc = self.ttc(observation, trajectory)
        low = ttc < self.ttc_min
        veto = low.flatten(1).any(1)
        reasons = []
        for b in range(veto.shape[0]):
            if not veto[b]:
                reasons.append("")
                continue
            k, n = (int(i) for i in low[b].nonzero()[0])
            reasons.append(f"time to collision {float(ttc[b, k, n]):.2f} s < {self.ttc_min:.2f} s with agent {n} "
                           f"from the planned state at t = {(k + 1) * trajectory.dt:.1f} s")
        return Verdict(veto, tuple(reasons))
