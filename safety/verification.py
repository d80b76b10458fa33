"""Verifications that are tests: which tests declare which requirements, and what their latest
run (a JUnit XML file) says about them.

A test declares what it verifies with the ``req`` marker::

    @pytest.mark.req("SR-COL-01", "SR-COL-02")
    def test_rss_same_direction(): ...

(also on a class, or module-wide with ``pytestmark = pytest.mark.req(...)``).
:func:`scan_tests` finds the declarations statically (parsing the test files, no import), so the
trace knows every declared test even when it was not run. :mod:`safety.pytest_plugin` copies the
marker into the JUnit XML as ``<property name="req" ...>`` together with the test's node id and a
digest of its file; :func:`read_junit` reads them back, so a result whose file changed since the
run is recognised as stale.
"""

from __future__ import annotations

import ast
import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from av.errors import AvError

PROP_REQ = "req"
PROP_NODE = "req_nodeid"
PROP_DIGEST = "req_source"


def file_digest(path: Path) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class TestDecl:
    """A test function that declares ``requirements``; ``nodeid`` as pytest writes it
    (``tests/test_x.py::Class::test_y``, without parameters), ``digest`` of its file now."""

    __test__ = False  # not a pytest test class

    nodeid: str
    requirements: tuple[str, ...]
    digest: str


def _req_ids(node: ast.expr) -> list[str] | None:
    """Requirement IDs of a ``pytest.mark.req("A", "B")`` expression (``None`` if it is not one)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "req"):
        return None
    base = node.func.value
    if not (isinstance(base, ast.Attribute) and base.attr == "mark") and not (
        isinstance(base, ast.Name) and base.id == "mark"
    ):
        return None
    return [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


def _marks(decorators: list[ast.expr]) -> list[str]:
    out: list[str] = []
    for d in decorators:
        out += _req_ids(d) or []
    return out


def _module_marks(tree: ast.Module) -> list[str]:
    out: list[str] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets):
            values = stmt.value.elts if isinstance(stmt.value, (ast.List, ast.Tuple)) else [stmt.value]
            for v in values:
                out += _req_ids(v) or []
    return out


def scan_file(path: Path, root: Path) -> list[TestDecl]:
    """The ``req``-marked tests of one test file (node ids relative to ``root``)."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as e:
        raise AvError(f"{path}: cannot parse ({e.msg}, line {e.lineno})") from None
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    digest = file_digest(path)
    module = _module_marks(tree)
    out = []

    def visit(body: list[ast.stmt], prefix: str, inherited: list[str]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                visit(node.body, f"{prefix}{node.name}::", inherited + _marks(node.decorator_list))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                ids = inherited + _marks(node.decorator_list)
                if ids:
                    out.append(TestDecl(f"{rel}::{prefix}{node.name}", tuple(dict.fromkeys(ids)), digest))

    visit(tree.body, "", module)
    return out


def scan_tests(tests_dir: Path, root: Path | None = None) -> list[TestDecl]:
    """Every ``req``-marked test in ``tests_dir/**/test_*.py`` (node ids relative to ``root``,
    default the parent of ``tests_dir``, i.e. the project root where pytest runs)."""
    tests_dir = Path(tests_dir)
    if not tests_dir.is_dir():
        raise AvError(f"{tests_dir}: no such tests directory")
    root = tests_dir.parent if root is None else Path(root)
    out: list[TestDecl] = []
    for path in sorted(tests_dir.rglob("test_*.py")):
        out += scan_file(path, root)
    return out


@dataclass(frozen=True)
class TestResult:
    """The outcome of one test (all its parametrisations) in a JUnit file.

    ``outcome``: ``passed``, ``failed`` (a failure or an error in any parametrisation) or
    ``skipped`` (all skipped); ``message`` the first failure/skip message; ``digest`` of the
    test's file when it ran; ``timestamp`` of the run (ISO 8601, as pytest writes it).
    """

    __test__ = False  # not a pytest test class

    nodeid: str
    requirements: tuple[str, ...]
    outcome: str
    message: str
    digest: str
    timestamp: str


@dataclass(frozen=True)
class JUnitRun:
    """The ``req``-carrying results of one JUnit file, by node id (parameters stripped)."""

    path: str
    timestamp: str
    results: dict[str, TestResult]


def read_junit(path: Path) -> JUnitRun:
    """Read the ``req`` properties and outcomes of a pytest JUnit XML file."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except OSError as e:
        raise AvError(f"{path}: cannot read JUnit results ({e.strerror or e})") from None
    except ET.ParseError as e:
        raise AvError(f"{path}: not valid JUnit XML ({e})") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuite", "testsuites"):
        raise AvError(f"{path}: not JUnit XML (root element <{root.tag}>)")
    stamp = next((s.get("timestamp", "") for s in suites if s.get("timestamp")), "")
    merged: dict[str, dict] = {}
    for suite in suites:
        for case in suite.iter("testcase"):
            props = [(p.get("name"), p.get("value", "")) for p in case.iter("property")]
            node = next((v for k, v in props if k == PROP_NODE), None)
            if node is None:
                continue
            node = node.split("[", 1)[0]
            reqs = [v for k, v in props if k == PROP_REQ]
            digest = next((v for k, v in props if k == PROP_DIGEST), "")
            bad = case.find("failure")
            bad = bad if bad is not None else case.find("error")
            skip = case.find("skipped")
            outcome = "failed" if bad is not None else "skipped" if skip is not None else "passed"
            message = (bad if bad is not None else skip).get("message", "") if outcome != "passed" else ""
            r = merged.setdefault(node, {"reqs": [], "outcomes": [], "message": "", "digest": digest})
            r["reqs"] += [q for q in reqs if q not in r["reqs"]]
            r["outcomes"].append(outcome)
            r["message"] = r["message"] or message
    results = {}
    for node, r in merged.items():
        oc = r["outcomes"]
        outcome = "failed" if "failed" in oc else "passed" if "passed" in oc else "skipped"
        results[node] = TestResult(node, tuple(r["reqs"]), outcome, r["message"].splitlines()[0] if r["message"] else "",
                                   r["digest"], stamp)
    return JUnitRun(str(path), stamp, results)
