"""Planner contract over every registered planner, and known-answer cases for the rule planners
(IDM lane follower, PDM-Closed) on hand-built observations (ego frame, SI units)."""

from __future__ import annotations

import math
from typing import Sequence

import pytest
import torch

from av.observation import Observation, Privileged, Trajectory
from closedloop.planner import make_planner, planner_names
from closedloop.planners.idm import IDMPlanner, IDMSettings
from closedloop.planners.pdm_closed import PDMClosedPlanner

EGO_DIMS = (4.084, 1.73, 2.588, 1.292)  # length, width, wheelbase, rear axle -> centre
FRONT = EGO_DIMS[3] + EGO_DIMS[0] / 2  # rear axle -> front bumper, m


def straight_route(x0: float = -10.0, x1: float = 150.0, spacing: float = 1.0) -> torch.Tensor:
    xs = torch.arange(x0, x1, spacing)
    return torch.stack([xs, torch.zeros_like(xs), torch.zeros_like(xs)], -1)


def left_curve(radius: float, spacing: float = 1.0, angle: float = 3.0) -> torch.Tensor:
    """A left turn of ``radius`` m starting at the ego, ``[R, 3]``, preceded by 10 m straight."""
    th = torch.arange(0.0, angle, spacing / radius)
    arc = torch.stack([radius * torch.sin(th), radius * (1 - torch.cos(th)), th], -1)
    return torch.cat([straight_route(-10.0, 0.0, spacing), arc])


def road_edges(y_right: float = -6.0, y_left: float = 6.0, x0: float = -50.0, x1: float = 300.0) -> torch.Tensor:
    """Boundary ``[E, 4]`` of the rectangle ``[x0, x1] x [y_right, y_left]`` in 2 m edges."""
    xs = torch.arange(x0, x1 + 1e-6, 2.0)
    right = torch.stack([xs[:-1], torch.full_like(xs[:-1], y_right), xs[1:], torch.full_like(xs[1:], y_right)], -1)
    left = torch.stack([xs[1:], torch.full_like(xs[1:], y_left), xs[:-1], torch.full_like(xs[:-1], y_left)], -1)
    ends = torch.tensor([[x1, y_right, x1, y_left], [x0, y_left, x0, y_right]])
    return torch.cat([right, ends[:1], left, ends[1:]])


