"""CARLA backend: frame conversions, the ego controller and the agents' commands against the real
``carla`` client module's types (no server needed), the no-server error path, and one live run
(marked ``carla``; it skips when no CARLA server answers)."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

from av.batch import collate
from av.errors import AvError
from av.observation import Trajectory
from av.types import Scenario
from closedloop.sim.carla_backend import (
    HIDDEN_Z,
    SPAWN_Z,
    CarlaEpisode,
    CarlaSettings,
    CarlaSimulator,
    connect,
    from_carla_transform,
    from_carla_vector,
    log_agent_commands,
    to_carla_transform,
    to_carla_vector,
    to_vehicle_control,
    track_plan,
)

carla = pytest.importorskip("carla", reason="the carla client module (extra 'carla') is not installed")


def free_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_transforms_flip_y_and_yaw_and_round_trip() -> None:
    t = to_carla_transform(3.0, 4.0, 0.5, z=1.0)
    assert isinstance(t, carla.Transform)
    assert (t.location.x, t.location.y, t.location.z) == pytest.approx((3.0, -4.0, 1.0))
    assert t.rotation.yaw == pytest.approx(-math.degrees(0.5))
    f = t.get_forward_vector()  # CARLA's heading vector, flipped back, is ours
    assert from_carla_vector(f) == pytest.approx((math.cos(0.5), math.sin(0.5)), abs=1e-6)
    assert from_carla_transform(t) == pytest.approx((3.0, 4.0, 0.5))
    assert from_carla_transform(to_carla_transform(0.0, 0.0, math.pi - 1e-3))[2] == pytest.approx(math.pi - 1e-3, abs=1e-5)
    v = to_carla_vector(2.0, -1.0)
    assert isinstance(v, carla.Vector3D) and from_carla_vector(v) == pytest.approx((2.0, -1.0))


def test_conversions_agree_with_carla_reading_our_opendrive(real_scenarios: list[Scenario]) -> None:
    """A point on one of our lanes, sent to CARLA's parsed map of our export, comes back on that
    lane with the lane's heading: the export and the conversions use one convention."""
    from scenarios.opendrive import opendrive_text, plan_network

    s = real_scenarios[0]
    cmap = carla.Map(s.id, opendrive_text(s))
    lane_of = plan_network(s).lane_of_road
    for lane in range(0, s.map.num_lanes, 7):
        pts = s.map.lane(lane)
        x, y, h = pts[len(pts) // 2]
        wp = cmap.get_waypoint(to_carla_transform(x, y, h).location, project_to_road=True)
        wx, wy, wh = from_carla_transform(wp.transform)
        assert math.hypot(wx - x, wy - y) < 0.2
        assert abs((wh - h + math.pi) % (2 * math.pi) - math.pi) < 0.05
        assert lane_of[wp.road_id] == lane or math.hypot(wx - x, wy - y) < 0.05  # overlapping lanes


SETTINGS = CarlaSettings()


def test_controller_throttles_towards_a_faster_plan_and_brakes_for_a_stop() -> None:
    t = 0.1 * np.arange(1, 31)
    pose, wheelbase = np.zeros((2, 3)), np.full(2, 2.6)
    plans = np.zeros((2, 30, 3))
    plans[0, :, 0] = 10.0 * t  # 10 m/s straight ahead
    speed = np.array([5.0, 8.0])  # plan 1 stays where it is
    steer, accel = track_plan(pose, speed, plans, np.zeros(2), 0.1, wheelbase, SETTINGS)
    assert accel[0] == pytest.approx(5.0) and accel[1] == pytest.approx(-8.0) and np.allclose(steer[0], 0)
    go, stop = (to_vehicle_control(float(steer[i]), float(accel[i]), 1.2, SETTINGS) for i in range(2))
    assert isinstance(go, carla.VehicleControl)
    assert go.throttle > 0 and go.brake == 0 and go.steer == 0
    assert stop.throttle == 0 and stop.brake == pytest.approx(1.0)


def test_a_left_curve_is_a_negative_carla_steer() -> None:
    a = np.linspace(0.05, 1.0, 30)  # left turn of radius 20 m
    plan = np.stack([20 * np.sin(a), 20 * (1 - np.cos(a)), a], axis=1)[None]
    steer, _ = track_plan(np.zeros((1, 3)), np.array([10.0]), plan, np.zeros(1), 0.1, np.array([2.6]), SETTINGS)
    assert steer[0] == pytest.approx(math.atan(2.6 / 20), rel=0.15)
    assert to_vehicle_control(float(steer[0]), 0.0, 1.2, SETTINGS).steer < 0


def test_controller_brings_a_bicycle_model_onto_an_offset_plan() -> None:
    """Closed loop with a kinematic bicycle: starting 1 m beside a straight 8 m/s plan at 5 m/s,
    the ego converges onto it (replanned every step from the same reference line)."""
    dt, L = 0.1, 2.6
    x = np.array([0.0, 1.0, 0.0, 5.0])  # x, y, yaw, v
    for _ in range(60):
        t = dt * np.arange(1, 31)
        plan = np.stack([x[0] + 8.0 * t, np.zeros(30), np.zeros(30)], axis=1)[None]
        steer, accel = track_plan(x[None, :3], x[3:], plan, np.zeros(1), dt, np.array([L]), SETTINGS)
        x = x + dt * np.array([x[3] * math.cos(x[2]), x[3] * math.sin(x[2]), x[3] * math.tan(steer[0]) / L, accel[0]])
    assert abs(x[1]) < 0.1 and abs(x[2]) < 0.02 and x[3] == pytest.approx(8.0, abs=0.1)


def test_log_agents_are_teleported_and_absent_ones_hidden() -> None:
    states = np.array([[1.0, 2.0, 0.3, 4.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 6.0, 0.0, 1.0, 0.0]])
    cmds = log_agent_commands([11, 12, 0], states, np.array([True, False, True]))
    assert len(cmds) == 4  # agent 2 has no actor
    place, speed, hide, _ = cmds
    assert isinstance(place, carla.command.ApplyTransform) and place.actor_id == 11
    assert from_carla_transform(place.transform) == pytest.approx((1.0, 2.0, 0.3))
    assert place.transform.location.z == pytest.approx(SPAWN_Z)
    assert isinstance(speed, carla.command.ApplyTargetVelocity)
    assert from_carla_vector(speed.velocity) == pytest.approx((4.0, 0.5))
    assert hide.actor_id == 12 and hide.transform.location.z == pytest.approx(HIDDEN_Z)


def test_settings_are_validated() -> None:
    with pytest.raises(AvError, match="ports"):
        CarlaSettings(port=0).validate()
    with pytest.raises(AvError, match="agents"):
        CarlaSettings(agents="idm").validate()  # type: ignore[arg-type]


def test_no_server_is_one_clear_error(scenario: Scenario) -> None:
    port = free_port()
    with pytest.raises(AvError, match=rf"no CARLA server at 127\.0\.0\.1:{port} .*CarlaUE4\.sh -RenderOffScreen"):
        connect(CarlaSettings(host="127.0.0.1", port=port, timeout_s=1.0))
    episode = CarlaEpisode(scenario, CarlaSettings(host="127.0.0.1", port=port, timeout_s=1.0))
    with pytest.raises(AvError, match="no CARLA server"):
        with episode:
            pass
    assert episode.world is None and episode._actors == []
    episode.close()  # teardown is idempotent
    with CarlaSimulator([scenario], host="127.0.0.1", port=port, timeout_s=1.0) as sim:
        with pytest.raises(AvError, match="no CARLA server"):
            sim.reset(collate([scenario]))
        with pytest.raises(AvError, match="one scenario at a time"):
            sim.reset(collate([scenario, scenario.replace(id="other")]))


def test_cli_without_server_prints_one_line_and_exits_2(capsys) -> None:
    from av.cli.main import main

    port = free_port()
    assert main(["carla", "check", "--carla-host", "127.0.0.1", "--carla-port", str(port), "--carla-timeout", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"av: error: no CARLA server at 127.0.0.1:{port} ")
    assert "CarlaUE4.sh -RenderOffScreen" in err[0]


# ------------------------------------------------------------------------------- live server


@pytest.fixture(scope="module")
def carla_settings() -> CarlaSettings:
    import os

    settings = CarlaSettings(host=os.environ.get("CARLA_HOST", "localhost"),
                             port=int(os.environ.get("CARLA_PORT", "2000")), timeout_s=20.0)
    try:
        connect(settings)
    except AvError as e:
        pytest.skip(f"no CARLA server: {e}")
    return settings


@pytest.mark.carla
def test_live_log_following_run_on_the_exported_map(real_scenarios: list[Scenario], carla_settings: CarlaSettings) -> None:
    """On a real drive's exported map, the ego tracking its logged future (as plans re-made every
    step) stays near the log for 5 s, and the server's settings come back afterwards."""
    s = real_scenarios[0]
    batch = collate([s])
    t0, H = s.history_steps, 30
    with CarlaSimulator([s], **vars(carla_settings)) as sim:
        state = sim.reset(batch)
        for _ in range(50):
            t = state.t
            ego = state.snapshot.ego[0].double().numpy()
            future = s.ego[min(t + 1, s.num_steps - 1) : t + 1 + H, :3]
            future = np.concatenate([future, np.repeat(future[-1:], H - len(future), axis=0)])
            c, sn = math.cos(ego[2]), math.sin(ego[2])
            d = future[:, :2] - ego[:2]
            local = np.stack([c * d[:, 0] + sn * d[:, 1], -sn * d[:, 0] + c * d[:, 1], future[:, 2] - ego[2]], axis=1)
            state = sim.step(state, Trajectory(torch.tensor(local[None], dtype=torch.float32), dt=s.dt))
            snap = sim.snapshot(state)
            assert snap.ego.shape == (1, 5) and snap.agents.shape == (1, s.num_agents, 5)
        err = np.hypot(*(state.snapshot.ego[0, :2].double().numpy() - s.ego[state.t, :2]))
        assert err < 2.0 and state.collisions == 0
        world = sim.episode.world
    assert not world.get_settings().synchronous_mode
    assert t0 + 50 == state.t


def test_carla_run_without_server_is_one_line(real_store, capsys) -> None:
    from av.cli.main import main
    from scenarios.store import iter_store

    sid = next(iter(iter_store(real_store))).id
    port = free_port()
    rc = main(["carla", "run", "--store", str(real_store), "--scenario", sid, "--planner", "log_replay",
               "--out", "unused", "--carla-host", "127.0.0.1", "--carla-port", str(port), "--carla-timeout", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"127.0.0.1:{port}" in err[0]


@pytest.mark.carla
def test_live_log_replay_scores_like_the_builtin_simulator(real_scenarios: list[Scenario],
                                                            carla_settings: CarlaSettings) -> None:
    """The one closed-loop driver runs the CARLA backend unchanged; log replay scores the same
    nuPlan CLS there as on the builtin simulator (within the controllers' difference)."""
    from closedloop.driver import rollout
    from closedloop.evaluator import evaluate
    from closedloop.planner import make_planner
    from closedloop.sim import make_simulator

    s = real_scenarios[0]
    batch = collate([s])
    planner = make_planner("log_replay")
    with make_simulator("carla", scenarios=[s], **vars(carla_settings)) as sim:
        on_carla = evaluate(rollout(sim, batch, planner))
    builtin = evaluate(rollout(make_simulator("builtin"), batch, planner))
    assert abs(float(on_carla["cls"][0]) - float(builtin["cls"][0])) <= 0.1
