"""The embedded default data: a nuScenes-format dataroot of synthetic drives (``av data synth``).

:func:`write_synthetic_dataroot` writes, atomically::

    OUT/<version>/*.json                    the 13 nuScenes tables (minified)
    OUT/maps/expansion/<location>.json      map expansion v1.3, one per location
    OUT/maps/basemap_<location>.png         1x1 placeholders (the devkit requires the files)
    OUT/synth.json                          what wrote it (format, schema version, config)

Each location is a procedurally generated town (:mod:`av.data.synth_roads`), named
``synth-town-<seed>-<k>``; ``drives_per_location`` drives share one. Each drive is simulated at
10 Hz (:mod:`av.data.synth_traffic`) and written the way the shared nuScenes-mini data is laid
out: one LIDAR_TOP ``sample_data`` per step chained by prev/next, each with its own ``ego_pose``
(same token, the Renault-Zoe rear axle, z = 0, yaw-only quaternion); key frames every 0.5 s
(``is_key_frame``; a sweep's ``sample_token`` is the next key frame); ``sample_annotation`` only at
key frames for actors within ``annotation_radius_m`` of the ego, chained per instance (an actor
that enters or leaves that circle starts late or ends early), visibility '4', one lidar point.
There are no sensor files. Lanes and connectors carry ``speed_limit_mps`` (a nuScenes
extension). Everything is a pure function of the config: the same seed writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from av.data.synth_roads import Network, build_network, map_expansion
from av.data.synth_traffic import CATEGORIES, Drive, ego_centre, run_drive
from av.errors import AvError
from av.fileio import atomic_dir

FORMAT = "av-synthetic-dataroot"
SCHEMA_VERSION = 1
MARKER = "synth.json"
DT = 0.1
KEY_EVERY = 5  # steps between key frames (2 Hz)
_T0_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z: the first drive's first timestamp
_DRIVE_GAP_US = 3_600_000_000  # drives start an hour apart

# The nuScenes taxonomy (names as in nuScenes; descriptions are ours).
_CATEGORY_NAMES = (
    "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack",
    "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction",
    "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer",
    "vehicle.truck",
)
_ATTRIBUTES = (
    ("vehicle.moving", "A vehicle that is moving."),
    ("vehicle.stopped", "A vehicle with a driver, stationary for now."),
    ("vehicle.parked", "A vehicle parked at the kerb."),
    ("cycle.with_rider", "A bicycle or motorcycle with a rider."),
    ("cycle.without_rider", "A bicycle or motorcycle without a rider."),
    ("pedestrian.sitting_lying_down", "A person sitting or lying down."),
    ("pedestrian.standing", "A person standing."),
    ("pedestrian.moving", "A person walking."),
)
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`write_synthetic_dataroot` generates."""

    drives: int = field(default=8, metadata=_help("number of drives"))
    seed: int = field(default=0, metadata=_help("random seed (>= 0); another seed gives other towns and traffic"))
    version: str = field(default="v1.0-synth", metadata=_help("name of the table folder"))
    duration_s: float = field(default=20.0, metadata=_help("seconds per drive (a multiple of 0.5)"))
    drives_per_location: int = field(default=3, metadata=_help("drives that share one generated town"))
    annotation_radius_m: float = field(default=60.0, metadata=_help("actors are annotated within this distance of the ego"))

    def __post_init__(self) -> None:
        steps = self.duration_s / (DT * KEY_EVERY)
        problems = {
            "drives": self.drives < 1,
            "seed": self.seed < 0,
            "duration_s": not (math.isfinite(self.duration_s) and 1.0 <= self.duration_s <= 600.0
                               and abs(steps - round(steps)) < 1e-9),
            "drives_per_location": self.drives_per_location < 1,
            "annotation_radius_m": not (math.isfinite(self.annotation_radius_m) and self.annotation_radius_m > 0),
        }
        rules = {
            "drives": "at least 1", "seed": "at least 0", "duration_s": "a multiple of 0.5 s between 1 and 600",
            "drives_per_location": "at least 1", "annotation_radius_m": "positive",
        }
        for name, bad in problems.items():
            if bad:
                raise AvError(f"synthetic data: {name} must be {rules[name]}, got {getattr(self, name)!r}")
        if not self.version or Path(self.version).name != self.version or self.version in (".", "..", "maps"):
            raise AvError(f"synthetic data: version must be a plain folder name such as v1.0-synth, got {self.version!r}")

    @property
    def steps(self) -> int:
        """Number of 0.1 s steps per drive (poses are ``steps + 1``)."""
        return int(round(self.duration_s / DT))


