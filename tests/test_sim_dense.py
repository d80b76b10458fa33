"""The simulator's sparse candidate search on dense real scenes: the leaders and collisions it
finds are exactly those of the brute-force all-pairs test, on the real drives and their
variants; and ``av bench sim --store`` reports the real-window figures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from av.batch import collate
from av.checks import box_overlap
from av.cli.main import main
from av.observe import ObservationSpec, observe
from av.types import Scenario
from av.vehicle import ego_box
from closedloop.planner import make_planner
from closedloop.sim import BuiltinSimulator, SimState
from closedloop.sim.agents import leader_pressure, pair_pressure
from closedloop.sim.collision import overlapping_pairs
from closedloop.sim.pairs import Sweep, nearby_pairs, sort_items
from scenarios.variants import generate_variants


@pytest.fixture(scope="module")
def dense_states(real_scenarios: list[Scenario]) -> list[SimState]:
    """Every 8th state of 64 reactive steps on the real drives and one variant of each, the ego
    driving on at 1.5 times its start speed; variants of the first four drives (it closes in on the traffic ahead)."""
    variants, _ = generate_variants(real_scenarios[:4], 1, seed=0)
    assert len(variants) >= 2
    batch = collate(list(real_scenarios) + variants)
    sim = BuiltinSimulator(agents="idm")
    state = sim.reset(batch)
    plan = make_planner("constant_velocity", horizon_steps=80).plan(observe(batch, state.t, ObservationSpec()))
    state = sim.set_plan(state, type(plan)(plan.poses * 1.5, plan.dt))
    states = []
    for step in range(64):
        if step % 8 == 0:
            states.append(state)
        state = sim.step(state)
    return states


def _sweeps(state: SimState) -> list[Sweep]:
    """The simulator's sweep of ``state`` and the one along the other axis (same pairs, other speed)."""
    sweep = state.static.sweep
    return [sweep, replace(sweep, axis=sweep.axis.flip(1))]


def _leader_inputs(state: SimState) -> tuple[torch.Tensor, ...]:
    """The arguments of the reactive agents' leader search in ``state`` (as the simulator builds them)."""
    static, batch = state.static, state.static.batch
    index = static.paths.index

    def slots(x: torch.Tensor) -> torch.Tensor:
        return x.gather(1, index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))

    box = ego_box(state.ego.pose, batch.ego_dims)
    bodies = torch.cat([torch.cat([box[:, :3], state.ego.state5()[:, 3:5]], 1)[:, None], state.agents], 1)
    body_sizes = torch.cat([batch.ego_dims[:, None, :2], batch.agent_sizes], 1)
    body_valid = torch.cat([(state.t <= static.last)[:, None], state.agent_valid], 1)
    present = static.paths.slot & slots(state.agent_valid)
    return (slots(state.agents)[..., :3], slots(batch.agent_sizes), state.agent_speed, state.agent_curvature,
            present, bodies, body_sizes, body_valid)


def test_sparse_leader_search_equals_all_pairs_on_real_drives_and_variants(dense_states: list[SimState]) -> None:
    sim = BuiltinSimulator(agents="idm")
    leaders = 0
    for state in dense_states:
        agents, sizes, speed, curvature, present, bodies, body_sizes, body_valid = _leader_inputs(state)
        # Oracle: the exact test on every (present agent, body of its scenario) pair, no broad phase.
        R = present.shape[1]
        M = bodies.shape[1]
        rows = present.reshape(-1).nonzero().squeeze(1)
        row = rows.repeat_interleave(M)
        col = (rows.div(R, rounding_mode="floor") * M)[:, None].add(torch.arange(M)).reshape(-1)
        brute = pair_pressure(agents, sizes, speed, curvature, bodies, body_sizes, body_valid, row, col, sim.idm)
        for sweep in _sweeps(state):
            fast = leader_pressure(agents, sizes, speed, curvature, present, bodies, body_sizes, body_valid, sim.idm,
                                   sweep)
            assert torch.equal(fast, brute)
        # the bodies the state keeps sorted (from its collision check) are the ones searched here
        cached = leader_pressure(agents, sizes, speed, curvature, present, bodies, body_sizes, body_valid, sim.idm,
                                 state.static.sweep, state.sorted_bodies)
        assert torch.equal(cached, brute)
        leaders += int((brute > 0).sum())
    assert leaders >= 10  # the comparison covers agents that do brake for something ahead


