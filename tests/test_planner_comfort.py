"""Comfort of the rule planners (IDM, PDM-Closed) in closed loop, on hand-built cases: the plan and
the driven ego stay inside nuPlan's comfort bounds (METRICS.md 1.9) where a human would, so that a
failed comfort check means the situation, not the planner's mechanics.

The causes found on the real drives (issue 8) each have a case: IDM's acceleration (nuPlan's IDM:
at most 1 m/s^2) and its unlimited jerk, a parked car beside the ego counted as a lead at a 0.1 m
gap (braking at ``max_decel``), and the lateral blend back to the route whose curvature stepped at
its start (yaw acceleration, which also enters nuPlan's longitudinal acceleration).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_scenario
from test_planners import make_obs, straight_route

from av.batch import collate
from closedloop.driver import rollout
from closedloop.evaluator import evaluate
from closedloop.evaluator import comfort as comfort_mod
from closedloop.evaluator.nuplan import build_scene
from closedloop.planners.common import IDMParams
from closedloop.planners.idm import IDMPlanner
from closedloop.planners.pdm_closed import PDMClosedPlanner
from closedloop.sim import BuiltinSimulator, SimConfig

DT = 0.1


def _speeds(poses: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Speeds ``[B, H]`` (m/s) of plan poses ``[B, H, 3]`` driven from ``start`` ``[B, 2]``."""
    xy = torch.cat([start[:, None], poses[..., :2]], 1)
    return xy.diff(dim=1).norm(dim=-1) / DT


def _smoothed_lon(scene_accel: torch.Tensor, scene) -> torch.Tensor:  # type: ignore[no-untyped-def]
    n = int(scene.valid[0].sum())
    a = scene_accel[None, :n].double()
    series = comfort_mod.comfort_series(a, a * 0, a.abs(), scene.ego[0:1, :n, 2].double(), DT, comfort_mod.NUPLAN)
    return series[0]


@pytest.mark.parametrize("planner", [IDMPlanner(), PDMClosedPlanner()], ids=["idm", "pdm_closed"])
def test_start_from_standstill_on_a_free_road_is_comfortable(planner: IDMPlanner | PDMClosedPlanner) -> None:
    sc = build_scenario(num_steps=40, history_steps=10, num_agents=0, ego_speed=0.0, road_length=300.0)
    with torch.no_grad():
        r = rollout(BuiltinSimulator(SimConfig(agents="log")), collate([sc]), planner, record_plans=True)
        scores = evaluate(r)
    start = int(r.start_step[0])
    # Planned: the first plan accelerates at most at IDM's 1 m/s^2 and its jerk is limited.
    plan = r.planned[0:1, start]
    v = _speeds(plan, r.ego[0:1, start, :2])
    a = torch.cat([v[:, :1], v.diff(dim=1)], 1) / DT
    assert float(a.max()) <= IDMParams().accel + 1e-3
    assert float(a.diff(dim=1).abs().max()) / DT <= planner.params.max_jerk + 0.05
    # Executed: the tracked ego stays inside every nuPlan comfort bound.
    executed = r.ego_accel[0, start:, 0]
    assert float(executed.max()) <= IDMParams().accel + 0.05
    assert float(executed[-5:].min()) > 0.5  # still accelerating: the case is not trivially at rest
    assert float(scores["comfort"][0]) == 1.0
    series = _smoothed_lon(r.ego_accel[0, start:, 0], build_scene(r))
    assert float(series[0].max()) < 1.1  # lon. acceleration, bound 2.40
    assert float(series[3].abs().max()) < 3.0  # lon. jerk, bound 4.13


def test_a_car_parked_beside_the_ego_is_not_a_lead() -> None:
    # The ego drives 2.7 m left of the route's lane (it joins it ahead); a car is parked in that
    # lane beside the ego, its rear 1 m behind the ego's front bumper. Before the fix IDM took it
    # for a lead at a 0.1 m gap and planned a stop at its 6 m/s^2 braking limit.
    route = straight_route()
    route[:, 1] = -2.7
    obs = make_obs(speed=5.0, route=route, agents=[(3.0, -2.9, 0.0, 0.0, 0.0, 4.5, 1.9)])
    for planner in (IDMPlanner(), PDMClosedPlanner()):
        poses = planner.plan(obs).poses
        v = _speeds(poses, torch.zeros(1, 2))
        assert float(v[0, -1]) > 4.0, planner.name  # drives on
        assert float((v.diff(dim=1) / DT).min()) > -1.0, planner.name
    # A car of the same lane dead ahead of the ego is still braked for.
    ahead = make_obs(speed=5.0, route=route, agents=[(12.0, -2.0, 0.0, 0.0, 0.0, 4.5, 1.9)])
    v = _speeds(IDMPlanner().plan(ahead).poses, torch.zeros(1, 2))
    assert float(v[0, -1]) < 0.5


def test_the_blend_back_to_the_route_starts_without_a_steering_step() -> None:
    # 2.7 m off the route at 5 m/s: the plan's curvature starts at 0 and its yaw acceleration
    # (v^2 times the curvature's rate along the path) stays well inside nuPlan's 1.93 rad/s^2.
    route = straight_route()
    route[:, 1] = -2.7
    poses = IDMPlanner().plan(make_obs(speed=5.0, route=route)).poses[0]
    yaw = torch.cat([torch.zeros(1), poses[:, 2]])
    yaw_rate = yaw.diff() / DT
    assert abs(float(yaw_rate[0])) < 0.1
    assert float((yaw_rate.diff() / DT).abs().max()) < 1.0
    assert abs(float(poses[-1, 1]) + 2.7) < 0.05  # and it does reach the route
