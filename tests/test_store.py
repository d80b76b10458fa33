"""The Parquet scenario store: exact round trips, versioning, atomic writes, `av data list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from conftest import build_scenario

import scenarios.store as store_mod
from av.cli.main import main
from av.errors import AvError
from av.types import Provenance, Scenario, empty_map
from scenarios.store import MANIFEST, iter_store, read_store, store_count, write_store


def _three() -> list[Scenario]:
    base = build_scenario(id="hand-0")
    variant = build_scenario(
        id="hand-0-brake", ego_speed=3.0,
        provenance=Provenance(
            parent_id="hand-0", transform="braking_lead", params={"decel": 3.5, "at": [1, 2]}, seed=7
        ),
    )
    bare = build_scenario(id="bare", num_agents=0, num_steps=12, history_steps=0, tags=())
    bare = bare.replace(map=empty_map(), route=np.zeros(0, np.int64))
    return [base, variant, bare]


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_round_trip_is_exact(tmp_path: Path) -> None:
    scenarios = _three()
    path = tmp_path / "store"
    assert write_store(path, scenarios) == 3
    back = read_store(path)
    assert [s.id for s in back] == [s.id for s in scenarios]
    for a, b in zip(scenarios, back):
        assert a == b
        b.validate()
        for name in Scenario._DTYPES:
            assert getattr(b, name).dtype == getattr(a, name).dtype, name
            assert not getattr(b, name).flags.writeable, name
    assert back[1].provenance is not None and dict(back[1].provenance.params) == {"decel": 3.5, "at": [1, 2]}
    assert np.isnan(back[0].map.lane_speed_limit[1])  # unknown speed limit survives
    assert store_count(path) == 3


def test_round_trip_across_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "PART_ROWS", 2)
    scenarios = [build_scenario(id=f"s{i}", num_steps=10 + i, history_steps=3) for i in range(5)]
    write_store(tmp_path / "st", scenarios)
    manifest = json.loads((tmp_path / "st" / MANIFEST).read_text())
    assert len(manifest["parts"]) == 3 and manifest["count"] == 5
    assert list(iter_store(tmp_path / "st")) == scenarios
    assert read_store(tmp_path / "st", ["s3", "s1"]) == [scenarios[1], scenarios[3]]  # store order


def test_round_trip_real_drives(real_scenarios: list[Scenario], real_store: Path) -> None:
    back = read_store(real_store)
    assert len(back) == len(real_scenarios) > 0
    for a, b in zip(real_scenarios, back):
        assert a == b, a.id


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    write_store(path, _three()[:1])
    mf = path / MANIFEST
    manifest = json.loads(mf.read_text())
    manifest["schema_version"] = 99
    mf.write_text(json.dumps(manifest))
    with pytest.raises(AvError, match="schema version 99"):
        read_store(path)
    with pytest.raises(AvError, match="schema version 99"):
        store_count(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / MANIFEST).unlink(), "manifest.json is missing"),
        (lambda p: (p / MANIFEST).write_text("{not json"), "corrupt JSON"),
        (lambda p: (p / MANIFEST).write_text('{"format": "other", "schema_version": 1}'), "not an av-scenario-store"),
        (lambda p: (p / "part-00000.parquet").write_bytes(b"garbage"), "unreadable Parquet part"),
    ],
    ids=["missing", "corrupt", "wrong-format", "corrupt-part"],
)
def test_damaged_store_is_refused(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "store"
    write_store(path, _three()[:1])
    damage(path)
    with pytest.raises(AvError, match=message):
        read_store(path)


def test_missing_store_and_unknown_id(tmp_path: Path) -> None:
    with pytest.raises(AvError, match="no such scenario store"):
        read_store(tmp_path / "nowhere")
    write_store(tmp_path / "store", _three())
    with pytest.raises(AvError, match="no scenario with id 'ghost'"):
        read_store(tmp_path / "store", ["hand-0", "ghost"])


def _failing(after: int) -> Iterator[Scenario]:
    for i in range(after):
        yield build_scenario(id=f"ok-{i}", num_steps=8, history_steps=2)
    raise RuntimeError("importer crashed")


def test_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "PART_ROWS", 2)  # so parts are already on disk when it fails
    path = tmp_path / "store"
    with pytest.raises(RuntimeError, match="importer crashed"):
        write_store(path, _failing(5))
    assert not path.exists()
    assert _siblings(path) == []  # no temporary directory left either


def test_failure_while_overwriting_keeps_the_old_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    old = _three()
    write_store(path, old)
    with pytest.raises(RuntimeError):
        write_store(path, _failing(3))
    assert read_store(path) == old
    assert _siblings(path) == ["store"]


def test_overwriting_replaces_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    write_store(path, _three())
    new = [build_scenario(id="new-0"), build_scenario(id="new-1", num_agents=1)]
    assert write_store(path, new) == 2
    assert read_store(path) == new
    assert _siblings(path) == ["store"]


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with pytest.raises(AvError, match="duplicate scenario id 'hand-0'"):
        write_store(path, [build_scenario(), build_scenario(ego_speed=2.0)])
    assert not path.exists() and _siblings(path) == []


def test_invalid_scenario_is_not_written(tmp_path: Path) -> None:
    bad = build_scenario().replace(history_steps=99)
    with pytest.raises(ValueError, match="history_steps"):
        write_store(tmp_path / "store", [bad])
    assert not (tmp_path / "store").exists()


def test_cli_data_list_prints_the_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    write_store(path, _three())
    assert main(["data", "list", str(path)]) == 0
    out = capsys.readouterr().out
    for s in _three():
        assert s.id in out
    assert "braking_lead(hand-0, seed=7)" in out


def test_cli_data_list_bad_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("av: error:") and "nowhere" in err and err.count("\n") == 1
