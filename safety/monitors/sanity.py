"""Plan-sanity monitor: finite, starts at the vehicle, continuous with the previous plan.

Method family: consistency checks. Inputs: the plan, the ego's current velocity
(``ego_history``) and its map pose (``pose``, to place consecutive plans in one frame).

* every value finite and at least one step;
* the first planned position within ``start_tolerance`` (m) of where the car gets in one step at
  its current speed (a plan built for another state is stale or corrupt);
* the positions of the first ``window_s`` (s) within ``continuity_tolerance`` (m) of the previous
  plan at the same times (placed in the map frame with the pose of its own observation).

This monitor keeps the previous plan, so one instance serves one stream of plans;
:meth:`reset` starts a new stream (a change of batch size resets it too). ``period_s`` is the
time between consecutive judgements (default: the plan's ``dt``, i.e. replanning every step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from av.geometry import from_frame
from av.monitor import Verdict
from av.observation import Observation, Trajectory


@dataclass
class PlanSanityMonitor:
    """Veto malformed, misplaced or discontinuous plans (module docstring)."""

    start_tolerance: float = 1.0
    continuity_tolerance: float = 1.0
    window_s: float = 0.3
    period_s: float | None = None

    name: ClassVar[str] = "plan_sanity"
    inputs: ClassVar[tuple[str, ...]] = ("ego_history.velocity", "pose", "trajectory")
    method: ClassVar[str] = "consistency checks (finite, start, continuity)"
    requirements: ClassVar[tuple[str, ...]] = ("SR-PLAN-01", "SR-PLAN-02")

    _previous: tuple[Tensor, float] | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        """Forget the previous plan (a new drive or batch starts)."""
        self._previous = None

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        B = observation.batch_size
        poses = trajectory.poses
        if poses.dim() != 3 or poses.shape[0] != B or poses.shape[-1] != 3 or poses.shape[1] < 1:
            self.reset()
            why = f"malformed plan of shape {tuple(poses.shape)} (expected [{B}, H >= 1, 3])"
            return Verdict(torch.ones(B, dtype=torch.bool), (why,) * B)
        poses = poses.to(observation.ego_history.dtype)
        finite = torch.isfinite(poses).all(-1).all(-1)
        expected = observation.speed * trajectory.dt
        start_err = torch.stack([poses[:, 0, 0] - expected, poses[:, 0, 1]], -1).norm(dim=-1)
        misplaced = finite & ~(start_err <= self.start_tolerance)
        world = from_frame(torch.nan_to_num(poses[..., :2]), observation.pose[:, None, :].to(poses.dtype))
        jump = torch.zeros(B, dtype=poses.dtype, device=poses.device)
        prev = self._previous
        if prev is not None and prev[0].shape[0] == B:
            shift = int(round((self.period_s or trajectory.dt) / prev[1]))
            W = max(1, int(round(self.window_s / trajectory.dt)))
            n = min(W, prev[0].shape[1] - shift, poses.shape[1])
            if n > 0 and abs(prev[1] - trajectory.dt) < 1e-9:
                jump = (world[:, :n] - prev[0][:, shift:shift + n]).norm(dim=-1).amax(1)
        discontinuous = finite & (jump > self.continuity_tolerance)
        self._previous = (world, trajectory.dt) if B else None
        veto = ~finite | misplaced | discontinuous
        reasons = []
        for b in range(B):
            if not finite[b]:
                reasons.append("non-finite values in the plan")
            elif misplaced[b]:
                reasons.append(f"plan starts {float(start_err[b]):.2f} m from the vehicle (> {self.start_tolerance} m)")
            elif discontinuous[b]:
                reasons.append(f"plan jumps {float(jump[b]):.2f} m from the previous plan "
                               f"(> {self.continuity_tolerance} m)")
            else:
                reasons.append("")
        return Verdict(veto, tuple(reasons))
