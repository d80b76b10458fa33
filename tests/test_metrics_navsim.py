"""NAVSIM v1 PDMS on closed-loop rollouts: hand-built cases with known answers (METRICS.md 2, 6)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from av.types import AgentType
from closedloop.evaluator import aggregate as agg
from closedloop.evaluator import evaluate, navsim
from closedloop.evaluator.nuplan import build_map_state, build_scene
from conftest import road_map
from test_metrics_nuplan import FRONT, W, Agent, parked, rollout, scenario, score, track, vehicle


def test_pdms_aggregation_case_14() -> None:
    one = torch.ones(1, dtype=torch.float64)
    ep = agg.pdms_ep(torch.tensor([10.0]), one, torch.tensor([20.0]))  # PDM-Closed 20 m, agent 10 m
    assert float(ep) == 0.5
    assert float(agg.pdms_score(one, one, one, ep, one)) == pytest.approx(9.5 / 12)
    ep = agg.pdms_ep(torch.tensor([3.0]), one, torch.tensor([4.5]))  # both under 5 m
    assert float(ep) == 1.0 and float(agg.pdms_score(one, one, one, ep, one)) == 1.0
    half = 0.5 * one
    ep = agg.pdms_ep(torch.tensor([10.0]), half, torch.tensor([20.0]))  # agent NC = 0.5
    assert float(ep) == 0.25
    assert float(agg.pdms_score(half, one, one, ep, one)) == pytest.approx(0.34375)
    assert float(agg.pdms_ep(torch.tensor([3.0]), 0 * one, torch.tensor([4.0]))) == 0.0


def test_nuplan_aggregation_case_13() -> None:
    one = torch.ones(1, dtype=torch.float64)
    s = agg.cls_score(one, one, one, one, 0.5 * one, one, 0.8 * one, one)
    assert float(s) == pytest.approx(0.79375, abs=1e-12)
    s = agg.cls_score(one, one, 0.5 * one, one, 0.5 * one, one, 0.8 * one, one)
    assert float(s) == pytest.approx(0.396875, abs=1e-12)


def test_any_number_of_static_objects_costs_half() -> None:
    T = 50
    cones = [parked(T, x, y=1.0 if i % 2 else -1.0, kind=AgentType.STATIC, size=(0.5, 0.5))
             for i, x in enumerate((12.0, 15.0, 18.0))]
    out = score(track(T, v=5.0), cones)
    assert out["pdms_nc"] == 0.5 and out["no_collision"] == 0.0
    assert out["pdms"] == pytest.approx(0.5 * (5 * 0 + 5 * out["pdms_ep"] + 2) / 12)


def test_collision_after_the_horizon_does_not_count() -> None:
    T = 80
    out = score(track(T, v=5.0), [parked(T, 30.0)])  # bumper reaches the car at ~5.3 s
    assert out["no_collision"] == 0.0 and out["pdms_nc"] == 1.0
    short = score(track(T, v=5.0), [parked(T, 30.0)], horizon_s_pdms=6.0)
    assert short["pdms_nc"] == 0.0


def test_ttc_reads_the_logged_future_not_an_extrapolation() -> None:
    """A car 12 m ahead that the log moves towards the ego while its recorded velocity is 0: NAVSIM
    sees the overlap at +0.9 s in the log; nuPlan's constant-velocity extrapolation does not."""
    T = 12
    ego = np.zeros((T, 5))
    ego[0, 0], ego[:2, 3] = -1.0, 10.0  # moving only at the first simulated step
    car = track(T, x0=FRONT + 12.0 + 2.25)
    car[2:, 0] -= 4.0 * np.arange(1, T - 1)  # jumps 4 m per step towards the ego, velocity left 0
    car[:2, 0] = FRONT + 12.0 + 2.25
    out = score(ego, [vehicle(car)], history=1)
    assert out["pdms_ttc"] == 0.0 and out["ttc"] == 1.0


