"""The nuScenes adapter: real nuScenes-mini drives in, Scenario values out.

Known answers come from the JSON tables themselves (read here with ``json``, not the devkit):
ego poses, key-frame boxes, categories and scene lengths. Unit tests of the interpolation,
windowing and route matching use hand-made inputs and run without the data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from av.batch import ring_edges
from av.data.nuscenes import (
    DT,
    MAX_POINT_SPACING_M,
    ImportConfig,
    _connect,
    _densify,
    _interpolate,
    _lane_graph,
    _match_lanes,
    _switch_costs,
    _velocity,
    _windows,
    agent_type_of,
    load_nuscenes,
)
from av.errors import AvError
from av.geometry import points_in_rings
from av.types import AgentType, Scenario, wrap_angle
from scenarios.store import read_store, write_store
from test_bad_inputs import mirror

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def tables(root: Path) -> dict[str, Any]:
    """The tables as plain JSON, indexed by token."""
    names = ("scene", "sample", "sample_data", "ego_pose", "sample_annotation", "instance", "category", "log")
    raw = {n: json.loads((root / VERSION / f"{n}.json").read_text()) for n in names}
    out: dict[str, Any] = {n: {r["token"]: r for r in rows} for n, rows in raw.items()}
    out["scenes"] = raw["scene"]
    return out


@pytest.fixture(scope="module")
def whole(root: Path) -> dict[str, Scenario]:
    """Every mini scene imported whole (no windowing), by scene name."""
    return {s.id: s for s in load_nuscenes(root, ImportConfig(window=False))}


def _quat_yaw(q: list[float]) -> float:
    w, x, y, z = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def _lidar_chain(tables: dict[str, Any], scene: dict) -> list[dict]:
    """The scene's LIDAR_TOP sample_data records (key frames and sweeps), in order."""
    first = tables["sample"][scene["first_sample_token"]]
    last_ts = tables["sample"][scene["last_sample_token"]]["timestamp"]
    sd = next(
        r for r in tables["sample_data"].values()
        if r["sample_token"] == first["token"] and r["is_key_frame"] and "LIDAR_TOP" in r["filename"]
    )
    chain = []
    while sd is not None and sd["timestamp"] <= last_ts:
        chain.append(sd)
        sd = tables["sample_data"][sd["next"]] if sd["next"] else None
    return chain


def _category(tables: dict[str, Any], ann: dict) -> str:
    return tables["category"][tables["instance"][ann["instance_token"]]["category_token"]]["name"]


# ------------------------------------------------------------------ real data: the default import


def test_mini_import_gives_one_valid_17s_window_per_scene(real_scenarios: list[Scenario], tables: dict[str, Any]) -> None:
    names = [s["name"] for s in tables["scenes"]]
    assert [s.id for s in real_scenarios] == [f"{n}-00" for n in names]
    for s, scene in zip(real_scenarios, tables["scenes"]):
        s.validate()
        assert s.dt == DT == 0.1
        assert s.num_steps == 171 and s.history_steps == 20
        assert s.duration == pytest.approx(17.0) and s.duration >= 15.0
        assert np.allclose(np.diff(s.timestamps), 0.1, atol=1e-9) and s.timestamps[0] == 0.0
        assert s.num_agents > 0 and s.agent_valid.any(axis=1).all()  # no agent that is never valid
        assert s.route.size > 0
        assert s.source.dataset == "nuscenes/v1.0-mini" and s.source.start_step == 0
        assert s.source.scene_token == scene["token"] and s.source.scene_name == scene["name"]
        assert s.source.location == tables["log"][scene["log_token"]]["location"]
        assert np.array_equal(s.ego[0, :2], [0.0, 0.0])  # the origin is the first ego pose


def test_lanes_near_the_ego_at_every_step(real_scenarios: list[Scenario]) -> None:
    for s in real_scenarios:
        dist, _ = cKDTree(s.map.lane_points[:, :2]).query(s.ego[:, :2])
        assert dist.max() < 5.0, s.id


