"""The scenario store: a directory of Parquet files, one row per :class:`~av.types.Scenario`.

Layout::

    STORE/manifest.json        {"format": "av-scenario-store", "schema_version": 1, "count": n, "parts": [...]}
    STORE/part-00000.parquet   up to ``PART_ROWS`` scenarios

Each row has ``id``, ``schema_version``, ``meta`` (JSON: source, dt, ids, tags, provenance, ...)
and, for every array field, ``<field>`` (raw little-endian bytes of the known dtype) and
``<field>_shape``. Writing is atomic (a temporary directory renamed into place) so an
interrupted import never leaves a partial store.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from av.errors import AvError
from av.fileio import atomic_dir, atomic_write_json
from av.types import SCHEMA_VERSION, MapData, Provenance, Scenario, Source, VehicleParams

FORMAT = "av-scenario-store"
MANIFEST = "manifest.json"
PART_ROWS = 64

_SCENARIO_ARRAYS = dict(Scenario._DTYPES)
_MAP_ARRAYS = dict(MapData._DTYPES)


def _columns() -> list[str]:
    return [*_SCENARIO_ARRAYS, *(f"map_{k}" for k in _MAP_ARRAYS)]


def _arrays_of(s: Scenario) -> dict[str, np.ndarray]:
    out = {k: getattr(s, k) for k in _SCENARIO_ARRAYS}
    out.update({f"map_{k}": getattr(s.map, k) for k in _MAP_ARRAYS})
    return out


def _dtype_of(column: str) -> Any:
    if column.startswith("map_"):
        return _MAP_ARRAYS[column[4:]]
    return _SCENARIO_ARRAYS[column]


def _meta_of(s: Scenario) -> str:
    return json.dumps(
        {
            "source": dataclasses.asdict(s.source),
            "dt": s.dt,
            "history_steps": s.history_steps,
            "ego_vehicle": dataclasses.asdict(s.ego_vehicle),
            "agent_ids": list(s.agent_ids),
            "tags": list(s.tags),
            "provenance": dataclasses.asdict(s.provenance) if s.provenance else None,
            "lane_ids": list(s.map.lane_ids),
        }
    )


def _table(scenarios: list[Scenario]) -> pa.Table:
    cols: dict[str, list[Any]] = {"id": [], "schema_version": [], "meta": []}
    for c in _columns():
        cols[c] = []
        cols[f"{c}_shape"] = []
    for s in scenarios:
        cols["id"].append(s.id)
        cols["schema_version"].append(s.schema_version)
        cols["meta"].append(_meta_of(s))
        for c, a in _arrays_of(s).items():
            cols[c].append(np.ascontiguousarray(a, dtype=np.dtype(_dtype_of(c)).newbyteorder("<")).tobytes())
            cols[f"{c}_shape"].append(list(a.shape))
    return pa.table(cols)


def _row_to_scenario(row: dict[str, Any]) -> Scenario:
    meta = json.loads(row["meta"])
    arrays = {
        c: np.frombuffer(row[c], dtype=np.dtype(_dtype_of(c)).newbyteorder("<"))
        .astype(_dtype_of(c))
        .reshape(row[f"{c}_shape"])
        for c in _columns()
    }
    src = meta["source"]
    src["origin"] = tuple(src["origin"])
    prov = meta["provenance"]
    return Scenario(
        id=row["id"],
        source=Source(**src),
        dt=meta["dt"],
        timestamps=arrays["timestamps"],
        history_steps=meta["history_steps"],
        ego=arrays["ego"],
        ego_vehicle=VehicleParams(**meta["ego_vehicle"]),
        agent_ids=tuple(meta["agent_ids"]),
        agent_types=arrays["agent_types"],
        agent_sizes=arrays["agent_sizes"],
        agents=arrays["agents"],
        agent_valid=arrays["agent_valid"],
        map=MapData(lane_ids=tuple(meta["lane_ids"]), **{k: arrays[f"map_{k}"] for k in _MAP_ARRAYS}),
        route=arrays["route"],
        tags=tuple(meta["tags"]),
        provenance=Provenance(**prov) if prov else None,
        schema_version=row["schema_version"],
    )


def write_store(path: str | Path, scenarios: Iterable[Scenario]) -> int:
    """Validate and write ``scenarios`` to a new store at ``path`` (atomically); return the count.

    Scenario ids must be unique. An existing store at ``path`` is replaced only on success.
    """
    n, parts, seen = 0, [], set()
    with atomic_dir(path) as tmp:
        chunk: list[Scenario] = []

        def flush() -> None:
            name = f"part-{len(parts):05d}.parquet"
            pq.write_table(_table(chunk), tmp / name, compression="zstd")
            parts.append(name)
            chunk.clear()

        for s in scenarios:
            s.validate()
            if s.id in seen:
                raise AvError(f"duplicate scenario id {s.id!r}")
            seen.add(s.id)
            chunk.append(s)
            n += 1
            if len(chunk) >= PART_ROWS:
                flush()
        if chunk:
            flush()
        atomic_write_json(
            tmp / MANIFEST,
            {"format": FORMAT, "schema_version": SCHEMA_VERSION, "count": n, "parts": parts},
        )
    return n


def _manifest(path: Path) -> dict[str, Any]:
    mf = path / MANIFEST
    if not path.is_dir():
        raise AvError(f"{path}: no such scenario store")
    if not mf.is_file():
        raise AvError(f"{path}: not a scenario store ({MANIFEST} is missing)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise AvError(f"{mf}: corrupt JSON ({e.msg}, line {e.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise AvError(f"{mf}: not an {FORMAT} manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise AvError(
            f"{path}: store has schema version {version}, this av reads version {SCHEMA_VERSION}; "
            "re-import it with this version"
        )
    return manifest


def iter_store(path: str | Path) -> Iterator[Scenario]:
    """Yield the scenarios of a store in order (a part at a time)."""
    path = Path(path)
    for part in _manifest(path)["parts"]:
        try:
            table = pq.read_table(path / part)
        except (OSError, pa.ArrowInvalid) as e:
            raise AvError(f"{path / part}: unreadable Parquet part ({e})") from None
        for row in table.to_pylist():
            if row["schema_version"] != SCHEMA_VERSION:
                raise AvError(f"{path / part}: row {row['id']} has schema version {row['schema_version']}")
            yield _row_to_scenario(row)


def read_store(path: str | Path, ids: Iterable[str] | None = None) -> list[Scenario]:
    """All scenarios of a store (or only those whose id is in ``ids``, in store order)."""
    wanted = set(ids) if ids is not None else None
    out = [s for s in iter_store(path) if wanted is None or s.id in wanted]
    if wanted is not None:
        missing = wanted - {s.id for s in out}
        if missing:
            raise AvError(f"{path}: no scenario with id {sorted(missing)[0]!r}")
    return out


def store_count(path: str | Path) -> int:
    return int(_manifest(Path(path))["count"])
