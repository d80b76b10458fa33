"""nuPlan CLS metrics on hand-built scenarios with known answers (METRICS.md section 6).

The builder here (``road``, ``track``, ``Agent``, ``scenario``, ``rollout``, ``score``) is shared with
the NAVSIM and comfort tests. Geometry: the dataset's default ego (4.084 m x 1.73 m, rear axle 1.292 m
behind the centre), so the front bumper is ``FRONT`` = 3.334 m ahead of the rear axle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pytest
import torch

from av.batch import collate
from av.errors import AvError
from av.types import AgentType, MapData, Scenario, Source, VehicleParams, empty_map
from closedloop.evaluator import METRIC_NAMES, evaluate, lanes, reasons
from closedloop.evaluator import aggregate as agg
from closedloop.evaluator.nuplan import build_map_state, build_scene
from closedloop.rollout import Rollout
from conftest import build_map, build_scenario, rectangle, road_map, straight_lane

DT = 0.1
EGO = VehicleParams()
HALF_W = EGO.width / 2
FRONT = EGO.rear_axle_to_center + EGO.length / 2  # rear axle -> front bumper
BACK = EGO.length / 2 - EGO.rear_axle_to_center  # rear axle -> rear bumper
LIMIT = 10.0
W = 3.5  # lane width
NUPLAN_AND_PDMS = ("no_collision", "drivable_area", "driving_direction", "making_progress", "progress", "ttc",
                   "speed_limit", "comfort", "cls", "pdms_nc", "pdms_dac", "pdms_ttc", "pdms_ep", "pdms_c", "pdms")


# ----------------------------------------------------------------------------- builder
def road(limit: float = LIMIT, x1: float = 400.0) -> MapData:
    """Lanes 0 (y = 0) and 1 (y = 3.5) towards +x, lane 2 (y = -3.5) towards -x; drivable = all lanes."""
    h = W / 2
    back = straight_lane(-50.0, x1, -W)[::-1].copy()
    back[:, 2] = -math.pi
    return build_map(
        centrelines=[straight_lane(-50.0, x1, 0.0), straight_lane(-50.0, x1, W), back],
        connectors=[False, False, False],
        speed_limits=[limit, limit, limit],
        successors=[[], [], []],
        polygons=[rectangle(-50.0, y - h, x1, y + h) for y in (0.0, W, -W)],
        rings=[rectangle(-50.0, -W - h, x1, W + h)],
    )


def single_lane(x1: float = 400.0) -> MapData:
    """One lane (y = 0, towards +x) whose outline is also the whole drivable area."""
    return build_map(
        centrelines=[straight_lane(-50.0, x1, 0.0)], connectors=[False], speed_limits=[LIMIT],
        successors=[[]], polygons=[rectangle(-50.0, -W / 2, x1, W / 2)], rings=[rectangle(-50.0, -W / 2, x1, W / 2)],
    )


def track(T: int, x0: float = 0.0, v: float = 0.0, a: float = 0.0, y: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    """Rear-axle states ``[T, 5]`` moving along ``yaw`` with initial speed ``v`` and acceleration ``a``."""
    t = np.arange(T) * DT
    s, speed = v * t + 0.5 * a * t**2, v + a * t
    c, sn = math.cos(yaw), math.sin(yaw)
    return np.stack([x0 + s * c, y + s * sn, np.full(T, yaw), speed * c, speed * sn], 1)


def speed_profile(speeds: Sequence[float], x0: float = 0.0, y: float = 0.0) -> np.ndarray:
    """States ``[T, 5]`` along +x with the given per-step speeds (positions integrated)."""
    v = np.asarray(speeds, dtype=np.float64)
    x = x0 + np.concatenate([[0.0], np.cumsum(v[:-1] * DT)])
    return np.stack([x, np.full_like(v, y), np.zeros_like(v), v, np.zeros_like(v)], 1)


@dataclass
class Agent:
    kind: AgentType
    size: tuple[float, float]
    states: np.ndarray  # [T, 5] box-centre (x, y, yaw, vx, vy)
    valid: np.ndarray | None = None


def scenario(ego: np.ndarray, agents: Sequence[Agent] = (), map: MapData | None = None,
             history: int = 0, id: str = "case") -> Scenario:
    T = len(ego)
    N = len(agents)
    m = map if map is not None else road()
    valid = np.array([a.valid if a.valid is not None else np.ones(T, bool) for a in agents]).reshape(N, T)
    states = np.array([a.states for a in agents]).reshape(N, T, 5) * valid[..., None]
    return Scenario(
        id=id, source=Source("hand", f"tok-{id}", id, "town"), dt=DT, timestamps=np.arange(T) * DT,
        history_steps=history, ego=ego, ego_vehicle=EGO, agent_ids=tuple(f"a{i}" for i in range(N)),
        agent_types=np.array([int(a.kind) for a in agents], dtype=np.int8),
        agent_sizes=np.array([a.size for a in agents], dtype=np.float64).reshape(N, 2),
        agents=states, agent_valid=valid, map=m, route=np.array([0] if m.num_lanes else [], dtype=np.int64),
    ).validate()


def rollout(scenarios: Sequence[Scenario], sim: Sequence[np.ndarray | None] | None = None,
            accel: Sequence[np.ndarray | None] | None = None, yaw_rate: Sequence[np.ndarray | None] | None = None,
            agent_mode: str = "log") -> Rollout:
    """A rollout of ``scenarios``: the ego follows ``sim[i]`` (default: its log), agents replay the log."""
    b = collate(scenarios)
    B, T = b.step_valid.shape
    ego = b.ego.clone()
    acc = torch.zeros(B, T, 2)
    yr = torch.zeros(B, T)
    for i in range(B):
        if sim is not None and sim[i] is not None:
            ego[i, : len(sim[i])] = torch.as_tensor(sim[i], dtype=torch.float32)
        if accel is not None and accel[i] is not None:
            acc[i, : len(accel[i])] = torch.as_tensor(accel[i], dtype=torch.float32)
        if yaw_rate is not None and yaw_rate[i] is not None:
            yr[i, : len(yaw_rate[i])] = torch.as_tensor(yaw_rate[i], dtype=torch.float32)
    return Rollout(scenario=b, ego=ego, ego_accel=acc, ego_yaw_rate=yr, ego_yaw_accel=torch.zeros(B, T),
                   agents=b.agents.clone(), agent_valid=b.agent_valid.clone(), step_valid=b.step_valid.clone(),
                   start_step=b.history_steps.clone(), agent_mode=agent_mode, planner="test")


def score(ego_sim: np.ndarray, agents: Sequence[Agent] = (), ego_log: np.ndarray | None = None,
          map: MapData | None = None, history: int = 0, horizon_s_pdms: float = 4.0,
          **kw: object) -> dict[str, float]:
    """Evaluate one scenario whose log is ``ego_log`` (default: ``ego_sim``) and ego drives ``ego_sim``;
    ``kw`` goes to :func:`rollout` (accelerations, yaw rates, agent mode)."""
    s = scenario(ego_log if ego_log is not None else ego_sim, agents, map, history)
    out = evaluate(rollout([s], sim=[ego_sim], **kw), horizon_s_pdms=horizon_s_pdms)  # type: ignore[arg-type]
    return {k: float(v[0]) for k, v in out.items()}


def vehicle(states: np.ndarray, size: tuple[float, float] = (4.5, 1.9)) -> Agent:
    return Agent(AgentType.VEHICLE, size, states)


def parked(T: int, x: float, y: float = 0.0, yaw: float = 0.0, kind: AgentType = AgentType.VEHICLE,
           size: tuple[float, float] = (4.5, 1.9)) -> Agent:
    return Agent(kind, size, track(T, x0=x, y=y, yaw=yaw))


# ----------------------------------------------------------------------------- clean runs, masks
def test_log_expert_redriven_scores_full_marks() -> None:
    s = build_scenario(num_steps=80, history_steps=5)  # passes lane 0 -> connector -> lane 2
    out = evaluate(rollout([s]))
    for name in ("no_collision", "drivable_area", "driving_direction", "making_progress", "progress",
                 "ttc", "speed_limit", "comfort", "cls", "pdms"):
        assert float(out[name][0]) == pytest.approx(1.0), name
    assert float(out["ade"][0]) == 0.0 and float(out["fde"][0]) == 0.0
    assert float(out["progress_ego_m"][0]) == pytest.approx(5.0 * 7.4, abs=1e-3)
    assert reasons(out) == [""]
    assert set(out) == set(METRIC_NAMES)


def test_padded_batch_matches_each_alone_and_chunking() -> None:
    T1, T2 = 60, 35
    s1 = scenario(track(T1, v=8.0), [parked(T1, 40.0), parked(T1, 20.0, y=W, kind=AgentType.STATIC, size=(0.5, 0.5))],
                  history=3, id="one")
    s2 = build_scenario(id="two", num_steps=T2, num_agents=1, history_steps=7)
    both = evaluate(rollout([s1, s2]))
    split = evaluate(rollout([s1, s2]), chunk=1)
    for i, s in enumerate((s1, s2)):
        alone = evaluate(rollout([s]))
        for k in METRIC_NAMES:
            a, b, c = both[k][i].double(), alone[k][0].double(), split[k][i].double()
            assert torch.allclose(a, b, atol=1e-6, equal_nan=True), (k, i)
            assert torch.allclose(a, c, atol=1e-6, equal_nan=True), (k, i)
    assert float(both["no_collision"][0]) == 0.0 and float(both["cls"][1]) == pytest.approx(1.0)


def test_deterministic() -> None:
    T = 50
    r = rollout([scenario(track(T, v=8.0), [parked(T, 30.0)])])
    a, b = evaluate(r), evaluate(r)
    assert all(torch.equal(a[k].nan_to_num(-7), b[k].nan_to_num(-7)) for k in METRIC_NAMES)


def test_real_drives_log_replay_and_off_map(real_scenarios: list[Scenario]) -> None:
    """Re-driving the real nuScenes logs matches the expert; the same drives 1 km away are off-road."""
    r = rollout(real_scenarios)
    out = evaluate(r)
    B = len(real_scenarios)
    for k in NUPLAN_AND_PDMS:
        v = out[k]
        assert bool(torch.isfinite(v).all() & (v >= 0).all() & (v <= 1).all()), k
    assert torch.equal(out["progress"], torch.ones(B, dtype=torch.float64))
    assert torch.equal(out["making_progress"], torch.ones(B, dtype=torch.float64))
    assert float(out["ade"].abs().max()) == 0.0 and float(out["fde"].abs().max()) == 0.0
    assert float(out["progress_expert_m"].max()) > 50.0  # the route baseline follows real lanes
    far = r.ego.clone()
    far[..., 0] += 1000.0
    shifted = evaluate(type(r)(**{**r.__dict__, "ego": far}))
    assert float(shifted["drivable_area"].max()) == 0.0 and float(shifted["pdms_dac"].max()) == 0.0
    assert float(shifted["cls"].max()) == 0.0


def test_bad_reference_progress_shape_is_a_user_error() -> None:
    r = rollout([scenario(track(20, v=5.0))])
    with pytest.raises(AvError, match="reference_progress"):
        evaluate(r, reference_progress=torch.zeros(3))
    with pytest.raises(AvError, match="horizon_s_pdms"):
        evaluate(r, horizon_s_pdms=0.0)


# ----------------------------------------------------------------------------- collisions (cases 1-6)
def test_rear_end_while_ego_stopped_is_not_at_fault() -> None:  # case 1
    T = 40
    out = score(track(T), [vehicle(track(T, x0=-12.0, v=5.0))])
    assert out["collisions"] == 1 and out["at_fault_collisions"] == 0
    assert out["no_collision"] == 1.0 and out["ttc"] == 1.0 and out["cls"] == pytest.approx(1.0)
    assert out["pdms_nc"] == 1.0 and out["pdms_ttc"] == 1.0
    # delta-v: stopped ego, car at 5 m/s: 0.5 * 5; nothing at fault
    assert out["collision_dv_max"] == pytest.approx(2.5) and math.isnan(out["at_fault_collision_dv_max"])


def test_collision_delta_v_head_on_and_crossing() -> None:
    """nuPlan's ego delta-v, 0.5 sqrt(v_e^2 + v_o^2 - 2 v_e v_o cos(dtheta)): 8 m/s into a parked
    car is 4 m/s; head-on into a car at 6 m/s is 7 m/s; at right angles 0.5 * hypot(8, 6) = 5 m/s."""
    T = 40
    assert score(track(T, v=8.0), [parked(T, 20.0, yaw=-math.pi)])["at_fault_collision_dv_max"] == pytest.approx(4.0)
    head_on = score(track(T, v=8.0), [vehicle(track(T, x0=30.0, v=6.0, yaw=-math.pi))])
    assert head_on["at_fault_collision_dv_max"] == pytest.approx(7.0, abs=1e-4)
    assert head_on["collision_dv_max"] == head_on["at_fault_collision_dv_max"]
    crossing = score(track(T, v=8.0), [vehicle(track(T, x0=14.0, y=-12.0, v=6.0, yaw=math.pi / 2))])
    assert crossing["collisions"] == 1
    assert crossing["collision_dv_max"] == pytest.approx(5.0, abs=1e-4)
    assert math.isnan(score(track(T, v=8.0))["collision_dv_max"])


def test_head_on_with_parked_car_zeroes_everything() -> None:  # case 2
    T = 40
    out = score(track(T, v=8.0), [parked(T, 20.0, yaw=-math.pi)])
    assert out["no_collision"] == 0.0 and out["cls"] == 0.0 and out["pdms"] == 0.0
    assert out["first_at_fault_group"] == agg.VEHICLE
    # front bumper 8 t + 3.334 reaches 20 - 2.25 between t = 1.8 and 1.9 s
    assert out["first_at_fault_time"] == pytest.approx(1.9) and out["first_at_fault_step"] == 19
    assert "collision: at fault with a vehicle at t = 1.9 s" in reasons({k: torch.tensor([v]) for k, v in out.items()})[0]


def test_one_cone_halves_two_cones_zero_nuplan_but_half_pdms() -> None:  # case 3
    T = 50
    cone = (0.5, 0.5)
    one = score(track(T, v=5.0), [parked(T, 15.0, y=1.0, kind=AgentType.STATIC, size=cone)])
    assert one["no_collision"] == 0.5 and one["ttc"] == 0.0 and one["pdms_nc"] == 0.5
    two = score(track(T, v=5.0), [parked(T, 15.0, y=1.0, kind=AgentType.STATIC, size=cone),
                                  parked(T, 20.0, y=-1.0, kind=AgentType.STATIC, size=cone)])
    assert two["at_fault_collisions"] == 2
    assert two["no_collision"] == 0.0 and two["pdms_nc"] == 0.5


def test_pedestrian_hit_by_front_bumper() -> None:  # case 4
    T = 40
    ped = Agent(AgentType.PEDESTRIAN, (0.7, 0.7), track(T, x0=12.0, v=1.2))
    out = score(track(T, v=5.0), [ped])
    assert out["no_collision"] == 0.0 and out["first_at_fault_group"] == agg.VRU and out["pdms_nc"] == 0.0


def _sideswipe(T: int, ego_y: float) -> tuple[np.ndarray, Agent]:
    ego = track(T, v=5.0, y=ego_y)
    t = np.arange(T) * DT
    other = np.stack([5.0 * t + EGO.rear_axle_to_center - 0.5, ego_y + W - 0.5 * t, 0 * t, 5.0 + 0 * t, -0.5 + 0 * t], 1)
    return ego, vehicle(other, size=(4.0, 2.0))


def test_lateral_contact_in_lane_vs_straddling() -> None:  # case 5
    T = 50
    ego, other = _sideswipe(T, 0.0)
    inside = score(ego, [other])
    assert inside["collisions"] == 1 and inside["no_collision"] == 1.0 and inside["pdms_nc"] == 1.0
    ego, other = _sideswipe(T, 1.7)  # left corners in lane 1, right corners in lane 0
    straddle = score(ego, [other])
    assert straddle["no_collision"] == 0.0 and straddle["pdms_nc"] == 0.0


@pytest.mark.parametrize("ego_y", [0.0, 1.7])
def test_rear_contact_is_never_at_fault(ego_y: float) -> None:  # case 6
    T = 45
    behind = vehicle(track(T, x0=-12.05, v=8.0, y=ego_y + 0.5))  # centre at ~170 deg at contact
    out = score(track(T, v=5.0, y=ego_y), [behind])
    assert out["collisions"] == 1 and out["no_collision"] == 1.0 and out["ttc"] == 1.0


# ----------------------------------------------------------------------------- drivable area (case 7)
@pytest.mark.parametrize("outside,nuplan,pdms", [(0.2, 1.0, 0.0), (0.35, 0.0, 0.0), (0.5, 0.0, 0.0)])
def test_drivable_area_tolerance(outside: float, nuplan: float, pdms: float) -> None:
    T = 30
    ego = track(T, v=5.0)
    ego[10, 1] = -W / 2 - outside + HALF_W  # right corners `outside` m beyond the only lane / ring
    out = score(ego, map=single_lane())
    assert out["drivable_area"] == nuplan and out["pdms_dac"] == pdms
    if nuplan == 0.0:
        assert out["drivable_area_time"] == pytest.approx(1.0) and out["cls"] == 0.0


# ----------------------------------------------------------------------------- driving direction (case 8)
@pytest.mark.parametrize("speed,expected", [(1.5, 1.0), (3.0, 0.5), (6.0, 0.0)])
def test_reversing_in_own_lane(speed: float, expected: float) -> None:
    T = 30
    ego = speed_profile([-speed] * 21 + [0.0] * (T - 21), x0=60.0)  # 2 s of reversing
    out = score(ego)
    assert out["driving_direction"] == expected
    assert out["ddc_max_backward_m"] == pytest.approx(11 * speed * DT, abs=1e-3)


def test_driving_forward_in_the_opposite_lane() -> None:
    T = 30
    out = score(track(T, v=10.0, y=-W))  # lane 2's baseline points towards -x
    assert out["driving_direction"] == 0.0 and out["ddc_max_backward_m"] == pytest.approx(11.0, abs=1e-3)


# ----------------------------------------------------------------------------- progress (case 9)
@pytest.mark.parametrize(
    "ego_speed,expert_speed,ep,mp",
    [(1.2, 8.0, 0.15, 0.0), (4.0, 8.0, 0.5, 1.0), (0.8, 8.0, 0.1, 0.0), (2.4, 8.0, 0.3, 1.0),
     (0.03, 0.15, 1.0, 1.0), (-0.25, 8.0, 0.0, 0.0)],
)
def test_progress_ratio_and_making_progress(ego_speed: float, expert_speed: float, ep: float, mp: float) -> None:
    T = 101  # 10 s
    out = score(track(T, x0=20.0, v=ego_speed), ego_log=track(T, x0=20.0, v=expert_speed))
    assert out["progress"] == pytest.approx(ep, abs=1e-4)
    assert out["making_progress"] == mp
    if mp == 0.0:
        assert out["cls"] == 0.0


def test_progress_survives_an_expert_lane_change() -> None:
    """The expert moves to the parallel lane; an ego that stays in its lane still progresses."""
    T = 101
    expert = track(T, x0=0.0, v=8.0)
    expert[50:, 1] = W  # lane change at 5 s
    out = score(track(T, x0=0.0, v=8.0), ego_log=expert)
    assert out["progress_expert_m"] == pytest.approx(80.0, abs=0.6)
    assert out["progress"] == pytest.approx(1.0, abs=0.01)


# ----------------------------------------------------------------------------- TTC (case 10)
@pytest.mark.parametrize("gap,expected", [(9.5, 1.0), (8.5, 0.0)])
def test_ttc_at_one_step(gap: float, expected: float) -> None:
    """Ego at 10 m/s at the only moving step, a parked car dead ahead ``gap`` m from its bumper."""
    T = 12
    ego = np.zeros((T, 5))
    ego[0, 0], ego[:2, 3] = -1.0, 10.0  # step 0 is history; from step 2 on the ego stands still
    car = parked(T, FRONT + gap + 2.25)
    out = score(ego, [car], history=1)
    assert out["ttc"] == expected and out["pdms_ttc"] == expected
    assert out["collisions"] == 0


@pytest.mark.parametrize("ego_y,nuplan", [(0.0, 1.0), (1.7, 0.0)])
def test_ttc_side_cone_only_when_not_in_one_lane(ego_y: float, nuplan: float) -> None:
    """Crossing car ahead-left at ~40 deg, reaching the ego's path within 0.9 s: a candidate for
    nuPlan only when the ego straddles lanes. NAVSIM compares with the car's logged position at
    +0.9 s, which is then straight ahead, so it fails both."""
    T = 12
    ego = np.zeros((T, 5))
    ego[:, 1] = ego_y
    ego[0, 0], ego[:2, 3] = -0.5, 5.0  # moving only at the first simulated step
    car = track(T, x0=6.0, y=ego_y + 5.0, v=5.0, yaw=-math.pi / 2)
    out = score(ego, [vehicle(car)], history=1)
    assert out["collisions"] == 0
    assert out["ttc"] == nuplan and out["pdms_ttc"] == 0.0


def test_expert_off_every_lane_gives_full_progress() -> None:
    out = score(track(20, v=5.0), map=empty_map())
    assert out["progress"] == 1.0 and out["making_progress"] == 1.0
    assert out["drivable_area"] == 0.0  # and nothing is drivable


# ----------------------------------------------------------------------------- speed limit (case 11)
def test_speed_limit_case_11() -> None:
    speeds = [LIMIT + 2.23] * 30 + [LIMIT] * 121  # 151 samples, 15 s
    out = score(speed_profile(speeds))
    assert out["speed_limit"] == pytest.approx(0.8, abs=1e-5)
    assert out["cls"] == pytest.approx((5 + 5 + 4 * 0.8 + 2) / 16, abs=1e-5)


def test_speed_limit_on_a_connector_uses_its_neighbours() -> None:
    """Connector (unknown limit) between two 13.9 m/s lanes: 15 m/s on it is over-speeding."""
    s = build_scenario(num_steps=40, num_agents=0, ego_speed=15.0, history_steps=0)
    out = evaluate(rollout([s]))
    # on lanes 0 / 2 the same speed is over the limit too; compare with the connector-only part
    over = 15.0 - 13.9
    n_over = 40  # every step is on lane 0, the connector or lane 2, all limited to 13.9 m/s
    assert float(out["speed_limit"][0]) == pytest.approx(1 - n_over * over * DT / (2.23 * 3.9), abs=1e-4)


# ----------------------------------------------------------------------------- lane predicates
def _map_state(ego: np.ndarray, map: MapData):  # type: ignore[no-untyped-def]
    r = rollout([scenario(ego, map=map)])
    scene = build_scene(r)
    return scene, build_map_state(scene, r.scenario)


def test_in_lane_across_a_lane_and_its_successor_but_not_across_parallel_lanes() -> None:
    m = road_map(120.0)  # conftest road: lane 0 -> connector 1 (x 40..50) -> lane 2, lane 3 parallel
    ego = track(30, x0=36.0, v=1.0)  # box centre crosses x = 40 while straddling lane 0 / connector
    _, ms = _map_state(ego, m)
    assert bool(ms.in_lane.all())
    assert bool((ms.corner_route[0, :, 0].float().argmax(-1) == 1).any())  # front corners reach the connector
    ego = track(30, x0=0.0, v=1.0, y=1.75)  # corners in lanes 0 and 3
    _, ms = _map_state(ego, m)
    assert not bool(ms.in_lane.any())


def _fork(second_y: float) -> MapData:
    """Lane 0 (x < 0) -> connectors 1 (y = 0) and 2 (y = ``second_y``) over x 0..20; only 1 -> lane 3."""
    h = W / 2
    return build_map(
        centrelines=[straight_lane(-30.0, 0.0, 0.0), straight_lane(0.0, 20.0, 0.0),
                     straight_lane(0.0, 20.0, second_y), straight_lane(20.0, 60.0, 0.0)],
        connectors=[False, True, True, False], speed_limits=[LIMIT, math.nan, math.nan, LIMIT],
        successors=[[1, 2], [3], [], []],
        polygons=[rectangle(-30, -h, 0, h), rectangle(0, -h, 20, h),
                  rectangle(0, second_y - h, 20, second_y + h), rectangle(20, -h, 60, h)],
        rings=[rectangle(-30, -h, 60, second_y + h)],
    )


def test_route_backward_pass_keeps_the_connector_the_ego_ends_up_in() -> None:
    """On two overlapping connectors the centre route holds both until the ego reaches lane 3;
    the backward pass then keeps only connector 1 (lane 3's incoming edge) everywhere."""
    ego = track(60, x0=-5.0, v=5.0)
    cx = ego[:, 0] + EGO.rear_axle_to_center
    _, ms = _map_state(ego, _fork(1.0))
    on_conn = ms.route[0, torch.as_tensor((cx > 0.1) & (cx < 19.9))]
    assert bool(on_conn[:, 1].all()) and not bool(on_conn[:, 2].any())
    first = lanes.first_index(ms.route[0])
    assert first[0].item() == 0 and first[-1].item() == 3


def test_route_hysteresis_keeps_the_previous_connector_within_5_m() -> None:
    ego = track(60, x0=-5.0, v=5.0)
    ego[20:26, 1] = 2.2  # centre leaves connector 1 (|y| <= 1.75) into connector 2 (y >= 1.9)
    _, ms = _map_state(ego, _fork(3.65))
    first = lanes.first_index(ms.route[0])
    assert set(first[20:26].tolist()) == {1}
    assert first[0].item() == 0 and first[-1].item() == 3


# ----------------------------------------------------------------------------- EP along roadblocks (1.6)
def _centre_path(xy: np.ndarray, speed: float, T: int) -> np.ndarray:
    """Rear-axle states ``[T, 5]`` whose box centre runs along polyline ``xy`` ``[P, 2]`` at ``speed``."""
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    q = np.arange(T) * DT * speed
    x, y = np.interp(q, s, xy[:, 0]), np.interp(q, s, xy[:, 1])
    i = np.clip(np.searchsorted(s, q, side="right") - 1, 0, len(seg) - 1)
    yaw = np.arctan2(xy[i + 1, 1] - xy[i, 1], xy[i + 1, 0] - xy[i, 0])
    d = EGO.rear_axle_to_center
    c, sn = np.cos(yaw), np.sin(yaw)
    return np.stack([x - d * c, y - d * sn, yaw, speed * c, speed * sn], 1)


def _two_lane_junction() -> MapData:
    """Two parallel lanes towards +x (y = 0 and y = 3.5), each through its own connector (x 0..20)."""
    h = W / 2
    spans = [(-50.0, 0.0), (0.0, 20.0), (20.0, 200.0)]
    cl, conn, succ, poly = [], [], [], []
    for k, (x0, x1) in enumerate(spans):
        for y in (0.0, W):
            cl.append(straight_lane(x0, x1, y))
            conn.append(k == 1)
            poly.append(rectangle(x0, y - h, x1, y + h))
    succ = [[2], [3], [4], [5], [], []]  # lane i (y = 0: even, y = 3.5: odd) -> its own connector -> lane
    return build_map(centrelines=cl, connectors=conn, speed_limits=[LIMIT if not c else math.nan for c in conn],
                     successors=succ, polygons=poly, rings=[rectangle(-50.0, -h, 200.0, W + h)])


def test_progress_lane_change_inside_a_connector() -> None:
    """The human changes lanes inside the junction; an ego that stays in its lane drives on into the
    lane parallel to the human's. nuPlan's roadblocks hold both lanes (and both connectors), so the
    ego keeps accruing progress; on the lane-by-lane route it stopped at the junction's end
    (22 of 120 m: MP would read 0)."""
    T = 151
    expert = _centre_path(np.array([[-2.0, 0.0], [4.0, 0.0], [12.0, W], [300.0, W]]), 8.0, T)
    ego = _centre_path(np.array([[-2.0, 0.0], [300.0, 0.0]]), 8.0, T)
    out = score(ego, ego_log=expert, map=_two_lane_junction())
    assert out["progress_expert_m"] == pytest.approx(120.0, abs=1.0)
    assert out["progress_ego_m"] == pytest.approx(120.0, abs=1.0)
    assert out["progress"] == pytest.approx(1.0, abs=1e-3) and out["making_progress"] == 1.0
    r = rollout([scenario(expert, map=_two_lane_junction())], sim=[ego])
    scene = build_scene(r)
    ms = build_map_state(scene, r.scenario)
    assert ms.roadblock[0].tolist() == [0, 0, 2, 2, 4, 4]  # lanes side by side, connectors A->A and B->B
    assert int(ms.blocks.valid.sum()) == 3


def _turn_junction(radius: float = 20.0) -> MapData:
    """Lane 0 (y = 0, x < 0) -> straight connector 1 (x 0..20) -> lane 2, and -> left-turn connector 3
    (quarter circle of ``radius`` about (0, radius)) -> lane 4 (x = radius, towards +y)."""
    h = W / 2
    phi = np.linspace(0.0, math.pi / 2, 64)
    arc = np.stack([radius * np.sin(phi), radius - radius * np.cos(phi), phi], 1)
    outer = np.stack([(radius + h) * np.sin(phi), radius - (radius + h) * np.cos(phi)], 1)
    inner = np.stack([(radius - h) * np.sin(phi), radius - (radius - h) * np.cos(phi)], 1)
    up = straight_lane(radius, 200.0, 0.0)[:, [1, 0, 2]].copy()
    up[:, 0], up[:, 2] = radius, math.pi / 2
    return build_map(
        centrelines=[straight_lane(-50.0, 0.0, 0.0), straight_lane(0.0, radius, 0.0),
                     straight_lane(radius, 200.0, 0.0), arc, up],
        connectors=[False, True, False, True, False], speed_limits=[LIMIT, math.nan, LIMIT, math.nan, LIMIT],
        successors=[[1, 3], [2], [], [4], []],
        polygons=[rectangle(-50.0, -h, 0.0, h), rectangle(0.0, -h, radius, h), rectangle(radius, -h, 200.0, h),
                  np.concatenate([outer, inner[::-1]]), rectangle(radius - h, radius, radius + h, 200.0)],
        rings=[rectangle(-50.0, -h, 200.0, h), rectangle(radius - h, -h, radius + h, 200.0),
               np.concatenate([outer, inner[::-1]])],
    )


def test_progress_straight_where_the_route_turns() -> None:
    """The human turns left; the ego drives straight on. Its progress counts on the route while its
    centre is in the route's blocks: 30 m on lane 0, then along the turn's baseline while it is inside
    the turn connector (to x = sqrt(21.75^2 - 20^2) = 8.55 m), then nothing on the other road."""
    T = 151
    R = 20.0
    phi = np.linspace(0.0, math.pi / 2, 200)
    turn = np.concatenate([[[-30.0, 0.0]], np.stack([R * np.sin(phi), R - R * np.cos(phi)], 1), [[R, 300.0]]])
    expert = _centre_path(turn, 8.0, T)
    ego = _centre_path(np.array([[-30.0, 0.0], [300.0, 0.0]]), 8.0, T)
    out = score(ego, ego_log=expert, map=_turn_junction(R))
    assert out["progress_expert_m"] == pytest.approx(120.0, abs=1.0)
    x_out = math.sqrt((R + W / 2) ** 2 - R**2)  # last centre inside the turn connector
    expected = 30.0 + R * math.atan2(x_out, R)
    assert out["progress_ego_m"] == pytest.approx(expected, abs=0.9)
    assert out["progress"] == pytest.approx(out["progress_ego_m"] / out["progress_expert_m"], abs=1e-6)
    turned = score(expert, ego_log=expert, map=_turn_junction(R))
    assert turned["progress"] == 1.0 and turned["progress_ego_m"] == pytest.approx(120.0, abs=1.0)