def test_map_meets_the_mapdata_contract(real_scenarios: list[Scenario]) -> None:
    for s in real_scenarios:
        m = s.map
        counts = np.diff(m.lane_point_offsets)
        assert counts.min() >= 2
        assert len(set(m.lane_ids)) == m.num_lanes
        assert m.lane_is_connector.any() and (~m.lane_is_connector).any()
        assert np.isnan(m.lane_speed_limit).all()  # nuScenes has no speed limits
        for i in range(m.num_lanes):
            pts = m.lane(i)
            step = np.diff(pts[:, :2], axis=0)
            spacing = np.linalg.norm(step, axis=1)
            assert spacing.max() <= MAX_POINT_SPACING_M + 1e-9 and spacing.min() > 0.005
            heading = np.arctan2(step[:, 1], step[:, 0])
            assert np.abs(wrap_angle(pts[:-1, 2] - heading)).max() < 0.25  # headings follow the line
        assert len(m.drivable_ring_offsets) > 1
        edges = torch.from_numpy(ring_edges(m.drivable_ring_points, m.drivable_ring_offsets))
        inside = points_in_rings(torch.tensor(s.ego[:, :2]), edges, torch.ones(len(edges), dtype=torch.bool))
        assert bool(inside.all()), f"{s.id}: ego leaves the drivable area"


def test_route_is_a_connected_lane_path_along_the_drive(real_scenarios: list[Scenario]) -> None:
    for s in real_scenarios:
        r = s.route.tolist()
        assert all(b in s.map.successors(a) for a, b in zip(r, r[1:])), (s.id, r)
        route_points = np.concatenate([s.map.lane(i)[:, :2] for i in r])
        dist, _ = cKDTree(route_points).query(s.ego[:, :2])
        assert dist.max() < 3.0, s.id


# ------------------------------------------------------------------ real data: known answers


def test_ego_track_equals_the_ego_pose_records(whole: dict[str, Scenario], tables: dict[str, Any]) -> None:
    for scene in tables["scenes"]:
        s = whole[scene["name"]]
        poses = [tables["ego_pose"][sd["ego_pose_token"]] for sd in _lidar_chain(tables, scene)]
        xy = np.array([p["translation"][:2] for p in poses])
        yaw = np.array([_quat_yaw(p["rotation"]) for p in poses])
        assert s.num_steps == len(poses)
        assert s.source.origin == tuple(xy[0])
        assert np.abs(s.ego[:, :2] - (xy - xy[0])).max() < 1e-9
        assert np.abs(wrap_angle(s.ego[:, 2] - yaw)).max() < 1e-9
        central = (s.ego[2:, :2] - s.ego[:-2, :2]) / 0.2
        assert np.allclose(s.ego[1:-1, 3:5], central, atol=1e-6)
        assert np.allclose(s.ego[0, 3:5], (s.ego[1, :2] - s.ego[0, :2]) / 0.1, atol=1e-6)
        assert np.allclose(s.ego[-1, 3:5], (s.ego[-1, :2] - s.ego[-2, :2]) / 0.1, atol=1e-6)


def test_agents_exact_at_key_frames_and_linear_between(whole: dict[str, Scenario], tables: dict[str, Any]) -> None:
    checked = 0
    for scene in tables["scenes"]:
        s = whole[scene["name"]]
        t0 = _lidar_chain(tables, scene)[0]["timestamp"]
        index = {a: i for i, a in enumerate(s.agent_ids)}
        anns = [a for a in tables["sample_annotation"].values() if a["instance_token"] in index]
        for ann in sorted(anns, key=lambda a: a["token"])[:40]:
            i = index[ann["instance_token"]]
            ts = tables["sample"][ann["sample_token"]]["timestamp"]
            k = (ts - t0) // 100_000
            assert s.timestamps[k] == pytest.approx((ts - t0) / 1e6, abs=1e-9)
            assert s.agent_valid[i, k]
            assert np.abs(s.agents[i, k, :2] - (np.array(ann["translation"][:2]) - s.source.origin)).max() < 1e-9
            assert abs(wrap_angle(s.agents[i, k, 2] - _quat_yaw(ann["rotation"]))) < 1e-9
            assert int(s.agent_types[i]) == agent_type_of(_category(tables, ann))
            if ann["next"]:
                nxt = tables["sample_annotation"][ann["next"]]
                a, b = np.array(ann["translation"][:2]), np.array(nxt["translation"][:2])
                expected = a + 0.4 * (b - a) - s.source.origin  # two of the five 0.1 s steps
                assert s.agent_valid[i, k + 2]
                assert np.abs(s.agents[i, k + 2, :2] - expected).max() < 1e-9
            checked += 1
    assert checked > 200


def test_agent_sizes_are_length_then_width(whole: dict[str, Scenario], tables: dict[str, Any]) -> None:
    s = whole["scene-0061"]
    index = {a: i for i, a in enumerate(s.agent_ids)}
    for ann in list(tables["sample_annotation"].values())[:500]:
        if ann["instance_token"] in index:
            w, l = ann["size"][:2]  # nuScenes: [w, l, h]
            assert np.allclose(s.agent_sizes[index[ann["instance_token"]]], (l, w), atol=0.05)


