"""``av safety trace``: the project's own trace passes; each kind of gap, planted in a small
project of its own, fails with a message that names it; the ``req`` marker reaches real JUnit XML."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from av.cli.main import main
from safety.asil import Asil, valid_decomposition
from safety.records import RECORDS_DIR, load_records
from safety.reqif import to_reqif
from safety.trace import MonitorDecl, build_trace
from safety.verification import read_junit, scan_tests
from safety_fixtures import ROOT, junit_for

def toml_value(v: object) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def rec(root: Path, kind: str, rid: str, **fields: object) -> None:
    path = root / kind / f"{rid}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"id": rid, "title": f"title of {rid}", "text": f"text of {rid}", **fields}
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in body.items()))


def mini_records(root: Path) -> Path:
    """HZ-1 (B) <- SG-1 (B) <- SR-1 (B); SR-2 (QM) stands alone."""
    rec(root, "hazards", "HZ-1", asil="B", situation="s", rationale="r")
    rec(root, "goals", "SG-1", asil="B", hazards=["HZ-1"], safe_state="stop", rationale="r")
    rec(root, "requirements", "SR-1", asil="B", parent="SG-1", rationale="r")
    rec(root, "requirements", "SR-2", asil="QM", hazards=["HZ-1"], rationale="r")
    return root


def write_tests(tests: Path, body: str) -> Path:
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "test_mini.py").write_text("import pytest\n\n" + body)
    return tests


BASE_TESTS = '''
@pytest.mark.req("SR-1")
def test_one():
    assert True


@pytest.mark.req("SR-2")
class TestTwo:
    def test_two(self):
        assert True
'''


def mini_trace(tmp_path: Path, tests_body: str = BASE_TESTS, outcome: dict[str, str] | None = None,
               monitors: tuple[MonitorDecl, ...] = ()):
    records = load_records(tmp_path / "records")
    tests = write_tests(tmp_path / "tests", tests_body)
    decls = scan_tests(tests)
    junit = read_junit(junit_for(decls, tmp_path / "junit.xml", outcome))
    return build_trace(records, scan_tests(tests), monitors, junit)


def gaps_of(trace, kind: str) -> list[str]:
    return [f"{g.subject}: {g.message}" for g in trace.gaps if g.kind == kind]


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    mini_records(tmp_path / "records")
    return tmp_path


# ------------------------------------------------------------------------------------ ASIL rules
@pytest.mark.req("SR-DIV-01")
def test_iso26262_decomposition_schemes() -> None:
    ok = {"D": ["C(D)+A(D)", "B(D)+B(D)", "D(D)+QM(D)", "A(D)+C(D)"], "C": ["B(C)+A(C)", "C(C)+QM(C)"],
          "B": ["A(B)+A(B)", "B(B)+QM(B)"], "A": ["A(A)+QM(A)"]}
    bad = {"D": ["C(D)+QM(D)", "B(D)+A(D)", "B+B", "B(C)+B(C)", "D(D)"], "C": ["A(C)+A(C)", "B(C)+QM(C)"],
           "B": ["A(B)+QM(B)"], "A": ["QM(A)+QM(A)"], "QM": ["QM+QM"]}
    for parent, pairs in ok.items():
        for pair in pairs:
            assert valid_decomposition(Asil.parse(parent), [Asil.parse(c) for c in pair.split("+")]) is None, pair
    for parent, pairs in bad.items():
        for pair in pairs:
            assert valid_decomposition(Asil.parse(parent), [Asil.parse(c) for c in pair.split("+")]), pair
    with pytest.raises(ValueError):
        Asil.parse("E")


# ------------------------------------------------------------------------------------ planted gaps
@pytest.mark.req("SR-DIV-01")
def test_mini_project_without_gaps_passes(mini: Path) -> None:
    trace = mini_trace(mini)
    assert trace.ok, trace.gaps
    assert {v.id: v.status for v in trace.verifications} == {
        "tests/test_mini.py::test_one": "passed", "tests/test_mini.py::TestTwo::test_two": "passed"}


def test_gap_requirement_without_verification(mini: Path) -> None:
    rec(mini / "records", "requirements", "SR-3", asil="B", parent="SG-1", rationale="r")
    trace = mini_trace(mini)
    assert gaps_of(trace, "unverified") == [f"SR-3: no test, monitor or metric verifies it ({mini}/records/requirements/SR-3.toml)"]


def test_gap_verification_pointing_at_no_requirement(mini: Path) -> None:
    body = BASE_TESTS + '\n\n@pytest.mark.req("SR-99")\ndef test_orphan():\n    assert True\n'
    trace = mini_trace(mini, body, monitors=(MonitorDecl("ghost", "m", ("SR-98",)),))
    assert gaps_of(trace, "dangling") == [
        "ghost: monitor verifies SR-98, which is not a requirement or safety goal",
        "tests/test_mini.py::test_orphan: test verifies SR-99, which is not a requirement or safety goal"]


def test_gap_failing_and_skipped_result(mini: Path) -> None:
    trace = mini_trace(mini, outcome={"tests/test_mini.py::test_one": "failure",
                                      "tests/test_mini.py::TestTwo::test_two": "skipped"})
    msgs = gaps_of(trace, "failing")
    assert len(msgs) == 2
    assert msgs[0].startswith("tests/test_mini.py::TestTwo::test_two: skipped in ") and "planted skipped" in msgs[0]
    assert msgs[1].startswith("tests/test_mini.py::test_one: failed in ") and "(verifies SR-1)" in msgs[1]


def test_gap_stale_result(mini: Path) -> None:
    records = load_records(mini / "records")
    tests = write_tests(mini / "tests", BASE_TESTS)
    junit = read_junit(junit_for(scan_tests(tests)[:1], mini / "junit.xml"))  # test_two never ran
    (tests / "test_mini.py").write_text((tests / "test_mini.py").read_text() + "\n# edited after the run\n")
    trace = build_trace(records, scan_tests(tests), (), junit)
    msgs = gaps_of(trace, "stale")
    assert len(msgs) == 2
    assert "has no result in" in msgs[0] and "run the tagged tests again" in msgs[0]
    assert msgs[1].startswith("tests/test_mini.py::test_one: its file changed since the run of 2026-12-03T12:00:00")


def test_gap_lower_asil_without_decomposition(mini: Path) -> None:
    rec(mini / "records", "requirements", "SR-1", asil="A", parent="SG-1", rationale="r")
    trace = mini_trace(mini)
    [msg] = gaps_of(trace, "asil")
    assert msg.startswith("SR-1: ASIL A is lower than its parent SG-1 (ASIL B) and names no decomposition")


def test_gap_invalid_decomposition_and_missing_dependent_failure_record(mini: Path) -> None:
    r = mini / "records"
    rec(r, "hazards", "HZ-1", asil="D", situation="s", rationale="r")
    rec(r, "goals", "SG-1", asil="D", hazards=["HZ-1"], safe_state="stop", rationale="r")
    rec(r, "requirements", "SR-1", asil="B(D)", parent="SG-1", decomposition="DEC-1", rationale="r")
    rec(r, "requirements", "SR-4", asil="A(D)", parent="SG-1", decomposition="DEC-1", rationale="r")
    rec(r, "decompositions", "DEC-1", parent="SG-1", children=["SR-1", "SR-4"])
    body = BASE_TESTS + '\n\n@pytest.mark.req("SR-4")\ndef test_four():\n    assert True\n'
    trace = mini_trace(mini, body)
    msgs = gaps_of(trace, "decomposition")
    assert len(msgs) == 2
    assert "invalid ASIL decomposition of SG-1 (ASIL D): B(D)+A(D) is not an ISO 26262-9 scheme for D" in msgs[0]
    assert "allowed: C(D)+A(D) | B(D)+B(D) | D(D)+QM(D)" in msgs[0]
    assert msgs[1] == ("DEC-1: decomposition of SG-1 without a dependent-failure record (names none); "
                       "the children's independence is not argued")
    # a valid scheme with its dependent-failure record passes
    rec(r, "requirements", "SR-4", asil="B(D)", parent="SG-1", decomposition="DEC-1", rationale="r")
    rec(r, "decompositions", "DEC-1", parent="SG-1", children=["SR-1", "SR-4"], dependent_failure="DFA-1")
    rec(r, "dependent_failures", "DFA-1", decomposition="DEC-1", monitors=["a", "b"], shared=["x"], measures=["y"])
    assert mini_trace(mini, body).ok


def test_gap_uncovered_hazard_and_unrefined_goal(mini: Path) -> None:
    rec(mini / "records", "hazards", "HZ-2", asil="A", situation="s", rationale="r")
    rec(mini / "records", "goals", "SG-2", asil="A", hazards=["HZ-1"], safe_state="stop", rationale="r")
    trace = mini_trace(mini)
    assert gaps_of(trace, "uncovered") == ["HZ-2: hazard addressed by no safety goal",
                                           "SG-2: safety goal without any requirement refining it"]


def test_bad_record_file_is_one_clear_line(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mini / "records" / "requirements" / "SR-2.toml").write_text('id = "SR-2"\ntitle = "t"\ntext = "x"\nasil = "E"\n')
    rc = main(["safety", "trace", "--records", str(mini / "records"), "--tests", str(write_tests(mini / "tests", BASE_TESTS)),
               "--structure-only", "--out", str(mini / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("av: error: ") and "SR-2.toml: key 'asil': not an ASIL: 'E'" in err
    assert main(["safety", "trace", "--records", str(mini / "records"), "--out", str(mini / "out")]) == 2
    assert "no test results: give --junit FILE" in capsys.readouterr().err


def test_cli_exits_1_on_gap_and_writes_outputs(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec(mini / "records", "requirements", "SR-3", asil="B", parent="SG-1", rationale="r")
    tests = write_tests(mini / "tests", BASE_TESTS)
    junit = junit_for(scan_tests(tests), mini / "junit.xml")
    rc = main(["safety", "trace", "--records", str(mini / "records"), "--tests", str(tests), "--junit", str(junit),
               "--out", str(mini / "out")])
    out, err = capsys.readouterr()
    assert rc == 1 and "gap: [unverified] SR-3: no test, monitor or metric verifies it" in out
    assert "av: trace failed: " in err  # (the project's monitors also dangle in this mini project)
    assert {p.name for p in (mini / "out").iterdir()} == {"trace.html", "trace.json", "requirements.reqif"}


# ------------------------------------------------------------------------------------ real pytest run
def test_req_marker_reaches_real_junit_xml(mini: Path) -> None:
    tests = write_tests(mini / "proj" / "tests", BASE_TESTS + '\n\n@pytest.mark.req("SR-1")\n'
                        '@pytest.mark.parametrize("x", [1, 2])\ndef test_param(x):\n    assert x == 1\n')
    (tests / "conftest.py").write_text("from safety.pytest_plugin import pytest_collection_modifyitems, pytest_configure\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    junit = mini / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "req", f"--junitxml={junit}",
                    "tests"], cwd=tests.parent, env=env, capture_output=True, check=False)
    run = read_junit(junit)
    assert set(run.results) == {"tests/test_mini.py::test_one", "tests/test_mini.py::TestTwo::test_two",
                                "tests/test_mini.py::test_param"}
    assert run.results["tests/test_mini.py::TestTwo::test_two"].requirements == ("SR-2",)
    assert run.results["tests/test_mini.py::test_param"].outcome == "failed"  # one parametrisation fails
    trace = build_trace(load_records(mini / "records"), scan_tests(tests), (), run)
    assert gaps_of(trace, "failing")[0].startswith("tests/test_mini.py::test_param: failed")
    assert len(trace.gaps) == 1


# ------------------------------------------------------------------------------------ the project itself
@pytest.mark.req("SR-DIV-01")
def test_project_trace_passes(tmp_path: Path) -> None:
    from av.cli.safety import build_project_trace

    structure = build_project_trace(None, str(ROOT / "tests"), None, None)
    assert structure.ok, "\n".join(map(str, structure.gaps))
    junit = junit_for(scan_tests(ROOT / "tests"), tmp_path / "junit.xml")
    trace = build_project_trace(None, str(ROOT / "tests"), junit, None)
    assert trace.ok, "\n".join(map(str, trace.gaps))
    monitors = {v.id for v in trace.verifications if v.kind == "monitor"}
    assert monitors == {"rss", "ttc", "drivable_area", "lane_keeping", "kinematics", "steering", "plan_sanity", "deadline"}
    assert all(trace.forward[q.id] for q in trace.records.requirements)


def test_reqif_export_structure() -> None:
    from av.cli.safety import build_project_trace

    trace = build_project_trace(None, str(ROOT / "tests"), None, None)
    root = ET.fromstring(to_reqif(trace))
    ns = {"r": "http://www.omg.org/spec/ReqIF/20110401/reqif.xsd"}
    r = trace.records
    objects = root.findall(".//r:SPEC-OBJECTS/r:SPEC-OBJECT", ns)
    assert len(objects) == len(r.hazards) + len(r.goals) + len(r.requirements)
    assert {o.get("LONG-NAME") for o in objects} >= {"SG-01", "SR-COL-01", "HZ-01"}
    refines = [x for x in root.findall(".//r:SPEC-RELATION", ns)]
    assert len(refines) >= len(r.requirements) - 2  # every requirement but the stand-alone QM ones refines one
    ids = {e.get("IDENTIFIER") for e in root.iter() if e.get("IDENTIFIER")}
    refs = {e.text for e in root.iter() if e.tag.endswith("-REF")}
    assert refs <= ids  # every reference resolves
    assert load_records(RECORDS_DIR).by_id.keys() >= {"DEC-01", "DFA-01"}


def test_project_records_copy_loads(tmp_path: Path) -> None:
    shutil.copytree(RECORDS_DIR, tmp_path / "r")
    assert len(load_records(tmp_path / "r").requirements) == len(load_records().requirements)


def test_metric_thresholds_against_an_eval_summary(mini: Path) -> None:
    rec(mini / "records", "metrics", "MT-1", metric="no_collision", op=">=", threshold=0.95, planner="student",
        verifies=["SR-2"])
    records = load_records(mini / "records")
    tests = write_tests(mini / "tests", BASE_TESTS)
    junit = read_junit(junit_for(scan_tests(tests), mini / "junit.xml"))

    def status(rows: list[dict]) -> tuple[str, list[str]]:
        trace = build_trace(records, scan_tests(tests), (), junit, {"rows": rows}, "run/summary.json", "2026-12-03")
        [v] = [v for v in trace.verifications if v.kind == "metric"]
        return v.status, gaps_of(trace, "failing")

    assert status([{"planner": "student", "agents": "log", "no_collision": 0.97},
                   {"planner": "student", "agents": "idm", "no_collision": 0.96}]) == ("met", [])
    st, gaps = status([{"planner": "student", "agents": "log", "no_collision": 0.97},
                       {"planner": "student", "agents": "idm", "no_collision": 0.90}])
    assert st == "not met" and gaps == ["MT-1: no_collision = 0.9 (worst agent mode), required >= 0.95 for planner "
                                        "student in run/summary.json"]
    st, gaps = status([{"planner": "idm", "agents": "log", "no_collision": 1.0}])
    assert st == "not met" and gaps == ["MT-1: no no_collision for planner student in run/summary.json"]
    trace = build_trace(records, scan_tests(tests), (), junit)  # no eval run: a warning, not a gap
    assert trace.ok and any("not evaluated" in w for w in trace.warnings)
