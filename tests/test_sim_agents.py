"""Background agents and collisions in the builtin simulator: IDM agents stop behind a stopped
ego where log agents drive through it, agents appear and disappear with the log, unimpeded
reactive agents re-drive the log exactly, and the collision kernel agrees with brute force."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np
import pytest
import shapely
import torch
from conftest import build_scenario

from av.batch import collate
from av.checks import box_overlap
from av.geometry import box_corners
from av.types import AgentType, Scenario
from closedloop.planners.constant_velocity import ConstantVelocityPlanner
from av.observe import ObservationSpec, Window, observe
from closedloop.driver import rollout
from closedloop.sim import BuiltinSimulator, SimConfig, SimState
from closedloop.sim.collision import collision_flags, overlapping_pairs
from closedloop.sim.pairs import make_sweep

DT = 0.1
T = 80
HIST = 10


def track(x0: float, vx: float, y: float = 0.0, accel: float = 0.0) -> np.ndarray:
    """States ``[T, 5]`` driving along +x: ``x0 + vx t + accel t^2 / 2`` at height ``y``."""
    t = np.arange(T) * DT
    out = np.zeros((T, 5))
    out[:, 0] = x0 + vx * t + 0.5 * accel * t**2
    out[:, 1] = y
    out[:, 3] = vx + accel * t
    return out


def with_agents(
    specs: Sequence[tuple[str, AgentType, tuple[float, float], np.ndarray, np.ndarray]], ego_speed: float = 0.0
) -> Scenario:
    """The hand-made road (ego at x = ego_speed * t, y = 0) with the given agents:
    (id, type, (length, width), states [T, 5], valid [T])."""
    base = build_scenario(num_steps=T, history_steps=HIST, num_agents=0, ego_speed=ego_speed)
    valid = np.stack([s[4] for s in specs])
    agents = np.stack([s[3] for s in specs]) * valid[..., None]
    return base.replace(
        agent_ids=tuple(s[0] for s in specs),
        agent_types=np.array([int(s[1]) for s in specs], dtype=np.int8),
        agent_sizes=np.array([s[2] for s in specs], dtype=np.float64),
        agents=agents,
        agent_valid=valid,
    ).validate()


def simulate(sc: Scenario, agents: str, steps: int = T - HIST - 1) -> list[SimState]:
    sim = BuiltinSimulator(SimConfig(agents=agents))
    batch = collate([sc])
    state = sim.reset(batch)
    planner = ConstantVelocityPlanner()
    spec = ObservationSpec(history_steps=0)
    states = [state]
    for _ in range(steps):
        now = sim.snapshot(state)
        window = Window(now.ego[:, None], now.agents[:, :, None], now.agent_valid[:, :, None])
        state = sim.step(state, planner.plan(observe(batch, now.t, spec, window=window)))
        states.append(state)
    return states


ALWAYS = np.ones(T, dtype=bool)


def test_idm_agent_stops_behind_a_stopped_ego_while_a_log_agent_drives_through_it() -> None:
    # The ego stands at x = 0 (rear axle; its box spans about -0.75 .. 3.3 m). The follower's log
    # drives through it at 10 m/s from x = -40.
    sc = with_agents([("follower", AgentType.VEHICLE, (4.5, 1.9), track(-40.0, 10.0), ALWAYS)])
    log_run = simulate(sc, "log")
    assert any(bool(s.ego_collision[0, 0]) for s in log_run)
    idm_run = simulate(sc, "idm")
    assert not any(bool(s.ego_collision[0, 0]) for s in idm_run)
    last = idm_run[-1]
    ego_rear = float(last.ego.pose[0, 0]) + 1.292 - 4.084 / 2
    agent_front = float(last.agents[0, 0, 0]) + 4.5 / 2
    assert 0.3 < ego_rear - agent_front < 3.0  # stopped about the standstill gap behind
    assert float(last.agent_speed[0, 0]) < 0.05 and float(last.agents[0, 0, 3]) < 0.05
    decel = [(a.agent_speed[0, 0] - b.agent_speed[0, 0]) / DT for a, b in zip(idm_run, idm_run[1:])]
    assert float(min(decel)) >= -8.0 - 1e-4  # within the hard braking limit


def test_unimpeded_reactive_agents_re_drive_their_log_exactly() -> None:
    # A vehicle accelerating along a left curve, alone in front of a standing ego.
    t = np.arange(T) * DT
    s = 8.0 * t + 0.5 * 1.5 * t**2
    radius = 40.0
    th = s / radius
    v = 8.0 + 1.5 * t
    curve = np.stack([20 + radius * np.sin(th), 5 + radius * (1 - np.cos(th)),
                      (th + math.pi) % (2 * math.pi) - math.pi, v * np.cos(th), v * np.sin(th)], 1)
    sc = with_agents([("curver", AgentType.VEHICLE, (4.5, 1.9), curve, ALWAYS)])
    states = simulate(sc, "idm")
    batch = collate([sc])
    for st in states:
        logged = batch.agents[0, 0, int(st.t[0])]
        assert float((st.agents[0, 0, :2] - logged[:2]).norm()) < 2e-3
        assert abs(float(torch.remainder(st.agents[0, 0, 2] - logged[2] + math.pi, 2 * math.pi) - math.pi)) < 1e-3


def test_agents_appear_and_disappear_with_the_log_mask_in_both_modes() -> None:
    gappy = ALWAYS.copy()
    gappy[:15] = False  # appears after the start
    gappy[30:35] = False  # leaves for half a second
    gone = ALWAYS.copy()
    gone[40:] = False  # leaves for good
    sc = with_agents([
        ("gappy", AgentType.VEHICLE, (4.5, 1.9), track(10.0, 6.0, y=3.5), gappy),
        ("gone", AgentType.VEHICLE, (4.5, 1.9), track(40.0, 5.0, y=3.5), gone),
    ])
    batch = collate([sc])
    for mode in ("log", "idm"):
        for st in simulate(sc, mode):
            t = int(st.t[0])
            assert st.agent_valid[0].tolist() == batch.agent_valid[0, :, t].tolist()
            assert float(st.agents[0][~st.agent_valid[0]].abs().sum()) == 0.0
            if t in (15, 35):  # (re)appears where the log has it
                assert torch.allclose(st.agents[0, 0, :2], batch.agents[0, 0, t, :2], atol=1e-4)


def test_pedestrians_and_parked_cars_replay_the_log_in_reactive_mode() -> None:
    walk = track(15.0, 1.2, y=-0.5)  # a pedestrian crossing the ego's lane ahead of it
    walk[:, 1] = -6.0 + 1.2 * np.arange(T) * DT
    walk[:, 2] = math.pi / 2
    walk[:, 3], walk[:, 4] = 0.0, 1.2
    parked = track(6.0, 0.0, y=-2.5)
    parked[:, 0] += 0.02 * np.sin(np.arange(T))  # annotation jitter
    sc = with_agents([("ped", AgentType.PEDESTRIAN, (0.7, 0.7), walk, ALWAYS),
                      ("parked", AgentType.VEHICLE, (4.5, 1.9), parked, ALWAYS)], ego_speed=3.0)
    batch = collate([sc])
    states = simulate(sc, "idm")
    assert not bool(states[0].static.paths.reactive.any())
    for st in states:
        assert torch.equal(st.agents[0], batch.agents[0, :, int(st.t[0])])


def test_agent_agent_collisions_are_flagged_in_reactive_mode_for_pairs_with_a_reactive_agent() -> None:
    # A car (reactive) stops behind the standing ego, around x = -4.4; then a logged pedestrian
    # crosses the road right there and walks into its side. Two other logged pedestrians walk
    # into each other far away: a contact between log-replayed agents is the log's own.
    car = track(-30.0, 8.0)
    t = np.arange(T) * DT
    walker = np.zeros((T, 5))
    walker[:, 0], walker[:, 1], walker[:, 2], walker[:, 4] = -4.4, -9.1 + 1.2 * t, math.pi / 2, 1.2
    a, b = track(30.0, 1.0, y=6.0), track(36.0, -1.0, y=6.0)
    b[:, 2] = -math.pi + 1e-3
    sc = with_agents([("car", AgentType.VEHICLE, (4.5, 1.9), car, ALWAYS),
                      ("walker", AgentType.PEDESTRIAN, (0.7, 0.7), walker, ALWAYS),
                      ("a", AgentType.PEDESTRIAN, (0.7, 0.7), a, ALWAYS),
                      ("b", AgentType.PEDESTRIAN, (0.7, 0.7), b, ALWAYS)])
    states = simulate(sc, "idm")
    car_stop = float(states[-1].agents[0, 0, 0])
    assert abs(car_stop + 4.4) < 0.5 and float(states[-1].agent_speed[0, 0]) < 0.05
    hits = [st.agent_collision[0].tolist() for st in states]
    assert all(h[2:] == [False, False] for h in hits)  # the two logged pedestrians
    contact = [int(st.t[0]) for st, h in zip(states, hits) if h[:2] == [True, True]]
    assert contact and all(h[0] == h[1] for h in hits)
    # the walker's box (0.7 m) reaches the car's side (y = -0.95) when its centre is at -1.3
    assert min(contact) == pytest.approx((-1.3 + 9.1) / 1.2 / DT, abs=1.5)
    assert not any(any(st.agent_collision[0].tolist()) for st in simulate(sc, "log"))


def random_boxes(gen: torch.Generator, n: int, spread: float) -> torch.Tensor:
    xy = (torch.rand(n, 2, generator=gen) - 0.5) * spread
    yaw = (torch.rand(n, generator=gen) - 0.5) * 2 * math.pi
    size = torch.rand(n, 2, generator=gen) * torch.tensor([5.0, 2.0]) + torch.tensor([0.5, 0.5])
    return torch.cat([xy, yaw[:, None], size], 1)


def test_box_overlap_agrees_with_shapely() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = random_boxes(gen, 4000, 8.0), random_boxes(gen, 4000, 8.0)
    corners = [box_corners(x[:, :2], x[:, 2], x[:, 3], x[:, 4]).double().numpy() for x in (a, b)]
    expected = torch.from_numpy(shapely.intersects(shapely.polygons(corners[0]), shapely.polygons(corners[1])))
    assert 0.2 < float(expected.float().mean()) < 0.8  # both outcomes well represented
    assert torch.equal(box_overlap(a, b), expected)
    # known answers: side by side with a 1 cm gap, and touching
    box = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0])
    assert not bool(box_overlap(box, torch.tensor([0.0, 2.01, 0.0, 4.0, 2.0])))
    assert bool(box_overlap(box, torch.tensor([4.0, 0.0, math.pi / 2, 2.0, 4.0])))


@pytest.mark.parametrize("axis", [None, (1.0, 0.0), (0.0, 1.0)])
def test_broad_phase_finds_exactly_the_brute_force_pairs(axis: tuple[float, float] | None) -> None:
    gen = torch.Generator().manual_seed(1)
    B, M = 3, 40
    boxes = random_boxes(gen, B * M, 40.0).reshape(B, M, 5)
    valid = torch.rand(B, M, generator=gen) > 0.1
    sweep = make_sweep(boxes[..., :2], valid, boxes[..., 3:5])  # None: the axis of larger spread
    if axis is not None:  # either sweep axis finds the same pairs
        sweep = replace(sweep, axis=torch.tensor([axis]).expand(B, 2))
    brute = box_overlap(boxes[:, :, None], boxes[:, None, :])  # [B, M, M]
    brute &= torch.ones(M, M, dtype=torch.bool).triu(1) & valid[:, :, None] & valid[:, None, :]
    every, all_valid = torch.arange(M).expand(B, M), torch.ones(B, M, dtype=torch.bool)
    pairs = overlapping_pairs(boxes, valid, every, all_valid, sweep)
    assert len(pairs) > 5
    assert pairs.tolist() == brute.nonzero().tolist()
    ego = torch.zeros(B, 1, dtype=torch.long)
    ego_only = overlapping_pairs(boxes, valid, ego, torch.ones(B, 1, dtype=torch.bool), sweep)
    assert ego_only.tolist() == brute[:, :1].nonzero().tolist()
    # rows 0, 5 and 7 (7 only in scenario 0): every pair touching one of them, each once
    rows = torch.tensor([[0, 7, 5]] * B)
    row_valid = torch.tensor([[True, True, True]] + [[True, False, True]] * (B - 1))
    some = overlapping_pairs(boxes, valid, rows, row_valid, sweep)
    touching = torch.zeros(B, M, M, dtype=torch.bool)
    for b in range(B):
        for r in rows[b][row_valid[b]].tolist():
            touching[b, r, :] = True
            touching[b, :, r] = True
    assert some.tolist() == (brute & touching).nonzero().tolist()
    ego_hit, agent_hit = collision_flags(boxes, valid, every, all_valid, sweep)
    assert ego_hit.tolist() == brute[:, 0, 1:].tolist()
    among = brute[:, 1:, 1:]
    assert agent_hit.tolist() == (among.any(2) | among.any(1)).tolist()


@pytest.mark.parametrize("B", [1, 3])
def test_reactive_rollouts_keep_shapes_and_masks(B: int) -> None:
    scenarios = [build_scenario(id=f"r{i}", num_steps=30 + 4 * i, ego_speed=3.0 + i) for i in range(B)]
    batch = collate(scenarios)
    r = rollout(BuiltinSimulator(agents="idm"), batch, ConstantVelocityPlanner(), record_plans=False)
    assert r.planned is None
    assert r.agents.shape == batch.agents.shape and torch.equal(r.agent_valid, batch.agent_valid)
    assert torch.isfinite(r.agents).all()
