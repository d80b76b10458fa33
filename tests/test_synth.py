"""The synthetic dataroot (:mod:`av.data.synth`): the official devkit reads it, it is deterministic,
its drives are physically plausible, and the project's nuScenes adapter imports it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import torch

from av.data import synth_roads as roads
from av.data.synth import SynthConfig, write_synthetic_dataroot
from av.errors import AvError
from av.checks import box_overlap
from av.geometry import box_corners
from av.types import VehicleParams

VERSION = SynthConfig.version
ZOE = VehicleParams()


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataroot(tmp_path_factory.mktemp("synth") / "root", SynthConfig(drives=3, seed=0))


@pytest.fixture(scope="module")
def nusc(dataroot: Path) -> Any:
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(dataroot), verbose=False)


@pytest.fixture(scope="module")
def maps(dataroot: Path, nusc: Any) -> dict[str, Any]:
    from nuscenes.map_expansion import map_api

    out = {}
    for location in sorted({log["location"] for log in nusc.log}):
        if location not in map_api.locations:  # the devkit only knows the nuScenes towns
            map_api.locations.append(location)
        out[location] = map_api.NuScenesMap(dataroot=str(dataroot), map_name=location)
    return out


def _yaw(q: list[float]) -> float:
    w, _, _, z = q
    return math.atan2(2 * w * z, 1 - 2 * z * z)


def _lidar_chain(nusc: Any, scene: dict) -> list[dict]:
    """The scene's LIDAR_TOP sample_data records, in time order (key frames and sweeps)."""
    chain = [nusc.get("sample_data", nusc.get("sample", scene["first_sample_token"])["data"]["LIDAR_TOP"])]
    while chain[-1]["next"]:
        chain.append(nusc.get("sample_data", chain[-1]["next"]))
    return chain


