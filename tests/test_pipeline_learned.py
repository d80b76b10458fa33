"""The learned stages of ``av pipeline`` (teacher -> distill -> finetune -> export -> eval), keyed
like the others: more distillation epochs redo the student, its export and its evaluation, and
nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import closedloop.runner as runner
from av.cli.main import main
from closedloop.runner import read_summary

ARGS = ["--drives", "1", "--planners", "constant_velocity", "--variants-per-scenario", "1",
        "--adversarial-budget", "0", "--pictures", "0", "--worst", "0", "--teacher-epochs", "1"]


def _stage_lines(err: str) -> dict[str, str]:
    lines = [line for line in err.splitlines() if line.startswith("stage ")]
    return {line.split(":")[0].split()[1]: line.split(": ", 1)[1] for line in lines}


def test_learned_stages_are_keyed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), *ARGS, "--student-epochs", "1"]) == 0
    lines = _stage_lines(capsys.readouterr().err)
    assert all(lines[s] == "running (new)" for s in ("teacher", "distill", "finetune", "export", "eval")), lines
    for path in ("teacher/teacher.ckpt", "student/student.ckpt", "export/student.onnx", "export/student.onnx.json",
                 "finetune/report.html", "finetune/iter-001/student.ckpt"):
        assert (out / path).is_file(), path
    report = json.loads((out / "finetune" / "report.json").read_text())
    assert [h["iteration"] for h in report["iterations"]] == [0, 1] and report["iterations"][1]["states"] > 0
    recorded = json.loads((out / "stages" / "finetune.json").read_text())["inputs"]
    assert recorded["iterations"] == 1 and recorded["student"] and recorded["teacher"]
    rows = {(r["planner"], r["agents"]): r for r in read_summary(out / "eval")["rows"]}
    assert set(rows) == {(p, a) for p in ("constant_velocity", "teacher", "student") for a in ("log", "idm")}
    assert rows[("teacher", "log")]["plan_every"] == 10
    student_key = rows[("student", "log")]["inputs"]["planner_files"]["checkpoint"]
    teacher_ckpt = (out / "teacher" / "teacher.ckpt").read_bytes()

    evaluated: list[str] = []
    evaluate_planner = runner.evaluate_planner

    def counting(config, planner, *rest):
        evaluated.append(f"{config.planner}/{config.agents}")
        return evaluate_planner(config, planner, *rest)

    monkeypatch.setattr(runner, "evaluate_planner", counting)
    assert main(["pipeline", "--out", str(out), *ARGS, "--student-epochs", "2", "--finetune-iterations", "0"]) == 0
    lines = _stage_lines(capsys.readouterr().err)
    assert "finetune" not in lines  # skipped
    assert lines["teacher"] == "up to date, skipped"
    assert lines["distill"] == "running (inputs changed: epochs)"
    assert lines["export"] == "running (inputs changed: student)"
    assert lines["eval"] == "running (inputs changed: runs)"
    assert sorted(evaluated) == ["student/idm", "student/log"]  # the other planners' results are kept
    assert (out / "teacher" / "teacher.ckpt").read_bytes() == teacher_ckpt
    rows = {(r["planner"], r["agents"]): r for r in read_summary(out / "eval")["rows"]}
    assert rows[("student", "log")]["inputs"]["planner_files"]["checkpoint"] != student_key
    assert json.loads((out / "student" / "student.json").read_text())["max_epochs"] == 2
