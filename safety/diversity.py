"""Monitor diversity: static overlap, hazard coverage, and co-failure statistics.

Static (:func:`static_analysis`): for every pair of monitors that cover a common hazard (through
the hazards of the requirements they declare), the inputs they both read, whether they share a
method family, and the code they share, computed from the modules each monitor's module imports
(followed transitively inside the project's packages; third-party roots such as ``torch`` count
as one item; the standard library is left out). Every shared item becomes a dependent-failure
entry. Coverage: every hazard needs two monitors that differ in inputs *and* method.

Empirical (:func:`pair_statistics`): from a catch matrix (hazardous events x monitors, True where
the monitor vetoed the event), per pair the joint-miss rate with a one-sided 95 % upper bound
(3/N, the rule of three, when no joint miss is seen; Clopper-Pearson otherwise), Yule's Q of the
two miss indicators and the lift P(both miss) / (P(A miss) P(B miss)); per fault type with
:func:`statistics_by_fault`. The closed-loop fault injection that fills the matrix is wired by the
caller (``closedloop``'s driver records the vetoes).
"""

from __future__ import annotations

import ast
import importlib.util
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Any, Iterable, Sequence

import numpy as np

from safety.records import Records
from safety.trace import hazards_of

PROJECT_PACKAGES = ("av", "scenarios", "distill", "closedloop", "safety")


@lru_cache(maxsize=None)
def _imports_of(module: str) -> tuple[str, ...]:
    """Modules imported by ``module``'s source (absolute names; relative imports resolved)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return ()
    tree = ast.parse(open(spec.origin).read())
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.append(base)
            # "from pkg import sub" may import a submodule
            out += [f"{base}.{a.name}" for a in node.names if importlib.util.find_spec(f"{base}.{a.name}")
                    is not None] if base.split(".")[0] in PROJECT_PACKAGES and _is_package(base) else []
    return tuple(dict.fromkeys(out))


def _is_package(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.submodule_search_locations is not None


def code_items(module: str) -> frozenset[str]:
    """The code a module depends on: project modules reached by its imports (transitively, the
    module itself excluded) and the top-level names of third-party packages (``torch``)."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        for imp in _imports_of(m):
            root = imp.split(".")[0]
            if root in PROJECT_PACKAGES:
                if imp not in seen and importlib.util.find_spec(imp) is not None:
                    seen.add(imp)
                    todo.append(imp)
            elif root and root not in sys.stdlib_module_names and root != "__future__":
                third.add(root)
    seen.discard(module)
    return frozenset(seen | third)


@dataclass(frozen=True)
class Profile:
    """What the diversity analysis knows of a monitor."""

    name: str
    module: str
    inputs: frozenset[str]
    method: str
    requirements: tuple[str, ...]
    hazards: frozenset[str]
    code: frozenset[str]


def profiles(monitors: Iterable[Any], records: Records) -> list[Profile]:
    """Profiles of monitors (objects with ``name``, ``inputs``, ``method``, ``requirements``)."""
    out = []
    for m in monitors:
        module = type(m).__module__
        hazards = frozenset(h for r in m.requirements for h in hazards_of(records, r))
        out.append(Profile(m.name, module, frozenset(m.inputs), m.method, tuple(m.requirements), hazards,
                           code_items(module)))
    return out


@dataclass(frozen=True)
class PairOverlap:
    """Overlap of two monitors covering the common ``hazards``."""

    a: str
    b: str
    hazards: tuple[str, ...]
    shared_inputs: tuple[str, ...]
    same_method: bool
    shared_code: tuple[str, ...]
    input_jaccard: float
    code_jaccard: float

    @property
    def diverse(self) -> bool:
        """Inputs differ (neither set equals the other) and the method families differ."""
        return not self.same_method and self.input_jaccard < 1.0


@dataclass(frozen=True)
class DependentFailure:
    """One shared item of a monitor pair: ``kind`` ``input``, ``method`` or ``code``."""

    a: str
    b: str
    hazards: tuple[str, ...]
    kind: str
    item: str


@dataclass(frozen=True)
class StaticDiversity:
    """Pairs, dependent-failure entries and per-hazard coverage (``covered`` hazard -> the
    diverse pair found, or ``None``)."""

    profiles: tuple[Profile, ...]
    pairs: tuple[PairOverlap, ...]
    entries: tuple[DependentFailure, ...]
    coverage: dict[str, tuple[str, str] | None]
    monitors_per_hazard: dict[str, tuple[str, ...]]

    @property
    def uncovered(self) -> list[str]:
        return [h for h, pair in self.coverage.items() if pair is None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitors": [{"name": p.name, "module": p.module, "inputs": sorted(p.inputs), "method": p.method,
                          "requirements": list(p.requirements), "hazards": sorted(p.hazards), "code": sorted(p.code)}
                         for p in self.profiles],
            "pairs": [{**p.__dict__, "diverse": p.diverse} for p in self.pairs],
            "dependent_failures": [e.__dict__ for e in self.entries],
            "coverage": {h: {"monitors": list(self.monitors_per_hazard[h]), "diverse_pair": list(pair) if pair else None}
                         for h, pair in self.coverage.items()},
            "uncovered": self.uncovered,
        }