def _ego_track(nusc: Any, scene: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rear-axle poses ``[T, 3]`` and timestamps ``[T]`` (s) along the LIDAR_TOP chain."""
    poses = [nusc.get("ego_pose", sd["ego_pose_token"]) for sd in _lidar_chain(nusc, scene)]
    xyyaw = [[*p["translation"][:2], _yaw(p["rotation"])] for p in poses]
    return np.array(xyyaw), np.array([p["timestamp"] / 1e6 for p in poses])


def _drivable(nmap: Any) -> shapely.Geometry:
    return shapely.union_all([nmap.extract_polygon(p) for r in nmap.drivable_area for p in r["polygon_tokens"]])


def _corners(xy: np.ndarray, yaw: np.ndarray, length: np.ndarray, width: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor
    return box_corners(t(xy, dtype=torch.float64), t(yaw, dtype=torch.float64),
                       t(length, dtype=torch.float64), t(width, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# Layout and the devkit


def test_layout_is_the_nuscenes_one(dataroot: Path, nusc: Any) -> None:
    tables = {p.stem for p in (dataroot / VERSION).glob("*.json")}
    assert tables == {"attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
                      "sample_annotation", "sample_data", "scene", "sensor", "visibility"}
    assert len(nusc.scene) == 3
    for m in nusc.map:
        assert (dataroot / m["filename"]).is_file()
    for scene in nusc.scene:
        samples = [nusc.get("sample", scene["first_sample_token"])]
        while samples[-1]["next"]:
            samples.append(nusc.get("sample", samples[-1]["next"]))
        assert len(samples) == scene["nbr_samples"] == 41
        assert samples[-1]["token"] == scene["last_sample_token"]
        assert np.allclose(np.diff([s["timestamp"] for s in samples]), 500_000)
        sd = nusc.get("sample_data", samples[0]["data"]["LIDAR_TOP"])
        chain = [sd]
        while chain[-1]["next"]:
            chain.append(nusc.get("sample_data", chain[-1]["next"]))
        assert len(chain) == 201
        assert np.array_equal(np.diff([c["timestamp"] for c in chain]), np.full(200, 100_000))
        for k, c in enumerate(chain):
            assert c["is_key_frame"] == (k % 5 == 0)
            assert c["ego_pose_token"] == c["token"]
            assert c["sample_token"] == samples[-(-k // 5)]["token"]  # a sweep belongs to the next key frame
        ann = nusc.get("sample_annotation", samples[10]["anns"][0])
        assert ann["visibility_token"] == "4" and ann["num_lidar_pts"] == 1
        assert nusc.get_boxes(chain[52]["token"])  # the devkit interpolates boxes at sweeps


def test_maps_load_with_the_devkit_and_are_consistent(dataroot: Path, maps: dict[str, Any]) -> None:
    assert len(maps) == 1  # three drives share one town by default
    for location, nmap in maps.items():
        records = nmap.lane + nmap.lane_connector
        tokens = {r["token"] for r in records}
        assert set(nmap.connectivity) == tokens == set(nmap.arcline_path_3)
        for r in nmap.lane:
            assert r["speed_limit_mps"] in (11.1, 13.9)
        assert {r["speed_limit_mps"] for r in nmap.lane_connector} == {8.3}
        lines = nmap.discretize_lanes(sorted(tokens), 0.5)
        drivable = _drivable(nmap).buffer(0.01)
        for r in records:
            pts = np.array(lines[r["token"]])
            assert len(pts) >= 2
            assert np.all(pts[:, :2] > 0) and np.all(pts[:, :2] < nmap.canvas_edge)
            poly = nmap.extract_polygon(r["polygon_token"]).buffer(0.02)
            assert shapely.contains_xy(poly, pts[:, 0], pts[:, 1]).all(), r["token"]
            assert shapely.contains_xy(drivable, pts[:, 0], pts[:, 1]).all()
            links = nmap.connectivity[r["token"]]
            for nxt in links["outgoing"]:
                assert r["token"] in nmap.connectivity[nxt]["incoming"]
                start = np.array(lines[nxt][0])
                assert np.hypot(*(start[:2] - pts[-1, :2])) < 0.01  # a lane starts where its predecessor ends
                assert abs((start[2] - pts[-1, 2] + math.pi) % (2 * math.pi) - math.pi) < 0.01
            for prv in links["incoming"]:
                assert r["token"] in nmap.connectivity[prv]["outgoing"]
        # every connector links exactly one lane to one lane
        for r in nmap.lane_connector:
            assert len(nmap.connectivity[r["token"]]["incoming"]) == 1
            assert len(nmap.connectivity[r["token"]]["outgoing"]) == 1
        assert nmap.ped_crossing and nmap.road_divider
        assert json.loads((dataroot / "maps" / "expansion" / f"{location}.json").read_text())["version"] == "1.3"


def test_generated_towns_have_varied_roads() -> None:
    """Across a few towns: 4-way and T-junctions, 1 and 2 lanes per side, curved roads, all turns."""
    degrees, lanes_per_side, movements, curved = set(), set(), set(), False
    for seed in range(3):
        net = roads.build_network(f"t{seed}", np.random.default_rng(seed))
        for j in net.junctions:
            degrees.add(sum((r.u == j) + (r.v == j) for r in net.roads))
        lanes_per_side |= {r.lanes_per_side for r in net.roads}
        movements |= {lane.movement for lane in net.lanes if lane.is_connector}
        curved |= any(np.any(lane.pieces[:, 4] != 0) for lane in net.lanes if not lane.is_connector)
        assert all(lane.length > 1.0 for lane in net.lanes)
        assert np.array_equal(net.conflicts, net.conflicts.T)
    assert {3, 4} <= degrees
    assert lanes_per_side == {1, 2}
    assert movements == {"straight", "left", "right"}
    assert curved


def test_pieces_geometry_has_known_answers() -> None:
    quarter = roads.chain(np.zeros(3), np.array([5 * math.pi]), np.array([0.1]))  # radius 10, 90 deg left
    assert np.allclose(roads.end_pose(quarter), [10.0, 10.0, math.pi / 2])
    inner = roads.offset(quarter, 1.0)  # 1 m to the left: radius 9
    assert np.allclose(roads.end_pose(inner), [9.0, 10.0, math.pi / 2]) and np.isclose(inner[0, 4], 1 / 9)
    back = roads.reverse(quarter)
    assert np.allclose(back[0, :2], [10.0, 10.0]) and np.allclose(roads.end_pose(back)[:2], [0.0, 0.0])
    assert np.allclose(roads.reverse(back), quarter)
    # a right turn and a lateral shift end exactly on the target pose, with no jump in heading
    for target in ([20.0, -15.0, -math.pi / 2], [30.0, 3.5, 0.0]):
        pieces = roads.connector_pieces(np.zeros(3), np.array(target))
        assert np.allclose(roads.end_pose(pieces), target, atol=1e-9)
        starts, ends = pieces[1:, :3], roads.piece_pose(pieces[:-1], pieces[:-1, 3])
        assert np.allclose(starts, ends, atol=1e-9)
        steps = np.abs(np.diff(np.concatenate([[0.0], pieces[:, 4], [0.0]])))
        assert steps.max() <= 0.25 * np.abs(pieces[:, 4]).max() + 1e-12  # curvature ramps in quarters


# ------------------------------------------------------------------------------------------------
# Determinism


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(dataroot: Path, tmp_path: Path) -> None:
    a = _files(dataroot)
    b = _files(write_synthetic_dataroot(tmp_path / "b", SynthConfig(drives=3, seed=0)))
    c = _files(write_synthetic_dataroot(tmp_path / "c", SynthConfig(drives=3, seed=1, duration_s=5.0)))
    assert a == b
    assert a.keys() != c.keys()  # other town names
    assert a[f"{VERSION}/scene.json"] != c[f"{VERSION}/scene.json"]


# ------------------------------------------------------------------------------------------------
# Physical plausibility of the written drives


def test_ego_drives_comfortably_within_speed_limits(nusc: Any, maps: dict[str, Any]) -> None:
    turned = 0
    for scene in nusc.scene:
        nmap = maps[nusc.get("log", scene["log_token"])["location"]]
        poses, t = _ego_track(nusc, scene)
        assert np.allclose(np.diff(t), 0.1)
        step = np.diff(poses[:, :2], axis=0)
        speed = np.hypot(step[:, 0], step[:, 1]) / 0.1  # [T-1] at mid-steps
        accel = np.diff(speed) / 0.1
        yaw_rate = ((np.diff(poses[:, 2]) + math.pi) % (2 * math.pi) - math.pi) / 0.1
        assert np.abs(accel).max() <= 2.55, scene["name"]
        assert np.abs(yaw_rate).max() <= 0.8, scene["name"]
        assert np.abs(np.diff(yaw_rate) / 0.1).max() <= 2.5  # yaw acceleration
        assert (speed * np.abs(yaw_rate)).max() <= 2.6  # lateral acceleration
        # speed limit of the lanes under the rear axle
        records = nmap.lane + nmap.lane_connector
        polys = [nmap.extract_polygon(r["polygon_token"]).buffer(0.05) for r in records]
        limit = np.array([r["speed_limit_mps"] for r in records])
        mid = 0.5 * (poses[1:, :2] + poses[:-1, :2])
        inside = np.stack([shapely.contains_xy(p, mid[:, 0], mid[:, 1]) for p in polys], axis=1)
        assert inside.any(axis=1).all(), "the ego left its lanes"
        allowed = np.where(inside, limit[None], 0.0).max(axis=1)
        assert np.all(speed <= allowed + 0.2), scene["name"]
        turned += abs((poses[-1, 2] - poses[0, 2] + math.pi) % (2 * math.pi) - math.pi) > 1.0
    assert turned >= 2  # most drives take a junction turn


def test_no_two_boxes_overlap_at_any_key_frame(nusc: Any) -> None:
    for sample in nusc.sample:
        anns = [nusc.get("sample_annotation", a) for a in sample["anns"]]
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        yaw = np.array([_yaw(pose["rotation"])] + [_yaw(a["rotation"]) for a in anns])
        rear = np.array(pose["translation"][:2])
        xy = np.array([rear + ZOE.rear_axle_to_center * np.array([math.cos(yaw[0]), math.sin(yaw[0])])]
                      + [a["translation"][:2] for a in anns])
        wl = np.array([[ZOE.width, ZOE.length]] + [a["size"][:2] for a in anns])
        boxes = torch.as_tensor(np.concatenate([xy, yaw[:, None], wl[:, ::-1]], 1), dtype=torch.float64)
        i, j = np.triu_indices(len(xy), 1)
        hit = box_overlap(boxes[torch.as_tensor(i)], boxes[torch.as_tensor(j)])
        assert not hit.any(), [(anns[a - 1]["instance_token"] if a else "ego") for a in i[hit.numpy()]]


def test_ego_and_vehicles_stay_on_the_drivable_area(nusc: Any, maps: dict[str, Any]) -> None:
    for scene in nusc.scene:
        drivable = _drivable(maps[nusc.get("log", scene["log_token"])["location"]]).buffer(0.05)
        poses, _ = _ego_track(nusc, scene)
        centre = poses[:, :2] + ZOE.rear_axle_to_center * np.stack([np.cos(poses[:, 2]), np.sin(poses[:, 2])], 1)
        n = len(poses)
        ego = _corners(centre, poses[:, 2], np.full(n, ZOE.length), np.full(n, ZOE.width)).reshape(-1, 2).numpy()
        assert shapely.contains_xy(drivable, ego[:, 0], ego[:, 1]).all()
        anns = [a for a in nusc.sample_annotation if a["category_name"].startswith("vehicle.")
                and nusc.get("sample", a["sample_token"])["scene_token"] == scene["token"]]
        xy = np.array([a["translation"][:2] for a in anns])
        yaw = np.array([_yaw(a["rotation"]) for a in anns])
        size = np.array([a["size"][:2] for a in anns])
        corners = _corners(xy, yaw, size[:, 1], size[:, 0]).reshape(-1, 2).numpy()
        assert shapely.contains_xy(drivable, corners[:, 0], corners[:, 1]).all()


def test_traffic_content_and_annotation_chains(nusc: Any) -> None:
    late_or_early = 0
    kinds: set[str] = set()
    for scene in nusc.scene:
        samples = {s["token"]: k for k, s in enumerate(sorted(
            (s for s in nusc.sample if s["scene_token"] == scene["token"]), key=lambda s: s["timestamp"]))}
        instances = {a["instance_token"] for a in nusc.sample_annotation if a["sample_token"] in samples}
        moving_vehicles = 0
        for token in instances:
            inst = nusc.get("instance", token)
            chain = [nusc.get("sample_annotation", inst["first_annotation_token"])]
            while chain[-1]["next"]:
                chain.append(nusc.get("sample_annotation", chain[-1]["next"]))
            assert len(chain) == inst["nbr_annotations"] and chain[-1]["token"] == inst["last_annotation_token"]
            steps = [samples[a["sample_token"]] for a in chain]
            assert steps == list(range(steps[0], steps[0] + len(steps)))  # consecutive key frames
            late_or_early += steps[0] > 0 or steps[-1] < len(samples) - 1
            name = chain[0]["category_name"]
            kinds.add(name)
            attrs = {nusc.get("attribute", t)["name"] for a in chain for t in a["attribute_tokens"]}
            moving_vehicles += name in ("vehicle.car", "vehicle.truck") and "vehicle.parked" not in attrs
            assert all(q[1] == q[2] == 0.0 for q in (a["rotation"] for a in chain))  # yaw only
        assert 5 <= moving_vehicles <= 20, scene["name"]
    assert {"vehicle.car", "human.pedestrian.adult"} <= kinds
    assert late_or_early > 0


def _chains(nusc: Any, scene: dict) -> dict[str, list[dict]]:
    """Annotation chains (in time order) of the instances of a scene, by instance token."""
    out: dict[str, list[dict]] = {}
    for inst in nusc.instance:
        first = nusc.get("sample_annotation", inst["first_annotation_token"])
        if nusc.get("sample", first["sample_token"])["scene_token"] != scene["token"]:
            continue
        chain = [first]
        while chain[-1]["next"]:
            chain.append(nusc.get("sample_annotation", chain[-1]["next"]))
        out[inst["token"]] = chain
    return out


def test_a_lead_vehicle_brakes_in_front_of_the_ego(nusc: Any, maps: dict[str, Any]) -> None:
    """Where the description says so, a car drives in the ego's lane, 3-40 m ahead, and there
    slows down by at least 1.5 m/s within a second."""
    scenes = [s for s in nusc.scene if "lead vehicle brakes" in s["description"]]
    assert scenes
    for scene in scenes:
        nmap = maps[nusc.get("log", scene["log_token"])["location"]]
        lanes = shapely.STRtree([nmap.extract_polygon(r["polygon_token"]) for r in nmap.lane + nmap.lane_connector])
        poses, _ = _ego_track(nusc, scene)
        step = {sd["sample_token"]: k for k, sd in enumerate(_lidar_chain(nusc, scene)) if sd["is_key_frame"]}
        found = False
        for chain in _chains(nusc, scene).values():
            if chain[0]["category_name"] != "vehicle.car" or len(chain) < 4:
                continue
            steps = np.array([step[a["sample_token"]] for a in chain])
            xy = np.array([a["translation"][:2] for a in chain])
            ego_in = lanes.query(shapely.points(poses[steps, :2]), predicate="intersects")
            car_in = lanes.query(shapely.points(xy), predicate="intersects")
            same = {(int(k), int(lane)) for k, lane in ego_in.T} & {(int(k), int(lane)) for k, lane in car_in.T}
            in_lane = np.isin(np.arange(len(chain)), [k for k, _ in same])
            gap = np.hypot(*(xy - poses[steps, :2]).T)
            lead = in_lane & (gap > 3) & (gap < 40)
            speed = np.hypot(*np.diff(xy, axis=0).T) / 0.5  # between key frames
            slowing = speed[:-2] - speed[2:]  # over one second, between key frames j and j + 3
            found |= bool((slowing[lead[:-3] & lead[3:]] >= 1.5).any())
        assert found, scene["name"]


def test_pedestrians_cross_the_road(nusc: Any, maps: dict[str, Any]) -> None:
    """Pedestrians step from the sidewalk onto the road (within 20 s not all get across)."""
    crossed = 0
    for scene in nusc.scene:
        drivable = _drivable(maps[nusc.get("log", scene["log_token"])["location"]])
        for chain in _chains(nusc, scene).values():
            if chain[0]["category_name"] == "human.pedestrian.adult":
                xy = np.array([a["translation"][:2] for a in chain])
                on_road = shapely.contains_xy(drivable, xy[:, 0], xy[:, 1])
                crossed += bool(on_road.any() and not on_road[0])
    assert crossed >= 2


# ------------------------------------------------------------------------------------------------
# The project's nuScenes adapter


def test_the_adapter_imports_validates_and_round_trips(dataroot: Path, tmp_path: Path) -> None:
    from av.data.nuscenes import ImportConfig, load_nuscenes
    from scenarios.store import read_store, write_store

    scenarios = list(load_nuscenes(dataroot, ImportConfig(version=VERSION, window=False)))
    assert len(scenarios) == 3
    for s in scenarios:
        s.validate()
        assert s.num_steps == 201 and s.source.location.startswith("synth-town-0-")
        limits = s.map.lane_speed_limit
        assert np.all(np.isfinite(limits)) and set(np.round(limits[s.map.lane_is_connector], 1)) == {8.3}
        assert s.num_agents > 0
    assert sum(len(s.route) >= 2 for s in scenarios) >= 2  # most egos get into their junction
    write_store(tmp_path / "store", scenarios)
    back = read_store(tmp_path / "store")
    assert back == scenarios


# ------------------------------------------------------------------------------------------------
# The synthetic ego is the reference driver of closed-loop evaluation


def test_log_replay_of_the_default_drives_scores_as_a_reference_driver(tmp_path: Path) -> None:
    """Replayed by the log-replay planner in the simulator and scored by the nuPlan evaluator, the
    ``av pipeline`` default drives lose (almost) nothing: in particular the ego keeps its
    time-to-collision (right turns close to oncoming traffic used to fail it)."""
    from av.batch import collate
    from av.data.nuscenes import ImportConfig, load_nuscenes
    from closedloop.evaluator import evaluate
    from closedloop.planner import make_planner
    from closedloop.driver import rollout as drive
    from closedloop.sim import make_simulator

    root = write_synthetic_dataroot(tmp_path / "root", SynthConfig(drives=6, seed=0))
    scenarios = list(load_nuscenes(root, ImportConfig(version=VERSION)))
    assert len(scenarios) == 6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            sim = make_simulator("builtin", agents="log")
            rollout = drive(sim, collate(scenarios), make_planner("log_replay"))
            scores = evaluate(rollout)
    finally:
        torch.set_num_threads(threads)
    cls = scores["cls"].double()
    detail = {s.id: (round(float(c), 3), float(ttc)) for s, c, ttc in zip(scenarios, cls, scores["ttc"])}
    assert float(cls.mean()) >= 0.9, detail
    assert int((scores["ttc"] < 1).sum()) <= 1, detail
    assert float(scores["no_collision"].min()) == 1.0 and float(scores["progress"].min()) > 0.95, detail


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs", [{"drives": 0}, {"seed": -1}, {"duration_s": 20.3}, {"version": "../x"}, {"annotation_radius_m": 0.0}]
)
def test_bad_config_is_a_one_line_error(kwargs: dict) -> None:
    with pytest.raises(AvError, match="synthetic data: "):
        SynthConfig(**kwargs)


def test_refuses_to_overwrite_a_foreign_directory_but_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(AvError, match="refusing to overwrite"):
        write_synthetic_dataroot(foreign, SynthConfig(drives=1))
    assert (foreign / "notes.txt").read_text() == "keep me"
    root = tmp_path / "root"
    write_synthetic_dataroot(root, SynthConfig(drives=1, seed=3, duration_s=2.0))
    write_synthetic_dataroot(root, SynthConfig(drives=1, seed=4, duration_s=2.0, version="v9"))
    assert not (root / VERSION).exists() and (root / "v9" / "scene.json").is_file()
    assert json.loads((root / "synth.json").read_text())["config"]["seed"] == 4


def test_cli_writes_a_dataroot(tmp_path: Path) -> None:
    from av.cli.main import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--drives", "1", "--seed", "2"]) == 0  # 20 s
    assert (tmp_path / "d" / VERSION / "sample_data.json").is_file()
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--drives", "0"]) == 2


def test_the_kept_map_covers_where_a_constant_velocity_ego_can_reach(dataroot: Path, maps: dict[str, Any]) -> None:
    """Along a constant-velocity rollout from the current step (15 s), every point that is on the
    town's drivable area is also inside the scenario's kept drivable rings (before the crop covered
    the reach, the rings of synth-0-002 ended 18 m before the rollout did)."""
    from av.data.nuscenes import ImportConfig, load_nuscenes
    from av.viz import drivable_paths

    for s in load_nuscenes(dataroot, ImportConfig(version=VERSION)):
        town = _drivable(maps[s.source.location])
        k = s.history_steps
        x, y, yaw, vx, vy = s.ego[k]
        t = np.arange(0.0, 15.0 + 1e-9, 0.5)
        pts = np.stack([x + math.hypot(vx, vy) * math.cos(yaw) * t, y + math.hypot(vx, vy) * math.sin(yaw) * t], 1)
        on_town = shapely.contains_xy(town, pts[:, 0] + s.source.origin[0], pts[:, 1] + s.source.origin[1])
        rings, _ = drivable_paths(s.map)
        kept = rings.contains_points(pts)
        assert on_town.any() and not (on_town & ~kept).any(), s.id
