"""Safety records kept as text in the repository: hazards, safety goals, requirements, ASIL
decompositions, dependent-failure analyses and closed-loop metric thresholds.

One TOML file per record (``safety/requirements/<kind>/<ID>.toml``; the file name is the ID), so a
change to one requirement is a one-file diff. Every record has ``id``, ``title`` and ``text``;
the other keys per kind are listed on each dataclass. :func:`load_records` reads a directory
tree, checks every file's keys and types, and raises :class:`~av.errors.AvError` naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from av.errors import AvError
from safety.asil import Asil

RECORDS_DIR = Path(__file__).resolve().parent / "requirements"


@dataclass(frozen=True)
class Hazard:
    """A hazardous event (HARA): ``asil`` from severity/exposure/controllability, ``situation``."""

    id: str
    title: str
    text: str
    asil: Asil
    situation: str
    rationale: str
    path: str


@dataclass(frozen=True)
class Goal:
    """A safety goal: the top-level requirement against ``hazards``, with its ``safe_state``."""

    id: str
    title: str
    text: str
    asil: Asil
    hazards: tuple[str, ...]
    safe_state: str
    rationale: str
    path: str


@dataclass(frozen=True)
class Requirement:
    """A safety (or QM) requirement. ``parent``: a goal or requirement ID (``None`` only for a
    QM requirement that refines no goal); ``decomposition``: the decomposition it came from."""

    id: str
    title: str
    text: str
    asil: Asil
    parent: str | None
    hazards: tuple[str, ...]
    rationale: str
    decomposition: str | None
    path: str


@dataclass(frozen=True)
class Decomposition:
    """An ASIL decomposition of ``parent`` into two redundant ``children``, justified by the
    dependent-failure analysis ``dependent_failure``."""

    id: str
    title: str
    text: str
    parent: str
    children: tuple[str, ...]
    dependent_failure: str | None
    path: str


@dataclass(frozen=True)
class DependentFailure:
    """A dependent-failure analysis (ISO 26262-9 clause 7) of a ``decomposition``: the monitors
    realising its children, what they share and the measures against common causes."""

    id: str
    title: str
    text: str
    decomposition: str
    monitors: tuple[str, ...]
    shared: tuple[str, ...]
    measures: tuple[str, ...]
    path: str


@dataclass(frozen=True)
class MetricThreshold:
    """A closed-loop metric threshold that verifies ``verifies``: the mean of summary column
    ``metric`` over an evaluation run, for ``planner``, compared with ``op`` (">=" or "<=")."""

    id: str
    title: str
    text: str
    metric: str
    op: str
    threshold: float
    planner: str
    verifies: tuple[str, ...]
    path: str


KINDS: dict[str, type] = {
    "hazards": Hazard,
    "goals": Goal,
    "requirements": Requirement,
    "decompositions": Decomposition,
    "dependent_failures": DependentFailure,
    "metrics": MetricThreshold,
}

Record = Hazard | Goal | Requirement | Decomposition | DependentFailure | MetricThreshold


@dataclass(frozen=True)
class Records:
    """Every record of a tree, by kind; ``by_id`` maps each ID to its record."""

    hazards: tuple[Hazard, ...] = ()
    goals: tuple[Goal, ...] = ()
    requirements: tuple[Requirement, ...] = ()
    decompositions: tuple[Decomposition, ...] = ()
    dependent_failures: tuple[DependentFailure, ...] = ()
    metrics: tuple[MetricThreshold, ...] = ()
    by_id: dict[str, Any] = field(default_factory=dict)

    @property
    def traceable(self) -> dict[str, Goal | Requirement]:
        """Goals and requirements by ID: what verifications may point at."""
        return {r.id: r for r in (*self.goals, *self.requirements)}


# Keys of each kind: name -> (type, required). Tuples are TOML arrays of strings.
_SCHEMA: dict[str, dict[str, tuple[type, bool]]] = {
    "hazards": {"asil": (Asil, True), "situation": (str, True), "rationale": (str, True)},
    "goals": {"asil": (Asil, True), "hazards": (tuple, True), "safe_state": (str, True), "rationale": (str, True)},
    "requirements": {"asil": (Asil, True), "parent": (str, False), "hazards": (tuple, False),
                     "rationale": (str, True), "decomposition": (str, False)},
    "decompositions": {"parent": (str, True), "children": (tuple, True), "dependent_failure": (str, False)},
    "dependent_failures": {"decomposition": (str, True), "monitors": (tuple, True), "shared": (tuple, True),
                           "measures": (tuple, True)},
    "metrics": {"metric": (str, True), "op": (str, True), "threshold": (float, True), "planner": (str, True),
                "verifies": (tuple, True)},
}


def _convert(path: Path, key: str, value: Any, kind: type) -> Any:
    where = f"{path}: key {key!r}"
    if kind is Asil:
        try:
            return Asil.parse(value)
        except ValueError as e:
            raise AvError(f"{where}: {e}") from None
    if kind is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AvError(f"{where}: expected an array of strings")
        return tuple(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AvError(f"{where}: expected a number")
        return float(value)
    if not isinstance(value, str):
        raise AvError(f"{where}: expected a string")
    return value


def read_record(path: Path, kind: str) -> Record:
    """One record of ``kind`` (a key of :data:`KINDS`) from its TOML file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise AvError(f"{path}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise AvError(f"{path}: not valid TOML ({e})") from None
    schema = {"id": (str, True), "title": (str, True), "text": (str, True), **_SCHEMA[kind]}
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise AvError(f"{path}: unknown key(s) {', '.join(unknown)} for a {kind[:-1]} record "
                      f"(allowed: {', '.join(schema)})")
    values: dict[str, Any] = {}
    for key, (typ, required) in schema.items():
        if key not in data:
            if required:
                raise AvError(f"{path}: missing key {key!r}")
            values[key] = () if typ is tuple else None
            continue
        values[key] = _convert(path, key, data[key], typ)
    if values["id"] != path.stem:
        raise AvError(f"{path}: id {values['id']!r} differs from the file name {path.stem!r}")
    if kind == "metrics" and values["op"] not in (">=", "<="):
        raise AvError(f"{path}: key 'op' must be '>=' or '<=', got {values['op']!r}")
    return KINDS[kind](**values, path=str(path))


def load_records(root: Path = RECORDS_DIR) -> Records:
    """Every record under ``root`` (``root/<kind>/*.toml``); IDs must be unique across kinds."""
    root = Path(root)
    if not root.is_dir():
        raise AvError(f"{root}: no such records directory")
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in KINDS)
    if extra:
        raise AvError(f"{root}: unknown record folder(s) {', '.join(extra)} (allowed: {', '.join(KINDS)})")
    groups: dict[str, list[Any]] = {k: [] for k in KINDS}
    by_id: dict[str, Any] = {}
    for kind in KINDS:
        for path in sorted((root / kind).glob("*.toml")):
            rec = read_record(path, kind)
            if rec.id in by_id:
                raise AvError(f"{path}: duplicate id {rec.id} (also {by_id[rec.id].path})")
            by_id[rec.id] = rec
            groups[kind].append(rec)
    return Records(**{k: tuple(v) for k, v in groups.items()}, by_id=by_id)
