"""One short end-to-end run of the real ``av pipeline`` command, and its resume behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from av.cli.main import main
from scenarios.store import read_store

ARGS = ["--drives", "2", "--planners", "log_replay,idm", "--variants-per-scenario", "1", "--worst", "1",
        "--adversarial-budget", "4", "--no-learned"]


def test_pipeline_runs_every_stage_then_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    store = read_store(out / "store")
    assert len(store) == 2 and all(s.duration >= 15.0 for s in store)
    assert len(list((out / "pictures").glob("*.gif"))) == 2
    summary = json.loads((out / "eval" / "summary.json").read_text())
    rows = {(r["planner"], r["agents"]): r for r in summary["rows"]}
    assert set(rows) == {(p, a) for p in ("log_replay", "idm") for a in ("log", "idm")}
    assert all(0.0 <= r["cls"] <= 1.0 and 0.0 <= r["pdms"] <= 1.0 for r in rows.values())
    assert rows[("log_replay", "log")]["cls"] >= 0.9
    assert (out / "eval" / "report.html").is_file()
    variants = read_store(out / "variants")
    assert any(v.provenance is not None for v in variants)
    assert json.loads((out / "adversarial" / "report.json").read_text())["evaluated"] <= 4
    capsys.readouterr()

    before = (out / "eval" / "results.parquet").stat().st_mtime_ns
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    err = capsys.readouterr().err
    for stage in ("data", "import", "pictures", "eval", "variants", "adversarial"):
        assert f"stage {stage}: up to date, skipped" in err
    assert (out / "eval" / "results.parquet").stat().st_mtime_ns == before


def test_pipeline_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "--out", str(tmp_path / "run"), "--dataroot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("av: error:")]
    assert len(errors) == 1 and "missing: no such dataroot" in errors[0] and "Traceback" not in err
