"""Adversarial search with a stand-in scorer (the closed-loop scorer is wired in by the CLI):
the logged ego's closest approach to any agent, so variants that bring agents closer score lower,
and the "reference planner" solves a variant unless an agent comes within 1.5 m of the ego."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from av.errors import AvError
from av.types import Scenario
from scenarios.adversarial import SearchConfig, adversarial_search, mine_hard
from scenarios.plausibility import check
from scenarios.variants import regenerate

PLANNER, REFERENCE = "stand-in", "stand-in-reference"


def closest_approach(s: Scenario) -> float:
    """Smallest distance (m) between the logged ego rear axle and a valid agent centre, from the start step."""
    h = s.history_steps
    d = np.linalg.norm(s.agents[:, h:, :2] - s.ego[None, h:, :2], axis=-1)
    d = np.where(s.agent_valid[:, h:], d, np.inf)
    return float(d.min()) if d.size else np.inf


class StandIn:
    """``score_fn``: planner score = clip((closest - 2) / 10, 0, 1); reference = 1 if closest >= 1.5 m."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, scenarios: Sequence[Scenario], planner: str) -> np.ndarray:
        self.calls.append((planner, len(scenarios)))
        d = np.array([closest_approach(s) for s in scenarios])
        if planner == REFERENCE:
            return (d >= 1.5).astype(float)
        return np.clip((d - 2.0) / 10.0, 0.0, 1.0)


@pytest.fixture
def parents(make_scenario) -> list[Scenario]:
    return [
        make_scenario(id="a", num_steps=80, road_length=200.0, num_agents=1),  # lead 7 m ahead at the end
        make_scenario(id="b", num_steps=80, road_length=200.0, num_agents=1, ego_speed=4.5),
    ]


def test_search_finds_solvable_variants_that_score_below_their_parent(parents: list[Scenario]) -> None:
    scorer = StandIn()
    cfg = SearchConfig(iterations=3, min_drop=0.2)
    variants, report = adversarial_search(parents, scorer, PLANNER, 48, 0, reference_planner=REFERENCE, config=cfg)
    assert report.parents == 2 and report.evaluated == 48
    assert 0 < report.kept <= 2 * cfg.keep_per_parent and report.kept == len(variants)
    assert report.solvable <= report.found <= report.evaluated
    judge = StandIn()
    base = {p.id: judge([p], PLANNER)[0] for p in parents}
    by_id = {p.id: p for p in parents}
    for v in variants:
        parent = by_id[v.provenance.parent_id]
        assert judge([v], PLANNER)[0] <= base[parent.id] - cfg.min_drop  # a planner failure ...
        assert judge([v], REFERENCE)[0] >= cfg.solved_threshold  # ... that the reference solves
        assert check(v, parent) == [] and regenerate(v.provenance, parent) == v
    assert report.mean_drop >= 0.2
    # per kept variant: its parent's score, its own, the drop and the reference planner's score
    assert [r["variant"] for r in report.variants] == [v.id for v in variants]
    for r, v in zip(report.variants, variants):
        assert r["parent"] == v.provenance.parent_id and r["parent_score"] == base[r["parent"]]
        assert r["variant_score"] == judge([v], PLANNER)[0] and r["reference_score"] == judge([v], REFERENCE)[0]
        assert r["drop"] == r["parent_score"] - r["variant_score"] >= cfg.min_drop
    assert report.mean_drop == pytest.approx(report.kept_parent_score - report.kept_score)
    assert report.as_dict()["variants"][0]["drop"] == round(report.variants[0]["drop"], 4)
    # one batched call per iteration for the planner, plus the parents, plus reference checks
    planner_calls = [n for p, n in scorer.calls if p == PLANNER]
    assert planner_calls[0] == 2 and sum(planner_calls[1:]) == 48 and len(planner_calls) == 1 + cfg.iterations


def test_search_is_deterministic_per_seed(parents: list[Scenario]) -> None:
    cfg = SearchConfig(iterations=2)
    a, ra = adversarial_search(parents, StandIn(), PLANNER, 24, 5, REFERENCE, cfg)
    b, rb = adversarial_search(parents, StandIn(), PLANNER, 24, 5, REFERENCE, cfg)
    assert [v.id for v in a] == [v.id for v in b] and all(x == y for x, y in zip(a, b))
    assert {**ra.as_dict(), "seconds": 0} == {**rb.as_dict(), "seconds": 0}
    c, _ = adversarial_search(parents, StandIn(), PLANNER, 24, 6, REFERENCE, cfg)
    assert [v.id for v in c] != [v.id for v in a]


