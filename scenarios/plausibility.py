"""Plausibility checks for scenarios, above all for generated variants.

:func:`check` returns human-readable problems (empty = plausible): box overlaps at the start step
(agents with each other and with the ego), vehicles and cyclists off the drivable area, and
kinematics beyond what the agent's type can do (speed, acceleration, jerk, curvature at speed)
or velocities that disagree with the positions. Everything is computed over agents x time at
once (numpy; oriented boxes with :mod:`av.geometry`; even-odd rings with shapely).

Derivatives use differences over ``WINDOW_STEPS`` steps (0.5 s at 10 Hz). Logged agents are
2 Hz annotations interpolated linearly to 10 Hz, so one-step differences measure the kinks at
the key frames, not motion; over the key-frame spacing they measure motion.

Logs themselves have annotation noise that breaks these limits now and then. A variant is judged
on what it adds: ``check(variant, parent)`` ignores an issue of the same kind about the same
subject (agent id, ego, or pair of ids) that the parent already has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

import numpy as np
import shapely
import torch

from av.checks import box_overlap
from av.types import YAW, AgentType, MapData, Scenario
from av.vehicle import box_centre, ego_box

WINDOW_STEPS = 5
CURVATURE_MIN_SPEED = 2.0  # m/s: below it a heading change says little about the path's curvature
VELOCITY_TOLERANCE = 0.5  # m/s between stored velocity and finite differences of the positions


@dataclass(frozen=True)
class KinematicLimits:
    """Physical limits of an agent type (SI): speed m/s, acceleration m/s^2, jerk m/s^3,
    path curvature 1/m (checked at speeds >= ``CURVATURE_MIN_SPEED``)."""

    speed: float
    accel: float
    jerk: float
    curvature: float


LIMITS: dict[AgentType, KinematicLimits] = {
    AgentType.VEHICLE: KinematicLimits(speed=40.0, accel=8.0, jerk=30.0, curvature=1 / 3),
    AgentType.CYCLIST: KinematicLimits(speed=25.0, accel=8.0, jerk=30.0, curvature=1 / 2),
    AgentType.PEDESTRIAN: KinematicLimits(speed=6.0, accel=6.0, jerk=math.inf, curvature=math.inf),
    AgentType.STATIC: KinematicLimits(math.inf, math.inf, math.inf, math.inf),
}
ON_ROAD_TYPES = (AgentType.VEHICLE, AgentType.CYCLIST)


@dataclass(frozen=True)
class Issue:
    """One plausibility problem: ``kind`` (overlap, offroad, speed, acceleration, jerk, curvature,
    velocity), ``subject`` (an agent id, ``"ego"``, or ``"a|b"`` for a pair) and details."""

    kind: str
    subject: str
    detail: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)

    @property
    def message(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


# ------------------------------------------------------------------------------ map helpers
def map_extent(m: MapData) -> tuple[float, float, float, float] | None:
    """``(xmin, ymin, xmax, ymax)`` of everything the map holds, or ``None`` for an empty map."""
    pts = np.concatenate([m.lane_points[:, :2], m.drivable_ring_points])
    if not len(pts):
        return None
    lo, hi = pts.min(0), pts.max(0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def on_drivable(m: MapData, xy: np.ndarray) -> np.ndarray:
    """Bool ``[...]``: points ``xy [..., 2]`` (m) inside an odd number of drivable rings."""
    xy = np.asarray(xy, dtype=np.float64)
    rings = [r for r in m.drivable_rings() if len(r) >= 3]
    if not rings:
        return np.zeros(xy.shape[:-1], bool)
    polys = shapely.polygons([shapely.linearrings(r) for r in rings])
    shapely.prepare(polys)
    flat = xy.reshape(-1, 2)
    inside = shapely.contains_xy(polys[:, None], flat[None, :, 0], flat[None, :, 1])  # [K, M]
    return (inside.sum(0) % 2 == 1).reshape(xy.shape[:-1])


def _in_extent(m: MapData, xy: np.ndarray) -> np.ndarray:
    ext = map_extent(m)
    if ext is None:
        return np.zeros(xy.shape[:-1], bool)
    x0, y0, x1, y1 = ext
    return (xy[..., 0] >= x0) & (xy[..., 0] <= x1) & (xy[..., 1] >= y0) & (xy[..., 1] <= y1)


# ------------------------------------------------------------------------------ tracks
def _tracks(s: Scenario) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """All tracks with the ego appended last: states ``[M, T, 5]``, valid ``[M, T]``,
    types ``[M]`` and subjects (agent ids, ``"ego"``)."""
    states = np.concatenate([s.agents, s.ego[None]], axis=0)
    valid = np.concatenate([s.agent_valid, np.ones((1, s.num_steps), bool)], axis=0)
    types = np.concatenate([s.agent_types, [AgentType.VEHICLE]]).astype(np.int64)
    return states, valid, types, (*s.agent_ids, "ego")


def _window_ok(valid: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Bool ``[M, T]``: steps ``t`` with every step of ``[t + lo, t + hi]`` valid (``lo <= 0 <= hi``)."""
    M, T = valid.shape
    c = np.concatenate([np.zeros((M, 1), np.int64), np.cumsum(valid, axis=1)], axis=1)
    t = np.arange(T)
    a, b = t + lo, t + hi + 1
    inside = (a >= 0) & (b <= T)
    ok = np.zeros((M, T), bool)
    ok[:, inside] = (c[:, b[inside]] - c[:, a[inside]]) == (hi - lo + 1)
    return ok


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """``x[:, t + k]`` along axis 1 (edge values where out of range; callers mask those steps)."""
    T = x.shape[1]
    idx = np.clip(np.arange(T) + k, 0, T - 1)
    return x[:, idx]


