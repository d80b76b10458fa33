"""The builtin simulator: vehicle model and tracker known answers, closed-loop contracts (shapes,
masks, determinism, plan timing), observations in the ego frame, and log replay on real drives."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import LANE_WIDTH, build_map, build_scenario, rectangle, straight_lane

from av.batch import collate
from av.cli.main import main
from av.errors import AvError
from av.observation import Observation, Privileged, Trajectory
from av.types import Scenario, empty_map
from closedloop.planner import make_planner
from closedloop.planners.constant_velocity import ConstantVelocityPlanner
from closedloop.planners.log_replay import LogReplayPlanner
from closedloop.driver import rollout
from closedloop.sim import BuiltinSimulator, SimConfig, Simulator, make_simulator
from av.observe import ObservationSpec, observe, prepare_map, privileged
from av.vehicle import VehicleLimits, VehicleState, bicycle_step
from closedloop.sim.vehicle import GainTable, lqr_lateral_gains, make_plan, track

DT = 0.1
WHEELBASE = 2.588


def vehicle(B: int = 1, speed: float = 0.0, steer: float = 0.0, accel: float = 0.0) -> VehicleState:
    z = torch.zeros(B)
    return VehicleState(torch.zeros(B, 3), z + speed, z + accel, z + steer, z, z)


def curved_scenario(id: str = "curve", radius: float = 30.0, v0: float = 6.0, accel: float = 0.5,
                    num_steps: int = 80, history_steps: int = 10) -> Scenario:
    """The hand-made road with the ego's log replaced by a left arc (``radius`` m) driven at a
    rising speed ``v0 + accel t``: rear-axle poses and velocities consistent with each other."""
    base = build_scenario(id=id, num_steps=num_steps, history_steps=history_steps, num_agents=1)
    t = np.arange(num_steps) * DT
    s = v0 * t + 0.5 * accel * t**2
    v = v0 + accel * t
    th = s / radius
    ego = np.stack([radius * np.sin(th), radius * (1 - np.cos(th)), th, v * np.cos(th), v * np.sin(th)], 1)
    return base.replace(ego=ego).validate()


class FixedPlanner:
    """Returns the same ego-frame trajectory at every call (counts its calls)."""

    name = "fixed"
    privileged = False

    def __init__(self, poses: torch.Tensor, dt: float = DT) -> None:
        self.poses, self.dt, self.calls = poses, dt, 0

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        self.calls += 1
        return Trajectory(self.poses.expand(observation.batch_size, -1, -1), self.dt)


# ---------------------------------------------------------------------------- vehicle model
def test_constant_steering_traces_circle_of_radius_wheelbase_over_tan_steer() -> None:
    limits = VehicleLimits()
    steer = 0.3
    s = vehicle(speed=5.0, steer=steer)
    L = torch.tensor([WHEELBASE])
    radius = WHEELBASE / math.tan(steer)
    for _ in range(60):
        s = bicycle_step(s, torch.zeros(1), torch.zeros(1), L, limits, DT)
        centre_dist = math.hypot(float(s.pose[0, 0]), float(s.pose[0, 1]) - radius)
        assert centre_dist == pytest.approx(radius, abs=1e-4)
    assert float(s.yaw_rate[0]) == pytest.approx(5.0 * math.tan(steer) / WHEELBASE, rel=1e-5)
    # 60 steps at 5 m/s: 30 m of arc, so the heading turned by 30 / radius.
    assert float(s.pose[0, 2]) == pytest.approx(math.remainder(30.0 / radius, 2 * math.pi), abs=1e-4)


def test_bicycle_respects_every_limit_and_never_reverses() -> None:
    limits = VehicleLimits(max_accel=3.0, max_decel=7.0, max_jerk=10.0, max_steer=0.5, max_steer_rate=0.4)
    L = torch.full((2,), WHEELBASE)
    s = vehicle(B=2, speed=10.0)
    accels, steers, speeds = [s.accel.clone()], [s.steer.clone()], [s.speed.clone()]
    for k in range(60):
        cmd = torch.tensor([100.0, -100.0]) * (1 if k < 30 else -1)
        s = bicycle_step(s, cmd, torch.tensor([50.0, -50.0]), L, limits, DT)
        accels.append(s.accel.clone()), steers.append(s.steer.clone()), speeds.append(s.speed.clone())
    a, st, v = torch.stack(accels), torch.stack(steers), torch.stack(speeds)
    assert float(a.max()) <= 3.0 + 1e-6 and float(a.min()) >= -7.0 - 1e-6
    assert float(a.max()) == pytest.approx(3.0) and float(a.min()) == pytest.approx(-7.0)
    jerk = (a[1:] - a[:-1]).abs()
    came_to_rest = (v[1:] == 0) & (v[:-1] > 0)  # braking ends there: the realised decel drops to 0
    assert float(jerk[~came_to_rest].max()) <= 10.0 * DT + 1e-5
    assert float(st.abs().max()) == pytest.approx(0.5)
    assert float((st[1:] - st[:-1]).abs().max()) <= 0.4 * DT + 1e-6
    assert float(v.min()) >= 0.0
    at_rest = v[:, 1] == 0
    assert bool(at_rest.any()) and float(a[:, 1][at_rest].abs().max()) <= 10.0 * DT  # no decel at rest


def test_lqr_gains_are_stabilising_and_the_gain_table_matches_them() -> None:
    v = torch.tensor([1.0, 5.0, 15.0, 30.0])
    K = lqr_lateral_gains(v, torch.full_like(v, WHEELBASE), torch.zeros_like(v), DT)
    assert K.shape == (4, 3)
    assert bool((K > 0).all())  # push every error back towards zero
    gen = torch.Generator().manual_seed(0)
    speed = torch.rand(500, generator=gen) * 40 + 0.5
    wheelbase = 2.0 + 2.0 * torch.rand(500, generator=gen)
    steer = (torch.rand(500, generator=gen) - 0.5) * 1.2
    exact = lqr_lateral_gains(speed, wheelbase, steer, DT)
    table = GainTable.build(DT).lookup(speed, wheelbase, steer)
    assert float(((table - exact).abs() / exact.abs().amax(0)).max()) < 0.01


def straight_plan(B: int, y: float, speed: float, H: int = 80) -> torch.Tensor:
    x = speed * DT * torch.arange(1, H + 1, dtype=torch.float32)
    return torch.stack([x, torch.full_like(x, y), torch.zeros_like(x)], -1).expand(B, H, 3)


def test_lqr_tracker_converges_onto_a_straight_reference_from_half_a_metre_off() -> None:
    limits = VehicleLimits()
    L = torch.tensor([WHEELBASE])
    s = vehicle(speed=8.0)
    plan = make_plan(straight_plan(1, 0.5, 8.0, H=200), L, limits, made_at=0)
    lat = []
    for k in range(100):
        a, r = track(s, plan, k, L, limits, DT)
        s = bicycle_step(s, a, r, L, limits, DT)
        lat.append(float(s.pose[0, 1]))
    assert max(lat) < 0.6  # little overshoot
    assert abs(lat[-1] - 0.5) < 0.02 and abs(float(s.pose[0, 2])) < 0.01
    assert abs(float(s.pose[0, 0]) - 8.0 * DT * 100) < 0.05 and abs(float(s.speed[0]) - 8.0) < 0.05


def test_lqr_tracker_follows_a_circle_within_five_centimetres() -> None:
    limits = VehicleLimits()
    L = torch.tensor([WHEELBASE])
    radius, speed, H = 25.0, 7.0, 120
    th = speed * DT * torch.arange(1, H + 1, dtype=torch.float32) / radius
    poses = torch.stack([radius * torch.sin(th), radius * (1 - torch.cos(th)), th], -1)[None]
    plan = make_plan(poses, L, limits, made_at=0)
    s = vehicle(speed=speed)
    errs = []
    for k in range(100):
        a, r = track(s, plan, k, L, limits, DT)
        s = bicycle_step(s, a, r, L, limits, DT)
        errs.append(float((s.pose[0, :2] - poses[0, k, :2]).norm()))
    assert max(errs[30:]) < 0.05  # after the steering has wound up onto the curve
    assert max(errs) < 0.25


# ---------------------------------------------------------------------------- closed loop
def test_perfect_controller_reproduces_the_plan() -> None:
    sc = build_scenario(num_steps=40, history_steps=10)
    batch = collate([sc])
    th = torch.linspace(0.02, 1.6, 80)
    poses = torch.stack([20 * torch.sin(th), 20 * (1 - torch.cos(th)), th], -1)[None]
    planner = FixedPlanner(poses)
    r = rollout(BuiltinSimulator(controller="perfect"), batch, planner, plan_every=100)
    start_pose = batch.ego[0, 10, :3]
    for k in range(1, 30):
        expected = poses[0, k - 1]
        c, s = math.cos(float(start_pose[2])), math.sin(float(start_pose[2]))
        ex = float(start_pose[0]) + c * float(expected[0]) - s * float(expected[1])
        ey = float(start_pose[1]) + s * float(expected[0]) + c * float(expected[1])
        got = r.ego[0, 10 + k]
        assert float(got[0]) == pytest.approx(ex, abs=1e-4) and float(got[1]) == pytest.approx(ey, abs=1e-4)
        assert float(got[2]) == pytest.approx(float(expected[2]), abs=1e-5)
    assert planner.calls == 1


def test_log_replay_reproduces_the_logged_ego_on_a_curving_accelerating_drive() -> None:
    sc = curved_scenario()
    batch = collate([sc])
    r = rollout(BuiltinSimulator(), batch, LogReplayPlanner())
    sim = slice(10, 80)
    err = (r.ego[0, sim, :2] - batch.ego[0, sim, :2]).norm(dim=-1)
    assert float(err.max()) < 0.05
    yaw_err = torch.remainder(r.ego[0, sim, 2] - batch.ego[0, sim, 2] + math.pi, 2 * math.pi) - math.pi
    assert float(yaw_err.abs().max()) < 0.01
    # model-state accelerations: longitudinal ~0.5 m/s^2, lateral v^2 / R
    v = batch.ego[0, sim, 3:5].norm(dim=-1)
    assert float((r.ego_accel[0, 20:70, 0] - 0.5).abs().max()) < 0.05  # the log ends at 80
    assert float((r.ego_accel[0, sim, 1] - v**2 / 30.0)[10:].abs().max()) < 0.2


def test_constant_velocity_goes_straight_at_the_current_speed() -> None:
    sc = build_scenario(num_steps=40, history_steps=10, ego_speed=7.0)
    r = rollout(BuiltinSimulator(), collate([sc]), ConstantVelocityPlanner())
    ego = r.ego[0, 10:]
    assert float(ego[:, 1].abs().max()) < 1e-4 and float(ego[:, 2].abs().max()) < 1e-5
    assert float((ego[:, 3] - 7.0).abs().max()) < 1e-3
    assert float(ego[-1, 0] - ego[0, 0]) == pytest.approx(7.0 * DT * 29, abs=1e-2)


@pytest.mark.parametrize("B", [1, 3])
def test_rollout_shapes_masks_and_log_before_the_start(B: int) -> None:
    scenarios = [build_scenario(id=f"s{i}", num_steps=30 + 5 * i, history_steps=8 + i) for i in range(B)]
    batch = collate(scenarios)
    T, N = batch.ego.shape[1], batch.agents.shape[1]
    r = rollout(BuiltinSimulator(agents="idm"), batch, make_planner("constant_velocity"))
    assert r.ego.shape == (B, T, 5) and r.ego_accel.shape == (B, T, 2)
    assert r.ego_yaw_rate.shape == (B, T) and r.ego_yaw_accel.shape == (B, T)
    assert r.agents.shape == (B, N, T, 5) and r.agent_valid.shape == (B, N, T)
    assert r.planned is not None and r.planned.shape == (B, T, 80, 3)
    assert torch.equal(r.start_step, batch.history_steps) and torch.equal(r.step_valid, batch.step_valid)
    assert r.agent_mode == "idm" and r.planner == "constant_velocity"
    for b, sc in enumerate(scenarios):
        h, n = sc.history_steps, sc.num_steps
        assert torch.equal(r.ego[b, :h], batch.ego[b, :h])  # the history repeats the log
        assert torch.equal(r.agents[b, :, :h], batch.agents[b, :, :h])
        assert torch.isnan(r.planned[b, :h]).all() and torch.isfinite(r.planned[b, h:n - 1]).all()
        assert float(r.ego[b, n:].abs().sum()) == 0.0 and not bool(r.agent_valid[b, :, n:].any())
        assert torch.isfinite(r.ego[b, :n]).all()
    # agents appear exactly where the log has them
    assert torch.equal(r.agent_valid, batch.agent_valid)


def test_runs_are_bit_identical_and_use_only_deterministic_algorithms() -> None:
    batch = collate([curved_scenario(), build_scenario(id="b", num_steps=60)])
    cfg = SimConfig(agents="idm")
    r1 = rollout(BuiltinSimulator(cfg), batch, LogReplayPlanner())
    torch.use_deterministic_algorithms(True)
    try:
        r2 = rollout(BuiltinSimulator(cfg), batch, LogReplayPlanner())
    finally:
        torch.use_deterministic_algorithms(False)
    for name in ("ego", "ego_accel", "ego_yaw_rate", "ego_yaw_accel", "agents", "agent_valid"):
        assert torch.equal(getattr(r1, name), getattr(r2, name)), name
    assert torch.equal(torch.nan_to_num(r1.planned), torch.nan_to_num(r2.planned))


def test_planner_is_called_every_plan_every_steps_and_the_plan_is_kept_in_between() -> None:
    sc = build_scenario(num_steps=41, history_steps=10, ego_speed=5.0)
    planner = FixedPlanner(straight_plan(1, 0.0, 5.0))
    r = rollout(BuiltinSimulator(), collate([sc]), planner, plan_every=4)
    assert planner.calls == math.ceil(30 / 4)
    # between calls the rollout records the plan being tracked (same world poses)
    assert torch.equal(r.planned[0, 10], r.planned[0, 13]) and not torch.equal(r.planned[0, 13], r.planned[0, 14])
    logged_x = torch.tensor(sc.ego[10:, 0], dtype=torch.float32)
    assert float((r.ego[0, 10:, 0] - logged_x).abs().max()) < 0.05


def test_coarse_plans_are_resampled_in_time() -> None:
    x = 0.5 * torch.arange(1, 41, dtype=torch.float32)
    fine = torch.stack([x, 0.01 * x**2, torch.linspace(0, 1, 40)], -1)[None]
    coarse = fine[:, 4::5]  # every 0.5 s
    out = Trajectory(coarse, 0.5).resampled(DT)
    assert out.shape == (1, 40, 3)
    assert torch.allclose(out[:, 4::5], coarse, atol=1e-5)
    assert torch.allclose(out[0, 0, :2], coarse[0, 0, :2] / 5, atol=1e-5)  # from the origin


def test_observation_is_in_the_ego_frame() -> None:
    sc = build_scenario(num_steps=30, history_steps=10, num_agents=2, ego_speed=5.0)
    # yaw the whole world by 0.7 rad about the origin: the ego frame must not notice.
    c, s = math.cos(0.7), math.sin(0.7)

    def rot(states: np.ndarray) -> np.ndarray:
        out = states.copy()
        out[..., 0], out[..., 1] = c * states[..., 0] - s * states[..., 1], s * states[..., 0] + c * states[..., 1]
        out[..., 2] = (states[..., 2] + 0.7 + math.pi) % (2 * math.pi) - math.pi
        out[..., 3], out[..., 4] = c * states[..., 3] - s * states[..., 4], s * states[..., 3] + c * states[..., 4]
        return out

    def rot_xy(p: np.ndarray) -> np.ndarray:
        return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], 1)

    m = sc.map
    headings = (m.lane_points[:, 2:] + 0.7 + math.pi) % (2 * math.pi) - math.pi
    lanes = np.concatenate([rot_xy(m.lane_points), headings], 1)
    turned_map = dataclasses.replace(m, lane_points=lanes, lane_polygon_points=rot_xy(m.lane_polygon_points),
                                     drivable_ring_points=rot_xy(m.drivable_ring_points))
    turned = sc.replace(ego=rot(sc.ego), agents=rot(sc.agents) * sc.agent_valid[..., None], map=turned_map)
    obs = [observe(b, b.history_steps, ObservationSpec()) for b in (collate([sc]), collate([turned]))]
    for o in obs:
        # ego at (5, 0) at step 10; nearest first: "left" at (-5 + 7, 3.5), then "lead" at 15 + 4
        left, lead = o.agents[0, 0, -1], o.agents[0, 1, -1]
        assert float(lead[0]) == pytest.approx(14.0, abs=1e-4) and float(lead[1]) == pytest.approx(0.0, abs=1e-4)
        assert float(lead[3]) == pytest.approx(4.0, abs=1e-4) and float(lead[2]) == pytest.approx(0.0, abs=1e-5)
        assert float(left[0]) == pytest.approx(-3.0, abs=1e-4) and float(left[1]) == pytest.approx(3.5, abs=1e-4)
        assert float(o.agents[0, 1, -2, 0]) == pytest.approx(14.0 - 0.4, abs=1e-4)  # 0.1 s ago, frame of now
        assert o.agent_types[0, :2].tolist() == [0, 0] and bool(o.agent_valid[0, :2].all())
        assert not bool(o.agent_valid[0, 2:].any()) and bool((o.agent_types[0, 2:] == -1).all())
        assert o.ego_history.shape == (1, 21, 5)
        assert float(o.ego_history[0, -1, :3].abs().max()) < 1e-5
        assert float(o.ego_history[0, -2, 0]) == pytest.approx(-0.5, abs=1e-4)  # 0.1 s ago at 5 m/s
        assert bool(o.route_valid[0, 0]) and float(o.route[0, 0, 0]) == pytest.approx(0.0, abs=0.51)
        assert float((o.route[0, 1:20, 0] - o.route[0, :19, 0]).mean()) == pytest.approx(1.0, abs=1e-4)
        assert float(o.route[0, :20, 1].abs().max()) < 1e-4
        assert bool(o.lane_valid[0, :3].all()) and bool(o.lane_on_route[0].any())
        assert int(o.drivable_edge_valid[0].sum()) == 8  # two rectangles
        right_edge = o.drivable_edges[0, :8][(o.drivable_edges[0, :8, 1] - o.drivable_edges[0, :8, 3]).abs() < 1e-3]
        assert float(right_edge[:, 1].abs().min()) == pytest.approx(1.75, abs=1e-3)
    assert torch.allclose(obs[0].agents, obs[1].agents, atol=1e-3)
    assert torch.allclose(obs[0].lanes, obs[1].lanes, atol=1e-3)
    assert torch.allclose(obs[0].route, obs[1].route, atol=1e-3)


def test_privileged_future_is_the_log_in_the_ego_frame() -> None:
    sc = build_scenario(num_steps=30, history_steps=10, ego_speed=5.0)
    batch = collate([sc])
    p = privileged(batch, batch.history_steps, ObservationSpec(future_steps=25))
    assert p.ego_future.shape == (1, 25, 5)
    assert int(p.ego_future_valid.sum()) == 19  # steps 11..29
    assert float(p.ego_future[0, 0, 0]) == pytest.approx(0.5, abs=1e-4)
    # nearest agent first: "left" at x = -5 + 7 t, 3.5 m to the left
    assert float(p.agents_future[0, 0, 0, 0]) == pytest.approx(-3.0 + 0.7, abs=1e-4)
    assert float(p.agents_future[0, 1, 0, 0]) == pytest.approx(14.0 + 0.4, abs=1e-4)


def test_bad_config_and_bad_plans_raise_av_errors() -> None:
    with pytest.raises(AvError, match="plan_every"):
        rollout(BuiltinSimulator(), collate([build_scenario()]), ConstantVelocityPlanner(), plan_every=0)
    with pytest.raises(AvError, match="num_agents"):
        ObservationSpec(num_agents=0).validate()
    with pytest.raises(AvError, match="unknown simulator"):
        make_simulator("nope")
    with pytest.raises(AvError, match="bad settings"):
        make_simulator("builtin", wheels=3)
    assert isinstance(make_simulator("builtin", agents="idm"), Simulator)
    sim = BuiltinSimulator()
    state = sim.reset(collate([build_scenario()]))
    with pytest.raises(AvError, match="non-finite"):
        sim.step(state, Trajectory(torch.full((1, 5, 3), math.nan), DT))
    with pytest.raises(AvError, match="shape"):
        sim.step(state, Trajectory(torch.zeros(2, 5, 3), DT))


def test_scenarios_without_map_or_agents_run_and_observe_nothing() -> None:
    bare = build_scenario(id="bare", num_steps=25).replace(map=empty_map(), route=np.zeros(0, np.int64))
    lonely = build_scenario(id="lonely", num_steps=25, num_agents=0)
    batch = collate([bare, lonely])
    for planner in (ConstantVelocityPlanner(), LogReplayPlanner()):
        r = rollout(BuiltinSimulator(agents="idm"), batch, planner)
        assert torch.isfinite(r.ego[batch.step_valid]).all()
    o = observe(batch, batch.history_steps, ObservationSpec())
    assert o.lane_valid.sum(1).tolist() == [0, 4] and o.route_valid[0].sum() == 0
    assert o.drivable_edge_valid.sum(1).tolist() == [0, 8] and not bool(o.agent_valid[1].any())
    assert bool(o.agent_valid[0, :2, -1].all())


def test_bench_cli_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--batches", "1,2", "--agents", "3", "--steps", "3", "--eval-scenarios", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["batch"] for row in out["sim"]] == [1, 2]
    for row in out["sim"]:
        assert row["agent_steps_per_s"] > 0 and row["ratio"] == pytest.approx(
            row["kernel_agent_steps_per_s"] / row["agent_steps_per_s"], rel=1e-2)
    assert out["memory"]["state_bytes_b2"] > 0
    for when in ("before", "after"):  # the machine beside the figures
        m = out["machine"][when]
        assert m["cores"] >= 1 and m["torch_threads"] >= 1 and len(m["load_average"]) == 3
    assert main(["bench", "sim", "--batches", "1,x"]) == 2


def test_log_replay_tracks_real_drives_within_a_decimetre(real_scenarios: list[Scenario]) -> None:
    batch = collate(real_scenarios)
    r = rollout(BuiltinSimulator(), batch, make_planner("log_replay"))
    t = torch.arange(batch.ego.shape[1])[None]
    simulated = (t >= batch.history_steps[:, None]) & batch.step_valid
    err = (r.ego[..., :2] - batch.ego[..., :2]).norm(dim=-1)[simulated]
    assert float(err.max()) < 0.1
    assert float(err.mean()) < 0.03
    assert not bool(r.ego_accel[simulated].isnan().any())


# ---------------------------------------------------------------------------- route polyline
def route_polyline(scenarios: list[Scenario]) -> list[torch.Tensor]:
    """Each scenario's prepared route ``[S, 3]`` (valid points only, scenario frame)."""
    cache = prepare_map(collate(scenarios), ObservationSpec(lane_points=20))
    return [cache.route[b][cache.route_valid[b]] for b in range(len(scenarios))]


