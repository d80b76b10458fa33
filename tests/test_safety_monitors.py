"""Runtime monitors on hand-built cases with known answers (RSS distances, TTC, map, kinematics,
sanity, deadline) and the contract every registered monitor keeps."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest
import torch

from av.monitor import Monitor
from av.fallback import ComfortableStopPlanner
from safety.monitors import MONITORS, all_monitors, make_monitor
from safety.monitors import rss
from safety.monitors.steering import menger_curvature
from safety.monitors.ttc import time_to_contact
from safety.monitors.watchdog import DeadlineWatchdog
from safety_fixtures import DT, lane_change_plan, make_observation, straight_plan

V50 = 50 / 3.6
CAR = (4.5, 1.9)


def t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------------------- RSS
@pytest.mark.req("SR-COL-01")
def test_rss_longitudinal_same_direction_50_kmh() -> None:
    # 13.889 + 3.5/2 + 17.389^2 / 8 - 13.889^2 / 16 = 41.38 m
    d = rss.longitudinal_same_direction(t(V50), t(V50))
    assert float(d) == pytest.approx(41.38, abs=0.01)
    assert round(float(d), 1) == 41.4
    # 10 + 1.75 + 13.5^2 / 8 - 20^2 / 16 = 9.53 m; a front car at 30 m/s needs none (-> 0)
    assert float(rss.longitudinal_same_direction(t(10.0), t(20.0))) == pytest.approx(9.53125)
    assert float(rss.longitudinal_same_direction(t(10.0), t(30.0))) == 0.0
    # a stopped front car: 10 + 1.75 + 13.5^2 / 8 = 34.53 m
    assert float(rss.longitudinal_same_direction(t(10.0), t(0.0))) == pytest.approx(34.53125)


@pytest.mark.req("SR-COL-01")
def test_rss_opposite_direction_and_lateral() -> None:
    # per car: (13.889 + 17.389) / 2 + 17.389^2 / 8 = 53.44 m
    d = rss.longitudinal_opposite_direction(t(V50), t(V50))
    assert float(d) == pytest.approx(2 * ((V50 + V50 + 3.5) / 2 + (V50 + 3.5) ** 2 / 8), rel=1e-12)
    assert float(d) == pytest.approx(106.87, abs=0.01)
    # both still laterally: 0.1 + 0.2/2 + 0.2^2/1.6 - (-0.2/2 - 0.2^2/1.6) = 0.35 m
    assert float(rss.lateral(t(0.0), t(0.0))) == pytest.approx(0.35)
    # left car drifting right at 0.5 m/s: 0.1 + 0.6 + 0.49/1.6 + 0.1 + 0.025 = 1.13125 m
    assert float(rss.lateral(t(0.5), t(0.0))) == pytest.approx(1.13125)


@pytest.mark.req("SR-COL-01")
def test_rss_monitor_vetoes_accelerating_into_a_close_lead_only() -> None:
    lead = (30.0, 0.0, 0.0, V50, 0.0, *CAR)
    obs = make_observation(speed=V50, agents=[lead])
    m = make_monitor("rss")
    v = m.judge(obs, straight_plan(V50, accel=1.0))
    assert v.veto.tolist() == [True] and "RSS-dangerous to agent 0" in v.reasons[0]
    assert m.judge(obs, straight_plan(V50, accel=-2.0)).veto.tolist() == [False]
    far = make_observation(speed=V50, agents=[(90.0, 0.0, 0.0, V50, 0.0, *CAR)])
    assert m.judge(far, straight_plan(V50, accel=1.0)).veto.tolist() == [False]
    beside = make_observation(speed=V50, agents=[(10.0, 3.5, 0.0, V50, 0.0, *CAR)])
    assert m.judge(beside, straight_plan(V50, accel=1.0)).veto.tolist() == [False]
    # changing lanes into the car beside: laterally dangerous while moving towards it
    v = m.judge(beside, lane_change_plan(V50, dy=3.5, duration=2.0))
    assert v.veto.tolist() == [True] and "RSS-dangerous to agent 0" in v.reasons[0]
    assert m.judge(far, lane_change_plan(V50, dy=3.5, duration=2.0)).veto.tolist() == [False]


# ----------------------------------------------------------------------------------------- TTC
@pytest.mark.req("SR-COL-02")
def test_time_to_contact_hand_cases() -> None:
    dp, dv = torch.tensor([10.0, 0.0]), torch.tensor([-5.0, 0.0])
    assert float(time_to_contact(dp, dv, torch.tensor(2.0))) == pytest.approx(1.6)  # (10 - 2) / 5
    assert float(time_to_contact(dp, -dv, torch.tensor(2.0))) == math.inf  # separating
    assert float(time_to_contact(torch.tensor([1.0, 0.0]), dv, torch.tensor(2.0))) == 0.0  # touching now
    # passing at 3 m lateral offset with r = 2: never; with r = 5: |(10 - 5t, 3)| = 5 -> t = 1.2
    side = torch.tensor([10.0, 3.0])
    assert float(time_to_contact(side, dv, torch.tensor(2.0))) == math.inf
    assert float(time_to_contact(side, dv, torch.tensor(5.0))) == pytest.approx(1.2)


@pytest.mark.req("SR-COL-02")
def test_ttc_monitor_stopped_car_ahead() -> None:
    obs = make_observation(speed=10.0, agents=[(20.0, 0.0, 0.0, 0.0, 0.0, *CAR)])
    m = make_monitor("ttc")
    ttc = m.ttc(obs, straight_plan(10.0))
    # from the state at t = 0.1 s: ego front disc at 1.292 + 4.084/3 + 1.0, agent rear disc at 20 - 1.5,
    # radii sqrt((4.084/6)^2 + 0.865^2) + sqrt(0.75^2 + 0.95^2), closing at 10 m/s
    r = math.hypot(4.084 / 6, 0.865) + math.hypot(0.75, 0.95)
    expected = (18.5 - (1.292 + 4.084 / 3 + 1.0) - r) / 10.0
    assert float(ttc[0, 0, 0]) == pytest.approx(expected, rel=1e-9)
    v = m.judge(obs, straight_plan(10.0))
    assert v.veto.tolist() == [True] and "time to collision" in v.reasons[0]
    assert m.judge(obs, straight_plan(10.0, accel=-8.0)).veto.tolist() == [False]
    beside = make_observation(speed=10.0, agents=[(20.0, 3.5, 0.0, 0.0, 0.0, *CAR)])
    assert m.judge(beside, straight_plan(10.0)).veto.tolist() == [False]


@pytest.mark.req("SR-COL-02")
def test_ttc_uses_position_history_not_reported_velocity() -> None:
    obs = make_observation(speed=10.0, agents=[(20.0, 0.0, 0.0, 10.0, 0.0, *CAR)])
    # corrupt the reported velocity channel only: the TTC monitor must not see it
    agents = obs.agents.clone()
    agents[..., 3] = -30.0
    from dataclasses import replace

    bad = replace(obs, agents=agents)
    assert make_monitor("ttc").judge(bad, straight_plan(10.0)).veto.tolist() == [False]
    assert make_monitor("rss").judge(bad, straight_plan(10.0, accel=0.5)).veto.tolist() == [True]


# ----------------------------------------------------------------------------------------- map
@pytest.mark.req("SR-DA-01")
def test_drivable_area_crossing() -> None:
    obs = make_observation(speed=10.0)
    m = make_monitor("drivable_area")
    assert m.judge(obs, straight_plan()).veto.tolist() == [False]
    assert m.judge(obs, lane_change_plan(dy=3.5)).veto.tolist() == [False]
    v = m.judge(obs, lane_change_plan(dy=5.0))
    assert v.veto.tolist() == [True] and "leaves the drivable area" in v.reasons[0]
    assert m.judge(obs, lane_change_plan(dy=-1.5)).veto.tolist() == [True]


@pytest.mark.req("SR-DA-02")
def test_lane_keeping() -> None:
    obs = make_observation(speed=10.0)
    m = make_monitor("lane_keeping")
    assert m.judge(obs, lane_change_plan(dy=3.5)).veto.tolist() == [False]
    v = m.judge(obs, lane_change_plan(dy=6.5, duration=2.0))
    assert v.veto.tolist() == [True] and "from the nearest lane centreline" in v.reasons[0]
    v = m.judge(make_observation(lanes=False), straight_plan())
    assert v.veto.tolist() == [True] and "no lane perceived" in v.reasons[0]


@pytest.mark.req("SR-DA-01", "SR-DA-02")
def test_map_monitors_are_vectorised_over_the_batch() -> None:
    obs = make_observation(speed=10.0, batch=3)
    plans = torch.cat([straight_plan().poses, lane_change_plan(dy=7.0, duration=2.0).poses,
                       lane_change_plan(dy=3.5).poses])
    from av.observation import Trajectory

    for name in ("drivable_area", "lane_keeping"):
        v = make_monitor(name).judge(obs, Trajectory(plans, DT))
        assert v.veto.tolist() == [False, True, False], name
        assert v.reasons[0] == "" and v.reasons[1] and v.reasons[2] == ""


# ----------------------------------------------------------------------------------------- kinematics
def circle_plan(radius: float, speed: float = 5.0, steps: int = 30):
    from av.observation import Trajectory

    s = torch.arange(1, steps + 1, dtype=torch.float64) * DT * speed
    a = s / radius
    return Trajectory(torch.stack([radius * torch.sin(a), radius * (1 - torch.cos(a)), a], -1)[None], DT)


@pytest.mark.req("SR-KIN-01", "SR-KIN-02")
def test_kinematics_limits() -> None:
    m = make_monitor("kinematics")
    obs = make_observation(speed=10.0)
    assert m.judge(obs, straight_plan(10.0)).veto.tolist() == [False]
    assert m.judge(obs, lane_change_plan(10.0)).veto.tolist() == [False]
    assert m.judge(obs, straight_plan(10.0, accel=-7.0)).veto.tolist() == [False]
    for plan, word in ((straight_plan(10.0, accel=5.0), "acceleration"), (straight_plan(10.0, accel=-9.0), "deceleration"),
                       (straight_plan(20.0), "acceleration")):
        v = m.judge(obs, plan)
        assert v.veto.tolist() == [True] and word in v.reasons[0], v.reasons
    slow = make_observation(speed=5.0)
    q = m.quantities(slow, circle_plan(10.0))
    assert torch.allclose(q["curvature"], torch.full_like(q["curvature"], 0.1), rtol=1e-3)
    assert torch.allclose(q["lat_accel"], torch.full_like(q["lat_accel"], 2.5), rtol=1e-2)  # v^2 / R
    v = m.judge(make_observation(speed=1.5), circle_plan(3.0, speed=1.5))  # 0.33 1/m, 0.75 m/s^2 lateral
    assert v.veto.tolist() == [True] and "curvature" in v.reasons[0]
    v = m.judge(slow, circle_plan(4.5))  # 0.22 1/m but 25 / 4.5 = 5.6 m/s^2 lateral
    assert v.veto.tolist() == [True] and "lateral acceleration 5.5" in v.reasons[0]
    jerky = straight_plan(10.0)
    jerky.poses[0, 10:, 0] += 0.3  # a 0.3 m jump: impossible acceleration and jerk
    assert m.judge(obs, jerky).veto.tolist() == [True]


@pytest.mark.req("SR-KIN-03")
def test_steering_inverts_the_bicycle_model() -> None:
    a, b, c = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])
    assert float(menger_curvature(a, b, c)) == pytest.approx(-1.0)  # unit circle, turning right
    m = make_monitor("steering")
    obs = make_observation(speed=6.0)
    steer, _, judged = m.steering(obs, circle_plan(3.0, speed=6.0))
    assert judged.all()
    assert torch.allclose(steer, torch.full_like(steer, math.atan(2.588 / 3.0)), rtol=1e-3)
    assert m.judge(obs, circle_plan(3.0, speed=6.0)).veto.tolist() == [False]  # 0.71 rad < 0.7 * 1.2
    assert not m.steering(make_observation(speed=2.0), circle_plan(2.0, speed=2.0))[2].any()  # too slow to judge
    v = m.judge(obs, circle_plan(2.0, speed=6.0))  # atan(2.588 / 2) = 0.91 rad
    assert v.veto.tolist() == [True] and "steering angle" in v.reasons[0]
    assert m.judge(make_observation(speed=10.0), lane_change_plan(10.0)).veto.tolist() == [False]


# ----------------------------------------------------------------------------------------- sanity, deadline
@pytest.mark.req("SR-PLAN-01")
def test_plan_sanity_finite_and_starting_at_the_vehicle() -> None:
    obs = make_observation(speed=10.0)
    m = make_monitor("plan_sanity")
    assert m.judge(obs, straight_plan(10.0)).veto.tolist() == [False]
    m.reset()
    bad = straight_plan(10.0)
    bad.poses[0, 5, 1] = float("nan")
    v = m.judge(obs, bad)
    assert v.veto.tolist() == [True] and "non-finite" in v.reasons[0]
    m.reset()
    v = m.judge(obs, straight_plan(10.0, y=2.0))
    assert v.veto.tolist() == [True] and "starts 2.00 m from the vehicle" in v.reasons[0]
    from av.observation import Trajectory

    v = m.judge(obs, Trajectory(torch.zeros(1, 0, 3), DT))
    assert v.veto.tolist() == [True] and "malformed" in v.reasons[0]


@pytest.mark.req("SR-PLAN-02")
def test_plan_sanity_continuity_with_the_previous_plan() -> None:
    from dataclasses import replace

    m = make_monitor("plan_sanity")
    obs0 = make_observation(speed=10.0)
    assert m.judge(obs0, straight_plan(10.0)).veto.tolist() == [False]
    obs1 = replace(obs0, pose=torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))  # one step later
    assert m.judge(obs1, straight_plan(10.0)).veto.tolist() == [False]
    obs2 = replace(obs0, pose=torch.tensor([[2.0, 1.5, 0.0]], dtype=torch.float64))  # localisation jumped 1.5 m
    v = m.judge(obs2, straight_plan(10.0))
    assert v.veto.tolist() == [True] and "jumps 1.50 m" in v.reasons[0]


@pytest.mark.req("SR-LAT-01")
def test_deadline_watchdog() -> None:
    now = [0.0]
    wd = DeadlineWatchdog(budget_s=0.1, clock=lambda: now[0])

    class Slow:
        name, privileged = "slow", False
        delay = 0.05

        def plan(self, observation, privileged=None):
            now[0] += self.delay
            return straight_plan(10.0)

    inner = Slow()
    planner = wd.timed(inner)
    assert planner.name == "slow"
    obs = make_observation(batch=2)
    plan = planner.plan(obs)
    assert wd.judge(obs, plan).veto.tolist() == [False, False]
    v = wd.judge(obs, plan)  # no new plan since
    assert v.veto.tolist() == [True, True] and "stale" in v.reasons[0]
    inner.delay = 0.25
    v = wd.judge(obs, planner.plan(obs))
    assert v.veto.tolist() == [True, True] and "250 ms > 100 ms" in v.reasons[0]


@pytest.mark.req("SR-FB-01")
def test_the_fallback_stops_and_passes_the_plan_monitors() -> None:
    obs = make_observation(speed=V50, batch=2)
    plan = ComfortableStopPlanner().plan(obs)
    x = plan.poses[0, :, 0]
    assert plan.poses.shape == (2, 80, 3) and torch.isfinite(plan.poses).all()
    assert float(x[-1]) == pytest.approx(float(x[-2]))  # standing still by the end
    assert float(x[-1]) > V50**2 / (2 * 4.0)  # gentler than a 4 m/s^2 stop
    assert bool((x[1:] >= x[:-1]).all())
    for name in ("kinematics", "steering", "plan_sanity", "drivable_area", "lane_keeping", "ttc", "rss"):
        assert make_monitor(name).judge(obs, plan).veto.tolist() == [False, False], name


# ----------------------------------------------------------------------------------------- contract
@pytest.mark.req("SR-DIV-01")
@pytest.mark.parametrize("name", sorted(MONITORS))
def test_monitor_contract(name: str) -> None:
    m = make_monitor(name)
    assert isinstance(m, Monitor) and m.name == name
    assert m.inputs and m.method and m.requirements
    obs = make_observation(speed=10.0, agents=[(30.0, 0.0, 0.0, 8.0, 0.0, *CAR)], batch=3)
    if name == "deadline":
        m.record(0.01)
    v = m.judge(obs, straight_plan(10.0, batch=3))
    assert v.veto.dtype == torch.bool and v.veto.shape == (3,) and len(v.reasons) == 3
    assert all((r != "") == bool(x) for r, x in zip(v.reasons, v.veto.tolist()))


@pytest.mark.req("SR-DIV-01")
def test_monitor_modules_import_only_av_torch_and_the_standard_library() -> None:
    allowed = {"av", "torch", "__future__"} | set(sys.stdlib_module_names)
    for m in all_monitors():
        path = Path(sys.modules[type(m).__module__].__file__)
        tree = ast.parse(path.read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert roots <= allowed, f"{path.name} imports {sorted(roots - allowed)}"
