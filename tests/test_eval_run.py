"""The evaluation run end to end: store -> simulate -> evaluate -> results.parquet, summary.json,
report.html; merging of runs, determinism, CLI errors, and the key result on the real drives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from av.cli.main import main
from closedloop.runner import EvalConfig, mean_ci95, read_results, run_eval
from scenarios.store import write_store

from conftest import build_scenario


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three short hand-made scenarios (straight road, a lead vehicle, 3 s simulated)."""
    path = tmp_path_factory.mktemp("tiny") / "store"
    write_store(path, [build_scenario(id=f"tiny-{i}", num_steps=40, ego_speed=4.0 + i) for i in range(3)])
    return path


def test_cli_eval_writes_results_summary_and_report(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    rc = main(["closedloop", "eval", "--store", str(tiny_store), "--planner", "idm,log_replay",
               "--agents", "log", "--out", str(run), "--worst", "1", "--no-progress", "--batch-size", "2",
               "--threads", "1"])
    assert rc == 0
    table = pq.read_table(run / "results.parquet")
    assert table.schema.metadata[b"schema_version"] == b"1"
    assert table.column_names[:3] == ["scenario_id", "planner", "agents"]
    assert {"cls", "pdms", "ade", "fde", "reasons"} <= set(table.column_names)
    assert table.schema.field("reasons").type == pa.string()
    assert table.num_rows == 6  # 3 scenarios x 2 planners
    summary = json.loads((run / "summary.json").read_text())
    assert summary["schema_version"] == 1
    assert [(r["planner"], r["agents"]) for r in summary["rows"]] == [("idm", "log"), ("log_replay", "log")]
    for row in summary["rows"]:
        assert row["scenarios"] == 3
        for key in ("cls", "pdms"):
            assert 0.0 <= row[key] <= 1.0
            lo, hi = row[f"{key}_ci95"]
            assert lo <= row[key] + 1e-9 and row[key] <= hi + 1e-9
        assert len(row["worst"]) == 1 and (run / row["worst"][0]["gif"]).is_file()
    page = (run / "report.html").read_text()
    assert "log_replay" in page and "figures/cls.png" in page and (run / "figures" / "cls.png").is_file()
    assert row["worst"][0]["gif"] in page
    out = capsys.readouterr().out
    assert "log_replay" in out and "PDMS (first 4 s)" in out  # the results table is printed


def test_another_run_appends_and_a_rerun_replaces_its_rows(tiny_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = dict(store=tiny_store, out=run, worst=0, progress=False, report=False, threads=1)
    run_eval(EvalConfig(planner="idm", **cfg))
    run_eval(EvalConfig(planner="constant_velocity", agents="idm", **cfg))
    first = read_results(run)
    assert first is not None and len(first) == 6
    run_eval(EvalConfig(planner="idm", **cfg))  # replaces idm/log, keeps constant_velocity/idm
    again = read_results(run)
    assert again is not None and again.equals(first)
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["planner"], r["agents"]) for r in summary["rows"]] == [("constant_velocity", "idm"), ("idm", "log")]


