"""Log replay: the human reference. The ego re-drives its logged future (privileged input)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from av.errors import AvError
from av.geometry import wrap_angle
from av.observation import Observation, Privileged, Trajectory
from av.vehicle import advance_arc


@dataclass(frozen=True)
class LogReplaySettings:
    """Settings of :class:`LogReplayPlanner`."""

    min_turn_speed: float = field(default=0.1, metadata={
        "help": "past the end of the log the plan turns at the last yaw rate only above this speed, m/s"})

    def validate(self) -> "LogReplaySettings":
        if not self.min_turn_speed > 0:
            raise AvError(f"log_replay: min_turn_speed must be > 0, got {self.min_turn_speed}")
        return self


class LogReplayPlanner:
    """Returns the logged future ego poses (``Privileged.ego_future``) as the plan.

    Past the end of the log the plan continues at the last logged speed and yaw rate (a
    circular arc), so the tracker neither brakes nor straightens for the end of the recording.
    ``[B, F, 3]`` poses, ego frame.
    """

    name = "log_replay"
    privileged = True

    def __init__(self, settings: LogReplaySettings = LogReplaySettings()) -> None:
        self.settings = settings.validate()

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        if privileged is None:
            raise AvError("planner log_replay needs privileged inputs (the logged future); none were given")
        fut, valid = privileged.ego_future, privileged.ego_future_valid  # [B, F, 5], [B, F]
        B, F, _ = fut.shape
        dt = observation.dt
        steps = torch.arange(F, device=fut.device).expand(B, F)
        last = torch.where(valid, steps, torch.full_like(steps, -1)).cummax(1).values  # [B, F]
        # Extrapolate from the last valid future state (else the ego now), turning at the yaw
        # rate between it and the state before it.
        now = torch.cat([torch.zeros_like(fut[:, 0, :3]), observation.ego_history[:, -1, 3:5]], 1)
        states = torch.cat([observation.ego_history[:, -2:-1].expand(B, 1, 5) if observation.ego_history.shape[1] > 1
                            else now[:, None], now[:, None], fut], 1)  # index i + 2 is future step i
        b = torch.arange(B, device=fut.device)[:, None]
        anchor = states[b, last + 2]
        before = states[b, last + 1]
        speed = anchor[..., 3:5].norm(dim=-1)
        yaw_rate = wrap_angle(anchor[..., 2] - before[..., 2]) / dt
        distance = (steps - last).to(fut.dtype) * dt * speed
        turn = self.settings.min_turn_speed
        curvature = yaw_rate / speed.clamp_min(turn)
        poses = advance_arc(anchor[..., :3], distance, curvature * (speed > turn))
        return Trajectory(poses=poses, dt=dt)
