"""OpenDRIVE / OpenSCENARIO export: geometry helpers on known cases, and every real nuScenes-mini
drive exported and checked by the XSD schemas, the ASAM quality checkers and CARLA's own
OpenDRIVE parser (``carla.Map``, offline)."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import LANE_WIDTH, build_scenario

from av.types import Provenance, Scenario
from scenarios.opendrive import (
    _distance_to_polyline,
    fit_knots,
    hermite_points,
    hermite_uv,
    lane_widths,
    opendrive_text,
    plan_network,
)
from scenarios.openscenario import openscenario_text, simplify_track, write_openscenario

WAYPOINT_TOLERANCE_M = 0.2
SCHEMAS = Path(importlib.import_module("scenariogeneration").__file__).parents[1] / "schemas"


# ------------------------------------------------------------------------------ known answers


def test_hermite_pieces_start_and_end_at_the_knots_with_their_headings() -> None:
    knots = np.array([[0.0, 0.0, 0.0], [10.0, 5.0, math.pi / 2], [12.0, 20.0, 1.2]])
    pts = hermite_points(knots, samples=401)
    assert np.allclose(pts[:, 0], knots[:-1, :2]) and np.allclose(pts[:, -1], knots[1:, :2])
    d0, d1 = pts[:, 1] - pts[:, 0], pts[:, -1] - pts[:, -2]
    assert np.allclose(np.arctan2(d0[:, 1], d0[:, 0]), knots[:-1, 2], atol=1e-2)
    assert np.allclose(np.arctan2(d1[:, 1], d1[:, 0]), knots[1:, 2], atol=1e-2)
    coef = hermite_uv(knots)
    assert coef.shape == (2, 2, 4) and np.all(coef[:, :, 0] == 0) and np.all(coef[:, 1, 1] == 0)


def test_fit_knots_keeps_a_circle_within_tolerance_with_few_knots() -> None:
    a = np.linspace(0, math.pi / 2, 200)  # quarter circle of radius 20 m, 0.16 m spacing
    line = np.stack([20 * np.cos(a), 20 * np.sin(a), a + math.pi / 2], axis=1)
    knots = fit_knots(line, tolerance=0.01)
    assert len(knots) < 12
    err = _distance_to_polyline(line[:, :2], hermite_points(knots, 200).reshape(-1, 2))
    assert err.max() < 0.01


def test_lane_widths_of_the_hand_made_road_are_its_polygon_widths(scenario: Scenario) -> None:
    assert np.allclose(lane_widths(scenario.map), LANE_WIDTH)


def test_hand_made_network_plan(scenario: Scenario) -> None:
    """Lanes 0 -> 1 (connector) -> 2 and a lone lane 3: one junction holding road 1."""
    plan = plan_network(scenario)
    assert [r.road for r in plan.roads] == [0, 1, 2, 3] and plan.lane_of_road == {0: 0, 1: 1, 2: 2, 3: 3}
    (jid, connections), = plan.junctions.items()
    assert connections == ((0, 1, True),)
    assert plan.roads[0].successor == ("junction", jid) and plan.roads[2].predecessor == ("junction", jid)
    assert plan.roads[1].predecessor == ("road", 0) and plan.roads[1].successor == ("road", 2)
    assert plan.roads[3].predecessor is None and plan.roads[3].successor is None


def _racetrack_loop() -> np.ndarray:
    """Centreline ``[P, 3]`` from (20, 0) heading east, round a 10 m radius half circle to
    (20, 20), west to (0, 20), round another half circle back to (0, 0) heading east."""
    a = np.linspace(-math.pi / 2, math.pi / 2, 64)
    first = np.stack([20 + 10 * np.cos(a), 10 + 10 * np.sin(a), a + math.pi / 2], axis=1)
    xs = np.linspace(20, 0, 41)[1:-1]
    straight = np.stack([xs, np.full_like(xs, 20.0), np.full_like(xs, math.pi)], axis=1)
    b = np.linspace(math.pi / 2, 3 * math.pi / 2, 64)
    second = np.stack([10 * np.cos(b), 10 + 10 * np.sin(b), b + math.pi / 2], axis=1)
    loop = np.concatenate([first, straight, second])
    loop[:, 2] = (loop[:, 2] + math.pi) % (2 * math.pi) - math.pi
    return loop


def test_a_lane_that_leaves_and_reenters_one_junction_is_cut_in_two_roads(scenario: Scenario, tmp_path: Path) -> None:
    """Lane 0 runs east; connector 1 loops from its end back to its start. OpenDRIVE could not
    say which end of road 0 a connection of that junction meets, so lane 0 becomes roads 0 and 2;
    CARLA still sees the lane graph 0 -> 1 -> 0 and our centrelines."""
    import carla

    from conftest import build_map, rectangle, straight_lane

    lanes = [straight_lane(0.0, 20.0, 0.0), _racetrack_loop()]
    m = build_map(lanes, [False, True], [np.nan, np.nan], [[1], [0]],
                  [rectangle(0, -1.75, 20, 1.75), rectangle(-10, -1.75, 30, 21.75)],
                  [rectangle(-12, -2, 32, 22)])
    s = scenario.replace(map=m, route=np.array([0, 1])).validate()
    plan = plan_network(s)
    assert plan.lane_of_road == {0: 0, 2: 0, 1: 1}
    text = opendrive_text(s)
    (tmp_path / "loop.xodr").write_text(text)
    assert _asam_check("qc_opendrive", tmp_path / "loop.xodr") == ([], ["check_asam_xodr_junctions_connection_one_link_to_incoming"])
    cmap = carla.Map("loop", text)
    topology = {(plan.lane_of_road[a.road_id], plan.lane_of_road[b.road_id]) for a, b in cmap.get_topology()}
    assert {e for e in topology if e[0] != e[1]} == {(0, 1), (1, 0)}
    for w in cmap.generate_waypoints(1.0):
        xy = np.array([[w.transform.location.x, -w.transform.location.y]])
        assert _distance_to_polyline(xy, lanes[plan.lane_of_road[w.road_id]][:, :2])[0] < WAYPOINT_TOLERANCE_M


def test_simplify_track_keeps_corners_and_drops_straight_steps() -> None:
    t = np.arange(21) * 0.1
    poses = np.zeros((21, 3))
    poses[:11, 0] = t[:11] * 10  # straight at 10 m/s, then turn left
    poses[11:, 0] = 10.0
    poses[11:, 1] = (t[11:] - 1.0) * 10
    assert simplify_track(t, poses).tolist() == [0, 10, 20]


def test_export_is_reproducible_and_carla_reads_the_hand_made_road(scenario: Scenario) -> None:
    import carla

    text = opendrive_text(scenario)
    assert text == opendrive_text(scenario)
    cmap = carla.Map("hand", text)
    wp = cmap.get_waypoint(carla.Location(x=10.0, y=-0.3, z=0.0), project_to_road=True)
    assert wp.road_id == 0 and wp.lane_id == -1
    assert abs(wp.transform.location.y) < 1e-3 and abs(wp.lane_width - LANE_WIDTH) < 1e-3
    assert {(a.road_id, b.road_id) for a, b in cmap.get_topology() if a.road_id != b.road_id} == {(0, 1), (1, 2)}


def test_cli_exports_and_rejects_bad_input(tmp_path: Path, scenario: Scenario, capsys) -> None:
    from av.cli.main import main
    from scenarios.store import write_store

    write_store(tmp_path / "store", [scenario])
    base = ["scenarios", "export-xosc", "--store", str(tmp_path / "store")]
    assert main([*base, "--scenario", scenario.id, "--out", str(tmp_path / "out" / "s.xosc")]) == 0
    assert (tmp_path / "out" / "s.xosc").is_file() and (tmp_path / "out" / "s.xodr").is_file()
    assert 'filepath="s.xodr"' in (tmp_path / "out" / "s.xosc").read_text()
    assert main([*base, "--scenario", "missing", "--out", str(tmp_path / "m.xosc")]) == 2
    assert main([*base, "--scenario", scenario.id, "--out", str(tmp_path / "m.xodr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"av: error: {tmp_path / 'store'}: no scenario with id 'missing'",
                   f"av: error: --out {tmp_path / 'm.xodr'}: must end in .xosc"]


def test_variant_provenance_becomes_parameters_and_an_event_at_its_onset() -> None:
    s = build_scenario(provenance=Provenance("hand-parent", "lead_brake", {"decel": 6.0, "onset_s": 1.5}, seed=3))
    text = openscenario_text(s, "road.xodr")
    assert text == openscenario_text(s, "road.xodr")  # byte-reproducible
    for needle in ('name="av_transform" parameterType="string" value="lead_brake"', 'name="av_seed"',
                   'name="av_onset_s" parameterType="double" value="1.5"', 'type="av.variant"',
                   '<SimulationTimeCondition value="1.5" rule="greaterThan"'):
        assert needle in text, needle


# ------------------------------------------------------------------------ every real drive


@pytest.fixture(scope="session")
def exported(real_scenarios: list[Scenario], tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Scenario, Path, Path]]:
    """Every real drive written as .xosc + .xodr, plus one variant with a timed event."""
    from scenarios.variants import generate_variants

    variants, _ = generate_variants(real_scenarios[:1], 1, 0, ["lead_brake"])
    assert len(variants) == 1 and variants[0].provenance is not None
    out = tmp_path_factory.mktemp("asam")
    return [(s, *write_openscenario(s, out / f"{s.id}.xosc")) for s in [*real_scenarios, *variants]]


def _xsd_errors(xsd: Path, doc: Path) -> list[str]:
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(xsd)))
    schema.validate(etree.parse(str(doc)))
    return [f"{doc.name}:{e.line}: {e.message}" for e in schema.error_log]


def test_every_drive_validates_against_the_bundled_xsd_schemas(exported) -> None:
    errors = []
    for _, xosc, xodr in exported:
        errors += _xsd_errors(SCHEMAS / "opendrive_17_core.xsd", xodr)
        errors += _xsd_errors(SCHEMAS / "OpenSCENARIO_1_2.xsd", xosc)
    assert errors == []


def _asam_check(package: str, path: Path) -> tuple[list[str], list[str]]:
    """Run the ASAM checker bundle ``package`` (qc_opendrive / qc_openscenario) on ``path``.
    Returns (issues as text, ids of checkers that did not complete)."""
    from qc_baselib import Configuration, Result, StatusType

    main = importlib.import_module(f"{package}.main")
    constants = importlib.import_module(f"{package}.constants")
    config = Configuration()
    config.set_config_param("InputFile", str(path))
    config.register_checker_bundle(constants.BUNDLE_NAME)
    result = Result()
    result.register_checker_bundle(name=constants.BUNDLE_NAME, description="", version=constants.BUNDLE_VERSION, summary="")
    main.run_checks(config, result)
    issues, incomplete = [], []
    for checker in result.get_checker_results(constants.BUNDLE_NAME):
        issues += [f"{path.name}: {checker.checker_id}: {i.level.name}: {i.description}" for i in checker.issues]
        if checker.status != StatusType.COMPLETED:
            incomplete.append(checker.checker_id)
    return issues, incomplete


@pytest.mark.parametrize("package, column", [("qc_opendrive", 2), ("qc_openscenario", 1)])
def test_asam_quality_checkers_report_no_issues(exported, package: str, column: int) -> None:
    # The one rule that does not run: junctions.connection.one_link_to_incoming is defined for
    # OpenDRIVE 1.8 only (our files are 1.7).
    not_applicable = {"check_asam_xodr_junctions_connection_one_link_to_incoming"}
    for row in exported:
        issues, incomplete = _asam_check(package, row[column])
        assert issues == []
        assert set(incomplete) <= not_applicable, incomplete


def test_carla_parses_every_drive_and_follows_our_lanes(exported) -> None:
    """CARLA's waypoints lie within 0.2 m of our centrelines (CARLA's y is OpenDRIVE's negated)
    and its topology is our lane graph (CARLA adds a (lane, lane) pair at some dead ends)."""
    import carla

    for s, _, xodr in exported:
        lane_of = plan_network(s).lane_of_road
        cmap = carla.Map(s.id, xodr.read_text())
        wps = cmap.generate_waypoints(1.0)
        xy = np.array([[w.transform.location.x, -w.transform.location.y] for w in wps])
        lanes = np.array([lane_of[w.road_id] for w in wps])
        assert set(lanes.tolist()) == set(range(s.map.num_lanes)), s.id
        for i in np.unique(lanes):
            err = _distance_to_polyline(xy[lanes == i], s.map.lane(i)[:, :2])
            assert err.max() < WAYPOINT_TOLERANCE_M, (s.id, s.map.lane_ids[i], err.max())
        topology = {(lane_of[a.road_id], lane_of[b.road_id]) for a, b in cmap.get_topology()}
        ours = {(i, int(j)) for i in range(s.map.num_lanes) for j in s.map.successors(i)}
        assert {e for e in topology if e[0] != e[1]} == ours, s.id
        cut = {lane for road, lane in lane_of.items() if road != lane}
        assert all(len(s.map.successors(a)) == 0 or a in cut for a, b in topology if a == b), s.id
