"""What a new user meets first: output permissions, the dataroot's version folder, --out checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from av.cli.main import main
from av.data.nuscenes import resolve_version
from av.errors import AvError
from av.fileio import atomic_dir, atomic_write_json


def test_written_files_and_folders_get_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("x")
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_the_only_version_folder_is_used_and_several_are_listed(tmp_path: Path) -> None:
    (tmp_path / "v1.0-synth").mkdir()
    (tmp_path / "v1.0-synth" / "scene.json").write_text("[]")
    (tmp_path / "maps").mkdir()
    assert resolve_version(tmp_path, "auto") == "v1.0-synth"
    assert resolve_version(tmp_path, "v9") == "v9"
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "scene.json").write_text("[]")
    with pytest.raises(AvError, match=r"several version folders \(v1.0-mini, v1.0-synth\)"):
        resolve_version(tmp_path, "auto")
    with pytest.raises(AvError, match="no nuScenes version folder"):
        resolve_version(tmp_path / "maps", "auto")


def test_out_must_not_be_a_file_or_an_existing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["data", "import", "--dataroot", str(tmp_path), "--out", str(afile)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    assert main(["data", "synth", "--out", str(store)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (store / "manifest.json").read_text() == "{}"