def test_cross_entropy_iterations_lower_the_scores(parents: list[Scenario]) -> None:
    """The population of the last iteration scores lower on average than the first (uniform) one."""
    scorer = StandIn()
    means: list[float] = []

    def recording(scenarios: Sequence[Scenario], planner: str) -> np.ndarray:
        out = scorer(scenarios, planner)
        if planner == PLANNER and len(scenarios) > len(parents):
            means.append(float(out.mean()))
        return out

    adversarial_search(parents, recording, PLANNER, 96, 1, REFERENCE, SearchConfig(iterations=4))
    assert len(means) == 4 and means[-1] < means[0]


def test_unavoidable_failures_are_not_kept(parents: list[Scenario]) -> None:
    """With a reference that solves nothing, every failure is unavoidable: nothing is kept."""

    def never(scenarios: Sequence[Scenario], planner: str) -> np.ndarray:
        return np.zeros(len(scenarios)) if planner == REFERENCE else StandIn()(scenarios, planner)

    variants, report = adversarial_search(parents, never, PLANNER, 16, 0, REFERENCE, SearchConfig(iterations=2))
    assert variants == [] and report.kept == 0 and report.solvable == 0 and report.found > 0


def test_bad_search_inputs_are_user_errors(parents: list[Scenario]) -> None:
    with pytest.raises(AvError, match="budget"):
        adversarial_search(parents, StandIn(), PLANNER, 0, 0, REFERENCE)
    with pytest.raises(AvError, match="family"):
        adversarial_search(parents, StandIn(), PLANNER, 4, 0, REFERENCE, SearchConfig(families=("nope",)))


def test_mine_hard_generates_around_the_lowest_scoring_parents(parents: list[Scenario], make_scenario) -> None:
    third = make_scenario(id="c", num_steps=80, road_length=200.0)
    pool = [*parents, third]
    variants, stats = mine_hard(pool, [0.9, 0.1, 0.4], count=2, per_parent=3, seed=0)
    assert {v.provenance.parent_id for v in variants} == {"b", "c"}
    assert stats.generated == len(variants) >= 4
    with pytest.raises(AvError):
        mine_hard(pool, [0.1], count=1, per_parent=1, seed=0)


def test_cli_adversarial_runs_the_closed_loop_search(make_scenario, tmp_path, capsys) -> None:
    """One short end-to-end run of the real command (simulator + evaluator as the scorer)."""
    import json

    from av.cli.main import main
    from scenarios.store import read_store, write_store

    write_store(tmp_path / "in", [make_scenario(id="a", num_steps=60, road_length=200.0, num_agents=1)])
    rc = main(["scenarios", "adversarial", "--store", str(tmp_path / "in"), "--planner", "constant_velocity",
               "--reference-planner", "log_replay", "--budget", "3", "--iterations", "1",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    cap = capsys.readouterr()
    report = json.loads(cap.out)
    # without a terminal: a line per scored batch and per search iteration on stderr
    assert "constant_velocity: scenarios 1-1 of 1 scored in" in cap.err and "adversarial iteration 1/1:" in cap.err
    assert report["parents"] == 1 and report["evaluated"] <= 3 and report["planner"] == "constant_velocity"
    assert report["kept"] == len([s for s in read_store(tmp_path / "out") if s.provenance is not None])
    rc = main(["scenarios", "adversarial", "--store", str(tmp_path / "in"), "--planner", "nope",
               "--budget", "3", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "--planner: unknown planner 'nope'" in err and not (tmp_path / "bad").exists()


def test_real_drives_adversarial_search_lowers_idm_cls_by_at_least_0_2(real_scenarios: list[Scenario]) -> None:
    """The issue's key result: on the real drives, with a budget that runs in two to three minutes
    on 2 cores, the closed-loop search finds variants that PDM-Closed still solves and on which the
    IDM planner's CLS-NR is at least 0.2 lower than on their parents, on average. (Budget 48 found
    none once IDM's comfort fixes and the full-reach drivable area removed its easy failures.)"""
    from av.cli.scenarios import closedloop_scorer

    variants, report = adversarial_search(
        real_scenarios, closedloop_scorer("log", 64, "cpu"), "idm", budget=96, seed=0)
    assert report.solvable >= 1 and len(variants) == report.kept >= 1
    assert report.mean_drop_solvable >= 0.2
    parents = {s.id: s for s in real_scenarios}
    for v in variants:  # every kept variant is reproducible from its provenance
        assert v.provenance is not None
        assert regenerate(v.provenance, parents[v.provenance.parent_id]) == v
