"""The shared checks, vehicle geometry and IDM law (av.checks, av.vehicle, av.idm) on hand-built
cases with known answers, and that their users take their constants from them."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from av import idm
from av.checks import (
    COMFORT_BOUNDS,
    COMFORT_QUANTITIES,
    box_overlap,
    complete_radius,
    leaves_drivable_area,
    may_overlap,
    moved_on,
    within_comfort_bounds,
)
from av.geometry import box_corners
from av.vehicle import VehicleLimits, VehicleState, bicycle_step, box_centre, ego_box, front_overhang, steer_for
from closedloop.evaluator import aggregate
from closedloop.planners.common import IDMParams as PlannerIDM
from closedloop.planners.pdm_closed import PDMConfig
from closedloop.sim.agents import IDMParams as AgentIDM
from closedloop.sim.base import SimConfig

F64 = torch.float64
DIMS = torch.tensor([4.0, 2.0, 2.5, 1.5], dtype=F64)  # length, width, wheelbase, rear axle -> centre


def test_box_centre_lies_ahead_of_the_rear_axle_along_the_heading() -> None:
    pose = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, math.pi / 2]], dtype=F64)
    centre = box_centre(pose, DIMS[3].expand(2))
    assert torch.allclose(centre, torch.tensor([[2.5, 2.0], [1.0, 3.5]], dtype=F64), atol=1e-12)
    box = ego_box(pose, DIMS)
    assert box.shape == (2, 5)
    assert torch.allclose(box[:, :2], centre) and torch.equal(box[:, 2], pose[:, 2])
    assert torch.equal(box[:, 3:], DIMS[:2].expand(2, 2))
    assert float(front_overhang(DIMS)) == 3.5  # 1.5 m to the centre + half of 4 m


def test_ego_box_broadcasts_dims_over_proposals() -> None:
    pose = torch.zeros(3, 7, 5, 3, dtype=F64)
    box = ego_box(pose, DIMS.expand(3, 4)[:, None, None])
    assert box.shape == (3, 7, 5, 5) and torch.allclose(box[..., 0], torch.full((3, 7, 5), 1.5, dtype=F64))


def test_a_constant_steering_angle_drives_a_circle_of_radius_wheelbase_over_tan_steer() -> None:
    limits = VehicleLimits()
    steer = torch.tensor([0.3], dtype=F64)
    zero = torch.zeros(1, dtype=F64)
    s = VehicleState(torch.zeros(1, 3, dtype=F64), torch.full((1,), 5.0, dtype=F64), zero, steer, zero, zero)
    for _ in range(40):
        s = bicycle_step(s, zero, zero, DIMS[2:3], limits, 0.1)
    radius = float(DIMS[2] / torch.tan(steer))
    centre = torch.tensor([0.0, radius], dtype=F64)  # turning left around (0, R)
    assert abs(float((s.pose[0, :2] - centre).norm()) - radius) < 1e-9
    assert float(steer_for(torch.tan(steer) / DIMS[2], DIMS[2])) == pytest.approx(0.3)


def test_moved_on_drives_a_box_straight_along_its_heading() -> None:
    box = torch.tensor([1.0, 1.0, math.pi / 2, 4.0, 2.0], dtype=F64)
    out = moved_on(box[None], torch.tensor([10.0], dtype=F64)[:, None], torch.tensor([0.5, 1.0], dtype=F64))
    assert out.shape == (1, 2, 5)
    assert torch.allclose(out[0, :, :2], torch.tensor([[1.0, 6.0], [1.0, 11.0]], dtype=F64), atol=1e-12)
    assert torch.equal(out[0, :, 2:], box[2:].expand(2, 3))


def test_bounding_circles_rule_out_far_boxes_only() -> None:
    a = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0], dtype=F64)
    near = torch.tensor([4.4, 0.0, 1.0, 4.0, 2.0], dtype=F64)  # circles meet (radii 2.236 each)
    far = torch.tensor([4.5, 0.0, 0.0, 4.0, 2.0], dtype=F64)
    assert bool(may_overlap(a, near)) and not bool(may_overlap(a, far))
    assert not bool(box_overlap(a, far))


def test_leaving_the_drivable_area_is_judged_only_where_the_edges_are_complete() -> None:
    x = torch.arange(-20.0, 20.0, 2.0, dtype=F64)
    side = [torch.stack([x, torch.full_like(x, y), x + 2.0, torch.full_like(x, y)], -1) for y in (-3.0, 3.0)]
    edges = torch.cat(side)[None]  # [1, 40, 4]: a 6 m wide straight road
    boxes = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.5, 0.0], [0.0, 2.5, math.pi / 2]], dtype=F64)  # centre x, y, yaw
    corners = box_corners(boxes[:, :2], boxes[:, 2], torch.full((3,), 4.0, dtype=F64), torch.full((3,), 2.0, dtype=F64))
    anchors = torch.zeros(1, 3, 2, dtype=F64)
    full = torch.ones(1, 40, dtype=torch.bool)
    radius = complete_radius(edges, full)  # every slot used: the farthest midpoint less a half edge
    assert float(radius) == pytest.approx(math.hypot(19.0, 3.0) - 1.0)
    assert leaves_drivable_area(corners[None], anchors, edges, full, radius).tolist() == [[False, True, True]]
    near = torch.full((1,), 1.0, dtype=F64)  # corners farther out are not judged
    assert leaves_drivable_area(corners[None], anchors, edges, full, near).tolist() == [[False, False, False]]
    spare = torch.cat([edges, torch.zeros(1, 1, 4, dtype=F64)], 1), torch.cat([full, torch.zeros(1, 1, dtype=torch.bool)], 1)
    assert math.isinf(float(complete_radius(*spare)))  # a free slot: nothing is missing


def test_comfort_bounds_are_strict() -> None:
    lo, hi = COMFORT_BOUNDS["lon_accel"]
    values = torch.tensor([[lo, lo + 1e-6, 0.0, hi - 1e-6, hi]], dtype=F64)
    ok = within_comfort_bounds(values, ("lon_accel",))
    assert ok.tolist() == [[False, True, True, True, False]]
    assert within_comfort_bounds(torch.zeros(2, len(COMFORT_QUANTITIES), 3)).all()


def test_idm_desired_gap_and_interaction_known_values() -> None:
    p = AgentIDM()  # s0 2 m, T 1 s, a 1.5, b 2 -> 2 sqrt(ab) = 2 sqrt(3)
    v = torch.tensor([0.0, 10.0, 10.0, 10.0], dtype=F64)
    lead = torch.tensor([0.0, 10.0, 0.0, 30.0], dtype=F64)
    expected = [2.0, 12.0, 12.0 + 100.0 / (2 * math.sqrt(3.0)), 2.0]  # closing in; pulling away clamps at s0
    assert torch.allclose(idm.desired_gap(v, lead, p), torch.tensor(expected, dtype=F64))
    gap = torch.tensor([1.0, 12.0, 24.0, 4.0], dtype=F64)
    assert torch.allclose(idm.interaction(v, lead, gap, p), (torch.tensor(expected, dtype=F64) / gap) ** 2)
    # per-agent parameters give the same answers
    per = idm.PerAgent(*(torch.full((4,), float(getattr(p, f)), dtype=F64) for f in ("accel", "decel", "min_gap", "headway")))
    assert torch.allclose(idm.desired_gap(v, lead, per), idm.desired_gap(v, lead, p))


def test_idm_free_road_accelerates_below_and_brakes_gently_above_the_desired_speed() -> None:
    p = PlannerIDM()
    v = torch.tensor([0.0, 10.0, 20.0, 5.0], dtype=F64)
    v0 = torch.tensor([10.0, 10.0, 10.0, 0.0], dtype=F64)
    acc = idm.free_road(v, v0, p, p.exponent)
    assert float(acc[0]) == pytest.approx(p.accel)
    assert float(acc[1]) == pytest.approx(0.0, abs=1e-12)
    assert -p.decel <= float(acc[2]) < 0.0
    assert float(acc[3]) == -p.decel


def test_users_take_limits_weights_and_idm_defaults_from_their_one_home() -> None:
    cfg, limits, agents = SimConfig(), VehicleLimits(), AgentIDM()
    for f in dataclasses.fields(VehicleLimits):
        assert getattr(cfg, f.name) == getattr(limits, f.name)
    assert (cfg.idm_min_gap, cfg.idm_headway, cfg.idm_accel, cfg.idm_decel) == (
        agents.min_gap, agents.headway, agents.accel, agents.decel)
    pdm = PDMConfig()
    assert (pdm.weight_progress, pdm.weight_ttc, pdm.weight_comfort) == (
        aggregate.WEIGHT_PROGRESS, aggregate.WEIGHT_TTC, aggregate.WEIGHT_COMFORT)
    one = torch.ones(1, dtype=F64)
    assert float(aggregate.pdms_score(one, one, one, one, one)) == 1.0
    assert float(aggregate.cls_score(one, one, one, one, one, one, one, one)) == 1.0