def test_resume_skips_finished_runs(tiny_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = dict(store=tiny_store, out=run, planner="idm", worst=0, progress=False, report=False, threads=1)
    run_eval(EvalConfig(**cfg))
    before = (run / "results.parquet").stat().st_mtime_ns
    rows = run_eval(EvalConfig(resume=True, **cfg))
    assert len(rows) == 3 and (run / "results.parquet").stat().st_mtime_ns == before


def test_two_runs_give_identical_tables(tiny_store: Path, tmp_path: Path) -> None:
    tables = [
        run_eval(EvalConfig(store=tiny_store, planner="pdm_closed", agents="idm", out=tmp_path / f"r{k}",
                            worst=0, progress=False, report=False, threads=1))
        for k in range(2)
    ]
    assert tables[0].equals(tables[1])
    assert read_results(tmp_path / "r0").equals(read_results(tmp_path / "r1"))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--planner", "no_such_planner"], "unknown planner 'no_such_planner'"),
        (["--agents", "zombies"], "unknown agent mode 'zombies'"),
        (["--store", "/nonexistent/store"], "no such scenario store"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = {"--store": str(tiny_store), "--planner": "idm", "--agents": "log", "--out": str(tmp_path / "run")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    rc = main(["closedloop", "eval", *[x for kv in base.items() for x in kv], "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [0.0, 0.5, 1.0, 1.0, float("nan")]
    mean, ci, n = mean_ci95(values)
    assert mean == pytest.approx(0.625) and ci == mean_ci95(values)[1] and n == 4
    assert ci[0] < mean < ci[1]
    assert mean_ci95([0.7])[1] == [0.7, 0.7]
    m, ci, n = mean_ci95([math.nan])
    assert math.isnan(m) and ci == [None, None] and n == 0


def test_summary_leaves_placeholders_out_and_says_over_how_many_drives() -> None:
    import pyarrow as pa

    from closedloop.runner import ResultTable, summarize

    table = ResultTable(pa.table({
        "scenario_id": ["a", "b", "c"], "planner": ["p"] * 3, "agents": ["log"] * 3,
        "cls": [1.0, 0.0, 0.5], "first_at_fault_step": [-1.0, 40.0, -1.0],
        "first_at_fault_group": [-1.0, 1.0, -1.0], "first_at_fault_time": [math.nan, 4.0, math.nan],
        "comfort_lon_accel_value": [math.nan, 2.6, math.nan], "reasons": ["", "collision: ...", ""],
    }))
    (row,) = summarize(table)["rows"]
    assert row["scenarios"] == 3 and row["cls_n"] == 3 and row["cls"] == pytest.approx(0.5)
    for key, value in (("first_at_fault_step", 40.0), ("first_at_fault_group", 1.0), ("first_at_fault_time", 4.0)):
        assert row[key] == value and row[f"{key}_n"] == 1 and row[f"{key}_ci95"] == [value, value]
    assert "comfort_lon_accel_value" not in row and "reasons" not in row  # per-scenario details


def test_report_says_pdms_covers_the_first_4_s_and_shows_n(tmp_path: Path) -> None:
    from closedloop.report import write_report

    row = {"planner": "p", "agents": "log", "scenarios": 3, "cls": 0.5, "cls_ci95": [0.2, 0.8], "cls_n": 3,
           "pdms": 1.0, "pdms_ci95": [1.0, 1.0], "pdms_n": 3, "first_at_fault_time": 4.0,
           "first_at_fault_time_ci95": [4.0, 4.0], "first_at_fault_time_n": 1,
           "worst": [{"scenario_id": "b", "cls": 0.0, "pdms": 1.0, "gif": None,
                      "reasons": ["collision: at fault with a vehicle at t = 8.8 s"]}]}
    (tmp_path / "summary.json").write_text(json.dumps({"schema_version": 1, "rows": [row]}))
    page = write_report(tmp_path).read_text()
    assert "<th>pdms (first 4 s)</th>" in page and "PDMS 1.000 (first 4 s only)" in page
    assert "n = 1" in page and "n = 3" not in page  # n is shown where a mean is not over every drive
    assert "collision: at fault with a vehicle at t = 8.8 s" in page


def test_real_drives_key_result(real_store: Path, tmp_path: Path) -> None:
    """Log replay scores near the top, constant velocity far lower, PDM-Closed >= IDM (non-reactive)."""
    run = tmp_path / "run"
    cls = {}
    for name in ("log_replay", "constant_velocity", "idm", "pdm_closed"):
        table = run_eval(EvalConfig(store=real_store, planner=name, agents="log", out=run, worst=0,
                                    progress=False, report=False, threads=1))
        cls[name] = float(table.column("cls").mean())
    assert cls["log_replay"] >= 0.90, cls
    assert cls["constant_velocity"] <= cls["log_replay"] - 0.3, cls
    assert cls["pdm_closed"] >= cls["idm"], cls


def test_without_a_terminal_eval_logs_a_line_per_batch_and_q_silences_it(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["closedloop", "eval", "--store", str(tiny_store), "--planner", "constant_velocity", "--worst", "0",
            "--batch-size", "2", "--threads", "1", "--no-report"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "constant_velocity / log batch 1: scenarios 1-2 of 3 simulated and scored in" in err
    assert "constant_velocity / log batch 2: scenarios 3-3 of 3" in err
    assert main(["-q", *argv, "--out", str(tmp_path / "b")]) == 0
    assert "batch" not in capsys.readouterr().err


def test_the_driver_reports_every_step(tiny_store: Path) -> None:
    from av.batch import collate
    from closedloop.driver import rollout
    from closedloop.planner import make_planner
    from closedloop.sim import make_simulator
    from scenarios.store import read_store

    seen: list[tuple[int, int]] = []
    batch = collate(read_store(tiny_store)[:2])
    rollout(make_simulator("builtin", agents="log"), batch, make_planner("constant_velocity"),
            record_plans=False, on_step=lambda k, n: seen.append((k, n)))
    n = seen[0][1]
    assert n == 40 - 1 - 10 and seen == [(k, n) for k in range(1, n + 1)]  # 40 steps, history 10


def test_log_lines_go_to_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import logging
    import sys

    from av.cli.main import configure_logging

    configure_logging(verbose=1)
    other = io.StringIO()
    real, sys.stderr = sys.stderr, other
    try:
        logging.getLogger("closedloop.probe").info("one line")
    finally:
        sys.stderr = real
    logging.getLogger("closedloop.probe").info("another")
    assert other.getvalue().endswith("closedloop.probe: one line\n")
    assert "closedloop.probe: another" in capsys.readouterr().err
    configure_logging(quiet=True)
    logging.getLogger("closedloop.probe").info("hidden")
    assert "hidden" not in capsys.readouterr().err