def make_obs(
    B: int = 1,
    speed: float = 10.0,
    route: torch.Tensor | None = None,
    agents: Sequence[tuple[float, ...]] = (),
    limit: float = float("nan"),
    edges: torch.Tensor | None = None,
    history: int = 5,
    route_valid: int | None = None,
) -> Observation:
    """An observation with the ego at (0, 0, 0) driving at ``speed`` m/s along +x.

    ``agents``: (x, y, yaw, vx, vy, length, width) of vehicles, constant over the history;
    ``route_valid``: how many route points are valid (default: all).
    """
    route = straight_route() if route is None else route
    edges = road_edges() if edges is None else edges
    R, E, N, H = route.shape[0], edges.shape[0], max(len(agents), 1), history
    ag = torch.zeros(B, N, H, 5)
    valid = torch.zeros(B, N, H, dtype=torch.bool)
    sizes = torch.ones(B, N, 2)
    types = torch.full((B, N), -1)
    for i, a in enumerate(agents):
        t = torch.arange(-H + 1, 1) * 0.1
        ag[:, i, :, :5] = torch.tensor(a[:5])
        ag[:, i, :, 0] = a[0] + a[3] * t
        ag[:, i, :, 1] = a[1] + a[4] * t
        valid[:, i] = True
        sizes[:, i] = torch.tensor(a[5:7])
        types[:, i] = 0
    ego = torch.zeros(B, H, 5)
    ego[:, :, 0] = torch.arange(-H + 1, 1) * 0.1 * speed
    ego[:, :, 3] = speed
    lanes = route[None, None, :: max(1, R // 20)][:, :, :20].expand(B, 1, -1, 3).clone()
    return Observation(
        ego_history=ego,
        ego_dims=torch.tensor([EGO_DIMS]).expand(B, 4).clone(),
        agents=ag,
        agent_valid=valid,
        agent_types=types,
        agent_sizes=sizes,
        lanes=lanes,
        lane_valid=torch.ones(B, 1, dtype=torch.bool),
        lane_speed_limit=torch.full((B, 1), limit),
        lane_on_route=torch.ones(B, 1, dtype=torch.bool),
        route=route[None].expand(B, R, 3).clone(),
        route_valid=(torch.arange(R) < (R if route_valid is None else route_valid)).expand(B, R).clone(),
        drivable_edges=edges[None].expand(B, E, 4).clone(),
        drivable_edge_valid=torch.ones(B, E, dtype=torch.bool),
        pose=torch.zeros(B, 3),
        dt=0.1,
        route_spacing=float((route[1, :2] - route[0, :2]).norm()),
    )


def make_privileged(obs: Observation, future: int = 80) -> Privileged:
    """The ego and agents continuing at their current velocity (ego frame)."""
    B, N = obs.batch_size, obs.agents.shape[1]
    t = torch.arange(1, future + 1) * 0.1
    ego = obs.ego_history[:, -1:].expand(B, future, 5).clone()
    ego[..., 0] = ego[..., 3] * t
    ag = obs.agents[:, :, -1:].expand(B, N, future, 5).clone()
    ag[..., 0] += ag[..., 3] * t
    ag[..., 1] += ag[..., 4] * t
    return Privileged(
        ego_future=ego,
        ego_future_valid=torch.ones(B, future, dtype=torch.bool),
        agents_future=ag,
        agents_future_valid=obs.agent_valid[:, :, -1:].expand(B, N, future).clone(),
    )


# --------------------------------------------------------------------------- contract


# Planners that need a trained model file run the same contract in test_runtime.py (onnx) and
# test_learned_planners.py (student), where such a file is made.
NEED_A_MODEL = {"onnx", "student"}


@pytest.mark.parametrize("name", [n for n in planner_names() if n not in NEED_A_MODEL])
@pytest.mark.parametrize("B", [1, 3])
def test_planner_contract(name: str, B: int) -> None:
    planner = make_planner(name)
    assert planner.name == name
    obs = make_obs(B=B, agents=[(25.0, 0.0, 0.0, 3.0, 0.0, 4.5, 1.9), (10.0, 3.5, 0.0, 8.0, 0.0, 4.5, 1.9)])
    out = planner.plan(obs, make_privileged(obs) if planner.privileged else None)
    assert isinstance(out, Trajectory)
    assert out.poses.dim() == 3 and out.poses.shape[0] == B and out.poses.shape[2] == 3
    assert out.poses.shape[1] >= 1 and out.dt > 0
    assert out.poses.dtype == torch.float32
    assert torch.isfinite(out.poses).all()
    # The batch rows are independent: the same observation gives the same plan in every row.
    assert torch.allclose(out.poses, out.poses[:1].expand_as(out.poses))


@pytest.mark.parametrize("planner", [IDMPlanner(), PDMClosedPlanner()], ids=["idm", "pdm_closed"])
def test_rule_planners_are_deterministic_and_batch_independent(planner: IDMPlanner | PDMClosedPlanner) -> None:
    near = make_obs(speed=8.0, agents=[(20.0, 0.0, 0.0, 0.0, 0.0, 4.5, 1.9)])
    far = make_obs(speed=8.0, agents=[(90.0, 0.0, 0.0, 0.0, 0.0, 4.5, 1.9)])
    both = Observation(**{
        k: torch.cat([v, getattr(far, k)]) if isinstance(v, torch.Tensor) else v for k, v in near.__dict__.items()
    })
    together = planner.plan(both).poses
    assert torch.equal(together, planner.plan(both).poses)
    assert torch.allclose(together[0], planner.plan(near).poses[0], atol=1e-4)
    assert torch.allclose(together[1], planner.plan(far).poses[0], atol=1e-4)


# --------------------------------------------------------------------------- IDM


def test_idm_free_road_drives_the_route_at_the_default_speed() -> None:
    poses = IDMPlanner().plan(make_obs(speed=13.9)).poses[0]
    assert poses.shape == (80, 3)
    assert poses[:, 1:].abs().max() < 1e-4  # on the centreline, heading along it
    speed = poses[:, 0].diff() / 0.1
    assert torch.allclose(speed, torch.full_like(speed, 13.9), atol=0.05)


def test_idm_uses_the_lane_speed_limit() -> None:
    poses = IDMPlanner().plan(make_obs(speed=8.0, limit=8.0)).poses[0]
    assert abs(float(poses[-1, 0] - poses[-2, 0]) / 0.1 - 8.0) < 0.05


def test_idm_stops_behind_a_stopped_lead_vehicle() -> None:
    lead_x, lead_len = 40.0, 4.5
    poses = IDMPlanner().plan(make_obs(speed=10.0, agents=[(lead_x, 0.3, 0.0, 0.0, 0.0, lead_len, 1.9)])).poses[0]
    gap = lead_x - lead_len / 2 - (poses[-1, 0] + FRONT)
    assert 1.0 < gap < 3.5  # about the IDM standstill gap (2 m)
    assert float(poses[-1, 0] - poses[-11, 0]) < 0.5  # (nearly) stopped: < 0.5 m/s at the end
    assert (poses[:, 0].diff() >= -1e-5).all()  # never reverses


def test_idm_ignores_a_stopped_vehicle_in_the_next_lane() -> None:
    poses = IDMPlanner().plan(make_obs(speed=10.0, agents=[(30.0, 3.5, 0.0, 0.0, 0.0, 4.5, 1.9)])).poses[0]
    assert float(poses[-1, 0]) > 90.0


def test_idm_follows_a_moving_lead_at_its_speed() -> None:
    poses = IDMPlanner().plan(make_obs(speed=6.0, agents=[(25.0, 0.0, 0.0, 6.0, 0.0, 4.5, 1.9)])).poses[0]
    final_speed = float(poses[-1, 0] - poses[-2, 0]) / 0.1
    assert abs(final_speed - 6.0) < 1.0
    lead_end = 25.0 + 6.0 * 8.0
    assert lead_end - 2.25 - (poses[-1, 0] + FRONT) > 2.0


def test_idm_follows_the_route_around_a_curve() -> None:
    radius = 30.0
    poses = IDMPlanner().plan(make_obs(speed=8.0, route=left_curve(radius))).poses[0]
    dist = (poses[:, 0] ** 2 + (poses[:, 1] - radius) ** 2).sqrt()
    assert (dist - radius).abs().max() < 0.1  # on the circle
    # Heading is the tangent of the circle at each pose, and the plan turns left by > 60 degrees.
    tangent = torch.atan2(poses[:, 0], radius - poses[:, 1])
    assert (torch.remainder(poses[:, 2] - tangent + math.pi, 2 * math.pi) - math.pi).abs().max() < 0.05
    assert float(poses[-1, 2]) > math.radians(60)
    # The speed is capped so that the lateral acceleration stays comfortable.
    speed = (poses[1:, :2] - poses[:-1, :2]).norm(dim=-1) / 0.1
    assert float(speed.max() ** 2 / radius) < 2.5


def test_idm_stops_at_the_end_of_the_route() -> None:
    # Route points from x = -10 m every 1 m; the first 50 are valid: the route ends at x = 39 m.
    poses = IDMPlanner().plan(make_obs(speed=10.0, route_valid=50)).poses[0]
    assert 33.0 < float(poses[-1, 0]) < 41.0
    assert float(poses[-1, 0] - poses[-11, 0]) < 0.5  # (nearly) stopped


def test_idm_takes_the_later_lane_of_a_route_that_jumps_back() -> None:
    # The route as a simulator joins the lanes of a lane change: y = 0 up to x = 30 m, then back
    # to x = -10 m on the lane to the left (y = 3.5 m). The plan moves over and never reverses.
    later = straight_route()
    later[:, 1] = 3.5
    route = torch.cat([straight_route(-10.0, 30.0), later])
    poses = IDMPlanner().plan(make_obs(speed=8.0, route=route)).poses[0]
    assert (poses[:, 0].diff() > 0).all()
    assert abs(float(poses[-1, 1]) - 3.5) < 0.05 and float(poses[-1, 0]) > 60.0


def test_idm_without_route_drives_straight_ahead() -> None:
    obs = make_obs(speed=5.0)
    obs = Observation(**{**obs.__dict__, "route_valid": torch.zeros_like(obs.route_valid)})
    poses = IDMPlanner().plan(obs).poses[0]
    assert poses[:, 1:].abs().max() < 1e-4 and float(poses[-1, 0]) > 40.0


# --------------------------------------------------------------------------- PDM-Closed


def test_pdm_passes_a_parked_car_that_blocks_part_of_the_lane() -> None:
    # Parked car on the left edge of the lane: its inner side is 1.25 m left of the centreline.
    car = (30.0, 2.2, 0.0, 0.0, 0.0, 4.5, 1.9)
    obs = make_obs(speed=8.0, agents=[car])
    pdm = PDMClosedPlanner().plan(obs).poses[0]
    idm = IDMPlanner().plan(obs).poses[0]
    assert float(idm[-1, 0]) < 30.0 - 2.25 - FRONT  # IDM waits behind it
    assert float(pdm[-1, 0]) > 40.0  # PDM drives past ...
    beside = (pdm[:, 0] > 25.0) & (pdm[:, 0] < 35.0)
    assert float(pdm[beside, 1].max()) < -0.5  # ... shifted right, away from the car
    # and stays clear of it: the ego's left side keeps > 0.3 m from the car's right side.
    assert float(pdm[beside, 1].max()) + EGO_DIMS[1] / 2 < 2.2 - 1.9 / 2 - 0.3


def test_pdm_stops_when_the_lane_is_fully_blocked() -> None:
    truck = (30.0, 0.0, 0.0, 0.0, 0.0, 4.5, 7.0)  # across the whole road
    poses = PDMClosedPlanner().plan(make_obs(speed=8.0, agents=[truck])).poses[0]
    gap = 30.0 - 2.25 - (poses[-1, 0] + FRONT)
    assert 0.5 < gap < 4.0
    assert float(poses[-1, 0] - poses[-11, 0]) < 0.5  # (nearly) stopped: < 0.5 m/s at the end
    assert float(poses[:, 1].abs().max()) < 0.05  # ties go to the centreline


def test_pdm_keeps_to_the_drivable_area() -> None:
    # Parked car on the left; the road ends 1.2 m right of the centreline: no room to pass.
    obs = make_obs(speed=8.0, agents=[(30.0, 2.2, 0.0, 0.0, 0.0, 4.5, 1.9)], edges=road_edges(y_right=-1.2))
    poses = PDMClosedPlanner().plan(obs).poses[0]
    assert float(poses[-1, 0]) < 30.0 - 2.25 - FRONT
    assert float(poses[:, 1].min()) > -0.05


def test_pdm_matches_idm_on_a_free_road() -> None:
    obs = make_obs(speed=10.0)
    pdm = PDMClosedPlanner()
    assert torch.allclose(pdm.plan(obs).poses, IDMPlanner(IDMSettings(idm=pdm.params)).plan(obs).poses, atol=1e-4)
