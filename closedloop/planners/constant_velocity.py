"""Constant velocity: keep the current speed and heading (a straight line); a sanity baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from av.errors import AvError
from av.observation import Observation, Privileged, Trajectory


@dataclass(frozen=True)
class ConstantVelocitySettings:
    """Settings of :class:`ConstantVelocityPlanner`."""

    horizon_steps: int = field(default=80, metadata={"help": "plan length in steps of the observation dt"})

    def validate(self) -> "ConstantVelocitySettings":
        if self.horizon_steps < 1:
            raise AvError(f"constant_velocity: horizon_steps must be >= 1, got {self.horizon_steps}")
        return self


class ConstantVelocityPlanner:
    """Poses ``(v k dt, 0, 0)``, ``k = 1..horizon_steps``, with ``v`` the current forward speed
    (m/s, ego frame; a reversing ego is treated as standing)."""

    name = "constant_velocity"
    privileged = False

    def __init__(self, settings: ConstantVelocitySettings = ConstantVelocitySettings()) -> None:
        self.settings = settings.validate()
        self.horizon_steps = settings.horizon_steps

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        v = observation.ego_history[:, -1, 3].clamp_min(0.0)  # [B]
        k = torch.arange(1, self.horizon_steps + 1, dtype=v.dtype, device=v.device)
        x = v[:, None] * k * observation.dt
        return Trajectory(poses=torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1), dt=observation.dt)