def shared_inputs(a: frozenset[str], b: frozenset[str]) -> tuple[str, ...]:
    """Inputs both read: equal names, or one a part of the other (``trajectory`` contains
    ``trajectory.xy``; the more specific name is kept)."""
    out = set(a & b)
    for x in a:
        for y in b:
            if y.startswith(x + "."):
                out.add(y)
            elif x.startswith(y + "."):
                out.add(x)
    return tuple(sorted(out))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def static_analysis(profs: Sequence[Profile], hazards: Iterable[str]) -> StaticDiversity:
    """Pairwise overlap of the monitors sharing a hazard, and coverage of ``hazards``."""
    pairs, entries = [], []
    for p, q in combinations(profs, 2):
        common = tuple(sorted(p.hazards & q.hazards))
        if not common:
            continue
        pair = PairOverlap(p.name, q.name, common, shared_inputs(p.inputs, q.inputs), p.method == q.method,
                           tuple(sorted(p.code & q.code)), _jaccard(p.inputs, q.inputs), _jaccard(p.code, q.code))
        pairs.append(pair)
        entries += [DependentFailure(p.name, q.name, common, "input", i) for i in pair.shared_inputs]
        if pair.same_method:
            entries.append(DependentFailure(p.name, q.name, common, "method", p.method))
        entries += [DependentFailure(p.name, q.name, common, "code", c) for c in pair.shared_code]
    coverage: dict[str, tuple[str, str] | None] = {}
    per: dict[str, tuple[str, ...]] = {}
    for h in hazards:
        per[h] = tuple(p.name for p in profs if h in p.hazards)
        good = [(x.a, x.b) for x in pairs if h in x.hazards and x.diverse]
        coverage[h] = good[0] if good else None
    return StaticDiversity(tuple(profs), tuple(pairs), tuple(entries), coverage, per)


def check_dependent_failure_records(records: Records, static: StaticDiversity) -> list[str]:
    """Problems of the dependent-failure records against the static analysis: each names two
    registered monitors that cover the hazards of its decomposition with a diverse pair."""
    names = {p.name for p in static.profiles}
    problems = []
    for f in records.dependent_failures:
        unknown = [m for m in f.monitors if m not in names]
        if unknown:
            problems.append(f"{f.id}: names monitor(s) {', '.join(unknown)} that are not registered")
            continue
        dec = records.by_id.get(f.decomposition)
        hazards = set(hazards_of(records, dec.parent)) if dec is not None else set()
        pair = next((x for x in static.pairs if {x.a, x.b} == set(f.monitors)), None)
        if pair is None or not hazards <= set(pair.hazards):
            problems.append(f"{f.id}: monitors {', '.join(f.monitors)} do not both cover {', '.join(sorted(hazards))}")
        elif not pair.diverse:
            problems.append(f"{f.id}: monitors {', '.join(f.monitors)} are not diverse (same inputs or method)")
    return problems


# ----------------------------------------------------------------------------- empirical statistics
def joint_miss_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a rate with ``k`` events in ``n`` trials: ``3 / n``
    (rule of three, 95 %) when ``k == 0``, Clopper-Pearson otherwise; NaN for ``n == 0``."""
    if n == 0:
        return math.nan
    if k == 0:
        bound = 3.0 / n if confidence == 0.95 else -math.log(1 - confidence) / n
        return min(1.0, bound)
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


def yules_q(both: int, a_only: int, b_only: int, neither: int) -> float:
    """Yule's Q = (ad - bc) / (ad + bc) of a 2x2 table (a = both miss, d = neither); NaN if 0/0."""
    ad, bc = both * neither, a_only * b_only
    return (ad - bc) / (ad + bc) if ad + bc else math.nan


def lift(both: int, miss_a: int, miss_b: int, n: int) -> float:
    """P(both miss) / (P(A miss) P(B miss)); NaN where a monitor never misses."""
    if n == 0 or miss_a == 0 or miss_b == 0:
        return math.nan
    return (both / n) / ((miss_a / n) * (miss_b / n))


def pair_statistics(caught: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Statistics of a catch matrix ``caught`` bool ``[E, M]`` (events x monitors ``names``).

    Returns ``events``, per-monitor ``catch_rate``, ``any_catch_rate`` (caught by at least one)
    and ``pairs``: for each pair ``joint_miss`` count, ``joint_miss_rate``, ``joint_miss_upper95``,
    ``yules_q`` and ``lift``.
    """
    caught = np.asarray(caught, dtype=bool)
    if caught.ndim != 2 or caught.shape[1] != len(names):
        raise ValueError(f"catch matrix of shape {caught.shape} does not match {len(names)} monitors")
    n = caught.shape[0]
    miss = ~caught
    out: dict[str, Any] = {
        "events": n,
        "catch_rate": {m: (float(caught[:, i].mean()) if n else math.nan) for i, m in enumerate(names)},
        "any_catch_rate": float(caught.any(1).mean()) if n else math.nan,
        "pairs": [],
    }
    for i, j in combinations(range(len(names)), 2):
        both = int((miss[:, i] & miss[:, j]).sum())
        ma, mb = int(miss[:, i].sum()), int(miss[:, j].sum())
        out["pairs"].append({
            "a": names[i], "b": names[j], "joint_miss": both,
            "joint_miss_rate": both / n if n else math.nan,
            "joint_miss_upper95": joint_miss_upper(both, n),
            "yules_q": yules_q(both, ma - both, mb - both, n - ma - mb + both),
            "lift": lift(both, ma, mb, n),
        })
    return out


def statistics_by_fault(caught: np.ndarray, faults: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`pair_statistics` per fault type (``faults``: one label per event) and ``"all"``."""
    caught = np.asarray(caught, dtype=bool)
    labels = np.asarray(faults)
    if labels.shape != (caught.shape[0],):
        raise ValueError(f"{labels.shape[0] if labels.ndim else 0} fault labels for {caught.shape[0]} events")
    out = {"all": pair_statistics(caught, names)}
    for f in sorted(set(labels.tolist())):
        out[f] = pair_statistics(caught[labels == f], names)
    return out