@pytest.mark.parametrize("delay,expected", [(0.0, 1.0), (1.0, 0.0)])
def test_ttc_ignores_an_object_after_its_first_non_qualifying_overlap(delay: float, expected: float) -> None:
    """A car comes diagonally from the left-behind across the path of a slow ego (in its lane). Its
    first projected overlap is at ~35 deg (not ahead: it goes on the ignore list), so its later
    overlaps straight ahead never count. Started 1 s further along, its first overlap is ahead."""
    T = 60
    t = np.arange(T) * 0.1 + delay
    car = np.stack([-1.0 + 3.0 * t, 3.5 - 1.5 * t, 0 * t, 3.0 + 0 * t, -1.5 + 0 * t], 1)
    out = score(track(T, v=0.5), [vehicle(car, size=(4.0, 1.8))])
    assert out["pdms_ttc"] == expected


def test_reference_progress_normalises_pdms_ep() -> None:
    T = 60
    s = scenario(track(T, v=5.0))  # 20 m over the 4 s horizon
    r = rollout([s])
    assert float(evaluate(r)["pdms_ep"][0]) == pytest.approx(1.0)
    out = evaluate(r, reference_progress=torch.tensor([40.0]))
    assert float(out["pdms_progress_m"][0]) == pytest.approx(20.0, abs=1e-3)
    assert float(out["pdms_ep"][0]) == pytest.approx(0.5, abs=1e-4)
    assert float(out["pdms"][0]) == pytest.approx((5 + 2.5 + 2) / 12, abs=1e-4)
    assert float(evaluate(r, reference_progress=torch.tensor([3.0]))["pdms_ep"][0]) == pytest.approx(1.0)


def test_expert_stands_in_for_pdm_closed() -> None:
    T = 60
    out = score(track(T, v=2.5), ego_log=track(T, v=5.0))  # half the expert's 20 m
    assert out["pdms_ep"] == pytest.approx(0.5, abs=1e-3)
    assert out["pdms_reference_m"] == pytest.approx(20.0, abs=1e-3)


@pytest.mark.parametrize("mode,pdms_nc", [("log", 0.0), ("idm", 1.0)])
def test_reactive_rollouts_are_scored_against_logged_agents(mode: str, pdms_nc: float) -> None:
    """The simulated agent swerves into the ego; in the log it stays in its lane."""
    T = 40
    s = scenario(track(T, v=5.0), [vehicle(track(T, x0=20.0, y=W))])
    r = rollout([s], agent_mode=mode)
    moved = r.agents.clone()
    moved[0, 0, :, 1] = 0.0  # simulated: parked in the ego's lane
    r = type(r)(**{**r.__dict__, "agents": moved})
    out = evaluate(r)
    assert float(out["no_collision"][0]) == 0.0
    assert float(out["pdms_nc"][0]) == pdms_nc


def test_lane_and_successor_straddle_is_multiple_lanes_for_navsim_only() -> None:
    ego = track(30, x0=36.0, v=1.0)  # crosses lane 0 -> connector at x = 40
    r = rollout([scenario(ego, map=road_map(120.0))])
    scene = build_scene(r)
    ms = build_map_state(scene, r.scenario)
    multi = navsim.multiple_lanes(ms)[0]
    assert bool(ms.in_lane.all()) and bool(multi.any()) and not bool(multi.all())
    assert not bool(navsim.non_drivable(ms).any())


def test_stopped_ego_is_never_ttc_checked() -> None:
    T = 20
    out = score(track(T), [Agent(AgentType.VEHICLE, (4.5, 1.9), track(T, x0=FRONT + 1.0 + 2.25))])
    assert out["pdms_ttc"] == 1.0 and out["ttc"] == 1.0 and out["collisions"] == 0


