"""collate(): padding to the largest scenario, masks, values equal to the sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_scenario

from av.batch import ScenarioBatch, collate, ring_edges
from av.types import Scenario

# Scenarios that differ in steps, agents, lanes, lane points and history length.
VARIANTS = [
    dict(id="a", num_steps=40, num_agents=3, num_lanes=4, road_length=120.0, history_steps=10),
    dict(id="b", num_steps=25, num_agents=1, num_lanes=3, road_length=80.0, history_steps=5),
    dict(id="c", num_steps=52, num_agents=0, num_lanes=4, road_length=60.0, history_steps=20),
]


@pytest.fixture(params=[1, 3], ids=["B1", "B3"])
def scenarios(request: pytest.FixtureRequest) -> list[Scenario]:
    return [build_scenario(**kw) for kw in VARIANTS[: request.param]]


@pytest.fixture
def batch(scenarios: list[Scenario]) -> ScenarioBatch:
    return collate(scenarios)


def test_shapes_are_padded_to_the_max(scenarios: list[Scenario], batch: ScenarioBatch) -> None:
    B = len(scenarios)
    T = max(s.num_steps for s in scenarios)
    N = max(s.num_agents for s in scenarios)
    L = max(s.map.num_lanes for s in scenarios)
    P = max(len(s.map.lane_points) for s in scenarios)
    R = max(len(s.route) for s in scenarios)
    E = max(len(s.map.drivable_ring_points) for s in scenarios)
    Q = max(len(s.map.lane_polygon_points) for s in scenarios)
    assert batch.batch_size == B and batch.ids == tuple(s.id for s in scenarios)
    assert batch.step_valid.shape == (B, T) and batch.history_steps.shape == (B,)
    assert batch.ego.shape == (B, T, 5) and batch.ego_dims.shape == (B, 4)
    assert batch.agents.shape == (B, N, T, 5) and batch.agent_valid.shape == (B, N, T)
    assert batch.agent_types.shape == (B, N) and batch.agent_sizes.shape == (B, N, 2)
    assert batch.lane_points.shape == (B, P, 3) and batch.lane_point_lane.shape == (B, P)
    for name in ("lane_is_connector", "lane_speed_limit", "lane_valid"):
        assert getattr(batch, name).shape == (B, L), name
    assert batch.lane_successors.shape[:2] == (B, L)
    assert batch.lane_polygon_edges.shape == (B, Q, 4) and batch.lane_polygon_edge_lane.shape == (B, Q)
    assert batch.route.shape == (B, R)
    assert batch.drivable_edges.shape == (B, E, 4) and batch.drivable_edge_valid.shape == (B, E)
    assert batch.dt == pytest.approx(0.1)


def test_dtypes(batch: ScenarioBatch) -> None:
    for name in ("ego", "ego_dims", "agents", "agent_sizes", "lane_points", "lane_speed_limit",
                 "lane_polygon_edges", "drivable_edges"):
        assert getattr(batch, name).dtype == torch.float32, name
    for name in ("step_valid", "agent_valid", "lane_is_connector", "lane_valid", "drivable_edge_valid"):
        assert getattr(batch, name).dtype == torch.bool, name
    for name in ("history_steps", "agent_types", "lane_point_lane", "lane_successors", "route",
                 "lane_polygon_edge_lane"):
        assert getattr(batch, name).dtype == torch.long, name


def test_values_equal_sources_and_padding_is_zero(scenarios: list[Scenario], batch: ScenarioBatch) -> None:
    f32 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    for b, s in enumerate(scenarios):
        T, N, L = s.num_steps, s.num_agents, s.map.num_lanes
        P, R = len(s.map.lane_points), len(s.route)
        assert batch.step_valid[b, :T].all() and not batch.step_valid[b, T:].any()
        assert batch.history_steps[b] == s.history_steps
        assert torch.equal(batch.ego[b, :T], f32(s.ego)) and not batch.ego[b, T:].any()
        v = s.ego_vehicle
        assert torch.equal(batch.ego_dims[b], f32([v.length, v.width, v.wheelbase, v.rear_axle_to_center]))
        assert torch.equal(batch.agents[b, :N, :T], f32(s.agents))
        assert not batch.agents[b, N:].any() and not batch.agents[b, :, T:].any()
        assert torch.equal(batch.agent_valid[b, :N, :T], torch.tensor(s.agent_valid))
        assert not batch.agent_valid[b, N:].any() and not batch.agent_valid[b, :, T:].any()
        assert batch.agent_types[b, :N].tolist() == s.agent_types.tolist()
        assert (batch.agent_types[b, N:] == -1).all()
        assert torch.equal(batch.agent_sizes[b, :N], f32(s.agent_sizes).reshape(N, 2))
        assert not batch.agent_sizes[b, N:].any()
        assert torch.equal(batch.lane_points[b, :P], f32(s.map.lane_points)) and not batch.lane_points[b, P:].any()
        lane_of_point = np.repeat(np.arange(L), np.diff(s.map.lane_point_offsets))
        assert batch.lane_point_lane[b, :P].tolist() == lane_of_point.tolist()
        assert (batch.lane_point_lane[b, P:] == -1).all()
        assert batch.lane_valid[b, :L].all() and not batch.lane_valid[b, L:].any()
        assert batch.lane_is_connector[b, :L].tolist() == s.map.lane_is_connector.tolist()
        assert not batch.lane_is_connector[b, L:].any()
        assert torch.equal(batch.lane_speed_limit[b, :L].isnan(), torch.from_numpy(np.isnan(s.map.lane_speed_limit)))
        known = ~np.isnan(s.map.lane_speed_limit)
        assert torch.equal(batch.lane_speed_limit[b, :L][known], f32(s.map.lane_speed_limit[known]))
        assert batch.route[b, :R].tolist() == s.route.tolist() and (batch.route[b, R:] == -1).all()
        for lane in range(L):
            succ = batch.lane_successors[b, lane]
            assert succ[succ >= 0].tolist() == s.map.successors(lane).tolist()
            assert (succ[len(s.map.successors(lane)):] == -1).all()
        assert (batch.lane_successors[b, L:] == -1).all()


def _check_rings(edges: torch.Tensor, points: np.ndarray, offsets: np.ndarray) -> None:
    """Edges of each ring start at its points, chain end-to-start, and the last closes on the first."""
    for k in range(len(offsets) - 1):
        e = edges[offsets[k] : offsets[k + 1]].double()
        assert torch.allclose(e[:, :2], torch.tensor(points[offsets[k] : offsets[k + 1]]), atol=1e-4)
        assert torch.allclose(e[:-1, 2:], e[1:, :2])  # each edge ends where the next starts
        assert torch.allclose(e[-1, 2:], e[0, :2])  # the ring is closed


def test_drivable_and_lane_polygon_edges_close_each_ring(scenarios: list[Scenario], batch: ScenarioBatch) -> None:
    for b, s in enumerate(scenarios):
        m = s.map
        E, Q = len(m.drivable_ring_points), len(m.lane_polygon_points)
        assert len(m.drivable_ring_offsets) == 3  # an outer ring and a hole
        assert batch.drivable_edge_valid[b, :E].all() and not batch.drivable_edge_valid[b, E:].any()
        assert not batch.drivable_edges[b, E:].any()
        _check_rings(batch.drivable_edges[b], m.drivable_ring_points, m.drivable_ring_offsets)
        _check_rings(batch.lane_polygon_edges[b], m.lane_polygon_points, m.lane_polygon_offsets)
        lane_of_edge = np.repeat(np.arange(m.num_lanes), np.diff(m.lane_polygon_offsets))
        assert batch.lane_polygon_edge_lane[b, :Q].tolist() == lane_of_edge.tolist()
        assert (batch.lane_polygon_edge_lane[b, Q:] == -1).all()


def test_ring_edges_closes_each_ring_and_handles_empty() -> None:
    pts = np.array([[0, 0], [1, 0], [1, 1], [5, 5], [6, 5], [6, 6], [5, 6]], dtype=np.float64)
    e = ring_edges(pts, np.array([0, 3, 7]))
    assert e[2].tolist() == [1, 1, 0, 0] and e[6].tolist() == [5, 6, 5, 5]
    assert ring_edges(np.zeros((0, 2)), np.array([0])).shape == (0, 4)


def test_collate_rejects_mixed_dt_and_empty() -> None:
    with pytest.raises(ValueError, match="share dt"):
        collate([build_scenario(), build_scenario(id="x", dt=0.2)])
    with pytest.raises(ValueError):
        collate([])


def test_to_keeps_values(batch: ScenarioBatch) -> None:
    moved = batch.to("cpu")
    assert moved.ids == batch.ids and torch.equal(moved.agents, batch.agents)
