"""Closed-loop fault injection through the one driver: the faulty planner, the monitors and the
fallback in the loop; every colliding injected plan vetoed with the fallback driven; the same on
real nuScenes drives; the CLI flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from av.cli.main import main
from closedloop.planner import make_planner
from conftest import build_scenario
from safety.faults import FAULTS, SimClock, delay_agents, inject_closed_loop
from safety.inject import PLAN_FAULTS
from safety_fixtures import make_observation


def test_delayed_perception_shows_older_agent_states() -> None:
    obs = make_observation(speed=5.0, agents=[(20.0, 0.0, 0.0, 2.0, 0.0, 4.5, 1.9)], history=4)
    late = delay_agents(obs, 2)
    assert torch.equal(late.agents[:, :, -1], obs.agents[:, :, -3])  # the latest shown is 2 steps old
    assert torch.equal(late.agents[:, :, 0], obs.agents[:, :, 0])  # the oldest repeats
    assert delay_agents(obs, 0) is obs


@pytest.mark.req("SR-COL-01", "SR-FB-01", "SR-LAT-01")
def test_closed_loop_injection_vetoes_every_colliding_plan_and_drives_the_fallback() -> None:
    # ego at 7-8 m/s behind a lead at 15 m going 4 m/s: faster or unbraked plans run into it
    drives = [build_scenario(id=f"hand-{i}", num_steps=60, ego_speed=7.0 + i) for i in range(2)]
    faults = ("speed_up", "late", "dropped_agent")
    result, closed = inject_closed_loop(drives, lambda: make_planner("idm"), faults, every_s=1.0)
    s = result.summary()
    plan_events = np.array([f in PLAN_FAULTS for f in result.faults])
    assert plan_events.sum() > 0 and s["injected_plans_vetoed_by_any"] == 1.0
    for f, v in closed.items():  # the driver drove the fallback at every vetoed event
        assert v["fallback_drove_at_vetoed"] == v["vetoed"] <= v["hazardous"] <= v["injections"], f
    assert closed["speed_up"]["injections"] > 0
    late = np.array([f == "late" for f in result.faults])
    deadline = result.monitors.index("deadline")
    assert late.any() and result.caught[late, deadline].all()  # the watchdog sees every late plan
    assert not result.caught[~late, deadline].any()  # and only those: it times the planner
    assert s["nominal_plans"] > 0 and s["false_alarm_rate_on_human_plans"]["deadline"] == 0.0
    again, _ = inject_closed_loop(drives, lambda: make_planner("idm"), ("speed_up",), every_s=1.0)
    first = np.array([f == "speed_up" for f in result.faults])
    assert np.array_equal(again.caught, result.caught[first])  # deterministic


def test_closed_loop_injection_on_real_drives(real_scenarios) -> None:
    drives = real_scenarios[:2]
    result, closed = inject_closed_loop(drives, lambda: make_planner("idm"), ("speed_up", "swerve_left"),
                                        every_s=1.0, plan_every=10)
    s = result.summary()
    assert s["hazardous_injected_plans"] > 0 and s["injected_plans_vetoed_by_any"] == 1.0
    assert all(v["fallback_drove_at_vetoed"] == v["vetoed"] for v in closed.values())


def test_cli_closed_loop_inject_writes_catches_and_diversity(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from scenarios.store import write_store

    write_store(tmp_path / "store", [build_scenario(num_steps=50, ego_speed=8.0)])
    rc = main(["safety", "inject", "--store", str(tmp_path / "store"), "--closed-loop", "--faults", "speed_up,late",
               "--out", str(tmp_path / "inj")])
    out = capsys.readouterr().out
    assert rc == 0 and '"injected_plans_vetoed_by_any": 1.0' in out and "speed_up" in out
    data = json.loads((tmp_path / "inj" / "inject.json").read_text())
    assert data["closed_loop"] and set(data["per_fault_closed_loop"]) == {"speed_up", "late"}
    assert data["diversity"]["all"]["events"] == data["hazardous_events"]
    pair = data["diversity"]["all"]["pairs"][0]
    assert {"joint_miss_upper95", "yules_q", "lift"} <= set(pair)
    for bad, msg in ((["--faults", "nope"], "unknown fault"), (["--planner", "nope"], "unknown planner"),
                     (["--plan-every", "0"], "--plan-every")):
        assert main(["safety", "inject", "--store", str(tmp_path / "store"), "--closed-loop", *bad]) == 2
        assert msg in capsys.readouterr().err
    assert set(FAULTS) >= {"noise", "dropped_agent", "ghost", "delayed", "late", *PLAN_FAULTS}


@pytest.mark.req("SR-LAT-01")
def test_the_driver_lets_the_deadline_watchdog_time_the_planner() -> None:
    from av.batch import collate
    from closedloop.driver import rollout
    from closedloop.sim import make_simulator
    from safety.monitors.watchdog import DeadlineWatchdog

    clock = SimClock()

    class Slow:  # planning takes 50 ms, or 250 ms from the fifth call on
        name, privileged, calls = "slow", False, 0
        inner = make_planner("constant_velocity")

        def plan(self, observation, privileged=None):
            self.calls += 1
            clock.advance(0.25 if self.calls >= 5 else 0.05)
            return self.inner.plan(observation)

    batch = collate([build_scenario(num_steps=20)])
    with make_simulator("builtin", agents="log") as sim:
        r = rollout(sim, batch, Slow(), monitors=[DeadlineWatchdog(clock=clock)])  # not wrapped by hand
    start = int(r.start_step[0])
    vetoed = r.vetoes[0, start:start + 9, 0].tolist()
    assert vetoed == [False] * 4 + [True] * 5 and r.fallback_used[0, start + 4]
    assert all("250 ms > 100 ms" in why for _, _, _, why in r.veto_reasons)