# ----------------------------------------------------------------------------- PDM-Closed reference (injected)
def test_pdm_closed_reference_is_injected_driven_over_the_horizon_and_masked() -> None:
    """NAVSIM normalises EP by PDM-Closed's progress from the same state. The evaluator calls the
    injected reference with the batch cut to the 4 s horizon; a reference twice as fast halves EP,
    one that crashes (its NC = 0) is masked out and the agent's own progress normalises."""
    T = 60
    s = scenario(track(T, v=5.0), [parked(T, 55.0)])  # agent: 20 m in 4 s, never reaches the car
    seen: list[int] = []

    def driving(speed: float):  # type: ignore[no-untyped-def]
        def reference(batch):  # type: ignore[no-untyped-def]
            seen.append(int(batch.step_valid[0].sum()))
            r = rollout([s], sim=[track(T, v=speed)])
            return dataclasses.replace(r, step_valid=batch.step_valid.clone())
        return reference

    out = evaluate(rollout([s]), reference=driving(10.0))
    assert seen == [41]
    assert float(out["pdms_reference_m"][0]) == pytest.approx(40.0, abs=1e-3)
    assert float(out["pdms_ep"][0]) == pytest.approx(0.5, abs=1e-4)
    assert float(out["epdms_ep"][0]) == pytest.approx(0.5, abs=1e-4)
    crash = evaluate(rollout([s]), reference=driving(16.0))  # bumper reaches the car at 3.1 s
    assert float(crash["pdms_reference_m"][0]) == 0.0
    assert float(crash["pdms_ep"][0]) == 1.0 and float(crash["epdms_ep"][0]) == 1.0


def test_evaluator_never_imports_planners() -> None:
    import ast
    from pathlib import Path

    import closedloop.evaluator as ev

    for f in Path(ev.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith(("closedloop.planners", "closedloop.planner")) for n in names), f


# ----------------------------------------------------------------------------- DDC (PDMS weight 0, EPDMS multiplier)
def test_ddc_forward_in_the_oncoming_lane_case_8() -> None:
    """10 m/s in the lane of the other direction (not a route lane): 11 m in 1.1 s -> DDC = 0, which
    zeroes EPDMS and leaves PDMS (weight 0) alone. In the parallel lane of the same roadblock, or
    reversing at 3 m/s in its own lane (unsigned distance on a route lane), DDC = 1."""
    T = 60
    out = score(track(T, v=10.0, y=-W), ego_log=track(T, v=10.0))
    assert out["pdms_ddc"] == 0.0 and out["epdms_ddc"] == 0.0 and out["epdms"] == 0.0
    assert out["pdms"] > 0.0
    side = score(track(T, v=10.0, y=W), ego_log=track(T, v=10.0))
    assert side["pdms_ddc"] == 1.0 and side["epdms_ddc"] == 1.0
    back = score(track(T, x0=50.0, v=-3.0), ego_log=track(T, x0=50.0))
    assert back["pdms_ddc"] == 1.0 and back["driving_direction"] == 0.5


def test_epdms_ddc_skips_intersections() -> None:
    """The human turns left, the ego drives straight through the junction at 5 m/s: from x = 8.6 m
    its centre is on the straight connector only (off the route): 5.5 m in 1.1 s, PDMS DDC 0.5.
    EPDMS does not count steps in an intersection (a connector): DDC 1."""
    from test_metrics_nuplan import _centre_path, _turn_junction

    T = 41
    R = 20.0
    phi = np.linspace(0.0, np.pi / 2, 200)
    turn = np.concatenate([np.stack([R * np.sin(phi), R - R * np.cos(phi)], 1), [[R, 300.0]]])
    out = score(_centre_path(np.array([[0.0, 0.0], [300.0, 0.0]]), 5.0, T), ego_log=_centre_path(turn, 5.0, T),
                map=_turn_junction(R))
    assert out["pdms_ddc"] == 0.5 and out["epdms_ddc"] == 1.0


