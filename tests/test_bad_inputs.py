"""Bad input to ``av data import``: one line on stderr naming the file and problem, exit code 2,
and no store (nor temporary directory) left behind.

Each case is a copy of the real nuScenes-mini dataroot in ``tmp_path`` made of symlinks to the
unchanged files, with only the broken file written (or left out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from av.cli.main import main

VERSION = "v1.0-mini"

Edit = Callable[[Path], None]


def mirror(root: Path, dest: Path, replace: dict[str, bytes | None]) -> Path:
    """A dataroot at ``dest``: symlinks to ``root``'s files, except ``replace`` (relative path ->
    new content, or ``None`` to leave the file out; new paths are added)."""
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and rel not in replace:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to(f)
    for rel, content in replace.items():
        if content is not None:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(content)
    return dest


def run_import(dataroot: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[str]]:
    rc = main(["data", "import", "--dataroot", str(dataroot), "--out", str(out), *extra])
    err = capsys.readouterr().err
    return rc, err.splitlines()


def assert_refused(rc: int, lines: list[str], out: Path, *needles: str) -> None:
    assert rc == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("av: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def _first_scene_lidar(root: Path) -> tuple[list[dict], dict]:
    """The sample_data table and the first scene's first LIDAR_TOP key-frame record."""
    scene = json.loads((root / VERSION / "scene.json").read_text())[0]
    sample_data = json.loads((root / VERSION / "sample_data.json").read_text())
    first = next(
        r for r in sample_data
        if r["sample_token"] == scene["first_sample_token"] and r["is_key_frame"] and "LIDAR_TOP" in r["filename"]
    )
    return sample_data, first


def test_missing_dataroot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "store"
    rc, lines = run_import(tmp_path / "no-such-root", out, capsys)
    assert_refused(rc, lines, out, "no-such-root", "no such dataroot")


def test_missing_version_folder(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "store"
    rc, lines = run_import(root, out, capsys, "--version", "v1.0-trainval")
    assert_refused(rc, lines, out, "v1.0-trainval", "no such version folder")


def test_missing_table(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = mirror(root, tmp_path / "root", {f"{VERSION}/visibility.json": None})
    out = tmp_path / "out" / "store"
    rc, lines = run_import(data, out, capsys)
    assert_refused(rc, lines, out, "visibility.json", "missing nuScenes table")


def test_missing_map_file(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = mirror(root, tmp_path / "root", {"maps/expansion/boston-seaport.json": None})
    out = tmp_path / "out" / "store"
    rc, lines = run_import(data, out, capsys)
    assert_refused(rc, lines, out, "boston-seaport.json", "missing map expansion", "scene-0553")


def test_corrupt_json_table(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = mirror(root, tmp_path / "root", {f"{VERSION}/instance.json": b'[{"token": "a",\n "category_token": '})
    out = tmp_path / "out" / "store"
    rc, lines = run_import(data, out, capsys)
    assert_refused(rc, lines, out, "instance.json", "corrupt JSON", "line 2")


def test_corrupt_json_map(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # singapore-onenorth is the location of the first scene (scene-0061), read first.
    data = mirror(root, tmp_path / "root", {"maps/expansion/singapore-onenorth.json": b'{"version": "1.3", '})
    out = tmp_path / "out" / "store"
    rc, lines = run_import(data, out, capsys)
    assert_refused(rc, lines, out, "singapore-onenorth.json", "corrupt JSON")


def test_scene_without_lidar_top_has_no_ego_poses(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample_data, first = _first_scene_lidar(root)
    first["is_key_frame"] = False  # the first sample then has no LIDAR_TOP key frame
    data = mirror(root, tmp_path / "root", {f"{VERSION}/sample_data.json": json.dumps(sample_data).encode()})
    out = tmp_path / "out" / "store"
    rc, lines = run_import(data, out, capsys)
    assert_refused(rc, lines, out, "sample_data.json", "scene-0061", "no ego poses")


def test_scene_with_a_missing_ego_pose(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, first = _first_scene_lidar(root)
    poses = json.loads((root / VERSION / "ego_pose.json").read_text())
    kept = [p for p in poses if p["token"] != first["ego_pose_token"]]
    assert len(kept) == len(poses) - 1
    data = mirror(root, tmp_path / "root", {f"{VERSION}/ego_pose.json": json.dumps(kept).encode()})
    out = tmp_path / "out" / "store"
    rc, lines = run_import(data, out, capsys)
    assert_refused(rc, lines, out, "ego_pose.json", "scene-0061", first["ego_pose_token"])


def test_dangling_token_in_the_tables(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anns = json.loads((root / VERSION / "sample_annotation.json").read_text())
    anns[0]["instance_token"] = "no-such-instance"
    data = mirror(root, tmp_path / "root", {f"{VERSION}/sample_annotation.json": json.dumps(anns).encode()})
    out = tmp_path / "out" / "store"
    rc, lines = run_import(data, out, capsys)
    assert_refused(rc, lines, out, VERSION, "inconsistent", "no-such-instance")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--future-s", "0", "--future-s"),
        ("--lane-resolution-m", "-1", "--lane-resolution-m"),
        ("--scenes", "scene-9999", "scene-9999"),
    ],
)
def test_bad_options(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, needle: str) -> None:
    out = tmp_path / "out" / "store"
    rc, lines = run_import(root, out, capsys, option, value)
    assert_refused(rc, lines, out, needle)


def test_a_failed_import_keeps_the_previous_store(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    rc, _ = run_import(root, out, capsys, "--scenes", "scene-0553")
    assert rc == 0 and (out / "manifest.json").is_file()
    before = (out / "manifest.json").read_bytes()
    data = mirror(root, tmp_path / "root", {"maps/expansion/singapore-onenorth.json": b"{"})
    rc, lines = run_import(data, out, capsys, "--force")
    assert rc == 2 and len(lines) == 1 and "singapore-onenorth.json" in lines[0]
    assert (out / "manifest.json").read_bytes() == before
