"""IDM lane follower: drive along the route centreline at the speed limit, braking with the
Intelligent Driver Model for the nearest agent ahead in the lane."""

from __future__ import annotations

import torch

from av.observation import Observation, Privileged, Trajectory
from closedloop.planners.common import (
    LANE_HALF_WIDTH,
    IDMParams,
    agents_on_path,
    build_path,
    current_accel,
    idm_rollout,
    lane_speed_limit,
    path_poses,
)


class IDMPlanner:
    """Route-following IDM planner over a batch (car-visible inputs only).

    The plan is ``horizon_steps`` poses ``step`` s apart (default 8 s at 0.1 s): IDM integrated
    along the route centreline with the lead agent (the nearest agent ahead whose box reaches
    into the lane, ``LANE_HALF_WIDTH`` m either side of the centreline) predicted at constant
    speed along the route. The desired speed is the speed limit of the ego's lane (13.9 m/s where
    unknown), lowered ahead of curves (see :class:`~closedloop.planners.common.IDMParams`).
    """

    name = "idm"
    privileged = False

    def __init__(self, params: IDMParams = IDMParams(), horizon_steps: int = 80, step: float = 0.1) -> None:
        self.params = params
        self.horizon_steps = horizon_steps
        self.step = step

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        """``B`` observations -> :class:`Trajectory` ``[B, horizon_steps, 3]`` (ego frame)."""
        obs = observation
        B = obs.batch_size
        path = build_path(obs, self.params)
        agents = agents_on_path(obs, path)
        dims = obs.ego_dims
        s, _, d, slope = idm_rollout(
            path,
            agents,
            speed=obs.speed,
            accel=current_accel(obs),
            target_speed=lane_speed_limit(obs)[:, None],
            offset=torch.zeros(B, 1, device=dims.device),
            corridor=torch.full((B,), LANE_HALF_WIDTH, device=dims.device),
            ego_front=dims[:, 3] + 0.5 * dims[:, 0],
            params=self.params,
            steps=self.horizon_steps,
            dt=self.step,
        )
        return Trajectory(poses=path_poses(path, s, d, slope)[:, 0], dt=self.step)
