"""Code evidence of the safety case is produced by running ruff, mypy and pytest-cov: planted
lint and type errors fail their items, coverage is measured, a missing tool is said plainly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from av.cli.main import main
from safety.evidence import RUFF, coverage, lint, type_check

GOOD = "def double(x: float) -> float:\n    return 2 * x\n\n\ndef unused(x: float) -> float:\n    return x - 1\n"
TEST = "from pkg.good import double\n\n\ndef test_double():\n    assert double(2.0) == 4.0\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "good.py").write_text(GOOD)
    (tmp_path / "pkg" / "bad.py").write_text("import os\n\n\ndef half(x: int) -> str:\n    return x / 2\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_good.py").write_text(TEST)
    return tmp_path


def test_tools_run_and_planted_errors_fail(project: Path) -> None:
    ok, bad = lint(project, ["pkg/good.py"]), lint(project, ["pkg/bad.py"])
    assert ok.result == "pass" and "0 finding(s)" in ok.what and ok.run.startswith("ruff 0.17.6") and ok.date
    assert bad.result == "fail" and "1 finding(s) (F401)" in bad.what
    typed = type_check(project, ["pkg/good.py", "pkg/bad.py"])
    assert typed.result == "fail" and "1 error(s) in pkg/bad.py" in typed.what and typed.run.startswith("mypy 2.4.1")
    cov = coverage(project, ["pkg/good.py"], ["tests/test_good.py"], minimum=0.9)
    assert cov.result == "fail" and "75.0% of 4 lines" in cov.what and "1 passed" in cov.what  # unused() not run
    assert coverage(project, ["pkg/good.py"], ["tests/test_good.py"], minimum=0.7).result == "pass"


def test_a_missing_tool_is_an_open_item_not_a_crash(project: Path) -> None:
    item = lint(project, ["pkg/good.py"], tool=dataclasses.replace(RUFF, dist="ruff-not-installed"))
    assert item.result == "not installed" and "ruff is not installed" in item.what and not item.good


def test_cli_evidence_feeds_the_safety_case(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev"
    assert main(["safety", "evidence", "--root", str(project), "--paths", "pkg/good.py",
                 "--tests", "tests/test_good.py", "--out", str(out)]) == 0
    items = json.loads((out / "code_evidence.json").read_text())["evidence"]
    assert [i["result"] for i in items] == ["pass", "pass", "fail"]  # 75 % < 80 % coverage
    assert main(["safety", "report", "--structure-only", "--code-evidence", str(out / "code_evidence.json"),
                 "--out", str(tmp_path / "rep")]) == 0
    case = json.loads((tmp_path / "rep" / "safety_case.json").read_text())
    code = next(c for c in case["claims"] if c["id"] == "C-CODE")
    assert [e["result"] for e in code["evidence"]] == ["pass", "pass", "fail"] and not code["supported"]
    capsys.readouterr()
    assert main(["safety", "evidence", "--root", str(project), "--paths", "nope.py"]) == 2
    assert "no such path(s): nope.py" in capsys.readouterr().err