def concatenated_route(sc: Scenario) -> np.ndarray:
    """Reference: the route lanes' points concatenated whole, resampled every metre (x, y)."""
    m = sc.map
    pts = np.concatenate([m.lane_points[m.lane_point_offsets[i]:m.lane_point_offsets[i + 1], :2] for i in sc.route])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    q = np.arange(int(np.floor(s[-1])) + 1, dtype=np.float64)
    return np.stack([np.interp(q, s, pts[:, 0]), np.interp(q, s, pts[:, 1])], 1)


def chord_turns(route: torch.Tensor) -> torch.Tensor:
    """Direction change (rad) between consecutive chords of a polyline ``[S, >=2]``."""
    d = (route[1:, :2] - route[:-1, :2]).double()
    ang = torch.atan2(d[:, 1], d[:, 0])
    return (ang[1:] - ang[:-1] + math.pi) % (2 * math.pi) - math.pi


def two_lane_scenario(id: str, a: tuple[float, float, float], b: tuple[float, float, float],
                      successors: list[list[int]]) -> Scenario:
    """The hand-made scenario on a map of two straight lanes ``(x0, x1, y)`` with route ``[0, 1]``."""
    h = LANE_WIDTH / 2
    spans = [a, b]
    lanes = build_map(
        centrelines=[straight_lane(x0, x1, y) for x0, x1, y in spans], connectors=[False, False],
        speed_limits=[13.9, 13.9], successors=successors,
        polygons=[rectangle(x0, y - h, x1, y + h) for x0, x1, y in spans],
        rings=[rectangle(-20.0, -h, 120.0, LANE_WIDTH + h)],
    )
    return build_scenario(id=id, num_agents=0).replace(map=lanes, route=np.array([0, 1])).validate()


