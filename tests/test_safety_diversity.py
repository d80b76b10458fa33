"""Monitor diversity: co-failure statistics on hand-made catch matrices, static overlap computed
from declared inputs, methods and imported modules, coverage gaps, and ``av safety diversity``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from av.cli.main import main
from safety.diversity import (code_items, joint_miss_upper, lift, pair_statistics, profiles, shared_inputs,
                              static_analysis, statistics_by_fault, yules_q)
from safety.records import load_records


def test_yules_q_lift_and_bounds_by_hand() -> None:
    # a = both miss 10, b = A only 5, c = B only 5, d = neither 80: Q = (800 - 25) / (800 + 25)
    assert yules_q(10, 5, 5, 80) == pytest.approx(775 / 825)
    assert yules_q(0, 5, 5, 90) == -1.0 and math.isnan(yules_q(0, 0, 5, 95))
    assert lift(10, 15, 15, 100) == pytest.approx(0.10 / (0.15 * 0.15))
    assert math.isnan(lift(0, 0, 3, 10))
    assert joint_miss_upper(0, 300) == pytest.approx(0.01)  # rule of three
    assert joint_miss_upper(1, 10) == pytest.approx(0.3941633, rel=1e-6)  # Clopper-Pearson, one-sided 95 %
    assert joint_miss_upper(5, 5) == 1.0 and math.isnan(joint_miss_upper(0, 0))


@pytest.mark.req("SR-DIV-01")
def test_pair_statistics_on_a_catch_matrix() -> None:
    # 4 events: independent misses (each monitor misses half, one joint miss) -> Q = 0, lift = 1
    caught = np.array([[False, False], [False, True], [True, False], [True, True]])
    st = pair_statistics(caught, ["a", "b"])
    assert st["events"] == 4 and st["any_catch_rate"] == 0.75
    assert st["catch_rate"] == {"a": 0.5, "b": 0.5}
    [p] = st["pairs"]
    assert (p["joint_miss"], p["joint_miss_rate"], p["yules_q"], p["lift"]) == (1, 0.25, 0.0, 1.0)
    # identical monitors: every miss is joint -> Q = 1 and lift = 1 / P(miss)
    same = np.array([[False, False], [False, False], [True, True], [True, True]])
    [p] = pair_statistics(same, ["a", "b"])["pairs"]
    assert p["yules_q"] == 1.0 and p["lift"] == pytest.approx(2.0)
    # never a joint miss in 300 events: rate 0, bound 3 / 300
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.5
    [p] = pair_statistics(np.stack([a, ~a], 1), ["a", "b"])["pairs"]
    assert p["joint_miss"] == 0 and p["joint_miss_upper95"] == pytest.approx(0.01) and p["yules_q"] == -1.0
    with pytest.raises(ValueError):
        pair_statistics(caught, ["a"])


def test_statistics_by_fault_type() -> None:
    caught = np.array([[True, False], [False, False], [True, True], [True, True]])
    by = statistics_by_fault(caught, ["ghost", "ghost", "noise", "noise"], ["a", "b"])
    assert set(by) == {"all", "ghost", "noise"}
    assert by["ghost"]["any_catch_rate"] == 0.5 and by["noise"]["any_catch_rate"] == 1.0
    assert by["ghost"]["pairs"][0]["joint_miss"] == 1 and by["noise"]["pairs"][0]["joint_miss"] == 0


def test_code_items_follow_imports() -> None:
    assert code_items("safety.monitors.sanity") == {"av.errors", "av.geometry", "av.monitor", "av.observation", "torch"}
    items = code_items("safety.diversity")
    assert {"safety.records", "safety.trace", "safety.asil", "av.errors", "numpy"} <= items
    assert "safety.diversity" not in items and "ast" not in items  # itself and the standard library left out


def test_shared_inputs_understand_parts() -> None:
    assert shared_inputs(frozenset({"trajectory", "lanes"}), frozenset({"trajectory.xy", "clock"})) == ("trajectory.xy",)
    assert shared_inputs(frozenset({"agents.pose"}), frozenset({"agents.velocity"})) == ()


class _Fake:
    def __init__(self, name: str, inputs: tuple[str, ...], method: str, requirements: tuple[str, ...]) -> None:
        self.name, self.inputs, self.method, self.requirements = name, inputs, method, requirements


@pytest.mark.req("SR-DIV-01")
def test_project_monitors_cover_every_hazard_diversely() -> None:
    from safety.diversity import check_dependent_failure_records
    from safety.monitors import all_monitors

    records = load_records()
    static = static_analysis(profiles(all_monitors(), records), [h.id for h in records.hazards])
    assert static.uncovered == []
    assert check_dependent_failure_records(records, static) == []
    rss_ttc = next(p for p in static.pairs if {p.a, p.b} == {"rss", "ttc"})
    assert "agents.velocity" not in rss_ttc.shared_inputs  # TTC differentiates positions instead
    # only the interface (the observation and trajectory types, with the frame helpers they use)
    assert set(rss_ttc.shared_code) == {"av.errors", "av.geometry", "av.monitor", "av.observation", "torch"}
    kinds = {(e.a, e.b, e.kind, e.item) for e in static.entries}
    assert ("rss", "ttc", "code", "torch") in kinds and ("rss", "ttc", "input", "agent_sizes") in kinds


def test_coverage_gap_when_monitors_share_method_or_inputs() -> None:
    records = load_records()
    mons = [_Fake("x", ("agents.pose", "trajectory"), "rule", ("SR-COL-01",)),
            _Fake("y", ("agents.pose", "lanes"), "rule", ("SR-COL-02",)),             # same method
            _Fake("z", ("agents.pose", "trajectory"), "prediction", ("SR-COL-02",)),  # same inputs as x
            _Fake("w", ("lanes",), "distance", ("SR-DA-02",))]                       # alone on HZ-03
    static = static_analysis(profiles(mons, records), ["HZ-01", "HZ-03"])
    assert static.coverage["HZ-01"] == ("y", "z")  # differ in inputs and method
    assert static.uncovered == ["HZ-03"]
    only_same = [m for m in mons if m.name in ("x", "y", "z")][:2]
    assert static_analysis(profiles(only_same, records), ["HZ-01"]).uncovered == ["HZ-01"]
    same_inputs = [mons[0], mons[2]]
    assert static_analysis(profiles(same_inputs, records), ["HZ-01"]).uncovered == ["HZ-01"]


def test_cli_diversity_with_catches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catches = tmp_path / "catches.json"
    catches.write_text(json.dumps({"monitors": ["rss", "ttc"], "events": [
        {"fault": "ghost", "caught": [True, False]}, {"fault": "noise", "caught": [True, True]}]}))
    rc = main(["safety", "diversity", "--catches", str(catches), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "HZ-01: covered by rss + ttc" in out and "caught by >= 1 monitor: 1.000" in out
    data = json.loads((tmp_path / "out" / "diversity.json").read_text())
    assert data["uncovered"] == [] and data["empirical"]["ghost"]["catch_rate"] == {"rss": 1.0, "ttc": 0.0}
    assert "Fault injection" in (tmp_path / "out" / "diversity.html").read_text()
    catches.write_text(json.dumps({"monitors": ["rss"], "events": [{"fault": "x", "caught": [True, False]}]}))
    assert main(["safety", "diversity", "--catches", str(catches), "--out", str(tmp_path / "out")]) == 2
    assert "event 0 has 2 catches for 1 monitors" in capsys.readouterr().err
