"""nuScenes adapter: a nuScenes-format dataroot in, :class:`~av.types.Scenario` values out.

This is the only module of the project that imports ``nuscenes-devkit`` (lazily, inside
:func:`load_nuscenes`, so that the CLI can read :class:`ImportConfig` without loading it).
It reads a drive the way nuScenes users do:

* **Ego**, 10 Hz: the LIDAR_TOP ``sample_data`` chain from the scene's first sample (key frames
  and sweeps, following ``next``), each with its ``ego_pose`` (the rear axle, nuScenes' ego
  frame). The poses are put on the exact grid ``t0 + k * 0.1 s`` (``t0`` = the first pose):
  where a pose lies on the grid (nuScenes-mini, all 10 Hz chains) it is taken as is, otherwise
  (a 20 Hz chain, jittered stamps) position is interpolated linearly and yaw along the shorter
  arc. Velocity: central finite differences of positions over time, one-sided at the ends.
* **Agents**: ``sample_annotation`` boxes (2 Hz key frames) interpolated onto the same grid, exact
  at key frames; before an instance's first and after its last annotation, and inside gaps of
  more than ``MAX_KEYFRAME_GAP_S`` between two of its annotations, it is masked (never
  extrapolated). Categories map to :class:`~av.types.AgentType` by :func:`agent_type_of`.
* **Map**: ``NuScenesMap`` of ``log.location``, cropped to the bounding box of the ego track plus
  ``crop_margin_m``: lanes and lane connectors whose polygon intersects it (what the devkit's
  ``get_records_in_patch`` returns, found through a spatial index; centrelines from its
  ``discretize_lanes``, resampled to at most ``MAX_POINT_SPACING_M``), their polygons and
  ``outgoing`` connectivity, and the drivable area (even-odd rings) clipped to a box grown by
  :func:`crop_reach` instead (the distance the ego covers over the horizon at its fastest logged
  speed, if more than ``crop_margin_m``), so that it covers where the ego can reach.
  nuScenes has no speed limits (NaN) unless a lane record carries ``speed_limit_mps``.
* **Route**: the lanes the logged ego drove: at each step the lane polygons that hold its rear
  axle (or, failing that, the nearest centrelines with a similar heading), chained into one lane
  sequence that respects the lane graph where the drive allows it (see :func:`_route`).
* **Frame**: every coordinate minus ``Source.origin`` = the scene's first ego (x, y).

Windowing (``ImportConfig.window``): a scene is cut into consecutive, non-overlapping windows of
``history_s + future_s`` (plus the current step: 171 steps for 2 s + 15 s), starting at step 0; the
remainder after the last full window is dropped. A scene shorter than one full window yields one
shorter scenario if it still has ``history_s`` plus at least ``MIN_FUTURE_S`` of future; shorter
scenes are skipped. Without windowing every scene long enough for that minimum is one scenario.

Datasets in the nuScenes format with their own locations (a ``log.location`` with a
``maps/expansion/<location>.json``) are accepted: the devkit hard-codes the four nuScenes
locations in ``nuscenes.map_expansion.map_api.locations`` and asserts on it, so a location whose
map file exists is appended to that list before its ``NuScenesMap`` is built (a documented shim;
it only ever adds names).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import shapely

from av.errors import AvError
from av.types import AgentType, MapData, Scenario, ScenarioError, Source, VehicleParams, wrap_angle

if TYPE_CHECKING:
    from nuscenes.map_expansion.map_api import NuScenesMap
    from nuscenes.nuscenes import NuScenes

DT = 0.1
"""Seconds between steps of every imported scenario."""
TABLES = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
    "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)
"""The 13 nuScenes tables a version folder must hold (``<table>.json``)."""
MAX_POINT_SPACING_M = 0.5
"""Largest distance between consecutive centreline points (MapData's contract)."""
MAX_KEYFRAME_GAP_S = 1.0
"""Annotations of one instance further apart than this are not interpolated across (masked)."""
MIN_FUTURE_S = 1.0
"""A scene needs ``history_s`` plus this much future to yield a scenario at all."""

_MIN_POINT_SPACING_M = 0.01  # closer centreline points are repeats (arcline path joins) and dropped
_STEP_US = 100_000  # DT in microseconds (nuScenes timestamps are integer microseconds)
_GROUP_STRIDE_US = 1 << 42  # separates instances in the combined (instance, time) search key

# Route matching (see _route).
_ROUTE_SEARCH_M = 10.0  # centreline points considered around each ego pose
_ROUTE_NEAR_M = 3.0  # fallback when no lane polygon holds the ego: nearest centreline within this
_ROUTE_MAX_HEADING = math.pi / 4  # ... and heading within this of the ego's
_ROUTE_HEADING_WEIGHT = 3.0  # metres of centreline distance worth one radian of heading error
_ROUTE_OUTSIDE_COST = 1.5  # extra cost (as metres) of a near lane whose polygon misses the ego
_ROUTE_SWITCH_COST = 5.0  # cost of a lane change (to a lane that is no successor)
_ROUTE_ALTERNATIVE_COST = 50.0  # cost of a change no route follower could drive
_ROUTE_FAR_COST = 1e3  # cost of a lane that holds the ego but has no centreline point in range


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class ImportConfig:
    """How :func:`load_nuscenes` reads a dataroot (each field is an ``av data import`` option)."""

    version: str = field(default="auto", metadata=_help(
        "nuScenes version folder inside the dataroot; 'auto': the only one there"))
    window: bool = field(
        default=True,
        metadata=_help("cut each scene into fixed-length scenarios of history + future seconds"),
    )
    history_s: float = field(default=2.0, metadata=_help("seconds of history before the current step"))
    future_s: float = field(
        default=15.0, metadata=_help("seconds after the current step in each window (nuPlan: 15)")
    )
    scenes: str = field(default="", metadata=_help("comma-separated scene names to import; empty = all"))
    crop_margin_m: float = field(
        default=60.0, metadata=_help("metres of map kept around the bounding box of the ego track")
    )
    lane_resolution_m: float = field(
        default=0.5, metadata=_help("step (m) at which lane centrelines are discretized")
    )

    def __post_init__(self) -> None:
        checks = (
            ("history_s", self.history_s >= 0),
            ("future_s", self.future_s >= MIN_FUTURE_S),
            ("crop_margin_m", self.crop_margin_m >= 0),
            ("lane_resolution_m", self.lane_resolution_m > 0),
        )
        for name, ok in checks:
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                bound = {"future_s": f">= {MIN_FUTURE_S}", "lane_resolution_m": "> 0"}.get(name, ">= 0")
                raise AvError(f"--{name.replace('_', '-')} must be finite and {bound}, got {value}")
        if not self.version or Path(self.version).name != self.version:
            raise AvError(f"--version must be a folder name such as v1.0-mini, got {self.version!r}")

    @property
    def history_steps(self) -> int:
        return int(round(self.history_s / DT))

    @property
    def window_steps(self) -> int:
        """Steps of one full window: history, the current step, and the future."""
        return self.history_steps + int(round(self.future_s / DT)) + 1

    @property
    def min_steps(self) -> int:
        """Fewest steps a scenario may have: history, the current step and ``MIN_FUTURE_S``."""
        return self.history_steps + int(round(MIN_FUTURE_S / DT)) + 1


def agent_type_of(category: str) -> AgentType | None:
    """The :class:`AgentType` of a nuScenes category name, or ``None`` for dropped ones (animals)."""
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return AgentType.CYCLIST
    head = category.split(".", 1)[0]
    return {
        "vehicle": AgentType.VEHICLE,
        "human": AgentType.PEDESTRIAN if category.startswith("human.pedestrian.") else None,
        "movable_object": AgentType.STATIC,
        "static_object": AgentType.STATIC,
    }.get(head)


# ---------------------------------------------------------------------------------------------
# Public entry point


def load_nuscenes(dataroot: Path, config: ImportConfig) -> Iterator[Scenario]:
    """Read the scenes of a nuScenes-format dataroot as :class:`Scenario` values.

    The tables are loaded and checked (files, JSON, scene names, map files) before this returns;
    the returned iterator then builds one scene at a time. Bad input raises :class:`AvError`
    naming the file and the problem, here or during iteration.
    """
    dataroot = Path(dataroot)
    config = replace(config, version=resolve_version(dataroot, config.version))
    nusc = _open_tables(dataroot, config.version)
    drives = [(scene, _location_of(nusc, scene)) for scene in _select_scenes(nusc, config.scenes)]
    for scene, loc in drives:
        path = _map_path(dataroot, loc)
        if not path.is_file():
            raise AvError(f"{path}: missing map expansion file for location {loc!r} (scene {scene['name']})")
    return _generate(nusc, dataroot, drives, config)


def _generate(
    nusc: NuScenes, dataroot: Path, drives: list[tuple[dict, str]], config: ImportConfig
) -> Iterator[Scenario]:
    maps: dict[str, _LocationMap] = {}  # one NuScenesMap per location and load
    produced = 0
    for scene, loc in drives:
        if loc not in maps:
            maps[loc] = _LocationMap.load(dataroot, loc, config.lane_resolution_m)
        drive = _read_drive(nusc, scene, loc)
        for k, (start, stop) in enumerate(_windows(drive.num_steps, config)):
            sid = f"{drive.name}-{k:02d}" if config.window else drive.name
            scenario = _scenario(sid, drive, maps[loc], start, stop, config)
            try:
                scenario.validate()
            except ScenarioError as e:
                msg = f"{nusc.table_root}: scene {drive.name} gives an invalid scenario ({e})"
                raise AvError(msg) from None
            produced += 1
            yield scenario
    if produced == 0:
        raise AvError(
            f"{nusc.table_root}: no scene is long enough for {config.history_s} s of history "
            f"and {MIN_FUTURE_S} s of future"
        )


def _windows(num_steps: int, config: ImportConfig) -> list[tuple[int, int]]:
    """``(start, stop)`` step ranges of the scenarios of a scene with ``num_steps`` steps."""
    if num_steps < config.min_steps:
        return []
    if not config.window:
        return [(0, num_steps)]
    w = config.window_steps
    full = num_steps // w
    return [(k * w, (k + 1) * w) for k in range(full)] if full else [(0, num_steps)]


# ---------------------------------------------------------------------------------------------
# Tables and errors


def _table_path(nusc: NuScenes, table: str) -> Path:
    return Path(nusc.table_root) / f"{table}.json"


def _map_path(dataroot: Path, location: str) -> Path:
    return dataroot / "maps" / "expansion" / f"{location}.json"


def _describe(e: BaseException) -> str:
    """One line about an exception raised by the devkit on bad data."""
    if isinstance(e, KeyError):
        text = f"missing record or field {e.args[0]!r}" if e.args else "missing record or field"
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return " ".join(text.split())


def _json_error(paths: list[Path]) -> AvError:
    """The first of ``paths`` that is not valid JSON, as an :class:`AvError` (error path only)."""
    for p in paths:
        try:
            json.loads(p.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f", line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
            return AvError(f"{p}: corrupt JSON ({reason}{where})")
    return AvError(f"{paths[0].parent}: corrupt JSON in one of the tables")


def resolve_version(dataroot: Path, version: str) -> str:
    """``version`` itself, or for ``"auto"`` the one version folder of ``dataroot`` (a folder
    holding ``scene.json``); several or none raise :class:`AvError` listing what was found."""
    if version != "auto":
        return version
    if not dataroot.is_dir():
        raise AvError(f"{dataroot}: no such dataroot directory")
    found = sorted(p.name for p in dataroot.iterdir() if (p / "scene.json").is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise AvError(f"{dataroot}: no nuScenes version folder (a folder holding scene.json) found")
    raise AvError(f"{dataroot}: several version folders ({', '.join(found)}); choose one with --version")


def _open_tables(dataroot: Path, version: str) -> NuScenes:
    if not dataroot.is_dir():
        raise AvError(f"{dataroot}: no such dataroot directory")
    table_root = dataroot / version
    if not table_root.is_dir():
        raise AvError(f"{table_root}: no such version folder (--version {version})")
    paths = [table_root / f"{t}.json" for t in TABLES]
    for p in paths:
        if not p.is_file():
            raise AvError(f"{p}: missing nuScenes table")
    from nuscenes.nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _json_error(paths) from None
    except Exception as e:  # the devkit signals bad data with assertions, KeyErrors, bare Exceptions
        raise AvError(f"{table_root}: the nuScenes tables are inconsistent ({_describe(e)})") from None


def _get(nusc: NuScenes, table: str, token: str, context: str) -> dict:
    """``nusc.get`` with a dangling token reported as an :class:`AvError` naming the table."""
    try:
        return nusc.get(table, token)
    except KeyError:
        raise AvError(f"{_table_path(nusc, table)}: {context}: no {table} record {token!r}") from None


def _select_scenes(nusc: NuScenes, wanted: str) -> list[dict]:
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    known = {s["name"] for s in nusc.scene}
    unknown = sorted(names - known)
    if unknown:
        raise AvError(f"--scenes: no scene named {unknown[0]!r} in {_table_path(nusc, 'scene')}")
    return [s for s in nusc.scene if not names or s["name"] in names]


def _location_of(nusc: NuScenes, scene: dict) -> str:
    return str(_get(nusc, "log", scene["log_token"], f"scene {scene['name']}")["location"])


# ---------------------------------------------------------------------------------------------
# Drives: ego and agent tracks on the 10 Hz grid


@dataclass(frozen=True)
class _Drive:
    """One scene on the 10 Hz grid, local frame (``T`` steps, ``N`` agents)."""

    name: str
    token: str
    location: str
    origin: tuple[float, float]
    grid_us: np.ndarray  # int64 [T] microseconds since the first ego pose
    ego: np.ndarray  # [T, 5]
    agent_ids: tuple[str, ...]
    agent_types: np.ndarray  # int8 [N]
    agent_sizes: np.ndarray  # [N, 2] length, width
    agents: np.ndarray  # [N, T, 5]
    agent_valid: np.ndarray  # bool [N, T]

    @property
    def num_steps(self) -> int:
        return len(self.grid_us)


def _yaw_of(q: np.ndarray) -> np.ndarray:
    """Yaw (rad) of quaternions ``[..., 4]`` (w, x, y, z), as nuScenes stores them."""
    w, x, y, z = np.moveaxis(np.asarray(q, dtype=np.float64), -1, 0)
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _interpolate(
    group: np.ndarray, t_us: np.ndarray, xy: np.ndarray, yaw: np.ndarray, n: int, grid_us: np.ndarray,
    max_gap_us: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolate ``n`` tracks of key poses onto a time grid, vectorized over tracks and steps.

    Key poses ``k``: track ``group`` int ``[K]``, time ``t_us`` int64 ``[K]`` (µs, ``|t| < 2^41``),
    position ``xy`` ``[K, 2]`` m, ``yaw`` ``[K]`` rad, sorted by (group, time). ``grid_us`` ``[T]``.
    Returns ``(xy [n, T, 2], yaw [n, T], valid bool [n, T])``: exact at key times, linear in
    position and along the shorter arc in yaw between keys at most ``max_gap_us`` apart, masked
    (zeros) elsewhere.
    """
    K, T = len(t_us), len(grid_us)
    if K == 0:
        return np.zeros((n, T, 2)), np.zeros((n, T)), np.zeros((n, T), dtype=bool)
    tracks = np.arange(n)[:, None]
    key = group.astype(np.int64) * _GROUP_STRIDE_US + t_us
    a = np.searchsorted(key, tracks * _GROUP_STRIDE_US + grid_us[None, :], side="right") - 1  # [n, T]
    ac = np.clip(a, 0, K - 1)
    b = np.minimum(ac + 1, K - 1)
    started = (a >= 0) & (group[ac] == tracks)
    exact = started & (t_us[ac] == grid_us)
    span = t_us[b] - t_us[ac]
    between = started & ~exact & (b > ac) & (group[b] == tracks) & (span <= max_gap_us)
    w = np.where(between, (grid_us - t_us[ac]) / np.where(between, span, 1), 0.0)
    out_xy = xy[ac] + (xy[b] - xy[ac]) * w[..., None]
    out_yaw = wrap_angle(yaw[ac] + wrap_angle(yaw[b] - yaw[ac]) * w)
    valid = exact | between
    return np.where(valid[..., None], out_xy, 0.0), np.where(valid, out_yaw, 0.0), valid


def _velocity(xy: np.ndarray, valid: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """Finite-difference velocity ``[G, T, 2]`` m/s of tracks ``xy`` ``[G, T, 2]`` at times ``t_s``.

    Central differences where both neighbours are valid, one-sided where one is, zero where none
    is or the step itself is invalid.
    """
    G, T = valid.shape
    steps = np.broadcast_to(np.arange(T), (G, T))
    has_prev = np.zeros((G, T), dtype=bool)
    has_next = np.zeros((G, T), dtype=bool)
    has_prev[:, 1:] = valid[:, 1:] & valid[:, :-1]
    has_next[:, :-1] = valid[:, :-1] & valid[:, 1:]
    lo = np.where(has_prev, steps - 1, steps)
    hi = np.where(has_next, steps + 1, steps)
    dt = t_s[hi] - t_s[lo]
    dxy = np.take_along_axis(xy, hi[..., None], axis=1) - np.take_along_axis(xy, lo[..., None], axis=1)
    moving = dt > 0
    return np.where(moving[..., None], dxy / np.where(moving, dt, 1.0)[..., None], 0.0)


def _ego_poses(nusc: NuScenes, scene: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene's LIDAR_TOP ego poses: ``(t_us int64 [K], xy [K, 2], yaw [K])`` in the map frame."""
    name = scene["name"]
    first = _get(nusc, "sample", scene["first_sample_token"], f"scene {name}")
    last = _get(nusc, "sample", scene["last_sample_token"], f"scene {name}")
    token = first["data"].get("LIDAR_TOP", "")
    if not token:
        raise AvError(
            f"{_table_path(nusc, 'sample_data')}: scene {name}: its first sample has no LIDAR_TOP "
            "sample_data, so the scene has no ego poses"
        )
    stamps: list[int] = []
    poses: list[dict] = []
    while token:
        sd = _get(nusc, "sample_data", token, f"scene {name}")
        if sd["timestamp"] > last["timestamp"]:
            break
        if stamps and sd["timestamp"] <= stamps[-1]:
            raise AvError(
                f"{_table_path(nusc, 'sample_data')}: scene {name}: LIDAR_TOP timestamps do not "
                f"increase at {token!r}"
            )
        poses.append(_get(nusc, "ego_pose", sd["ego_pose_token"], f"scene {name}, sample_data {token!r}"))
        stamps.append(int(sd["timestamp"]))
        token = sd["next"]
    xy = np.array([p["translation"][:2] for p in poses], dtype=np.float64).reshape(-1, 2)
    yaw = _yaw_of(np.array([p["rotation"] for p in poses], dtype=np.float64).reshape(-1, 4))
    return np.array(stamps, dtype=np.int64), xy, yaw


def _annotations(nusc: NuScenes, scene: dict) -> tuple[list[dict], np.ndarray]:
    """The scene's key-frame annotations of kept categories and their sample timestamps (µs)."""
    records: list[dict] = []
    stamps: list[int] = []
    token, seen = scene["first_sample_token"], set()
    while token and token not in seen:
        seen.add(token)
        sample = _get(nusc, "sample", token, f"scene {scene['name']}")
        for ann in sample["anns"]:
            rec = _get(nusc, "sample_annotation", ann, f"scene {scene['name']}")
            if agent_type_of(rec["category_name"]) is not None:
                records.append(rec)
                stamps.append(int(sample["timestamp"]))
        token = sample["next"]
    return records, np.array(stamps, dtype=np.int64)


def _read_drive(nusc: NuScenes, scene: dict, location: str) -> _Drive:
    """The scene's ego and agent tracks on the 10 Hz grid starting at its first ego pose."""
    max_gap_us = int(round(MAX_KEYFRAME_GAP_S * 1e6))
    t_us, ego_xy, ego_yaw = _ego_poses(nusc, scene)
    t0 = t_us[0]
    grid = np.arange((t_us[-1] - t0) // _STEP_US + 1, dtype=np.int64) * _STEP_US
    t_s = grid / 1e6
    one_track = np.zeros(len(t_us), np.int64)
    gxy, gyaw, gvalid = _interpolate(one_track, t_us - t0, ego_xy, ego_yaw, 1, grid, max_gap_us)
    if not gvalid.all():
        raise AvError(
            f"{_table_path(nusc, 'ego_pose')}: scene {scene['name']}: the ego poses have a gap of more "
            f"than {MAX_KEYFRAME_GAP_S} s"
        )
    origin = ego_xy[0]
    ego = np.concatenate([gxy[0] - origin, gyaw[0][:, None], _velocity(gxy, gvalid, t_s)[0]], axis=1)

    anns, a_t = _annotations(nusc, scene)
    a_t = a_t - t0
    tokens = np.array([a["instance_token"] for a in anns], dtype=str)
    uniq, inv = np.unique(tokens, return_inverse=True)
    n = len(uniq)
    first_t = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_t, inv, a_t)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((uniq, first_t))] = np.arange(n)  # agents ordered by first appearance, then token
    group = rank[inv]
    order = np.lexsort((a_t, group))
    group, a_t, anns = group[order], a_t[order], [anns[i] for i in order]
    a_xy = np.array([a["translation"][:2] for a in anns], dtype=np.float64).reshape(-1, 2)
    a_yaw = _yaw_of(np.array([a["rotation"] for a in anns], dtype=np.float64).reshape(-1, 4))
    a_wl = np.array([a["size"][:2] for a in anns], dtype=np.float64).reshape(-1, 2)

    xy, yaw, valid = _interpolate(group, a_t, a_xy, a_yaw, n, grid, max_gap_us)
    agents = np.concatenate([xy - origin, yaw[..., None], _velocity(xy, valid, t_s)], axis=2)
    agents[~valid] = 0.0
    starts = np.searchsorted(group, np.arange(n))
    # nuScenes sizes are [w, l, h]; an instance's box size is the median over its annotations.
    sizes = np.array([np.median(a_wl[s:e], axis=0)[::-1] for s, e in zip(starts, [*starts[1:], len(anns)])])
    return _Drive(
        name=scene["name"],
        token=scene["token"],
        location=location,
        origin=(float(origin[0]), float(origin[1])),
        grid_us=grid,
        ego=ego,
        agent_ids=tuple(anns[s]["instance_token"] for s in starts),
        agent_types=np.array([agent_type_of(anns[s]["category_name"]) for s in starts], dtype=np.int8),
        agent_sizes=sizes.reshape(n, 2),
        agents=agents,
        agent_valid=valid,
    )


# ---------------------------------------------------------------------------------------------
# Maps: lanes, connectivity, drivable area and the route, cropped around a drive


def _densify(points: np.ndarray, max_spacing: float) -> np.ndarray:
    """Insert points into a polyline ``[P, 3]`` (x, y, heading) so no segment exceeds ``max_spacing``.

    New points are linear in position and along the shorter arc in heading; the input points
    are kept as they are.
    """
    seg = np.linalg.norm(np.diff(points[:, :2], axis=0), axis=1)
    pieces = np.maximum(np.ceil(seg / max_spacing - 1e-9).astype(np.int64), 1)
    j = np.repeat(np.arange(len(seg)), pieces)
    frac = (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)) / pieces[j]
    xy = points[j, :2] + (points[j + 1, :2] - points[j, :2]) * frac[:, None]
    heading = points[j, 2] + wrap_angle(points[j + 1, 2] - points[j, 2]) * frac
    out = np.concatenate([np.column_stack([xy, heading]), points[-1:]])
    out[:, 2] = wrap_angle(out[:, 2])
    return out


def _clean_centreline(points: np.ndarray) -> np.ndarray:
    """A devkit centreline ``[P, 3]`` without repeated points (arcline joins), densified.

    Returns ``[P', 3]`` with ``P' >= 2``, or ``[0, 3]`` for a lane with no length.
    """
    if len(points) >= 2:
        seg = np.linalg.norm(np.diff(points[:, :2], axis=0), axis=1)
        points = points[np.concatenate([[True], seg > _MIN_POINT_SPACING_M])]
    if len(points) < 2:
        return np.zeros((0, 3))
    return _densify(points, MAX_POINT_SPACING_M)


def _lane_graph(successors: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(next, alternatives)``, bool ``[L, L]`` each: ``j`` is a successor of ``i``; ``i != j``
    share a predecessor or a successor (alternatives that overlap where lanes branch or merge)."""
    L = len(successors)
    nxt = np.zeros((L, L), dtype=bool)
    for i, js in enumerate(successors):
        nxt[i, js] = True
    n = nxt.astype(np.int64)
    alternatives = ((n.T @ n) > 0) | ((n @ n.T) > 0)
    np.fill_diagonal(alternatives, False)
    return nxt, alternatives


def _switch_costs(nxt: np.ndarray, alternatives: np.ndarray) -> np.ndarray:
    """Cost ``[L, L]`` of being on lane ``i`` at one step and on lane ``j`` at the next.

    Staying or moving on to a successor is free. Moving back to a predecessor, to an
    overlapping alternative or to an alternative's successor costs ``_ROUTE_ALTERNATIVE_COST``
    (a route follower could not drive it); any other change, a lane change, costs
    ``_ROUTE_SWITCH_COST``.
    """
    unlikely = alternatives | nxt.T | ((alternatives.astype(np.int64) @ nxt.astype(np.int64)) > 0)
    cost = np.where(unlikely, _ROUTE_ALTERNATIVE_COST, _ROUTE_SWITCH_COST)
    cost[nxt] = 0.0
    np.fill_diagonal(cost, 0.0)
    return cost


def _connect(route: list[int], nxt: np.ndarray, alternatives: np.ndarray) -> np.ndarray:
    """Repair a matched lane sequence where overlapping alternatives confused the matching.

    For consecutive lanes ``a, b`` with no edge ``a -> b``: if ``a`` and ``b`` are alternatives,
    the ego was on ``b`` all along (``a`` is dropped); if an alternative ``c`` of ``a`` leads to
    ``b``, the ego drove ``c`` (it replaces ``a``). Other gaps (lane changes) stay.
    """
    out = list(route)
    i = 0
    while i < len(out) - 1:
        a, b = out[i], out[i + 1]
        via = np.flatnonzero(alternatives[a] & nxt[:, b])
        if nxt[a, b] or (not alternatives[a, b] and len(via) == 0):
            i += 1
            continue
        if alternatives[a, b]:
            out.pop(i)
        else:
            out[i] = int(via[0])
        if i > 0 and out[i - 1] == out[i]:
            out.pop(i)
        i = max(i - 1, 0)
    return np.array(out, dtype=np.int64)


def _match_lanes(cost: np.ndarray, switch: np.ndarray) -> np.ndarray:
    """The cheapest lane sequence (Viterbi): one lane per step.

    ``cost`` ``[S, L]``: cost of each lane at each step (inf: not a candidate; every row has a
    finite entry); ``switch`` ``[L, L]``: :func:`_switch_costs`. Returns int ``[S]``.
    """
    S, L = cost.shape
    total = cost[0].copy()
    back = np.zeros((S, L), dtype=np.int64)
    for k in range(1, S):
        via = total[:, None] + switch  # [from, to]
        back[k] = via.argmin(axis=0)
        total = via[back[k], np.arange(L)] + cost[k]
    path = np.empty(S, dtype=np.int64)
    path[-1] = total.argmin()
    for k in range(S - 1, 0, -1):
        path[k - 1] = back[k, path[k]]
    return path


def _route(
    lane_points: np.ndarray, point_lane: np.ndarray, successors: list[list[int]],
    inside: np.ndarray, ego_xy: np.ndarray, ego_yaw: np.ndarray,
) -> np.ndarray:
    """The lane sequence a logged ego drove, as indices into the map's ``L`` lanes.

    ``lane_points`` ``[P, 3]`` centreline points (x, y, heading) of lane ``point_lane`` ``[P]``;
    ``successors``: the lane graph; ``inside`` bool ``[T, L]``: the lane polygon holds the ego
    rear axle at step ``t``; ``ego_xy`` ``[T, 2]``, ``ego_yaw`` ``[T]`` in the same frame.

    At each step, a lane whose polygon holds the rear axle costs its centreline distance plus
    ``_ROUTE_HEADING_WEIGHT`` x heading error (at the best centreline point); a lane that does
    not hold it but whose centreline is within ``_ROUTE_NEAR_M`` with heading within
    ``_ROUTE_MAX_HEADING`` costs that plus ``_ROUTE_OUTSIDE_COST``; other lanes are no
    candidates. :func:`_match_lanes` picks one lane per step, trading these costs against
    :func:`_switch_costs`, so a short visit to a polygon touched at a boundary (a flicker) drops
    out; steps without candidates are skipped, consecutive duplicates merged, and
    :func:`_connect` repairs confusions between overlapping alternatives.
    """
    from scipy.spatial import cKDTree  # here, so that reading ImportConfig (the CLI) stays quick

    T, L = inside.shape
    if L == 0:
        return np.zeros(0, np.int64)
    hits = cKDTree(lane_points[:, :2]).query_ball_point(ego_xy, r=_ROUTE_SEARCH_M)
    rows = np.repeat(np.arange(T), [len(h) for h in hits])
    pts = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits])
    lanes = point_lane[pts]
    dist = np.linalg.norm(lane_points[pts, :2] - ego_xy[rows], axis=1)
    dyaw = np.abs(wrap_angle(lane_points[pts, 2] - ego_yaw[rows]))
    held = inside[rows, lanes]
    ok = held | ((dist <= _ROUTE_NEAR_M) & (dyaw <= _ROUTE_MAX_HEADING))
    step_cost = dist + _ROUTE_HEADING_WEIGHT * dyaw + np.where(held, 0.0, _ROUTE_OUTSIDE_COST)
    cost = np.full((T, L), np.inf)
    np.minimum.at(cost, (rows[ok], lanes[ok]), step_cost[ok])
    # A lane holding the ego but with no centreline point in search range is a last resort.
    cost = np.where(inside & ~np.isfinite(cost), _ROUTE_FAR_COST, cost)
    finite = np.isfinite(cost)
    steps, cols = np.flatnonzero(finite.any(axis=1)), np.flatnonzero(finite.any(axis=0))
    if len(steps) == 0:
        return np.zeros(0, np.int64)
    nxt, alternatives = _lane_graph(successors)
    switch = _switch_costs(nxt, alternatives)[np.ix_(cols, cols)]
    per_step = cols[_match_lanes(cost[np.ix_(steps, cols)], switch)]
    matched = per_step[np.concatenate([[True], np.diff(per_step) != 0])]
    return _connect(matched.tolist(), nxt, alternatives)


class _LocationMap:
    """One location's map expansion and the lookups every crop needs (built once per load)."""

    def __init__(self, nmap: NuScenesMap, path: Path, resolution: float) -> None:
        self.nmap, self.path, self.resolution = nmap, path, resolution
        records = [*nmap.lane, *nmap.lane_connector]
        self.tokens: list[str] = [r["token"] for r in records]
        index = {t: i for i, t in enumerate(self.tokens)}
        self.is_connector = np.arange(len(records)) >= len(nmap.lane)
        self.speed_limit = np.array([float(r.get("speed_limit_mps", np.nan)) for r in records])
        self.polygons = np.array([nmap.extract_polygon(r["polygon_token"]) for r in records], dtype=object)
        self.tree = shapely.STRtree(shapely.make_valid(self.polygons))
        links = nmap.connectivity
        self.outgoing: list[list[int]] = [
            list(dict.fromkeys(index[o] for o in links.get(t, {}).get("outgoing", []) if o in index))
            for t in self.tokens
        ]
        drivable = [nmap.extract_polygon(p) for r in nmap.drivable_area for p in r["polygon_tokens"]]
        self.drivable = shapely.make_valid(np.array(drivable, dtype=object))
        self.drivable_tree = shapely.STRtree(self.drivable)
        self._lines: dict[int, np.ndarray] = {}

    @classmethod
    def load(cls, dataroot: Path, location: str, resolution: float) -> _LocationMap:
        from nuscenes.map_expansion import map_api

        path = _map_path(dataroot, location)
        if location not in map_api.locations:  # the shim described in the module docstring
            map_api.locations.append(location)
        try:
            return cls(map_api.NuScenesMap(dataroot=str(dataroot), map_name=location), path, resolution)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _json_error([path]) from None
        except Exception as e:  # the devkit signals bad data with assertions, KeyErrors, bare Exceptions
            raise AvError(f"{path}: not a usable map expansion ({_describe(e)})") from None

    def centrelines(self, idx: np.ndarray) -> list[np.ndarray]:
        """Cleaned centrelines ``[P_i, 3]`` (map frame) of lanes ``idx`` (cached per lane)."""
        todo = [int(i) for i in idx if int(i) not in self._lines]
        if todo:
            try:
                found = self.nmap.discretize_lanes([self.tokens[i] for i in todo], self.resolution)
            except Exception as e:  # malformed arcline_path_3 records
                raise AvError(f"{self.path}: cannot discretize lanes ({_describe(e)})") from None
            for i in todo:
                points = np.asarray(found[self.tokens[i]], dtype=np.float64).reshape(-1, 3)
                self._lines[i] = _clean_centreline(points)
        return [self._lines[int(i)] for i in idx]

    def drivable_rings(self, patch: shapely.Polygon) -> list[np.ndarray]:
        """Rings ``[n_k, 2]`` (exteriors and holes, not closed) of the drivable area inside ``patch``."""
        idx = np.sort(self.drivable_tree.query(patch, predicate="intersects"))
        if len(idx) == 0:
            return []
        area = shapely.intersection(shapely.union_all(self.drivable[idx]), patch)
        rings = []
        for part in shapely.get_parts(shapely.get_parts(area)):
            if isinstance(part, shapely.Polygon):
                rings += [np.asarray(r.coords)[:-1, :2] for r in (part.exterior, *part.interiors)]
        return [r for r in rings if len(r) >= 3]

    def crop(
        self, ego_xy: np.ndarray, ego_yaw: np.ndarray, origin: np.ndarray, margin: float, reach: float
    ) -> tuple[MapData, np.ndarray]:
        """The map around a drive and its route.

        ``ego_xy`` ``[T, 2]`` rear-axle positions in the map frame, ``ego_yaw`` ``[T]``;
        ``origin`` ``[2]`` is subtracted from every output coordinate. Keeps the lanes and
        connectors intersecting the bounding box of ``ego_xy`` grown by ``margin`` metres, and the
        drivable area inside that box grown by ``max(margin, reach)`` metres.
        """
        lo, hi = ego_xy.min(axis=0) - margin, ego_xy.max(axis=0) + margin
        patch = shapely.box(lo[0], lo[1], hi[0], hi[1])
        far = max(reach, margin)
        area_patch = shapely.box(*(ego_xy.min(axis=0) - far), *(ego_xy.max(axis=0) + far))
        cand = np.sort(self.tree.query(patch, predicate="intersects"))
        lines = self.centrelines(cand)
        kept = [(int(m), c) for m, c in zip(cand, lines) if len(c) >= 2]
        keep = np.array([m for m, _ in kept], dtype=np.int64)
        lines = [c for _, c in kept]
        local = np.full(len(self.tokens), -1, dtype=np.int64)
        local[keep] = np.arange(len(keep))
        successors = [[int(local[j]) for j in self.outgoing[m] if local[j] >= 0] for m in keep]
        polygons = [np.asarray(self.polygons[m].exterior.coords)[:-1, :2] - origin for m in keep]
        rings = [r - origin for r in self.drivable_rings(area_patch)]
        points = np.concatenate(lines) if lines else np.zeros((0, 3))
        points = np.column_stack([points[:, :2] - origin, points[:, 2]])

        steps, lanes = self.tree.query(shapely.points(ego_xy), predicate="intersects")
        inside = np.zeros((len(ego_xy), len(keep)), dtype=bool)
        ok = local[lanes] >= 0
        inside[steps[ok], local[lanes[ok]]] = True
        point_lane = np.repeat(np.arange(len(keep)), [len(c) for c in lines]).astype(np.int64)
        route = _route(points, point_lane, successors, inside, ego_xy - origin, ego_yaw)

        def offsets(parts: list[Any]) -> np.ndarray:
            return np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])

        return MapData(
            lane_ids=tuple(self.tokens[m] for m in keep),
            lane_is_connector=self.is_connector[keep],
            lane_speed_limit=self.speed_limit[keep],
            lane_point_offsets=offsets(lines),
            lane_points=points,
            lane_successor_offsets=offsets(successors),
            lane_successors=np.array([j for s in successors for j in s], dtype=np.int64),
            lane_polygon_offsets=offsets(polygons),
            lane_polygon_points=np.concatenate(polygons) if polygons else np.zeros((0, 2)),
            drivable_ring_offsets=offsets(rings),
            drivable_ring_points=np.concatenate(rings) if rings else np.zeros((0, 2)),
        ), route


def crop_reach(ego: np.ndarray, config: ImportConfig) -> float:
    """Metres of drivable area kept around the bounding box of a scenario's ego track ``ego``
    ``[T, 5]``: ``crop_margin_m``, or the reach ``v_max * future_s`` if larger (``v_max`` the fastest
    logged speed), so that a planner that never drives faster than the logged ego (a
    constant-velocity rollout, say) stays on the kept drivable area for the whole horizon. Beyond
    it the drivable area is cut off, and a car there would be scored (and drawn) as off the road.
    Lanes are kept within ``crop_margin_m`` (planners and variants use them; their polygons count
    as drivable too)."""
    speed = np.hypot(ego[:, 3], ego[:, 4])
    v_max = float(np.nanmax(speed)) if speed.size and np.isfinite(speed).any() else 0.0
    return max(float(config.crop_margin_m), v_max * float(config.future_s))


def _scenario(
    sid: str, drive: _Drive, lmap: _LocationMap, start: int, stop: int, config: ImportConfig
) -> Scenario:
    """Steps ``[start, stop)`` of a drive as a scenario, with the map cropped around its ego track."""
    sl = slice(start, stop)
    ego = drive.ego[sl]
    origin = np.array(drive.origin)
    map_data, route = lmap.crop(ego[:, :2] + origin, ego[:, 2], origin, config.crop_margin_m, crop_reach(ego, config))
    keep = drive.agent_valid[:, sl].any(axis=1)
    return Scenario(
        id=sid,
        source=Source(
            dataset=f"nuscenes/{config.version}",
            scene_token=drive.token,
            scene_name=drive.name,
            location=drive.location,
            origin=drive.origin,
            start_step=start,
        ),
        dt=DT,
        timestamps=(drive.grid_us[sl] - drive.grid_us[start]) / 1e6,
        history_steps=config.history_steps,
        ego=ego,
        ego_vehicle=VehicleParams(),
        agent_ids=tuple(a for a, k in zip(drive.agent_ids, keep) if k),
        agent_types=drive.agent_types[keep],
        agent_sizes=drive.agent_sizes[keep],
        agents=drive.agents[keep][:, sl],
        agent_valid=drive.agent_valid[keep][:, sl],
        map=map_data,
        route=route,
    )