@pytest.mark.parametrize("a, b, start, join_x", [
    ((-20.0, 60.0, 0.0), (20.0, 120.0, LANE_WIDTH), (-20.0, 0.0), 20.0),  # change mid-lane
    ((-20.0, 40.0, 0.0), (-20.0, 120.0, LANE_WIDTH), (-20.0, LANE_WIDTH), -20.0),  # B alongside all of A
    ((-20.0, 40.0, 0.0), (45.0, 120.0, 1.0), (-20.0, 0.0), 40.0),  # a gap in the lane graph
])
def test_route_through_a_lane_change_never_runs_backwards(
    a: tuple[float, float, float], b: tuple[float, float, float], start: tuple[float, float], join_x: float,
) -> None:
    """Whole-lane concatenation would run to A's end and jump back to B's start; the route
    instead leaves A where B begins and joins B on a gentle diagonal, always forward."""
    sc = two_lane_scenario("change", a, b, successors=[[], []])
    route = route_polyline([sc])[0]
    step = route[1:, :2] - route[:-1, :2]
    assert float(step.norm(dim=-1).min()) > 0.97 and float(step.norm(dim=-1).max()) < 1.0 + 1e-4
    assert float(step[:, 0].min()) > 0.95  # every step goes forward (+x): no backward jump
    assert float(chord_turns(route).abs().max()) < math.radians(16)
    assert float(route[:, 2].abs().max()) < 1e-5  # the lanes' heading throughout
    assert route[0, :2].tolist() == pytest.approx(list(start), abs=1e-4)
    assert route[-1, :2].tolist() == pytest.approx([120.0, b[2]], abs=1.0)
    # on A (y = 0) up to where B begins, on B (its y) once the ramp is done
    on_a = route[route[:, 0] < join_x - 0.5]  # A's last kept point is 0.5 m before B's start
    assert float(on_a[:, 1].abs().sum()) < 1e-3
    on_b = route[route[:, 0] > join_x + 4.0 * abs(b[2] - a[2]) + 1.0]
    assert float((on_b[:, 1] - b[2]).abs().max()) < 1e-4
    # the arc length grows along x
    s = torch.cat([torch.zeros(1), step.norm(dim=-1).cumsum(0)])
    assert bool((s[1:] > s[:-1]).all()) and float(s[-1]) < 140.0 + 1.0