def _kinematic_issues(s: Scenario) -> list[Issue]:
    states, valid, types, subjects = _tracks(s)
    K, dt = WINDOW_STEPS, s.dt
    p = states[..., :2]
    fields = ("speed", "accel", "jerk", "curvature")
    table = np.zeros((max(AgentType) + 1, len(fields)))  # limits by type value
    for t in AgentType:
        table[t] = [getattr(LIMITS[t], f) for f in fields]
    lim = dict(zip(fields, table[types].T))  # each [M]
    ok2 = _window_ok(valid, -K, K)
    ok4 = _window_ok(valid, -2 * K, 2 * K)
    h = K * dt
    vel = (_shift(p, K) - _shift(p, -K)) / (2 * h)
    speed = np.where(ok2, np.linalg.norm(vel, axis=-1), 0.0)
    acc = np.where(ok2, np.linalg.norm(_shift(p, K) - 2 * p + _shift(p, -K), axis=-1) / h**2, 0.0)
    jerk3 = _shift(p, 2 * K) - 2 * _shift(p, K) + 2 * _shift(p, -K) - _shift(p, -2 * K)
    jerk = np.where(ok4, np.linalg.norm(jerk3, axis=-1) / (2 * h**3), 0.0)
    yaw = states[..., YAW]
    yaw_rate = np.abs(np.angle(np.exp(1j * (_shift(yaw, K) - _shift(yaw, -K))))) / (2 * h)
    fast = ok2 & (speed >= CURVATURE_MIN_SPEED)
    curv = np.where(fast, yaw_rate / np.maximum(speed, 1e-6), 0.0)
    fd = finite_difference_velocity(p, valid, dt)
    vel_err = np.where(valid, np.linalg.norm(states[..., 3:5] - fd, axis=-1), 0.0)

    out: list[Issue] = []
    checks = (
        ("speed", speed, lim["speed"], "m/s"),
        ("acceleration", acc, lim["accel"], "m/s^2"),
        ("jerk", jerk, lim["jerk"], "m/s^3"),
        ("curvature", curv, lim["curvature"], "1/m"),
        ("velocity", vel_err, np.full(len(types), VELOCITY_TOLERANCE), "m/s off the positions'"),
    )
    for kind, value, limit, unit in checks:
        bad = value > limit[:, None]
        for m in np.flatnonzero(bad.any(axis=1)):
            t = int(np.argmax(value[m]))
            detail = f"{value[m, t]:.3g} {unit} (limit {limit[m]:.3g}) at t = {s.timestamps[t]:.1f} s"
            out.append(Issue(kind, subjects[m], detail))
    return out


def finite_difference_velocity(p: np.ndarray, valid: np.ndarray, dt: float) -> np.ndarray:
    """Velocities ``[M, T, 2]`` from positions ``[M, T, 2]``: central differences where both
    neighbours are valid, one-sided at the ends of valid spans, zero where nothing is known."""
    nxt, prv = _shift(valid, 1), _shift(valid, -1)
    t = np.arange(valid.shape[1])
    nxt = nxt & (t < valid.shape[1] - 1)
    prv = prv & (t > 0)
    pn, pp = _shift(p, 1), _shift(p, -1)
    central = (pn - pp) / (2 * dt)
    forward = (pn - p) / dt
    backward = (p - pp) / dt
    v = np.where((valid & nxt & prv)[..., None], central, 0.0)
    v = np.where((valid & nxt & ~prv)[..., None], forward, v)
    return np.where((valid & prv & ~nxt)[..., None], backward, v)


