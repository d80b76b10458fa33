"""Scenario / MapData invariants: validate() accepts good values and names each broken field."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import numpy as np
import pytest
from conftest import build_map, build_scenario, rectangle, road_map, straight_lane

from av.types import (
    SCHEMA_VERSION,
    YAW,
    AgentType,
    Provenance,
    Scenario,
    ScenarioError,
    VehicleParams,
    empty_map,
    wrap_angle,
)


def _edit(s: Scenario, name: str, fn: Callable[[np.ndarray], None]) -> Scenario:
    """A copy of ``s`` whose array field ``name`` was edited in place by ``fn``."""
    a = np.array(getattr(s, name))
    fn(a)
    return s.replace(**{name: a})


def _edit_map(s: Scenario, **changes: Any) -> Scenario:
    return s.replace(map=dataclasses.replace(s.map, **changes))


def _set(index: Any, value: Any) -> Callable[[np.ndarray], None]:
    def fn(a: np.ndarray) -> None:
        a[index] = value

    return fn


def _swap_timestamps(a: np.ndarray) -> None:
    a[[3, 4]] = a[[4, 3]]


def _one_point_lane() -> Any:
    lanes = [straight_lane(0.0, 10.0, 0.0), straight_lane(0.0, 0.0, 3.5)]  # the second has 1 point
    return build_map(lanes, [False, False], [10.0, 10.0], [[1], []], [rectangle(0, -1, 10, 1)] * 2, [])


def _bad_speed_map(limit: float) -> Any:
    m = road_map()
    return dataclasses.replace(m, lane_speed_limit=np.full(m.num_lanes, limit))


# (case id, corruption, substring of the expected message): each corruption breaks one field.
CORRUPTIONS: list[tuple[str, Callable[[Scenario], Scenario], str]] = [
    ("ego-nan", lambda s: _edit(s, "ego", _set((5, 0), np.nan)), "ego track has non-finite"),
    ("ego-inf", lambda s: _edit(s, "ego", _set((5, 3), np.inf)), "ego track has non-finite"),
    ("ego-yaw-unwrapped", lambda s: _edit(s, "ego", _set((2, YAW), math.pi)), "ego yaw is not wrapped"),
    ("ego-yaw-big", lambda s: _edit(s, "ego", _set((2, YAW), 4.0)), "ego yaw is not wrapped"),
    ("timestamps-not-increasing", lambda s: _edit(s, "timestamps", _swap_timestamps), "strictly increasing"),
    ("timestamps-repeated", lambda s: _edit(s, "timestamps", _set(4, 0.3)), "strictly increasing"),
    ("timestamps-spacing", lambda s: s.replace(timestamps=s.timestamps * 1.5), "not spaced by dt"),
    ("dt-mismatch", lambda s: s.replace(dt=0.5), "not spaced by dt"),
    ("dt-zero", lambda s: s.replace(dt=0.0), "dt must be positive"),
    ("dt-nan", lambda s: s.replace(dt=math.nan), "dt must be positive"),
    ("history-negative", lambda s: s.replace(history_steps=-1), "history_steps -1 outside"),
    ("history-too-big", lambda s: s.replace(history_steps=s.num_steps), "history_steps 40 outside"),
    ("one-step", lambda s: s.replace(timestamps=s.timestamps[:1], ego=s.ego[:1]), "at least 2 steps"),
    ("ego-shape", lambda s: s.replace(ego=s.ego[:, :3]), "ego must be"),
    ("ego-length", lambda s: s.replace(ego=s.ego[:-1]), "ego must be"),
    ("agents-shape", lambda s: s.replace(agents=s.agents[:, :-1]), "agents must be"),
    ("agents-fields", lambda s: s.replace(agents=s.agents[..., :4]), "agents must be"),
    ("valid-shape", lambda s: s.replace(agent_valid=np.ones((s.num_agents, s.num_steps + 1), bool)),
     "agent_valid must be"),
    ("sizes-shape", lambda s: s.replace(agent_sizes=np.ones((s.num_agents, 3))), "agent_sizes must be"),
    ("types-shape", lambda s: s.replace(agent_types=np.zeros(s.num_agents + 1)), "agent_types must be"),
    ("agent-nonzero-where-invalid", lambda s: _edit(s, "agents", _set((2, 0, 0), 1.0)),
     "zero where the mask is false"),
    ("agent-nan-where-valid", lambda s: _edit(s, "agents", _set((0, 3, 1), np.nan)), "non-finite values where valid"),
    ("agent-yaw-unwrapped", lambda s: _edit(s, "agents", _set((0, 3, YAW), 7.0)), "agent yaw is not wrapped"),
    ("size-zero", lambda s: _edit(s, "agent_sizes", _set((1, 0), 0.0)), "sizes must be positive"),
    ("size-negative", lambda s: _edit(s, "agent_sizes", _set((0, 1), -1.0)), "sizes must be positive"),
    ("size-nan", lambda s: _edit(s, "agent_sizes", _set((0, 1), np.nan)), "sizes must be positive"),
    ("unknown-type", lambda s: _edit(s, "agent_types", _set(1, 9)), "unknown agent type"),
    ("duplicate-ids", lambda s: s.replace(agent_ids=("lead", "lead", "late-ped")), "agent ids are not unique"),
    ("ego-vehicle-size", lambda s: s.replace(ego_vehicle=VehicleParams(width=0.0)), "ego vehicle sizes"),
    ("route-too-big", lambda s: s.replace(route=np.array([0, 1, s.map.num_lanes])), "route indices"),
    ("route-negative", lambda s: s.replace(route=np.array([-1, 0])), "route indices"),
    ("route-2d", lambda s: s.replace(route=np.zeros((2, 2), np.int64)), "route indices"),
    ("schema-version", lambda s: s.replace(schema_version=SCHEMA_VERSION + 1),
     f"schema_version {SCHEMA_VERSION + 1}"),
    ("empty-id", lambda s: s.replace(id=""), "id is empty"),
    ("own-parent", lambda s: s.replace(provenance=Provenance(s.id, "noop", {}, 0)), "its own parent"),
    # the map
    ("lane-offsets-end", lambda s: _edit_map(s, lane_point_offsets=s.map.lane_point_offsets + np.r_[0, 0, 0, 0, 1]),
     "lane points: offsets must rise"),
    ("lane-offsets-decreasing", lambda s: _edit_map(s, lane_point_offsets=np.array(
        [0, 200, 100, *s.map.lane_point_offsets[3:]])), "lane points: offsets must rise"),
    ("lane-offsets-length", lambda s: _edit_map(s, lane_point_offsets=s.map.lane_point_offsets[:-1]),
     "lane points: offsets must have shape"),
    ("successor-offsets", lambda s: _edit_map(s, lane_successor_offsets=np.zeros(s.map.num_lanes + 1, np.int64)),
     "lane successors: offsets"),
    ("polygon-offsets", lambda s: _edit_map(s, lane_polygon_offsets=s.map.lane_polygon_offsets[::-1].copy()),
     "lane polygons: offsets"),
    ("ring-offsets", lambda s: _edit_map(s, drivable_ring_offsets=np.array([0, 4, 100])), "drivable rings: offsets"),
    ("per-lane-arrays", lambda s: _edit_map(s, lane_is_connector=np.zeros(2, bool)), "per-lane arrays"),
    ("lane-one-point", lambda s: s.replace(map=_one_point_lane(), route=np.array([0])), "at least 2 centreline"),
    ("lane-points-shape", lambda s: _edit_map(s, lane_points=s.map.lane_points[:, :2]), "lane_points must be"),
    ("successor-out-of-range", lambda s: _edit_map(s, lane_successors=np.array([1, 9])), "successor index"),
    ("speed-limit-zero", lambda s: s.replace(map=_bad_speed_map(0.0)), "speed limits must be positive"),
    ("speed-limit-negative", lambda s: s.replace(map=_bad_speed_map(-3.0)), "speed limits must be positive"),
    ("lane-point-nan", lambda s: _edit_map(s, lane_points=_nan_at(s.map.lane_points, (7, 1))),
     "lane_points has non-finite"),
    ("polygon-point-inf",
     lambda s: _edit_map(s, lane_polygon_points=_nan_at(s.map.lane_polygon_points, (2, 0), np.inf)),
     "lane_polygon_points has non-finite"),
    ("ring-point-nan", lambda s: _edit_map(s, drivable_ring_points=_nan_at(s.map.drivable_ring_points, (0, 0))),
     "drivable_ring_points has non-finite"),
]


def _nan_at(a: np.ndarray, index: tuple[int, int], value: float = np.nan) -> np.ndarray:
    b = np.array(a)
    b[index] = value
    return b


def test_hand_made_scenario_is_valid(scenario: Scenario) -> None:
    assert scenario.validate() is scenario
    assert scenario.num_steps == 40 and scenario.num_agents == 3 and scenario.map.num_lanes == 4
    assert scenario.duration == pytest.approx(3.9)
    assert not scenario.agent_valid[2, :20].any() and scenario.agent_valid[2, 20:].all()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_agents": 0}, {"num_steps": 2, "history_steps": 1}, {"history_steps": 0}, {"num_lanes": 3}],
)
def test_edge_values_are_valid(kwargs: dict[str, Any]) -> None:
    build_scenario(**kwargs).validate()


def test_empty_map_and_unknown_speed_limit_are_valid(scenario: Scenario) -> None:
    scenario.replace(map=empty_map(), route=np.zeros(0, np.int64)).validate()
    _edit_map(scenario, lane_speed_limit=np.full(scenario.map.num_lanes, np.nan)).validate()


def test_yaw_just_below_pi_is_valid(scenario: Scenario) -> None:
    _edit(scenario, "ego", _set((2, YAW), np.nextafter(math.pi, 0))).validate()
    _edit(scenario, "ego", _set((2, YAW), -math.pi)).validate()


@pytest.mark.parametrize("corrupt, message", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_validate_names_each_broken_field(
    scenario: Scenario, corrupt: Callable[[Scenario], Scenario], message: str
) -> None:
    bad = corrupt(scenario)
    with pytest.raises(ScenarioError, match=re.escape(message)):
        bad.validate()


def test_corruptions_do_not_touch_the_original(scenario: Scenario) -> None:
    before = build_scenario()
    for _, corrupt, _ in CORRUPTIONS:
        corrupt(scenario)
    assert scenario == before
    scenario.validate()


def test_arrays_are_read_only_copies() -> None:
    s = build_scenario()
    for name in Scenario._DTYPES:
        arr = getattr(s, name)
        assert not arr.flags.writeable, name
    for name in type(s.map)._DTYPES:
        assert not getattr(s.map, name).flags.writeable, name
    with pytest.raises(ValueError):
        s.ego[0, 0] = 1.0
    with pytest.raises(ValueError):
        s.map.lane_points[0, 0] = 1.0
    ego = np.array(s.ego)
    copy = s.replace(ego=ego)
    ego[0, 0] = 123.0  # the caller's array is copied on construction
    assert copy.ego[0, 0] == 0.0


def test_values_are_frozen(scenario: Scenario) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.map.lane_ids = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.source.location = "elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(scenario)


def test_replace_makes_a_new_value(scenario: Scenario) -> None:
    other = scenario.replace(id="hand-1")
    assert other.id == "hand-1" and scenario.id == "hand-0"
    assert other != scenario
    assert other.replace(id="hand-0") == scenario


def test_equality_is_by_value() -> None:
    a, b = build_scenario(), build_scenario()
    assert a == b and a is not b
    assert a != build_scenario(ego_speed=5.5)
    assert a != build_scenario(num_lanes=3)
    assert a != _edit(a, "agent_types", _set(0, int(AgentType.CYCLIST)))
    assert a != a.replace(tags=("other",))


def test_dtypes_are_normalised(scenario: Scenario) -> None:
    s = scenario.replace(agent_types=scenario.agent_types.astype(np.int64), route=scenario.route.astype(np.int32))
    assert s.agent_types.dtype == np.int8 and s.route.dtype == np.int64
    assert s == scenario


def test_wrap_angle_numpy() -> None:
    a = np.array([-3 * math.pi, -math.pi, 0.0, math.pi, 2.5 * math.pi, 100.0])
    w = wrap_angle(a)
    assert np.all((w >= -math.pi) & (w < math.pi))
    assert np.allclose(np.cos(w), np.cos(a)) and np.allclose(np.sin(w), np.sin(a))
    assert w[3] == pytest.approx(-math.pi)
