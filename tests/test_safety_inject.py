"""Fault injection on a hand-made drive: colliding injected plans are found by the ground truth
(box overlap with the logged agents) and each is vetoed by at least one monitor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from av.cli.main import main
from conftest import build_scenario
from safety.inject import PLAN_FAULTS, first_collision, inject, no_brake
from safety.monitors import all_monitors
from safety_fixtures import make_observation, straight_plan


def test_ground_truth_collision_uses_the_logged_future() -> None:
    from av.observation import Privileged

    obs = make_observation(speed=10.0, agents=[(20.0, 0.0, 0.0, 0.0, 0.0, 4.5, 1.9)])
    F = 30
    fut = torch.zeros(1, 1, F, 5, dtype=torch.float64)
    fut[..., 0] = 20.0
    priv = Privileged(torch.zeros(1, F, 5), torch.ones(1, F, dtype=torch.bool), fut, torch.ones(1, 1, F, dtype=torch.bool))
    hit, who = first_collision(straight_plan(10.0).poses, obs, priv)
    assert hit.tolist() == [True] and who.tolist() == [0]  # front at 1.292 + 2.042 + 10 t meets 17.75 at t ~ 1.4 s
    assert first_collision(straight_plan(10.0, accel=-8.0).poses, obs, priv)[0].tolist() == [False]
    assert first_collision(straight_plan(10.0).poses, obs, priv, horizon_s=1.0)[0].tolist() == [False]


def test_ground_truth_counts_only_collisions_the_ego_is_at_fault_for() -> None:
    """nuPlan's rule: a stopped ego, or one hit from behind, is not at fault; no monitor can
    veto standing still."""
    from av.observation import Privileged

    obs = make_observation(speed=0.0, agents=[(-12.0, 0.0, 0.0, 6.0, 0.0, 4.5, 1.9)])
    F = 30
    t = torch.arange(1, F + 1, dtype=torch.float64) * 0.1
    fut = torch.zeros(1, 1, F, 5, dtype=torch.float64)
    fut[..., 0], fut[..., 3] = -12.0 + 6.0 * t, 6.0  # a follower that does not brake
    priv = Privileged(torch.zeros(1, F, 5), torch.ones(1, F, dtype=torch.bool), fut, torch.ones(1, 1, F, dtype=torch.bool))
    stopped = straight_plan(0.0)
    assert first_collision(stopped.poses, obs, priv)[0].tolist() == [False]  # rear-ended while stopped
    creeping = straight_plan(0.5)
    assert first_collision(creeping.poses, obs, priv)[0].tolist() == [False]  # hit from behind while moving
    fut[..., 0], fut[..., 3] = 6.0, 0.0  # a parked car ahead
    assert first_collision(straight_plan(5.0).poses, obs, priv)[0].tolist() == [True]


def test_no_brake_follows_the_logged_path_at_constant_speed() -> None:
    obs = make_observation(speed=10.0)
    nominal = straight_plan(10.0, accel=-4.0, steps=30)  # the human stops within 2.5 s
    poses = no_brake(obs, nominal)
    assert torch.allclose(poses[0, :, 0], torch.arange(1, 31, dtype=torch.float64))  # 10 m/s throughout
    assert torch.allclose(poses[0, :, 1:], torch.zeros(30, 2, dtype=torch.float64))


@pytest.mark.req("SR-COL-01", "SR-COL-02", "SR-FB-01")
def test_every_colliding_injected_plan_is_vetoed(tmp_path: Path) -> None:
    # ego at 5 m/s behind a lead at 15 m going 4 m/s: faster or unbraked plans run into it
    drives = [build_scenario(id=f"hand-{i}", num_steps=60, ego_speed=5.0 + i) for i in range(2)]
    result = inject(drives, all_monitors, every_s=1.0)
    s = result.summary()
    assert s["hazardous_injected_plans"] > 0 and set(result.faults) & set(PLAN_FAULTS)
    assert s["injected_plans_vetoed_by_any"] == 1.0
    assert s["fallback_applied"] == int(result.caught.any(1).sum())
    assert result.caught.shape == (len(result.faults), len(result.monitors))
    data = result.catches_json()
    assert len(data["events"]) == s["hazardous_events"] and data["monitors"] == [m.name for m in all_monitors()]
    again = inject(drives, all_monitors, every_s=1.0)
    assert np.array_equal(again.caught, result.caught)  # deterministic


def test_cli_inject_writes_catches_for_diversity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scenarios.store import write_store

    write_store(tmp_path / "store", [build_scenario(num_steps=50)])
    rc = main(["safety", "inject", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "inj")])
    out = capsys.readouterr().out
    assert rc == 0 and '"injected_plans_vetoed_by_any": 1.0' in out
    assert main(["safety", "diversity", "--catches", str(tmp_path / "inj" / "catches.json"),
                 "--out", str(tmp_path / "div")]) == 0
    data = json.loads((tmp_path / "div" / "diversity.json").read_text())
    assert data["empirical"]["all"]["any_catch_rate"] == 1.0
    assert main(["safety", "inject", "--store", str(tmp_path / "store"), "--every", "0"]) == 2