def test_instances_appearing_late_are_masked_before(whole: dict[str, Scenario], tables: dict[str, Any]) -> None:
    scene = tables["scenes"][0]
    s = whole[scene["name"]]
    t0 = _lidar_chain(tables, scene)[0]["timestamp"]
    late = []
    for i, token in enumerate(s.agent_ids):
        first = tables["sample_annotation"][tables["instance"][token]["first_annotation_token"]]
        k0 = (tables["sample"][first["sample_token"]]["timestamp"] - t0) // 100_000
        if k0 > 0:
            late.append((i, k0))
    assert late, "scene-0061 has instances that appear after its start"
    for i, k0 in late:
        assert not s.agent_valid[i, :k0].any() and s.agent_valid[i, k0]
        assert not s.agents[i, :k0].any()  # masked states are zeros, never extrapolated


def test_no_windowing_gives_whole_scenes(whole: dict[str, Scenario], tables: dict[str, Any]) -> None:
    lengths = {"scene-0061": 186, "scene-0553": 201, "scene-0655": 191, "scene-0757": 201,
               "scene-0796": 196, "scene-1077": 191, "scene-1094": 186, "scene-1100": 196}
    assert {k: s.num_steps for k, s in whole.items()} == lengths
    for s in whole.values():
        assert s.history_steps == 20 and s.source.start_step == 0


def test_import_is_deterministic(root: Path, real_scenarios: list[Scenario]) -> None:
    again = list(load_nuscenes(root, ImportConfig()))
    assert len(again) == len(real_scenarios)
    assert all(a == b for a, b in zip(again, real_scenarios))


def test_store_round_trip(real_scenarios: list[Scenario], tmp_path: Path) -> None:
    assert write_store(tmp_path / "store", real_scenarios) == len(real_scenarios)
    back = read_store(tmp_path / "store")
    assert [s.id for s in back] == [s.id for s in real_scenarios]
    assert all(a == b for a, b in zip(back, real_scenarios))


def test_scene_filter_keeps_table_order_and_rejects_unknown_names(root: Path) -> None:
    got = list(load_nuscenes(root, ImportConfig(scenes=" scene-0757,scene-0553 ", lane_resolution_m=2.0)))
    assert [s.id for s in got] == ["scene-0553-00", "scene-0757-00"]
    for s in got:  # a coarse discretization is resampled to the 0.5 m contract
        for i in range(s.map.num_lanes):
            assert np.linalg.norm(np.diff(s.map.lane(i)[:, :2], axis=0), axis=1).max() <= MAX_POINT_SPACING_M + 1e-9
    with pytest.raises(AvError, match="scene-9999"):
        load_nuscenes(root, ImportConfig(scenes="scene-0553,scene-9999"))


def test_a_location_outside_the_devkits_list_is_accepted(root: Path, tmp_path: Path, real_scenarios: list[Scenario]) -> None:
    """A nuScenes-format dataset with its own location name (and map file) imports."""
    logs = json.loads((root / VERSION / "log.json").read_text())
    for log in logs:
        log["location"] = log["location"].replace("boston-seaport", "my-harbour")
    boston = (root / "maps" / "expansion" / "boston-seaport.json").read_bytes()
    data = mirror(root, tmp_path / "root", {
        f"{VERSION}/log.json": json.dumps(logs).encode(),
        "maps/expansion/boston-seaport.json": None,
        "maps/expansion/my-harbour.json": boston,
    })
    (s,) = load_nuscenes(data, ImportConfig(scenes="scene-0553"))
    (reference,) = [r for r in real_scenarios if r.id == "scene-0553-00"]
    assert s.source.location == "my-harbour"
    assert s == reference.replace(source=s.source)


def test_speed_limits_come_from_the_lane_records_where_present(root: Path, tmp_path: Path) -> None:
    expansion = json.loads((root / "maps" / "expansion" / "boston-seaport.json").read_text())
    for lane in expansion["lane"]:
        lane["speed_limit_mps"] = 11.5
    data = mirror(root, tmp_path / "root", {"maps/expansion/boston-seaport.json": json.dumps(expansion).encode()})
    (s,) = load_nuscenes(data, ImportConfig(scenes="scene-0553"))
    limits, connector = s.map.lane_speed_limit, s.map.lane_is_connector
    assert np.all(limits[~connector] == 11.5) and np.isnan(limits[connector]).all()


# ------------------------------------------------------------------ hand-made inputs, no data needed


