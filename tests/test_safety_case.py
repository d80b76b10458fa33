"""The safety case: claims are supported exactly when their evidence (with run, date, result) is
good, and ``av safety report`` writes it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from av.cli.main import main
from av.cli.safety import build_project_trace, project_diversity
from safety.case import build_case, case_html
from safety.verification import scan_tests
from safety_fixtures import ROOT, junit_for

NOW = datetime(2026, 12, 3, 13, 0, tzinfo=timezone.utc)


def claims(c):
    yield c
    for k in c.claims:
        yield from claims(k)


@pytest.mark.req("SR-DIV-01")
def test_case_supported_by_passing_evidence_and_open_on_a_failure(tmp_path: Path) -> None:
    decls = scan_tests(ROOT / "tests")
    static, problems = project_diversity(None)
    good = build_case(build_project_trace(None, None, junit_for(decls, tmp_path / "ok.xml"), None), static, problems,
                      now=NOW)
    status = {c.id: c.supported for c in good.claims}
    assert status == {"SG-01": True, "SG-02": True, "SG-03": True, "SG-04": True, "C-DIV": True, "C-TRACE": True,
                      "C-CODE": False, "C-NOMINAL": False}  # code checks and metric thresholds not run
    rss = next(c for c in claims(good) if c.id == "SR-COL-01")
    assert {e.run for e in rss.evidence} >= {str(tmp_path / "ok.xml"), "monitor registry (safety.monitors)"}
    assert all(e.date for e in rss.evidence) and all(e.result in ("passed", "active") for e in rss.evidence)

    failing = next(d.nodeid for d in decls if "SR-DA-02" in d.requirements)
    bad = build_case(build_project_trace(None, None, junit_for(decls, tmp_path / "bad.xml", {failing: "failure"}), None),
                     static, problems, now=NOW)
    status = {c.id: c.supported for c in bad.claims}
    assert not status["SG-02"] and not status["C-TRACE"] and status["SG-01"]
    html = case_html(bad)
    assert "SR-DA-02" in html and "failed" in html and "2026-12-03T12:00:00+00:00" in html


def test_cli_report_writes_the_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["safety", "report", "--structure-only", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "C-0: OPEN" in out and "C-DIV: supported" in out
    case = json.loads((tmp_path / "safety_case.json").read_text())
    assert case["id"] == "C-0" and [c["id"] for c in case["claims"]][:4] == ["SG-01", "SG-02", "SG-03", "SG-04"]
    assert (tmp_path / "safety_case.html").read_text().count("Argument:") > 10
