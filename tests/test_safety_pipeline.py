"""``av pipeline`` stage ``safety``: closed-loop fault injection over the drives and variants,
diversity and the safety case, keyed like the other stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from av.cli.main import main

ARGS = ["--drives", "1", "--planners", "constant_velocity", "--variants-per-scenario", "1",
        "--adversarial-budget", "0", "--pictures", "0", "--worst", "0", "--no-learned"]


@pytest.mark.slow
def test_pipeline_safety_stage_runs_once_and_is_keyed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    err = capsys.readouterr().err
    assert "stage safety: running (new)" in err
    manifest = json.loads((out / "stages" / "safety.json").read_text())
    assert manifest["complete"] and {"store_digest", "eval_summary", "seed", "planner"} <= set(manifest["inputs"])
    inj = json.loads((out / "safety" / "inject" / "inject.json").read_text())
    assert inj["closed_loop"] and inj["drives"] == 2  # the drive and its variant
    assert set(inj["per_fault_closed_loop"]) >= {"speed_up", "dropped_agent", "late"}
    assert inj["injected_plans_vetoed_by_any"] in (None, 1.0)
    for f in ("diversity/diversity.json", "report/safety_case.html", "report/trace.json"):
        assert (out / "safety" / f).is_file(), f
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    assert "stage safety: up to date, skipped" in capsys.readouterr().err