def test_connected_route_is_the_lanes_concatenated() -> None:
    sc = build_scenario(num_agents=0)  # route 0 -> 1 -> 2 along the lane graph
    joined = two_lane_scenario("joined", (-20.0, 40.0, 0.0), (40.0, 120.0, 0.0), successors=[[1], []])
    for case, route in zip((sc, joined), route_polyline([sc, joined])):
        ref = concatenated_route(case)
        assert route.shape[0] == len(ref) == 141
        assert np.allclose(route[:, :2].numpy(), ref, atol=1e-4)


@pytest.fixture(scope="module")
def lane_change_drives() -> list[Scenario]:
    from av.paths import nuscenes_mini_dir

    root = nuscenes_mini_dir()
    if root is None:
        pytest.skip("real nuScenes-mini data not found")
    from av.data.nuscenes import ImportConfig, load_nuscenes

    return list(load_nuscenes(root, ImportConfig(scenes="scene-0757,scene-1100")))


def test_real_routes_run_forward_along_the_logged_drive(lane_change_drives: list[Scenario]) -> None:
    assert len(lane_change_drives) == 2
    batch = collate(lane_change_drives)
    for b, (sc, route) in enumerate(zip(lane_change_drives, route_polyline(lane_change_drives))):
        assert len(route) >= 10
        step = (route[1:, :2] - route[:-1, :2]).norm(dim=-1)
        assert float(step.min()) > 0.9 and float(step.max()) < 1.0 + 1e-3
        assert float(chord_turns(route).abs().max()) < math.pi / 2, sc.id  # no reversal
        ego = batch.ego[b][batch.step_valid[b], :2]
        gap = (ego[:, None] - route[None, :, :2]).norm(dim=-1).amin(1)
        assert float((gap < 3.0).float().mean()) > 0.9, sc.id
        m = sc.map
        linked = all(int(j) in m.lane_successors[m.lane_successor_offsets[i]:m.lane_successor_offsets[i + 1]]
                     for i, j in zip(sc.route[:-1], sc.route[1:]))
        if linked:  # nothing to repair: exactly the lanes concatenated
            assert np.allclose(route[:, :2].numpy(), concatenated_route(sc), atol=2e-3)
