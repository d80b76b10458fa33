"""IDM lane follower: drive along the route centreline at the speed limit, braking with the
Intelligent Driver Model for the nearest agent ahead in the lane."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from av.errors import AvError
from av.observation import Observation, Privileged, Trajectory
from av.vehicle import front_overhang
from closedloop.planners.common import (
    LANE_HALF_WIDTH,
    IDMParams,
    agents_on_path,
    build_path,
    current_accel,
    idm_rollout,
    lane_speed_limit,
    path_poses,
    retime,
    travelled,
)


def check_idm(params: IDMParams, planner: str) -> None:
    """Raise :class:`AvError` unless every IDM parameter is positive (``max_jerk``: or unset)."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if value is not None and not value > 0:
            raise AvError(f"{planner}: idm.{f.name} must be > 0, got {value}")


@dataclass(frozen=True)
class IDMSettings:
    """Settings of :class:`IDMPlanner`: the IDM parameters (SI units) and the plan's length."""

    idm: IDMParams = field(default=IDMParams(), metadata={"help": "IDM parameters"})
    horizon_steps: int = field(default=80, metadata={"help": "poses in a plan"})
    step: float = field(default=0.1, metadata={"help": "time between plan poses, s"})

    def validate(self) -> "IDMSettings":
        check_idm(self.idm, "idm")
        if self.horizon_steps < 1 or not self.step > 0:
            raise AvError(f"idm: horizon_steps must be >= 1 and step > 0, got {self.horizon_steps}, {self.step}")
        return self


class IDMPlanner:
    """Route-following IDM planner over a batch (car-visible inputs only).

    The plan is ``horizon_steps`` poses ``step`` s apart (default 8 s at 0.1 s): IDM integrated
    along the route centreline with the lead agent (the nearest agent ahead whose box reaches
    into the lane, ``LANE_HALF_WIDTH`` m either side of the centreline) predicted at constant
    speed along the route. The desired speed is the speed limit of the ego's lane (13.9 m/s where
    unknown), lowered ahead of curves (see :class:`~closedloop.planners.common.IDMParams`).
    Like nuPlan's IDM it accelerates at most at 1 m/s^2, and its acceleration changes by at most
    ``max_jerk`` (2 m/s^3) per second, so that its plans -- and the ego tracking them -- stay
    inside nuPlan's comfort bounds unless it must brake hard (issue 8).
    """

    name = "idm"
    privileged = False

    def __init__(self, settings: IDMSettings = IDMSettings()) -> None:
        self.settings = settings.validate()
        self.params = settings.idm
        self.horizon_steps = settings.horizon_steps
        self.step = settings.step

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        """``B`` observations -> :class:`Trajectory` ``[B, horizon_steps, 3]`` (ego frame)."""
        obs = observation
        B = obs.batch_size
        path = build_path(obs, self.params)
        agents = agents_on_path(obs, path)
        dims = obs.ego_dims
        s, v, d, slope = idm_rollout(
            path,
            agents,
            speed=obs.speed,
            accel=current_accel(obs),
            target_speed=lane_speed_limit(obs)[:, None],
            offset=torch.zeros(B, 1, device=dims.device),
            corridor=torch.full((B,), LANE_HALF_WIDTH, device=dims.device),
            ego_front=front_overhang(dims),
            ego_half_width=0.5 * dims[:, 1],
            params=self.params,
            steps=self.horizon_steps,
            dt=self.step,
        )
        poses = retime(path_poses(path, s, d, slope), travelled(obs.speed, v, self.step))
        return Trajectory(poses=poses[:, 0], dt=self.step)