def write_synthetic_dataroot(out: Path, config: SynthConfig) -> Path:
    """Generate ``config.drives`` drives and write them as a nuScenes dataroot at ``out``.

    ``out`` must not exist, be empty, or hold an earlier synthetic dataroot (it is replaced
    atomically); anything else raises :class:`AvError` rather than being overwritten. Returns ``out``.
    """
    out = Path(out)
    _check_target(out)
    n_loc = math.ceil(config.drives / config.drives_per_location)
    locations = [f"synth-town-{config.seed}-{k}" for k in range(n_loc)]
    nets = [build_network(name, np.random.default_rng([config.seed, 1, k])) for k, name in enumerate(locations)]
    drives = [
        run_drive(nets[i % n_loc], np.random.default_rng([config.seed, 2, i]), config.steps, DT)
        for i in range(config.drives)
    ]
    tables = _tables(config, nets, drives)
    with atomic_dir(out) as tmp:
        (tmp / config.version).mkdir()
        for name, rows in tables.items():
            (tmp / config.version / f"{name}.json").write_bytes(_json(rows))
        (tmp / "maps" / "expansion").mkdir(parents=True)
        for net in nets:
            (tmp / "maps" / "expansion" / f"{net.location}.json").write_bytes(_json(map_expansion(net)))
            (tmp / "maps" / f"basemap_{net.location}.png").write_bytes(_PNG_1X1)
        marker = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "config": dataclasses.asdict(config)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def _check_target(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise AvError(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    try:
        if json.loads((out / MARKER).read_text()).get("format") == FORMAT:
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise AvError(f"{out}: not empty and not a synthetic dataroot; refusing to overwrite it")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _png(width: int, height: int) -> bytes:
    """A black 8-bit greyscale PNG."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


_PNG_1X1 = _png(1, 1)


class _Tokens:
    """Deterministic 32-hex tokens (the table token format) for one seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, *parts: object) -> str:
        return hashlib.md5("/".join(str(p) for p in (self.seed, *parts)).encode()).hexdigest()


def _quaternion(yaw: float) -> list[float]:
    """Yaw-only rotation as (w, x, y, z)."""
    return [round(math.cos(yaw / 2), 9), 0.0, 0.0, round(math.sin(yaw / 2), 9)]


def _tables(config: SynthConfig, nets: list[Network], drives: list[Drive]) -> dict[str, list[dict]]:
    tok = _Tokens(config.seed)
    sensor = tok("sensor", "LIDAR_TOP")
    t: dict[str, list[dict]] = {
        "attribute": [{"token": tok("attribute", n), "name": n, "description": d} for n, d in _ATTRIBUTES],
        "category": [{"token": tok("category", n), "name": n, "description": f"nuScenes category {n}."}
                     for n in _CATEGORY_NAMES],
        "visibility": [{"token": k, "level": lv, "description": f"visibility of the whole object: {lv[1:]} %"}
                       for k, lv in _VISIBILITY],
        "sensor": [{"token": sensor, "channel": "LIDAR_TOP", "modality": "lidar"}],
        "calibrated_sensor": [], "log": [], "map": [], "scene": [], "sample": [], "sample_data": [],
        "ego_pose": [], "instance": [], "sample_annotation": [],
    }
    logs_at: dict[str, list[str]] = {net.location: [] for net in nets}
    for i, drive in enumerate(drives):
        location = nets[i % len(nets)].location
        name = f"synth-{config.seed}-{i:03d}"
        log = tok("log", i)
        logs_at[location].append(log)
        t0 = _T0_US + i * _DRIVE_GAP_US
        day = datetime.datetime.fromtimestamp(t0 / 1e6, tz=datetime.timezone.utc).date().isoformat()
        t["log"].append({"token": log, "logfile": name, "vehicle": "synth-zoe", "date_captured": day, "location": location})
        calib = tok("calibrated_sensor", i)
        t["calibrated_sensor"].append({"token": calib, "sensor_token": sensor, "translation": [0.0, 0.0, 0.0],
                                       "rotation": [1.0, 0.0, 0.0, 0.0], "camera_intrinsic": []})
        _drive_tables(t, tok, config, drive, i, name, log, calib, t0)
    for net in nets:
        t["map"].append({"token": tok("map", net.location), "log_tokens": logs_at[net.location],
                         "category": "semantic_prior", "filename": f"maps/basemap_{net.location}.png"})
    return t


def _drive_tables(t: dict[str, list[dict]], tok: _Tokens, config: SynthConfig, drive: Drive, i: int, name: str,
                  log: str, calib: str, t0: int) -> None:
    steps = drive.pose.shape[1]
    keys = list(range(0, steps, KEY_EVERY))
    stamp = [t0 + k * int(DT * 1e6) for k in range(steps)]
    scene = tok("scene", i)
    samples = [tok("sample", i, k) for k in keys]
    t["scene"].append({"token": scene, "log_token": log, "nbr_samples": len(keys), "first_sample_token": samples[0],
                       "last_sample_token": samples[-1], "name": name,
                       "description": "synthetic drive: " + ", ".join(drive.tags)})
    for n, k in enumerate(keys):
        t["sample"].append({"token": samples[n], "timestamp": stamp[k], "scene_token": scene,
                            "prev": samples[n - 1] if n else "", "next": samples[n + 1] if n + 1 < len(keys) else ""})
    frames = [tok("sample_data", i, k) for k in range(steps)]
    ego = drive.pose[0]
    for k in range(steps):
        key = k % KEY_EVERY == 0
        folder = "samples" if key else "sweeps"
        t["sample_data"].append({
            "token": frames[k], "sample_token": samples[-(-k // KEY_EVERY)], "ego_pose_token": frames[k],
            "calibrated_sensor_token": calib, "timestamp": stamp[k], "fileformat": "pcd", "is_key_frame": key,
            "height": 0, "width": 0, "filename": f"{folder}/LIDAR_TOP/{name}__LIDAR_TOP__{stamp[k]}.pcd.bin",
            "prev": frames[k - 1] if k else "", "next": frames[k + 1] if k + 1 < steps else "",
        })
        t["ego_pose"].append({"token": frames[k], "timestamp": stamp[k], "rotation": _quaternion(float(ego[k, 2])),
                              "translation": [round(float(ego[k, 0]), 4), round(float(ego[k, 1]), 4), 0.0]})
    _annotations(t, tok, config, drive, i, samples, keys)


def _annotations(t: dict[str, list[dict]], tok: _Tokens, config: SynthConfig, drive: Drive, i: int,
                 samples: list[str], keys: list[int]) -> None:
    """Instances and key-frame annotations of the actors near the ego (not the ego itself)."""
    category = {r["name"]: r["token"] for r in t["category"]}
    attribute = {r["name"]: r["token"] for r in t["attribute"]}
    pose = drive.pose[:, keys]
    near = np.hypot(*(pose[..., :2] - ego_centre(pose[0])[None]).transpose(2, 0, 1)) <= config.annotation_radius_m
    seen = near & drive.active[:, keys]
    for a, actor in enumerate(drive.actors):
        if actor.kind == "ego" or not seen[a].any():
            continue
        first, last = np.flatnonzero(seen[a])[[0, -1]]
        span = range(int(first), int(last) + 1)
        inst = tok("instance", i, a)
        anns = [tok("sample_annotation", i, a, n) for n in span]
        w, l, h = actor.size
        for j, n in enumerate(span):
            x, y, yaw = (float(v) for v in pose[a, n])
            t["sample_annotation"].append({
                "token": anns[j], "sample_token": samples[n], "instance_token": inst, "visibility_token": "4",
                "attribute_tokens": [attribute[name] for name in _attributes(actor.kind, float(drive.speed[a, keys[n]]))],
                "translation": [round(x, 3), round(y, 3), round(h / 2, 3)],
                "size": [round(w, 3), round(l, 3), round(h, 3)], "rotation": _quaternion(yaw),
                "prev": anns[j - 1] if j else "", "next": anns[j + 1] if j + 1 < len(anns) else "",
                "num_lidar_pts": 1, "num_radar_pts": 0,
            })
        t["instance"].append({"token": inst, "category_token": category[CATEGORIES[actor.kind]],
                              "nbr_annotations": len(anns), "first_annotation_token": anns[0],
                              "last_annotation_token": anns[-1]})


def _attributes(kind: str, speed: float) -> list[str]:
    if kind == "parked":
        return ["vehicle.parked"]
    if kind == "bicycle":
        return ["cycle.with_rider"]
    if kind == "pedestrian":
        return ["pedestrian.moving" if speed > 0.2 else "pedestrian.standing"]
    if kind in ("car", "truck"):
        return ["vehicle.moving" if speed > 0.3 else "vehicle.stopped"]
    return []