# ----------------------------------------------------------------------------- EPDMS
def test_epdms_aggregation_and_not_applicable_metrics() -> None:
    one = torch.ones(1, dtype=torch.float64)
    nan = torch.full((1,), float("nan"), dtype=torch.float64)
    s = agg.epdms_score({"nc": one, "dac": one, "ddc": one, "tlc": nan},
                        {"ep": 0.5 * one, "ttc": one, "lk": one, "hc": one, "ec": nan})
    assert float(s) == pytest.approx((2.5 + 5 + 2 + 2) / 14)
    s = agg.epdms_score({"nc": one, "dac": one, "ddc": 0.5 * one, "tlc": one},
                        {"ep": one, "ttc": 0 * one, "lk": one, "hc": one, "ec": one})
    assert float(s) == pytest.approx(0.5 * 11 / 16)
    # case 14, agent NC = 0.5: v2 does not mask the numerator
    assert float(agg.epdms_ep(torch.tensor([10.0]), 0.5 * one, torch.tensor([20.0]))) == 0.5
    assert float(agg.epdms_ep(torch.tensor([3.0]), 0 * one, torch.tensor([4.0]))) == 1.0
    out = score(track(60, v=5.0))
    assert np.isnan(out["epdms_tlc"]) and np.isnan(out["epdms_ec"])  # no traffic lights; one plan per scene
    assert out["epdms"] == 1.0


def test_epdms_ttc_stops_at_3_1_s() -> None:
    """A parked car first met by the +0.9 s projection at t = 3.5 s: PDMS (t <= 4 s) fails TTC,
    EPDMS (t <= 3.1 s) does not."""
    T = 60
    out = score(track(T, v=10.0), [parked(T, FRONT + 35.0 + 9.0 + 2.25 + 0.05)])
    assert out["pdms_nc"] == 1.0
    assert out["pdms_ttc"] == 0.0 and out["epdms_ttc"] == 1.0


@pytest.mark.parametrize("offset,lk", [(0.4, 1.0), (W, 0.0)])
def test_lane_keeping(offset: float, lk: float) -> None:
    """Centre ``offset`` m beside the centerline for the whole 4 s: LK fails past 0.5 m for 2 s."""
    T = 60
    out = score(track(T, v=5.0, y=offset), ego_log=track(T, v=5.0))
    assert out["epdms_lk"] == lk


def test_history_comfort_uses_nuplan_windows() -> None:
    """A step of a_x from 0 to -3 m/s^2 passes both; constant -4.5 m/s^2 fails both (METRICS 6.12)."""
    T = 60
    ok = score(track(T, v=8.0), accel=[np.stack([np.r_[np.zeros(20), -3 * np.ones(T - 20)], np.zeros(T)], 1)])
    assert ok["epdms_hc"] == 1.0
    bad = score(track(T, v=20.0), accel=[np.stack([-4.5 * np.ones(T), np.zeros(T)], 1)])
    assert bad["epdms_hc"] == 0.0 and bad["comfort"] == 0.0


def test_epdms_human_filter() -> None:
    """The logged human itself runs into a parked car (the log or the boxes are wrong there): a
    sub-score that is 0 for the human is 1 for the agent in EPDMS, while PDMS (v1, no filter) keeps it."""
    T = 60
    car = parked(T, 12.0)
    out = score(track(T, v=5.0), [car])
    assert out["pdms_nc"] == 0.0 and out["pdms_ttc"] == 0.0 and out["pdms"] == 0.0
    assert out["epdms_nc"] == 1.0 and out["epdms_ttc"] == 1.0 and out["epdms"] > 0.9
    other = score(track(T, v=5.0), [car], ego_log=track(T, v=5.0, y=W))  # the human passed beside it
    assert other["epdms_nc"] == 0.0 and other["epdms"] == 0.0
    cone = score(track(T, v=5.0), [parked(T, 12.0, kind=AgentType.STATIC, size=(0.5, 0.5))])
    assert cone["epdms_nc"] == 0.5  # the human's 0.5 is not 0: no filter