def test_category_mapping() -> None:
    assert agent_type_of("vehicle.car") == AgentType.VEHICLE
    assert agent_type_of("vehicle.bus.bendy") == AgentType.VEHICLE
    assert agent_type_of("vehicle.bicycle") == AgentType.CYCLIST
    assert agent_type_of("vehicle.motorcycle") == AgentType.CYCLIST
    assert agent_type_of("human.pedestrian.adult") == AgentType.PEDESTRIAN
    assert agent_type_of("human.pedestrian.stroller") == AgentType.PEDESTRIAN
    assert agent_type_of("movable_object.trafficcone") == AgentType.STATIC
    assert agent_type_of("static_object.bicycle_rack") == AgentType.STATIC
    assert agent_type_of("animal") is None


def test_windowing_policy() -> None:
    cfg = ImportConfig()
    assert _windows(201, cfg) == [(0, 171)]  # the remainder after the last full window is dropped
    assert _windows(400, cfg) == [(0, 171), (171, 342)]
    assert _windows(100, cfg) == [(0, 100)]  # shorter than a window, but 2 s history + 1 s future
    assert _windows(30, cfg) == []  # too short for history and 1 s of future
    assert _windows(400, ImportConfig(window=False)) == [(0, 400)]


def test_interpolation_is_exact_at_keys_linear_between_and_masked_outside() -> None:
    # Track 0: keys at 0.0 s and 0.5 s, yaw crossing +-pi; track 1: keys at 0.2 s and 2.0 s (a gap).
    group = np.array([0, 0, 1, 1])
    t = np.array([0, 500_000, 200_000, 2_000_000])
    xy = np.array([[0.0, 0.0], [5.0, -1.0], [1.0, 1.0], [9.0, 9.0]])
    yaw = np.array([3.0, -3.0, 0.0, 0.0])
    grid = np.arange(8) * 100_000
    out_xy, out_yaw, valid = _interpolate(group, t, xy, yaw, 2, grid, max_gap_us=1_000_000)
    assert valid[0].tolist() == [True] * 6 + [False] * 2  # never extrapolated past the last key
    assert np.array_equal(out_xy[0, 0], xy[0]) and np.array_equal(out_xy[0, 5], xy[1])
    assert np.allclose(out_xy[0, 2], [2.0, -0.4])
    mid = 3.0 + 0.4 * (2 * math.pi - 6.0)  # along the shorter arc, through pi
    assert out_yaw[0, 2] == pytest.approx(float(wrap_angle(mid)))
    assert valid[1].tolist() == [False, False, True] + [False] * 5  # key at 0.2 s; the gap is > 1 s
    assert np.array_equal(out_xy[1, 2], xy[2])
    assert not out_xy[~valid].any() and not out_yaw[~valid].any()


def test_velocity_uses_valid_neighbours_only() -> None:
    t = np.arange(5) * 0.1
    xy = np.zeros((2, 5, 2))
    xy[0, :, 0] = 3.0 * t  # 3 m/s along x
    valid = np.array([[True] * 5, [False, False, True, False, False]])
    xy[1, 2] = [7.0, 7.0]
    v = _velocity(xy, valid, t)
    assert np.allclose(v[0, :, 0], 3.0) and np.allclose(v[0, :, 1], 0.0)
    assert not v[1].any()  # a single valid step has no velocity


def test_densify_bounds_spacing_and_keeps_points() -> None:
    pts = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.3, math.pi / 2]])
    out = _densify(pts, 0.5)
    assert np.linalg.norm(np.diff(out[:, :2], axis=0), axis=1).max() <= 0.5 + 1e-12
    assert len(out) == 6 and np.array_equal(out[[0, 4, 5]], pts)


def test_lane_matching_ignores_flickers_and_repairs_overlapping_alternatives() -> None:
    # Lane graph: 0 -> 1 and 0 -> 2 (1 and 2 branch from 0, so they are alternatives); 3 is parallel.
    successors = [[1, 2], [], [], []]
    nxt, alternatives = _lane_graph(successors)
    assert alternatives[1, 2] and alternatives[2, 1] and not alternatives[0, 3]
    switch = _switch_costs(nxt, alternatives)
    cost = np.full((12, 4), 1.0)
    cost[:, 3] = 3.0
    cost[4:6, 3] = 0.0  # lane 3 is cheaper for two steps only: a flicker, not worth two switches
    assert _match_lanes(cost, switch).tolist() == [0] * 12
    cost[4:, 3] = 0.0  # lane 3 is cheaper from step 4 on: a real lane change
    assert _match_lanes(cost, switch).tolist() == [0] * 4 + [3] * 8
    assert _connect([0, 1, 2], nxt, alternatives).tolist() == [0, 2]  # the ego was on 2 all along