def test_sparse_collision_search_equals_all_pairs_on_real_drives_and_variants(dense_states: list[SimState]) -> None:
    overlaps = 0
    for state in dense_states:
        static, batch = state.static, state.static.batch
        boxes = torch.cat([ego_box(state.ego.pose, batch.ego_dims)[:, None],
                           torch.cat([state.agents[..., :3], batch.agent_sizes], -1)], 1)
        valid = torch.cat([(state.t <= static.last)[:, None], state.agent_valid], 1)
        B, M, _ = boxes.shape
        brute = box_overlap(boxes[:, :, None], boxes[:, None, :])
        brute &= torch.ones(M, M, dtype=torch.bool).triu(1) & valid[:, :, None] & valid[:, None, :]
        every = torch.arange(M).expand(B, M)
        # the simulator's own rows (the ego and the reactive agents): every pair touching one
        rows, row_valid = static.collision_rows, static.collision_row_valid
        touching = torch.zeros(B, M, dtype=torch.bool).scatter_(1, rows, row_valid)
        expected = brute & (touching[:, :, None] | touching[:, None, :])
        for sweep in _sweeps(state):
            assert overlapping_pairs(boxes, valid, every, torch.ones(B, M, dtype=torch.bool), sweep).tolist() == \
                brute.nonzero().tolist()
            assert overlapping_pairs(boxes, valid, rows, row_valid, sweep).tolist() == expected.nonzero().tolist()
        overlaps += int(brute.sum())
    assert overlaps >= 10  # real annotations and the fast ego overlap: the comparison is not vacuous


def test_sweep_lists_every_item_within_reach_and_no_other_scenario() -> None:
    gen = torch.Generator().manual_seed(3)
    B, M, K = 4, 30, 50
    x = torch.rand(B, M, generator=gen) * 200.0 - 100.0
    valid = torch.rand(B, M, generator=gen) > 0.2
    row_b = torch.randint(0, B, (K,), generator=gen)
    row_x = torch.rand(K, generator=gen) * 200.0 - 100.0
    reach = torch.rand(K, generator=gen) * 30.0
    reach[0] = float("inf")
    k, item = nearby_pairs(row_b, row_x, reach, sort_items(valid, x))
    got = set(zip(k.tolist(), item.tolist()))
    for r in range(K):
        b = int(row_b[r])
        for m in range(M):
            within = bool(valid[b, m]) and abs(float(x[b, m] - row_x[r])) <= float(reach[r])
            if within:
                assert (r, b * M + m) in got
    assert all(item // M == int(row_b[r]) and bool(valid.reshape(-1)[item]) for r, item in got)
    assert len([1 for r, _ in got if r == 0]) == int(valid[int(row_b[0])].sum())


def test_bench_sim_store_reports_valid_agents_reset_and_memory(real_store: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--store", str(real_store), "--batches", "1,3", "--agents", "2", "--steps", "3",
                 "--eval-scenarios", "0", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["batch"] for row in out["sim"]] == [1, 3]  # the synthetic rows stay
    rows = out["sim_store"]
    assert [row["batch"] for row in rows] == [1, 3] and rows[0]["windows"] == 8
    for row in rows:
        assert 0 < row["valid_agents"] <= row["agents"]
        assert 0 < row["valid_agent_steps_per_s"] <= row["padded_agent_steps_per_s"]
        assert row["reset_s"] >= 0 and row["peak_rss_mib"] > 100
    assert main(["bench", "sim", "--store", str(real_store.parent / "missing"), "--eval-scenarios", "0"]) == 2
