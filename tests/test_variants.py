"""Scenario variants: registry, provenance and regeneration, purity, known answers of each
transform on the hand-made road, plausibility checks, the generator, and a contract test of every
registered transform on every real drive."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from av.errors import AvError
from av.types import VX, VY, X, Y, YAW, AgentType, Scenario
from scenarios import plausibility
from scenarios.plausibility import check, find_issues, finite_difference_velocity
from scenarios.store import read_store, write_store
from scenarios.transforms import BRAKE_RAMP_S, CAR_SIZE
from scenarios.variants import (
    VariantError,
    bench_variants,
    generate_variants,
    get_transform,
    make_variant,
    regenerate,
    transform_names,
)

REQUIRED = {
    "speed_scale", "time_shift", "lateral_offset", "lead_brake", "cut_in", "ped_crossing",
    "drop_agents", "ego_init", "parked_vehicle", "chain",
}

# Parameters that apply to the default hand-made scenario (80 steps, start step 10).
CUT_IN = {"gap_m": 8.0, "time_s": 4.0, "duration_s": 3.0, "speed_ratio": 0.8}
HAND_PARAMS = {
    "speed_scale": {"factor": 1.2},
    "time_shift": {"agent": 0, "shift_s": 1.0},
    "lateral_offset": {"max_offset_m": 0.4},
    "lead_brake": {"decel": 6.0, "onset_s": 1.0},
    "cut_in": CUT_IN,
    "ped_crossing": {"time_s": 3.0, "distance_m": 12.0, "speed": 1.5, "side": "right"},
    "drop_agents": {"fraction": 0.5},
    "ego_init": {"speed_delta": 2.0, "lateral_m": 0.5, "blend_s": 3.0},
    "parked_vehicle": {"distance_m": 20.0, "intrusion_m": 0.6},
    "chain": {"steps": [{"transform": "speed_scale", "params": {"factor": 0.8}},
                        {"transform": "cut_in", "params": CUT_IN}]},
}


@pytest.fixture
def road(make_scenario) -> Scenario:
    return make_scenario(num_steps=80, history_steps=10, road_length=200.0)


def _agent(s: Scenario, agent_id: str) -> int:
    return s.agent_ids.index(agent_id)


def test_registry_has_every_transform_with_ranges() -> None:
    assert REQUIRED <= set(transform_names())
    assert set(transform_names(adversarial=True)) == {"lead_brake", "cut_in", "ped_crossing", "time_shift"}
    for name in transform_names():
        spec = get_transform(name)
        params = spec.sample(np.random.default_rng(0))
        assert params == spec.sample(np.random.default_rng(0))
        if name != "chain":
            assert set(params) == set(spec.params)
            for k, p in spec.params.items():  # sampled values lie in the registered ranges
                assert params[k] in p.options if hasattr(p, "options") else p.lo <= params[k] <= p.hi
    with pytest.raises(AvError, match="unknown transform 'nope'"):
        get_transform("nope")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_regenerate_from_provenance_is_identical(road: Scenario, name: str, tmp_path) -> None:
    v = make_variant(road, name, HAND_PARAMS[name], seed=7)
    assert v.id.startswith(f"{road.id}~{name}-") and len(v.id.rsplit("-", 1)[1]) == 8
    assert v.provenance is not None and v.provenance.parent_id == road.id and v.provenance.seed == 7
    assert "variant" in v.tags and name in v.tags
    assert regenerate(v.provenance, road) == v
    # ... also after a round trip through the store (params come back from JSON)
    write_store(tmp_path / "s", [road, v])
    stored = read_store(tmp_path / "s", [v.id])[0]
    assert regenerate(stored.provenance, read_store(tmp_path / "s", [road.id])[0]) == v


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_transforms_are_pure_and_seeded(road: Scenario, name: str) -> None:
    before = copy.deepcopy(road)
    a = make_variant(road, name, HAND_PARAMS[name], seed=1)
    assert road == before  # input unchanged
    assert make_variant(road, name, HAND_PARAMS[name], seed=1) == a
    # A different seed draws different parameters (and, for random transforms, different edits).
    spec = get_transform(name)
    outs = []
    for seed in range(6):
        try:
            outs.append(make_variant(road, name, spec.sample(np.random.default_rng(seed)), seed))
        except VariantError:
            continue
    assert len(outs) >= 2
    assert any(not np.array_equal(o.agents, outs[0].agents) or not np.array_equal(o.ego, outs[0].ego)
               or o.num_agents != outs[0].num_agents for o in outs[1:])


@pytest.mark.parametrize("name", ["drop_agents", "lateral_offset"])
def test_random_transforms_depend_on_the_seed(road: Scenario, name: str) -> None:
    a = make_variant(road, name, HAND_PARAMS[name], seed=1)
    b = make_variant(road, name, HAND_PARAMS[name], seed=2)
    c = make_variant(road, name, HAND_PARAMS[name], seed=3)
    assert a.id != b.id
    same = [x.agent_ids == a.agent_ids and np.array_equal(x.agents, a.agents) for x in (b, c)]
    assert not all(same)


def test_chain_equals_the_steps_applied_in_order(road: Scenario) -> None:
    chained = make_variant(road, "chain", HAND_PARAMS["chain"], seed=3)
    child_a, child_b = np.random.default_rng(3).spawn(2)
    by_hand = get_transform("cut_in").fn(
        get_transform("speed_scale").fn(road, child_a, factor=0.8), child_b, **HAND_PARAMS["cut_in"])
    assert np.array_equal(chained.agents, by_hand.agents)
    assert chained.agent_ids == (*road.agent_ids, "cut_in-0")
    assert chained.provenance.transform == "chain" and {"chain", "speed_scale", "cut_in"} <= set(chained.tags)
    # a variant of a variant keeps the chain of parents
    again = make_variant(chained, "drop_agents", {"fraction": 0.3}, seed=1)
    assert again.provenance.parent_id == chained.id
    assert regenerate(again.provenance, chained) == again


def test_bad_params_and_seeds_are_user_errors(road: Scenario) -> None:
    with pytest.raises(AvError, match="missing"):
        make_variant(road, "speed_scale", {}, 0)
    with pytest.raises(AvError, match="unknown"):
        make_variant(road, "speed_scale", {"factor": 1.1, "x": 1}, 0)
    with pytest.raises(AvError, match="seed"):
        make_variant(road, "speed_scale", {"factor": 1.1}, -1)
    with pytest.raises(AvError, match="regenerate"):
        v = make_variant(road, "speed_scale", {"factor": 1.1}, 0)
        regenerate(v.provenance, v)


# ------------------------------------------------------------------ known answers per transform
def _speed(s: Scenario, i: int) -> np.ndarray:
    return np.linalg.norm(s.agents[i, :, VX : VY + 1], axis=-1)


def test_every_edited_track_has_consistent_velocities_and_wrapped_yaw(road: Scenario) -> None:
    for name, params in HAND_PARAMS.items():
        v = make_variant(road, name, params, seed=5)
        fd = finite_difference_velocity(v.agents[..., :2], v.agent_valid, v.dt)
        assert np.allclose(v.agents[..., VX : VY + 1], fd, atol=1e-9), name
        ego_fd = finite_difference_velocity(v.ego[None, :, :2], np.ones((1, v.num_steps), bool), v.dt)[0]
        assert np.allclose(v.ego[:, VX : VY + 1], ego_fd, atol=1e-9), name
        assert np.all(v.agents[~v.agent_valid] == 0), name
        assert np.all((v.agents[..., YAW] >= -math.pi) & (v.agents[..., YAW] < math.pi)), name


def test_speed_scale_scales_speed_and_keeps_the_start(road: Scenario) -> None:
    v = make_variant(road, "speed_scale", {"factor": 1.2}, 0)
    i, h = _agent(road, "lead"), road.history_steps
    assert np.allclose(v.agents[i, h, :2], road.agents[i, h, :2])
    assert np.allclose(_speed(v, i)[h + 1 : 60], 4.0 * 1.2)
    assert np.allclose(v.agents[i, 50, X] - v.agents[i, h, X], 1.2 * (road.agents[i, 50, X] - road.agents[i, h, X]))


def test_time_shift_delays_the_agent_nearest_the_ego_path(road: Scenario) -> None:
    v = make_variant(road, "time_shift", {"agent": 0, "shift_s": 1.0}, 0)
    i = _agent(road, "lead")  # in the ego's lane: closest to its path
    assert np.allclose(v.agents[i, 30:, :3], road.agents[i, 20:-10, :3])
    assert np.allclose(v.agents[i, 0, X], road.agents[i, 0, X] - 4.0)  # extrapolated at 4 m/s
    assert np.array_equal(v.agent_valid, road.agent_valid)
    others = [k for k in range(road.num_agents) if k != i]
    assert np.array_equal(v.agents[others], road.agents[others])


def test_lateral_offset_stays_within_the_bound(road: Scenario) -> None:
    v = make_variant(road, "lateral_offset", {"max_offset_m": 0.4}, 3)
    for aid in ("lead", "left"):
        i = _agent(road, aid)
        d = v.agents[i, :, Y] - road.agents[i, :, Y]
        assert np.allclose(d, d[0]) and 0 < abs(d[0]) <= 0.4
    p = _agent(road, "late-ped")  # pedestrians are not moved
    assert np.array_equal(v.agents[p], road.agents[p])


def test_lead_brake_stops_the_lead_with_the_given_deceleration(road: Scenario) -> None:
    v = make_variant(road, "lead_brake", {"decel": 6.0, "onset_s": 1.0}, 0)
    i, h = _agent(road, "lead"), road.history_steps
    onset = h + 10
    assert np.allclose(v.agents[i, : onset + 1, :2], road.agents[i, : onset + 1, :2])
    x = v.agents[i, :, X]
    stop = 4.0**2 / (2 * 6.0) + 4.0 * BRAKE_RAMP_S / 2 - 6.0 * BRAKE_RAMP_S**2 / 24  # ramped brake
    assert x[-1] - x[onset] == pytest.approx(stop, abs=1e-6)
    assert np.allclose(_speed(v, i)[-10:], 0.0)
    accel = np.diff(v.agents[i, :, VX]) / v.dt
    assert accel.min() >= -6.0 - 1e-6 and accel.min() < -5.0
    assert v.agent_valid[i].all()


def test_cut_in_merges_in_front_of_the_ego(road: Scenario) -> None:
    p = HAND_PARAMS["cut_in"]
    v = make_variant(road, "cut_in", p, 0)
    assert v.agent_ids[-1] == "cut_in-0" and v.agent_types[-1] == AgentType.VEHICLE
    car, ego, h = v.agents[-1], road.ego, road.history_steps
    merge = h + 40
    front = road.ego_vehicle.rear_axle_to_center + road.ego_vehicle.length / 2
    assert car[merge, X] - CAR_SIZE[0] / 2 - (ego[merge, X] + front) == pytest.approx(p["gap_m"], abs=1e-6)
    assert car[merge:, Y] == pytest.approx(0.0, abs=1e-9)  # in the ego's lane after the merge
    start = merge - 30
    assert car[v.agent_valid[-1]][0, Y] == pytest.approx(3.5, abs=1e-9)  # came from the left lane
    assert car[start, Y] == pytest.approx(3.5, abs=1e-9)
    assert np.allclose(car[v.agent_valid[-1], VX], 0.8 * 5.0)  # speed_ratio x the ego's speed, along the road


def test_cut_in_needs_an_adjacent_lane(make_scenario) -> None:
    narrow = make_scenario(num_steps=80, road_length=200.0, num_lanes=3)
    with pytest.raises(VariantError, match="cut_in: no adjacent lane next to the ego"):
        make_variant(narrow, "cut_in", HAND_PARAMS["cut_in"], 0)


def test_lead_brake_needs_a_lead(make_scenario) -> None:
    alone = make_scenario(num_steps=80, road_length=200.0, num_agents=0)
    with pytest.raises(VariantError, match="lead_brake: no vehicle ahead of the ego on its route"):
        make_variant(alone, "lead_brake", HAND_PARAMS["lead_brake"], 0)


def test_ped_crossing_is_on_the_ego_path_at_the_given_time_and_distance(road: Scenario) -> None:
    p = HAND_PARAMS["ped_crossing"]
    v = make_variant(road, "ped_crossing", p, 0)
    ped, h = v.agents[-1], road.history_steps
    cross = h + 30
    front = road.ego_vehicle.rear_axle_to_center + road.ego_vehicle.length / 2
    assert v.agent_types[-1] == AgentType.PEDESTRIAN
    assert ped[cross, X] == pytest.approx(road.ego[cross, X] + front + p["distance_m"])
    assert ped[cross, Y] == pytest.approx(0.0, abs=1e-9)
    assert ped[cross - 10, Y] == pytest.approx(-1.5)  # came from the right at 1.5 m/s
    assert np.allclose(ped[v.agent_valid[-1], VY], 1.5)


def test_drop_agents_removes_a_fraction(road: Scenario) -> None:
    v = make_variant(road, "drop_agents", {"fraction": 0.5}, 0)
    assert v.num_agents == 3 - round(1.5) and set(v.agent_ids) < set(road.agent_ids)
    for aid in v.agent_ids:
        assert np.array_equal(v.agents[_agent(v, aid)], road.agents[_agent(road, aid)])


def test_ego_init_starts_off_the_log_and_recovers(road: Scenario) -> None:
    v = make_variant(road, "ego_init", HAND_PARAMS["ego_init"], 0)
    h = road.history_steps
    assert np.hypot(*v.ego[h, VX : VY + 1]) == pytest.approx(5.0 + 2.0, abs=0.05)
    assert v.ego[h, Y] == pytest.approx(0.5) and np.allclose(v.ego[:h, Y], 0.5)
    assert np.allclose(v.ego[:h, VX], 7.0)  # the history is consistent with the new start
    assert np.allclose(v.ego[-10:, Y], 0.0) and np.allclose(v.ego[-10:, VX], 5.0)
    assert v.ego[-1, X] - road.ego[-1, X] == pytest.approx(2.0 * 3.0 / 2)  # the speed blend's extra distance
    assert np.array_equal(v.agents, road.agents)


def test_parked_vehicle_narrows_the_lane_on_the_side_with_room(road: Scenario) -> None:
    v = make_variant(road, "parked_vehicle", HAND_PARAMS["parked_vehicle"], 0)
    car = v.agents[-1]
    assert v.agent_valid[-1].all() and np.all(car[:, VX : VY + 1] == 0) and np.allclose(car, car[0])
    # the right edge is the drivable area's edge: the car can only stand on the left
    assert car[0, Y] - CAR_SIZE[1] / 2 == pytest.approx(1.75 - 0.6)
    front = road.ego_vehicle.rear_axle_to_center + road.ego_vehicle.length / 2
    assert car[0, X] - CAR_SIZE[0] / 2 == pytest.approx(road.ego[road.history_steps, X] + front + 20.0)


# ------------------------------------------------------------------ plausibility
def test_the_hand_made_scenario_is_plausible(road: Scenario) -> None:
    assert check(road) == []


def test_plausibility_catches_a_planted_overlap(road: Scenario) -> None:
    agents = road.agents.copy()
    i, h = _agent(road, "lead"), road.history_steps
    agents[i, h, :2] = road.ego[h, :2] + [2.0, 0.5]
    issues = find_issues(road.replace(agents=agents))
    assert ("overlap", "ego|lead") in {x.key for x in issues}


def test_plausibility_catches_an_off_road_vehicle(road: Scenario) -> None:
    agents = road.agents.copy()
    i = _agent(road, "left")
    agents[i, :, Y] = 20.0  # beyond everything the map holds: not judged
    issues = find_issues(road.replace(agents=agents))
    assert ("offroad", "left") not in {x.key for x in issues}
    agents[i, :, Y] = 8.5  # in the traffic island (a hole of the drivable area)
    agents[i, :, X] = np.clip(agents[i, :, X], 21.0, 29.0)
    issues = find_issues(road.replace(agents=agents))
    assert ("offroad", "left") in {x.key for x in issues}
    ped = _agent(road, "late-ped")  # pedestrians may walk anywhere
    assert ("offroad", "late-ped") not in {x.key for x in issues} and road.agent_types[ped] == AgentType.PEDESTRIAN


def test_plausibility_catches_impossible_kinematics(road: Scenario) -> None:
    i = _agent(road, "lead")
    agents = road.agents.copy()
    x = 15.0 + 4.0 * road.timestamps + 0.5 * 12.0 * np.maximum(road.timestamps - 3.0, 0.0) ** 2  # 12 m/s^2
    agents[i, :, X] = x
    valid = road.agent_valid[i : i + 1]
    agents[i, :, VX : VY + 1] = finite_difference_velocity(agents[i : i + 1, :, :2], valid, road.dt)[0]
    kinds = {x.kind for x in find_issues(road.replace(agents=agents)) if x.subject == "lead"}
    assert "acceleration" in kinds and "velocity" not in kinds
    agents[i, :, VX] += 2.0  # stored velocity no longer matches the positions
    kinds = {x.kind for x in find_issues(road.replace(agents=agents)) if x.subject == "lead"}
    assert "velocity" in kinds
    # a 2 m radius circle at 5 m/s: curvature 0.5 1/m > 1/3
    t = road.timestamps
    circle = agents.copy()
    circle[i, :, X], circle[i, :, Y] = 2.0 * np.cos(2.5 * t) + 60.0, 2.0 * np.sin(2.5 * t) + 6.0
    circle[i, :, YAW] = (2.5 * t + math.pi / 2 + math.pi) % (2 * math.pi) - math.pi
    circle[i, :, VX : VY + 1] = finite_difference_velocity(circle[i : i + 1, :, :2], valid, road.dt)[0]
    kinds = {x.kind for x in find_issues(road.replace(agents=circle)) if x.subject == "lead"}
    assert "curvature" in kinds


def test_check_with_parent_reports_only_new_issues(road: Scenario) -> None:
    agents = road.agents.copy()
    agents[_agent(road, "lead"), road.history_steps, :2] = road.ego[road.history_steps, :2] + [2.0, 0.0]
    broken = road.replace(agents=agents)
    assert check(broken) and check(broken, parent=broken) == []
    assert check(broken, parent=road)


# ------------------------------------------------------------------ generation
def test_generate_variants_is_deterministic_order_independent_and_plausible(road: Scenario, make_scenario) -> None:
    other = make_scenario(id="hand-1", num_steps=80, road_length=200.0, ego_speed=7.0)
    out, stats = generate_variants([road, other], per_scenario=4, seed=11)
    again, _ = generate_variants([other, road], per_scenario=4, seed=11)
    assert sorted(v.id for v in out) == sorted(v.id for v in again)
    assert stats.generated == len(out) >= 6 and stats.attempts == stats.generated + sum(stats.rejected.values())
    assert len({v.id for v in out}) == len(out)
    for v in out:
        parent = road if v.provenance.parent_id == road.id else other
        v.validate()
        assert check(v, parent) == []
        assert regenerate(v.provenance, parent) == v
    other_seed, _ = generate_variants([road, other], per_scenario=4, seed=12)
    assert {v.id for v in other_seed} != {v.id for v in out}


def test_generate_variants_counts_rejections_by_reason(make_scenario) -> None:
    alone = make_scenario(num_steps=80, road_length=200.0, num_agents=0, num_lanes=3)
    out, stats = generate_variants([alone], per_scenario=3, seed=0, transforms=["lead_brake", "cut_in"], attempts=2)
    assert out == [] and stats.generated == 0 and stats.attempts == 6
    assert set(stats.rejected) <= {
        "lead_brake: no vehicle ahead of the ego on its route", "cut_in: no adjacent lane next to the ego"}
    assert stats.as_dict()["rejected"] == 6


def test_bench_variants_reports_a_rate(road: Scenario) -> None:
    out = bench_variants([road], per_scenario=2)
    assert out["variants"] >= 1 and out["variants_per_s"] > 0


# ------------------------------------------------------------------ every transform x every real drive
def test_contract_every_transform_on_every_real_drive(real_scenarios: list[Scenario]) -> None:
    outcomes: dict[str, list[bool]] = {}
    for name in transform_names():
        spec = get_transform(name)
        for s in real_scenarios:
            known = plausibility.issue_keys(s)
            for k in range(2):
                params = spec.sample(np.random.default_rng([k, 1]))
                try:
                    v = make_variant(s, name, params, k, known)
                except VariantError as e:
                    assert str(e).split(":")[0] in transform_names(), str(e)
                    assert e.reason and len(str(e)) > len(str(e).split(":")[0]) + 2
                    outcomes.setdefault(name, []).append(False)
                    continue
                v.validate()
                assert check(v, s) == [], (v.id, check(v, s))
                assert v.provenance.parent_id == s.id
                outcomes.setdefault(name, []).append(True)
    rates = {n: float(np.mean(o)) for n, o in outcomes.items()}
    assert np.mean([x for o in outcomes.values() for x in o]) >= 0.6, rates
    assert all(r > 0 for r in rates.values()), rates  # every transform applies to some real drive


# ------------------------------------------------------------------ the CLI
def test_cli_variants_writes_variants_with_their_parents(make_scenario, tmp_path, capsys) -> None:
    import json

    from av.cli.main import main

    write_store(tmp_path / "in", [make_scenario(num_steps=80, road_length=200.0),
                                  make_scenario(id="hand-1", num_steps=80, road_length=200.0, ego_speed=6.0)])
    rc = main(["scenarios", "variants", "--store", str(tmp_path / "in"), "--per-scenario", "3",
               "--seed", "4", "--out", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    out = read_store(tmp_path / "out")
    variants = [s for s in out if s.provenance is not None]
    assert summary["generated"] == len(variants) >= 4 and summary["written"] == len(out) == len(variants) + 2
    parents = {s.id: s for s in out if s.provenance is None}
    for v in variants:
        assert regenerate(v.provenance, parents[v.provenance.parent_id]) == v
    rc = main(["scenarios", "variants", "--store", str(tmp_path / "in"), "--transforms", "warp",
               "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "--transforms: unknown transform 'warp'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_cli_mines_hard_examples_around_the_lowest_scoring_scenarios(make_scenario, tmp_path, capsys) -> None:
    """``--hard-from RUN_DIR``: variants only around the scenarios the planner scored lowest on."""
    from av.cli.main import main
    from closedloop.runner import read_results

    write_store(tmp_path / "in", [make_scenario(num_steps=60, road_length=200.0, num_agents=1),
                                  make_scenario(id="hand-1", num_steps=60, road_length=200.0, num_agents=0)])
    assert main(["closedloop", "eval", "--store", str(tmp_path / "in"), "--planner", "constant_velocity",
                 "--out", str(tmp_path / "run"), "--worst", "0", "--no-report"]) == 0
    rows = read_results(tmp_path / "run").select("constant_velocity", "log")
    cls = dict(zip(rows.column("scenario_id").tolist(), rows.column("cls").tolist()))
    hardest = min(cls, key=lambda k: (cls[k], k))
    capsys.readouterr()
    assert main(["scenarios", "variants", "--store", str(tmp_path / "in"), "--per-scenario", "3",
                 "--out", str(tmp_path / "hard"), "--hard-from", str(tmp_path / "run"),
                 "--hard-planner", "constant_velocity", "--hardest", "1"]) == 0
    out = read_store(tmp_path / "hard")
    variants = [s for s in out if s.provenance is not None]
    assert variants and {v.provenance.parent_id for v in variants} == {hardest}
    assert main(["scenarios", "variants", "--store", str(tmp_path / "in"), "--out", str(tmp_path / "bad"),
                 "--hard-from", str(tmp_path / "nowhere")]) == 2
    assert "no results.parquet" in capsys.readouterr().err and not (tmp_path / "bad").exists()