def _ego_dims(s: Scenario) -> torch.Tensor:
    """``[4]`` (length, width, wheelbase, rear_axle_to_center) of the scenario's ego, m."""
    v = s.ego_vehicle
    return torch.tensor([v.length, v.width, v.wheelbase, v.rear_axle_to_center], dtype=torch.float64)


def _ego_box(s: Scenario, t: int) -> np.ndarray:
    """Ego box ``(x, y, yaw, length, width)`` at step ``t`` (centre from the rear axle)."""
    return ego_box(torch.tensor(s.ego[t, :3], dtype=torch.float64), _ego_dims(s)).numpy()


def _overlap_issues(s: Scenario) -> list[Issue]:
    h = s.history_steps
    idx = np.flatnonzero(s.agent_valid[:, h])
    boxes = np.concatenate(
        [np.concatenate([s.agents[idx, h, :3], s.agent_sizes[idx]], axis=1), _ego_box(s, h)[None]]
    )
    names = [s.agent_ids[i] for i in idx] + ["ego"]
    # broad phase: only pairs whose bounding circles meet go to the separating-axis test
    radius = 0.5 * np.hypot(boxes[:, 3], boxes[:, 4])
    dist = np.linalg.norm(boxes[:, None, :2] - boxes[None, :, :2], axis=-1)
    i, j = np.nonzero(np.triu(dist <= radius[:, None] + radius[None, :], k=1))
    b = torch.from_numpy(boxes)
    hit = box_overlap(b[i], b[j]).numpy()
    i, j = i[hit], j[hit]
    when = f"boxes overlap at the start step (t = {s.timestamps[h]:.1f} s)"
    return [Issue("overlap", "|".join(sorted((names[a], names[c]))), when) for a, c in zip(i, j)]


def _offroad_issues(s: Scenario) -> list[Issue]:
    """Vehicles and cyclists (and the ego) whose box centre leaves the drivable area at a valid
    step; points outside the map's extent are not judged (the map holds nothing there)."""
    states, valid, types, subjects = _tracks(s)
    ego_center = _ego_box_centres(s)
    xy = states[..., :2].copy()
    xy[-1] = ego_center
    road = np.isin(types, [int(t) for t in ON_ROAD_TYPES])
    judged = valid & road[:, None] & _in_extent(s.map, xy)
    off = np.zeros_like(judged)
    off[judged] = ~on_drivable(s.map, xy[judged])
    return [
        Issue("offroad", subjects[m], f"off the drivable area at t = {s.timestamps[int(np.argmax(off[m]))]:.1f} s")
        for m in np.flatnonzero(off.any(axis=1))
    ]


def _ego_box_centres(s: Scenario) -> np.ndarray:
    return box_centre(torch.tensor(s.ego[:, :3], dtype=torch.float64), _ego_dims(s)[3]).numpy()


def find_issues(scenario: Scenario, known: Collection[tuple[str, str]] = ()) -> list[Issue]:
    """Every plausibility issue of ``scenario`` whose ``(kind, subject)`` is not in ``known``."""
    issues = _overlap_issues(scenario) + _offroad_issues(scenario) + _kinematic_issues(scenario)
    return [i for i in issues if i.key not in known]


def issue_keys(scenario: Scenario) -> frozenset[tuple[str, str]]:
    """``(kind, subject)`` of every issue of ``scenario`` (a parent's, to judge its variants by)."""
    return frozenset(i.key for i in find_issues(scenario))


def check(scenario: Scenario, parent: Scenario | None = None) -> list[str]:
    """Plausibility problems of ``scenario`` as one-line messages (empty = plausible).

    With ``parent``, problems the parent already has (same kind, same agent) are not reported:
    a variant is judged on what its transform added.
    """
    known = issue_keys(parent) if parent is not None else frozenset()
    return [i.message for i in find_issues(scenario, known)]


__all__ = [
    "CURVATURE_MIN_SPEED",
    "Issue",
    "KinematicLimits",
    "LIMITS",
    "WINDOW_STEPS",
    "check",
    "find_issues",
    "finite_difference_velocity",
    "issue_keys",
    "map_extent",
    "on_drivable",
]
