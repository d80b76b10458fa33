"""Code evidence for the safety case: lint, type check and test coverage of the safety-relevant code.

Each tool is RUN on :data:`SAFETY_CODE` (the runtime monitors, the vehicle runtime and the
closed-loop evaluator) and its outcome becomes one :class:`safety.case.Evidence` item: what was
checked with the figures, the run (tool, version and command), the date (UTC) and the result
(``pass``, ``fail``, or ``not installed`` where the tool is missing: the item says so and the
claim stays open; nothing crashes).

* lint: ``ruff check`` with :data:`RUFF_RULES` (syntax and pyflakes errors, bugbear); pass when
  there is no finding;
* type check: ``mypy`` on the same files (imports followed silently: only these files' errors
  count); pass when there is no error;
* coverage: ``pytest --cov`` of those modules over :data:`COVERAGE_TESTS`; pass when the line
  coverage is at least :data:`COVERAGE_MIN`.

The tools are pinned in the ``evidence`` extra of ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from safety.case import Evidence

SAFETY_CODE = ("safety/monitors", "av/runtime.py", "closedloop/evaluator")
COVERAGE_TESTS = ("tests/test_safety_monitors.py", "tests/test_runtime.py", "tests/test_metrics_nuplan.py",
                  "tests/test_metrics_navsim.py", "tests/test_metrics_comfort.py")
RUFF_RULES = "E4,E7,E9,F,B"
COVERAGE_MIN = 0.8


@dataclass(frozen=True)
class Tool:
    """A checker: its ``name`` and the ``dist`` (installed distribution) that provides it."""

    name: str
    dist: str


RUFF, MYPY, COVERAGE = Tool("ruff", "ruff"), Tool("mypy", "mypy"), Tool("pytest-cov", "pytest-cov")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _module(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _run(cmd: list[str], root: Path, **env_extra: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, **env_extra, "PYTHONPATH": path}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)


def _missing(tool: Tool, what: str) -> Evidence:
    return Evidence(f"{what}: {tool.name} is not installed (pip install -e \".[evidence]\")", tool.name, _now(),
                    "not installed")


def lint(root: Path, paths: Sequence[str] = SAFETY_CODE, tool: Tool = RUFF) -> Evidence:
    """``ruff check`` of ``paths`` (relative to ``root``) with :data:`RUFF_RULES`."""
    what = f"lint of {', '.join(paths)}"
    version = _version(tool.dist)
    if version is None:
        return _missing(tool, what)
    cmd = [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select", RUFF_RULES,
           "--output-format", "json", *paths]
    p = _run(cmd, root)
    try:
        findings = json.loads(p.stdout or "[]")
    except json.JSONDecodeError:
        return Evidence(f"{what}: ruff failed ({(p.stderr or p.stdout).strip()[:200]})", f"ruff {version}", _now(),
                        "fail")
    codes = sorted({f["code"] for f in findings if f.get("code")})
    detail = f"{len(findings)} finding(s)" + (f" ({', '.join(codes)})" if codes else "")
    return Evidence(f"{what}: {detail}", f"ruff {version} check --select {RUFF_RULES}", _now(),
                    "pass" if not findings and p.returncode == 0 else "fail")


def type_check(root: Path, paths: Sequence[str] = SAFETY_CODE, tool: Tool = MYPY) -> Evidence:
    """``mypy`` of ``paths`` (imports followed silently; the cache outside the tree)."""
    what = f"type check of {', '.join(paths)}"
    version = _version(tool.dist)
    if version is None:
        return _missing(tool, what)
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent",
               "--cache-dir", cache, "--no-error-summary", *paths]
        p = _run(cmd, root)
    errors = [line for line in p.stdout.splitlines() if ": error:" in line]
    if p.returncode not in (0, 1) or (p.returncode == 1 and not errors):
        return Evidence(f"{what}: mypy failed ({(p.stderr or p.stdout).strip()[:200]})", f"mypy {version}", _now(),
                        "fail")
    files = sorted({e.split(":", 1)[0] for e in errors})
    detail = f"{len(errors)} error(s)" + (f" in {', '.join(files)}" if files else "")
    return Evidence(f"{what}: {detail}", f"mypy {version} --follow-imports=silent", _now(),
                    "pass" if not errors else "fail")


def coverage(root: Path, paths: Sequence[str] = SAFETY_CODE, tests: Sequence[str] = COVERAGE_TESTS,
             minimum: float = COVERAGE_MIN, tool: Tool = COVERAGE) -> Evidence:
    """Line coverage of ``paths`` by running ``tests`` under ``pytest --cov``."""
    what = f"test coverage of {', '.join(paths)} by {len(tests)} test file(s)"
    version = _version(tool.dist)
    if version is None:
        return _missing(tool, what)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "coverage.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(f"--cov={_module(p)}" for p in paths),
               f"--cov-report=json:{report}", *tests]
        p = _run(cmd, root, COVERAGE_FILE=str(Path(tmp) / ".coverage"))
        if not report.is_file():
            return Evidence(f"{what}: no coverage report (pytest exit {p.returncode}: "
                            f"{(p.stdout or p.stderr).strip().splitlines()[-1:] or ''})", f"pytest-cov {version}",
                            _now(), "fail")
        totals = json.loads(report.read_text())["totals"]
    rate = totals["covered_lines"] / max(totals["num_statements"], 1)
    tests_ok = p.returncode == 0
    summary = re.findall(r"\d+ (?:passed|failed|skipped|error)", p.stdout)
    detail = (f"{rate:.1%} of {totals['num_statements']} lines (minimum {minimum:.0%}); tests: "
              f"{', '.join(summary) or 'none ran'}")
    return Evidence(f"{what}: {detail}", f"pytest-cov {version} (coverage {_version('coverage')})", _now(),
                    "pass" if rate >= minimum and tests_ok else "fail")


def code_evidence(root: Path, paths: Sequence[str] = SAFETY_CODE, tests: Sequence[str] = COVERAGE_TESTS
                  ) -> list[Evidence]:
    """Lint, type check and coverage of ``paths`` under ``root``, each as one evidence item."""
    return [lint(root, paths), type_check(root, paths), coverage(root, paths, tests)]
