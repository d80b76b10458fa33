"""Traffic for the synthetic drives (:mod:`av.data.synth`): who is where, and a 10 Hz simulation.

Every moving actor (the ego, cars, trucks, a cyclist, pedestrians) follows a fixed path (a lane
sequence, or a walk across a crossing) sampled every ``DS`` m; its state is the arc length ``s``
and speed ``v`` along it. One step updates all actors at once with numpy:

* **Car following** (IDM): the gap to the nearest thing in the actor's corridor, its path ahead
  (40 m) widened by the two half-widths; anything counts: vehicles, pedestrians, parked cars.
* **Speed**: lane speed limits times the driver's factor (the ego: 0.95) and a bound on lateral
  acceleration in curves (the ego: 1.8 m/s^2), planned backwards along the path so that
  braking for a curve or a slower lane takes at most 1.5 m/s^2.
* **Junctions**: before entering a lane connector a vehicle requests it; it is granted when no
  conflicting connector (crossing or merging, :attr:`Network.conflicts`) is held by a vehicle
  not yet past the conflict, and no conflicting request came earlier (first come, first
  served). Otherwise the vehicle waits at the junction mouth, before any crossing there; so
  does a vehicle that would have to stop for pedestrians just past the junction. Requests are
  made by the distance to where the vehicle would wait.
* **Crossings**: a pedestrian steps onto the road only when no vehicle that could not stop
  comfortably is heading for a lane they reach within 6 m; vehicles yield to pedestrians who
  are that close to their lane or on it, stopping 1 m before the crossing (the ego: 2.5 m).
* **Events**: a lead vehicle in front of the ego (on the ego's path) brakes hard once, after a
  random time, when both are on the same road lane, at least 8 m before its end, and the lead
  is at most 30 m ahead of the ego's rear axle.
* The ego obeys all of it within -2.4..1.8 m/s^2 and 4 m/s^3.

After a run every pair of boxes is checked at every step; an actor in any overlap (never the ego)
is removed and the run repeated, so the written traffic never collides. The ego is meant to be
the reference driver of closed-loop evaluation, so it must also pass the nuPlan time-to-collision
check when replayed; the run is checked for near misses of the ego (:func:`near_miss`, stricter
than nuPlan's check) and repeated until there are none (after 8 reruns: removing the other actor). A near miss in a junction (typically: the
ego's straight-ahead projection in a right turn reaching oncoming traffic) makes the ego take that
junction 20 % slower than it did (not below 1.5 m/s); then, or for one just before a junction,
the ego waits 1 s longer at its mouth; any other near miss (oncoming traffic in a bend) removes
the other actor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from av import idm
from av.data.synth_roads import (
    LANE_WIDTH,
    SHOULDER,
    Network,
    chain_length,
    polyline,
    sample_at,
)
from av.checks import box_overlap, moved_on
from av.types import VehicleParams
from av.vehicle import box_centre

DS = 0.25
"""Path sampling step, m."""
_LOOK_STRIDE = 4  # corridor points every 1 m
_LOOK_POINTS = 41  # ... up to 40 m ahead of the front bumper
_SAFETY_MARGIN = 0.15  # boxes are grown by this on every side for the overlap check, m
_COMMIT_DECEL = 2.0  # a vehicle that needs more than this to stop before a conflict is committed
_REQUEST_DECEL = 1.5  # requests are made early enough to stop with this, m/s^2
_NEAR_M = 50.0  # actors are placed this close to the first 120 m of the ego's route
_PED_REACH = 6.0  # a pedestrian this close (m) to a lane, or on it, has right of way over it
# The ego's near-miss check (:func:`near_miss`), stricter than nuPlan's time to collision
_TTC_S = 1.1  # boxes are projected this far ahead (nuPlan: 0.9 s), s
_TTC_MARGIN = 0.2  # the ego's box is grown by this on every side, m
_TTC_AHEAD_DEG = 33.0  # candidates this far off the ego's heading (nuPlan: 30 degrees), outside junctions
# ... and what a near miss at a junction changes before the drive is run again
_MAX_RETRIES = 8  # reruns per drive
_SLOWER = 0.8  # in the junction: the ego's speed limit there becomes this times its speed at the near miss
_MIN_TURN_SPEED = 1.5  # ... but not below this, m/s; then it lets the other actor pass first:
_WAIT_S = 1.0  # ... it enters the junction this much later than it did (or than it last waited), s
_MOUTH_M = 8.0  # a near miss with the ego's front this close before a junction also counts as at it, m
ZOE = VehicleParams()


@dataclass(frozen=True)
class Style:
    """Driving parameters of an actor kind, SI units: its parameter set of the IDM law
    (:mod:`av.idm`; the free-road term is this generator's own, see :func:`simulate`) and its
    comfort limits. The kinds are genuinely different drivers, so each has its own values."""

    accel: float  # IDM acceleration
    decel: float  # IDM comfortable deceleration
    headway: float  # IDM time headway, s
    min_gap: float  # IDM standstill gap (beyond the corridor's own ~1 m margin), m
    acc_min: float
    acc_max: float
    jerk: float  # |da/dt| bound, m/s^3
    a_lat: float  # lateral acceleration in curves
    crossing_gap: float  # distance (m) from the front bumper to a pedestrian crossing when stopped for it


STYLES = {
    "ego": Style(1.2, 1.8, 1.6, 1.5, -2.4, 1.8, 4.0, 1.8, 2.5),
    "car": Style(1.5, 2.0, 1.3, 1.5, -4.5, 2.5, 10.0, 2.2, 1.0),
    "truck": Style(1.0, 1.8, 1.6, 2.0, -4.0, 1.5, 10.0, 1.8, 1.0),
    "bicycle": Style(1.0, 1.5, 1.2, 1.0, -3.5, 1.5, 10.0, 2.0, 1.0),
    "pedestrian": Style(1.0, 1.5, 0.8, 0.3, -3.0, 1.5, 20.0, 3.0, 0.0),
}
CATEGORIES = {
    "ego": "",
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "parked": "vehicle.car",
    "cone": "movable_object.trafficcone",
}


@dataclass(frozen=True, eq=False)
class Path:
    """A path sampled every ``DS`` m: ``xy`` ``[P, 2]``, ``heading`` ``[P]`` rad, ``vmax`` ``[P]``
    (speed allowed there, m/s). ``lanes``: the lane indices it runs through, starting at arc
    lengths ``lane_start`` ``[n + 1]`` (the last entry is the path length); empty for walks."""

    xy: np.ndarray
    heading: np.ndarray
    vmax: np.ndarray
    lanes: tuple[int, ...] = ()
    lane_start: np.ndarray = field(default_factory=lambda: np.zeros(1))

    @property
    def length(self) -> float:
        return (len(self.xy) - 1) * DS

    def at(self, s: float) -> np.ndarray:
        """Pose ``[3]`` at arc length ``s`` (nearest sample)."""
        i = int(np.clip(round(s / DS), 0, len(self.xy) - 1))
        return np.array([*self.xy[i], self.heading[i]])

    def locate(self, s: float) -> tuple[int, float]:
        """The lane (index into the network) at arc length ``s`` and the arc length along it."""
        j = int(np.clip(np.searchsorted(self.lane_start, s, side="right") - 1, 0, len(self.lanes) - 1))
        return self.lanes[j], s - float(self.lane_start[j])


def make_path(pieces: np.ndarray, limits: np.ndarray, a_lat: float, piece_lane: np.ndarray | None = None,
              lanes: tuple[int, ...] = ()) -> Path:
    """Sample a chain of pieces; ``limits`` ``[M]`` speed limit per piece (m/s)."""
    total = chain_length(pieces)
    s = np.arange(int(total / DS) + 1) * DS
    pose, idx = sample_at(pieces, s)
    curvature = np.abs(pieces[idx, 4])
    vmax = np.minimum(limits[idx], np.sqrt(a_lat / np.maximum(curvature, 1e-6)))
    starts = np.zeros(1)
    if piece_lane is not None:
        cum = np.concatenate([[0.0], np.cumsum(pieces[:, 3])])
        first = np.searchsorted(piece_lane, np.arange(len(lanes)))
        starts = np.concatenate([cum[first], [total]])
    return Path(pose[:, :2], pose[:, 2], vmax, lanes, starts)


def lane_path(net: Network, lanes: list[int], factor: float, a_lat: float) -> Path:
    """The path along a lane sequence, at ``factor`` x the speed limits."""
    pieces = np.concatenate([net.lanes[i].pieces for i in lanes])
    piece_lane = np.repeat(np.arange(len(lanes)), [len(net.lanes[i].pieces) for i in lanes])
    limits = np.array([net.lanes[lanes[k]].speed_limit for k in piece_lane]) * factor
    return make_path(pieces, limits, a_lat, piece_lane, tuple(lanes))


@dataclass(eq=False)
class Actor:
    """One actor of a drive. Sizes ``(w, l, h)`` m (nuScenes order).

    Moving actors have a ``path``, start arc length ``s0`` (the box centre; the ego's rear axle)
    and speed ``v0``. Pedestrians wait at ``gate`` (arc length) until ``t_intent`` s and a safe
    gap, and have crossed at ``far``; ``crosswalk`` is the crossing's index, ``side`` the kerb
    they start from (+1: left of the road's direction). ``role`` is "ego", "lead" or "". The lead
    drives the ego's lanes (its arc lengths are the ego's) and has a braking event
    ``brake = (earliest start s, duration s, target speed m/s)``. Static actors have ``pose``
    (x, y, yaw).
    """

    kind: str
    size: tuple[float, float, float]
    path: Path | None = None
    s0: float = 0.0
    v0: float = 0.0
    pose: tuple[float, float, float] | None = None
    crosswalk: int = -1
    side: float = 0.0
    gate: float = math.inf
    far: float = math.inf
    t_intent: float = math.inf
    brake: tuple[float, float, float] | None = None
    role: str = ""

    @property
    def style(self) -> Style:
        return STYLES[self.kind]


@dataclass(frozen=True)
class Drive:
    """A simulated drive, ``T`` steps of ``dt`` s, ``N`` actors (``actors[0]`` is the ego).

    ``pose`` ``[N, T, 3]``: box centre (the ego's rear axle) x, y, yaw; ``speed`` ``[N, T]`` m/s;
    ``active`` bool ``[N, T]``: present (actors that drive off the map edge stop being active).
    ``route``: the ego's lane sequence; ``tags``: what happens in the drive.
    """

    actors: tuple[Actor, ...]
    pose: np.ndarray
    speed: np.ndarray
    active: np.ndarray
    route: tuple[int, ...]
    tags: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Placing actors


def _route(net: Network, rng: np.random.Generator, first: list[int], length: float) -> list[int]:
    """``first`` continued by random successors until ``length`` m or a dead end."""
    lanes = list(first)
    total = sum(net.lanes[i].length for i in lanes)
    while total < length and net.successors[lanes[-1]]:
        nxt = net.successors[lanes[-1]]
        lanes.append(int(nxt[rng.integers(len(nxt))]))
        total += net.lanes[lanes[-1]].length
    return lanes


def _profile(path: Path, b: float) -> np.ndarray:
    """Speed ``[P]`` from which a car can brake at ``b`` to respect ``vmax`` everywhere ahead."""
    s = np.arange(len(path.vmax)) * DS
    reach = np.minimum.accumulate((path.vmax**2 + 2 * b * s)[::-1])[::-1]
    return np.sqrt(np.maximum(reach - 2 * b * s, 0.0))


def _ego(net: Network, rng: np.random.Generator, duration: float, approach_m: tuple[float, float],
         ) -> tuple[Actor, list[int], str]:
    """The ego on a route that takes a junction turn (most drives) or goes straight through,
    starting ``approach_m`` (a range, m) before the junction."""
    turns = ("left", "right")
    want = rng.random() < 0.85
    need = 14.0 * duration + 30.0
    first = [i for i, lane in enumerate(net.lanes) if (lane.movement in turns) == want and lane.is_connector]
    other = [i for i, lane in enumerate(net.lanes) if (lane.movement in turns) != want and lane.is_connector]
    for c in [*rng.permutation(first), *rng.permutation(other)]:
        approach = float(rng.uniform(*approach_m))
        back = [int(net.predecessors[c][0])]
        while sum(net.lanes[i].length for i in back) < approach + 10 and net.predecessors[back[0]]:
            p = net.predecessors[back[0]]
            back.insert(0, int(p[rng.integers(len(p))]))
        before = sum(net.lanes[i].length for i in back)
        if before < approach + 10:
            continue
        for _ in range(5):
            lanes = _route(net, rng, [*back, int(c)], need + before - approach)
            if sum(net.lanes[i].length for i in lanes) >= need + before - approach:
                break
        else:
            continue
        path = lane_path(net, lanes, 0.95, STYLES["ego"].a_lat)
        s0 = before - approach
        v0 = min(float(rng.uniform(6, 11)), float(_profile(path, 1.5)[int(s0 / DS)]))
        size = (ZOE.width, ZOE.length, 1.56)
        return Actor("ego", size, path, s0, v0, role="ego"), lanes, net.lanes[int(c)].movement
    raise RuntimeError(f"{net.location}: no route for the ego")


def _vehicle_size(rng: np.random.Generator, kind: str) -> tuple[float, float, float]:
    if kind == "truck":
        return (float(rng.uniform(2.3, 2.55)), float(rng.uniform(6.5, 8.5)), float(rng.uniform(2.8, 3.4)))
    if kind == "bicycle":
        return (float(rng.uniform(0.6, 0.7)), float(rng.uniform(1.7, 1.9)), float(rng.uniform(1.3, 1.6)))
    return (float(rng.uniform(1.75, 2.0)), float(rng.uniform(4.2, 4.9)), float(rng.uniform(1.45, 1.75)))


class _Placer:
    """Keeps actors apart when they are placed (centre distances, spacing along lanes)."""

    def __init__(self) -> None:
        self.xy: list[np.ndarray] = []
        self.radius: list[float] = []
        self.on_lane: list[tuple[int, float, float, float]] = []  # lane, centre s, half length, speed

    def free(self, xy: np.ndarray, radius: float, lane: int = -1, s: float = 0.0, half: float = 0.0,
             v: float = 0.0) -> bool:
        for p, r in zip(self.xy, self.radius):
            if np.hypot(*(p - xy)) < r + radius + 0.5:
                return False
        for lane_o, s_o, half_o, v_o in self.on_lane:
            if lane_o == lane and abs(s_o - s) < half + half_o + 3.0 + 1.5 * max(v, v_o):
                return False
        return True

    def add(self, xy: np.ndarray, radius: float, lane: int = -1, s: float = 0.0, half: float = 0.0,
            v: float = 0.0) -> None:
        self.xy.append(np.asarray(xy, dtype=np.float64))
        self.radius.append(radius)
        if lane >= 0:
            self.on_lane.append((lane, s, half, v))


def _near_lanes(net: Network, region: cKDTree, radius: float) -> list[int]:
    """Road lanes (not connectors) that come within ``radius`` m of the ``region`` points."""
    out = []
    for i, lane in enumerate(net.lanes):
        if lane.is_connector:
            continue
        pts = sample_at(lane.pieces, np.linspace(0, lane.length, max(2, int(lane.length / 4))))[0][:, :2]
        if region.query(pts)[0].min() <= radius:
            out.append(i)
    return out


def _in_crossing(net: Network, lane: int, s: float, half: float) -> bool:
    return any(s0 - half - 3 < s < s1 + half + 3 for _, s0, s1 in net.crossings[lane])


def populate(net: Network, rng: np.random.Generator, duration: float) -> tuple[list[Actor], list[int], str]:
    """Actors for one drive (``[0]`` is the ego), the ego's route and its junction movement."""
    with_lead = rng.random() < 0.65  # then the ego starts farther from its junction: room to brake
    ego, route, movement = _ego(net, rng, duration, (45.0, 70.0) if with_lead else (25.0, 55.0))
    actors = [ego]
    placer = _Placer()
    ego_centre = ego.s0 + ZOE.rear_axle_to_center
    placer.add(ego.path.at(ego_centre)[:2], ZOE.length / 2, *ego.path.locate(ego_centre), ZOE.length / 2, ego.v0)
    region = cKDTree(ego.path.xy[int(ego.s0 / DS) : int((ego.s0 + 120.0) / DS)])  # about as far as the ego gets
    near = _near_lanes(net, region, _NEAR_M)

    if with_lead:
        _place_lead(net, rng, ego, actors, placer)

    placed = 0
    for kind in ["car"] * int(rng.integers(12, 24)) + (["bicycle"] if rng.random() < 0.35 else []):
        kind = "truck" if kind == "car" and rng.random() < 0.1 else kind
        placed += any(_place_vehicle(net, rng, kind, near, region, _NEAR_M, 35.0, duration, actors, placer)
                      for _ in range(20))
    wider = _near_lanes(net, region, 2 * _NEAR_M)  # where the ego's surroundings are small or full
    for _ in range(max(0, 8 - placed)):
        any(_place_vehicle(net, rng, "car", wider, region, 2 * _NEAR_M, 15.0, duration, actors, placer)
            for _ in range(20))
    _place_pedestrians(net, rng, ego, region, actors, placer)
    _place_static(net, rng, near, actors, placer)
    return actors, route, movement


def _place_lead(net: Network, rng: np.random.Generator, ego: Actor, actors: list[Actor], placer: _Placer) -> None:
    """A slower car 12-22 m ahead of the ego on its lanes, which brakes once (see :func:`simulate`)."""
    size = _vehicle_size(rng, "car")
    half = size[1] / 2
    path = lane_path(net, list(ego.path.lanes), 0.75, STYLES["car"].a_lat)
    s = ego.s0 + ZOE.rear_axle_to_center + ZOE.length / 2 + float(rng.uniform(12, 22)) + half
    lane, lane_s = ego.path.locate(s)
    if net.lanes[lane].is_connector or _in_crossing(net, lane, lane_s, half) or not placer.free(path.at(s)[:2], half):
        return
    v0 = min(ego.v0, float(_profile(path, 1.5)[int(s / DS)]))
    brake = (float(rng.uniform(0.3, 2)), float(rng.uniform(1.5, 3.5)), float(rng.uniform(0, 0.4)) * max(v0, 6.0))
    actors.append(Actor("car", size, path, s, v0, brake=brake, role="lead"))
    placer.add(path.at(s)[:2], half, lane, lane_s, half, v0)


def _place_vehicle(net: Network, rng: np.random.Generator, kind: str, near: list[int], region: cKDTree,
                   radius: float, clear: float, duration: float, actors: list[Actor], placer: _Placer) -> bool:
    """Try once to place a ``kind`` vehicle on one of the lanes ``near``, within ``radius`` m of
    the ``region`` and, if its lane leads into a junction, at least ``clear`` m before it; its
    route reaches beyond where it can get in ``duration`` s, unless it ends at the map edge."""
    cands = [i for i in near if kind != "bicycle" or net.lanes[i].index == net.roads[net.lanes[i].road].lanes_per_side - 1]
    if not cands:
        return False
    weights = np.array([net.lanes[i].length for i in cands])
    lane = int(cands[rng.choice(len(cands), p=weights / weights.sum())])
    size = _vehicle_size(rng, kind)
    half = size[1] / 2
    length = net.lanes[lane].length
    if length < 2 * half + 6:
        return False
    s = float(rng.uniform(half + 3, length - half - 3))
    if _in_crossing(net, lane, s, half) or (net.successors[lane] and length - s - half < clear):
        return False  # (almost) no queues at junctions at the start: they build up during the drive
    xy = sample_at(net.lanes[lane].pieces, np.array([s]))[0][0, :2]
    if region.query(xy)[0] > radius:
        return False
    route = _route(net, rng, [lane], s + 14.0 * duration + 20.0)
    path = lane_path(net, route, float(rng.uniform(0.8, 1.0)), STYLES[kind].a_lat)
    if kind == "bicycle":
        path = Path(path.xy, path.heading, np.minimum(path.vmax, rng.uniform(4, 6)), path.lanes, path.lane_start)
    v0 = min(float(rng.uniform(0.4, 1.0)) * float(path.vmax[int(s / DS)]), float(_profile(path, 1.5)[int(s / DS)]))
    if not placer.free(xy, half, lane, s, half, v0):
        return False
    placer.add(xy, half, lane, s, half, v0)
    actors.append(Actor(kind, size, path, s, v0))
    return True


def _place_pedestrians(net: Network, rng: np.random.Generator, ego: Actor, region: cKDTree,
                       actors: list[Actor], placer: _Placer) -> None:
    """1-3 pedestrians at each of up to two crossings near the ego's way (one on it if any)."""
    near = [k for k, cw in enumerate(net.crosswalks) if region.query(cw.centre)[0] < _NEAR_M]
    on_route = [k for k in near if any(c == k for lane in ego.path.lanes for c, _, _ in net.crossings[lane])]
    chosen = list(rng.permutation(on_route)[:1]) + list(rng.permutation([k for k in near if k not in on_route])[:1])
    for k in chosen:
        # at a junction mouth people come and go along the road away from the junction
        away = net.crosswalks[int(k)].away
        come = {side: float(away or rng.choice([-1.0, 1.0])) for side in (-1.0, 1.0)}
        start = float(rng.uniform(0.0, 8.0))  # people at a crossing go about together
        for _ in range(int(rng.integers(1, 4))):
            side = float(rng.choice([-1.0, 1.0]))
            ped = _pedestrian(net, rng, int(k), side, come[side], start + float(rng.uniform(0.0, 2.0)))
            xy = ped.path.at(ped.s0)[:2]
            if placer.free(xy, 0.6):
                placer.add(xy, 0.6)
                actors.append(ped)


def _pedestrian(net: Network, rng: np.random.Generator, k: int, side: float, come: float, t_intent: float) -> Actor:
    """A pedestrian who walks along a sidewalk to crossing ``k`` from the kerb ``side`` (+1:
    left of the road's direction) coming from the ``come`` x road direction, crosses from
    ``t_intent`` s on (when it is safe), and walks on.

    Walkers keep to the right: on the crossing 0.8 m right of its middle, on a sidewalk 1.2 m or
    2.2 m from the kerb by direction, so people walking opposite ways never meet head-on.
    """
    cw = net.crosswalks[k]
    u = np.array([math.cos(cw.heading), math.sin(cw.heading)])
    n = np.array([-u[1], u[0]])
    go = float(cw.away or rng.choice([-1.0, 1.0]))  # leave towards +-u
    hw = cw.half_length
    lane_in = hw + 1.7 + 0.5 * side * come  # walking direction along u is -come while approaching
    lane_out = hw + 1.7 + 0.5 * side * go  # ... and +go on the far side (where the side is -side)
    track = -0.8 * side * u
    start = cw.centre + side * lane_in * n + track + come * float(rng.uniform(5, 18)) * u
    corners = np.stack([
        start,
        cw.centre + side * lane_in * n + track,
        cw.centre - side * lane_out * n + track,
        cw.centre - side * lane_out * n + track + go * 30.0 * u,
    ])
    pieces = polyline(corners, np.array([0.0, 0.6, 0.6, 0.0]))
    speed = float(rng.uniform(1.1, 1.6))
    path = make_path(pieces, np.full(len(pieces), speed), STYLES["pedestrian"].a_lat)
    lateral = (path.xy - cw.centre) @ n * side
    gate = float(np.argmax(lateral < hw + 0.4) * DS)
    far = float(np.argmax(lateral < -hw - 0.4) * DS)
    size = (float(rng.uniform(0.55, 0.75)), float(rng.uniform(0.55, 0.8)), float(rng.uniform(1.55, 1.9)))
    s0 = float(rng.uniform(0.0, max(gate - 3.0, 0.0)))
    return Actor("pedestrian", size, path, s0, 0.0, crosswalk=k, side=side, gate=gate, far=far, t_intent=t_intent)


def _place_static(net: Network, rng: np.random.Generator, near: list[int], actors: list[Actor],
                  placer: _Placer) -> None:
    """Parked cars (0-4) and sometimes a row of cones on the shoulders of nearby roads."""
    roads = sorted({net.lanes[i].road for i in near})
    plan = ["parked"] * int(rng.integers(0, 5)) + (["cone"] if rng.random() < 0.3 else [])
    for kind in plan:
        for _ in range(10):
            ri = int(rng.choice(roads))
            road = net.roads[ri]
            total = chain_length(road.centre)
            s = float(rng.uniform(road.trim[0] + 8, total - road.trim[1] - 8))
            if any(cw.road == ri and abs(cw.s - s) < 8 for cw in net.crosswalks):
                continue
            pose, i = sample_at(road.centre, np.array([s - 6, s, s + 6]))
            if np.any(road.centre[i, 4] != 0.0):
                continue
            side = float(rng.choice([-1.0, 1.0]))  # -1: right of the centreline's direction
            h = pose[1, 2] if side < 0 else pose[1, 2] + math.pi
            normal = np.array([-math.sin(pose[1, 2]), math.cos(pose[1, 2])])
            base = pose[1, :2] + side * (road.lanes_per_side * LANE_WIDTH + SHOULDER / 2) * normal
            direction = np.array([math.cos(h), math.sin(h)])
            if kind == "parked":
                size = _vehicle_size(rng, "car")
                items = [(base, size)]
            else:
                items = [(base + d * direction, (0.4, 0.4, 0.7)) for d in (-1.5, 0.0, 1.5)]
            if not all(placer.free(xy, sz[1] / 2 + 0.5) for xy, sz in items):
                continue
            for xy, sz in items:
                placer.add(xy, sz[1] / 2 + 0.5)
                actors.append(Actor(kind, sz, pose=(float(xy[0]), float(xy[1]), float(h))))
            break


# ---------------------------------------------------------------------------------------------
# Simulation


@dataclass
class _Arrays:
    """The moving actors as padded arrays (``A`` actors, ``P`` path samples)."""

    xy: np.ndarray  # [A, P, 2]
    heading: np.ndarray  # [A, P]
    profile: np.ndarray  # [A, P] speed from which braking at comfort respects every limit ahead
    n_pts: np.ndarray  # [A]
    length: np.ndarray  # [A]
    width: np.ndarray  # [A]
    centre: np.ndarray  # [A] box centre ahead of the reference point (the ego's rear axle)
    is_ped: np.ndarray
    is_vehicle: np.ndarray
    style: dict[str, np.ndarray]
    conn: np.ndarray  # [A, K] connector lane ids on the path, -1 padded
    conn_s: np.ndarray  # [A, K, 2] their arc-length spans
    cross: np.ndarray  # [A, Z] crosswalk ids on the path, -1 padded
    cross_s: np.ndarray  # [A, Z, 2]
    cross_lat: np.ndarray  # [A, Z] where the path crosses: offset (m) left of the crossing's middle
    crosswalk: np.ndarray  # [A] pedestrians: their crossing
    side: np.ndarray  # [A] pedestrians: the kerb they start from (+1 left, -1 right)
    cw_centre: np.ndarray  # [C, 2] crossings' middles
    cw_normal: np.ndarray  # [C, 2] unit vectors across the road (to the left of its direction)
    gate: np.ndarray
    far: np.ndarray
    t_intent: np.ndarray
    brake: np.ndarray  # [A, 3] earliest start, duration, speed (start inf: none)


def _arrays(net: Network, actors: list[Actor]) -> _Arrays:
    A = len(actors)
    P = max(len(a.path.xy) for a in actors)
    xy = np.zeros((A, P, 2))
    heading = np.zeros((A, P))
    profile = np.zeros((A, P))
    conns: list[list[tuple[int, float, float]]] = []
    crosses: list[list[tuple[int, float, float]]] = []
    for k, a in enumerate(actors):
        p = a.path
        n = len(p.xy)
        xy[k, :n], heading[k, :n], profile[k, :n] = p.xy, p.heading, _profile(p, 1.5)
        xy[k, n:], heading[k, n:] = p.xy[-1], p.heading[-1]
        conns.append([(lane, p.lane_start[j], p.lane_start[j + 1]) for j, lane in enumerate(p.lanes)
                      if net.lanes[lane].is_connector])
        crosses.append([(c, p.lane_start[j] + s0, p.lane_start[j] + s1) for j, lane in enumerate(p.lanes)
                        for c, s0, s1 in net.crossings[lane]])

    def pad(rows: list[list[tuple[int, float, float]]]) -> tuple[np.ndarray, np.ndarray]:
        K = max(1, max(len(r) for r in rows))
        ids = np.full((A, K), -1)
        spans = np.full((A, K, 2), math.inf)
        for k, r in enumerate(rows):
            for j, (i, s0, s1) in enumerate(r):
                ids[k, j], spans[k, j] = i, (s0, s1)
        return ids, spans

    conn, conn_s = pad(conns)
    cross, cross_s = pad(crosses)
    cw_centre = np.array([cw.centre for cw in net.crosswalks] or [np.zeros(2)])
    cw_normal = np.array([[-math.sin(cw.heading), math.cos(cw.heading)] for cw in net.crosswalks] or [np.zeros(2)])
    at = np.clip((np.where(cross >= 0, cross_s[..., 0], 0.0) / DS).astype(np.int64), 0, P - 1)
    where = xy[np.arange(A)[:, None], at] - cw_centre[np.maximum(cross, 0)]
    cross_lat = (where * cw_normal[np.maximum(cross, 0)]).sum(-1)
    styles = [a.style for a in actors]
    return _Arrays(
        xy=xy, heading=heading, profile=profile,
        n_pts=np.array([len(a.path.xy) for a in actors]),
        length=np.array([a.size[1] for a in actors]),
        width=np.array([a.size[0] for a in actors]),
        centre=np.array([ZOE.rear_axle_to_center if a.kind == "ego" else 0.0 for a in actors]),
        is_ped=np.array([a.kind == "pedestrian" for a in actors]),
        is_vehicle=np.array([a.kind != "pedestrian" for a in actors]),
        style={f: np.array([getattr(s, f) for s in styles]) for f in Style.__dataclass_fields__},
        conn=conn, conn_s=conn_s, cross=cross, cross_s=cross_s, cross_lat=cross_lat,
        crosswalk=np.array([a.crosswalk for a in actors]),
        side=np.array([a.side for a in actors]),
        cw_centre=cw_centre, cw_normal=cw_normal,
        gate=np.array([a.gate for a in actors]),
        far=np.array([a.far for a in actors]),
        t_intent=np.array([a.t_intent for a in actors]),
        brake=np.array([a.brake if a.brake else (math.inf, 0.0, 0.0) for a in actors]),
    )


def _lookup(ar: _Arrays, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position ``[..., 2]`` and heading ``[...]`` at arc lengths ``s`` ``[A, ...]`` of each path."""
    f = np.clip(s / DS, 0.0, (ar.n_pts - 1).reshape((-1,) + (1,) * (s.ndim - 1)))
    i = np.minimum(f.astype(np.int64), ar.xy.shape[1] - 2)
    w = f - i
    rows = np.arange(len(s)).reshape((-1,) + (1,) * (s.ndim - 1))
    xy = ar.xy[rows, i] * (1 - w[..., None]) + ar.xy[rows, i + 1] * w[..., None]
    dh = (ar.heading[rows, i + 1] - ar.heading[rows, i] + math.pi) % (2 * math.pi) - math.pi
    return xy, ar.heading[rows, i] + w * dh


def _corridor(ar: _Arrays, s: np.ndarray, front: np.ndarray, active: np.ndarray, pos: np.ndarray,
              yaw: np.ndarray, speed: np.ndarray, static: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Gap (m, front bumper to the first obstacle in the corridor; inf if none) and that
    obstacle's speed along the path, ``[A]`` each.

    The corridor is the path ahead (points every metre); an obstacle is in it where a point
    comes closer to the obstacle's capsule (its box axis, radius half its width) than half the
    actor's width plus a 0.35 m margin. ``static``: (xy ``[S, 2]``, yaw, length, width).
    """
    A = len(s)
    sxy, syaw, slen, swid = static
    o_xy = np.concatenate([pos, sxy])
    o_dir = np.stack([np.cos(np.concatenate([yaw, syaw])), np.sin(np.concatenate([yaw, syaw]))], -1)
    o_len = np.concatenate([ar.length, slen])
    o_wid = np.concatenate([ar.width, swid])
    o_vel = np.concatenate([speed[:, None] * o_dir[:A], np.zeros((len(sxy), 2))])
    o_on = np.concatenate([active, np.ones(len(sxy), bool)])
    rel = o_xy[None] - pos[:, None]  # [A, O, 2]
    dist = np.hypot(rel[..., 0], rel[..., 1])
    size = 0.5 * (ar.length[:, None] + o_len[None]) + 2.0
    ahead = rel[..., 0] * o_dir[:A, None, 0] + rel[..., 1] * o_dir[:A, None, 1]  # along each actor's heading
    near = (dist < (_LOOK_POINTS - 1) * DS * _LOOK_STRIDE + size) & (ahead > -size) & active[:, None] & o_on[None]
    near[np.arange(A), np.arange(A)] = False
    pi, pj = np.nonzero(near)
    gap = np.full(A, math.inf)
    vlead = np.zeros(A)
    if len(pi) == 0:
        return gap, vlead
    look_s = front[pi, None] + np.arange(_LOOK_POINTS) * DS * _LOOK_STRIDE  # [M, K]
    look_xy, look_h = _lookup_rows(ar, pi, look_s)
    d = look_xy - o_xy[pj, None]  # [M, K, 2]
    half_axis = 0.5 * np.maximum(o_len[pj] - o_wid[pj], 0.0)[:, None]
    along = np.clip(d[..., 0] * o_dir[pj, None, 0] + d[..., 1] * o_dir[pj, None, 1], -half_axis, half_axis)
    d2 = (d[..., 0] - along * o_dir[pj, None, 0]) ** 2 + (d[..., 1] - along * o_dir[pj, None, 1]) ** 2
    th = 0.5 * ar.width[pi] + 0.5 * o_wid[pj] + 0.35
    hit = (d2 < th[:, None] ** 2) & (look_s < ((ar.n_pts[pi] - 1) * DS)[:, None] + DS)
    has = hit.any(1)
    k = hit.argmax(1)
    g = np.where(has, look_s[np.arange(len(pi)), k] - front[pi], math.inf)
    hk = look_h[np.arange(len(pi)), k]
    vl = np.maximum(0.0, o_vel[pj, 0] * np.cos(hk) + o_vel[pj, 1] * np.sin(hk))
    order = np.lexsort((g, pi))
    first = order[np.unique(pi[order], return_index=True)[1]]
    gap[pi[first]] = g[first]
    vlead[pi[first]] = vl[first]
    return gap, vlead


def _lookup_rows(ar: _Arrays, rows: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_lookup` for the paths ``rows`` ``[M]`` at ``s`` ``[M, K]``."""
    f = np.clip(s / DS, 0.0, (ar.n_pts[rows] - 1)[:, None])
    i = np.minimum(f.astype(np.int64), ar.xy.shape[1] - 2)
    w = f - i
    r = rows[:, None]
    xy = ar.xy[r, i] * (1 - w[..., None]) + ar.xy[r, i + 1] * w[..., None]
    return xy, ar.heading[r, i]


def _next_span(ids: np.ndarray, spans: np.ndarray, rear: np.ndarray) -> tuple[np.ndarray, ...]:
    """The first span on each path that the actor's rear has not yet left: its column in
    ``ids`` ``[A, K]``, its id (-1: none), start and end arc length (inf: none), ``[A]`` each."""
    ahead = (ids >= 0) & (spans[..., 1] >= rear[:, None])
    k = ahead.argmax(1)
    has = ahead.any(1)
    rows = np.arange(len(rear))
    start = np.where(has, spans[rows, k, 0], math.inf)
    return k, np.where(has, ids[rows, k], -1), start, np.where(has, spans[rows, k, 1], math.inf)


def simulate(net: Network, actors: list[Actor], steps: int, dt: float,
             ego_waits: dict[int, float] | None = None) -> tuple[np.ndarray, ...]:
    """Run the moving actors (the ``path`` ones, in order; the ego first) for ``steps`` steps
    of ``dt`` s. Static actors are obstacles only. ``ego_waits``: connector -> time (s) before which
    the ego does not enter it (it waits at the junction mouth).

    Returns poses ``[A, T, 3]`` (x, y, yaw of the box centre; the ego's rear axle), speed
    ``[A, T]`` m/s, ``active`` bool ``[A, T]`` with ``T = steps + 1``, ``braked`` bool
    ``[A]``: the actor's braking event happened, and the arc lengths ``[A, T]`` along the paths.
    """
    moving = [a for a in actors if a.path is not None]
    still = [a for a in actors if a.path is None]
    static = (
        np.array([a.pose[:2] for a in still]).reshape(-1, 2),
        np.array([a.pose[2] for a in still]),
        np.array([a.size[1] for a in still]),
        np.array([a.size[0] for a in still]),
    )
    ar = _arrays(net, moving)
    st = ar.style
    law = idm.PerAgent(*(torch.from_numpy(st[f]) for f in ("accel", "decel", "min_gap", "headway")))
    A = len(moving)
    s = np.array([a.s0 for a in moving], dtype=np.float64)
    v = np.array([a.v0 for a in moving], dtype=np.float64)
    acc = np.zeros(A)
    active = np.ones(A, dtype=bool)
    reserved = np.full(A, -1)
    requested = np.full(A, -1)  # the connector each vehicle asked for, and since when (step)
    since = np.zeros(A)
    released = np.zeros(A, dtype=bool)
    brake_end = np.full(A, -math.inf)  # end time of a braking event that has started
    half_front = ar.centre + 0.5 * ar.length  # reference point to the front bumper
    half_rear = 0.5 * ar.length - ar.centre
    end = (ar.n_pts - 1) * DS
    out_s, out_v, out_on = np.zeros((A, steps + 1)), np.zeros((A, steps + 1)), np.zeros((A, steps + 1), bool)
    idx = np.arange(A)
    for t in range(steps + 1):
        out_s[:, t], out_v[:, t], out_on[:, t] = s, v, active
        if t == steps:
            break
        time = t * dt
        pos, yaw = _lookup(ar, s + ar.centre)
        front, rear = s + half_front, s - half_rear
        gap, vlead = _corridor(ar, s, front, active, pos, yaw, v, static)
        wall = np.where(ar.is_ped, end - half_front, math.inf)  # pedestrians stop at the end of their walk

        _, cur, c0, c1 = _next_span(ar.conn, ar.conn_s, rear)
        kz, zone, z0, z1 = _next_span(ar.cross, ar.cross_s, rear)
        dist = c0 - front  # to the next connector (negative: on it)

        # crossings: a pedestrian steps on when no vehicle is committed to a lane they will
        # reach soon; vehicles yield to pedestrians about to reach or on their lane
        z_stop = z0 - st["crossing_gap"]  # where a vehicle stops for a crossing
        z_committed = active & ar.is_vehicle & (zone >= 0) & (front + v**2 / (2 * _COMMIT_DECEL) > z_stop + 0.5)
        intent = active & ar.is_ped & (time >= ar.t_intent) & (front >= ar.gate - 3.0) & (rear < ar.far)
        cw = np.maximum(ar.crosswalk, 0)
        progress = -ar.side * ((pos - ar.cw_centre[cw]) * ar.cw_normal[cw]).sum(-1)  # along the walk, m
        to_lane = -ar.side[None] * ar.cross_lat[idx, kz][:, None] - progress[None]  # [vehicle, pedestrian]
        near = (zone[:, None] == ar.crosswalk[None]) & intent[None] & (to_lane < _PED_REACH)
        near &= to_lane > -(0.5 * ar.width[None] + LANE_WIDTH / 2 + 0.5)
        released |= intent & ~(near & z_committed[:, None]).any(0)
        wall = np.where(ar.is_ped & ~released, np.minimum(wall, ar.gate), wall)
        yield_ = (zone >= 0) & ~z_committed & near.any(1)
        wall = np.where(yield_, np.minimum(wall, z_stop), wall)

        # junctions: request, grant (first come, first served), or wait at the mouth; a vehicle
        # that will have to stop at the crossing just past the junction waits outside it
        stop_line = np.where((z1 < c0) & (z1 > c0 - 8.0) & (z0 > front), z_stop, c0 - 0.5)  # before a crossing
        committed = dist < v**2 / (2 * _COMMIT_DECEL) + 0.5
        exit_blocked = yield_ & (z0 > c0) & (z0 < c1 + 8.0) & ~committed
        if ego_waits and time < ego_waits.get(int(cur[0]), -math.inf) and not committed[0]:
            exit_blocked[0] = True
        reserved = np.where(exit_blocked, -1, reserved)
        holder = (cur >= 0) & (reserved == cur) & active
        cand = active & ar.is_vehicle & (cur >= 0) & ~holder & ~exit_blocked
        cand &= stop_line - front < v**2 / (2 * _REQUEST_DECEL) + v + 3.0
        since = np.where(cand & (requested != cur), t, since)
        requested = np.where(cand, cur, requested)
        pair = net.conflicts[np.maximum(cur, 0)[:, None], np.maximum(cur, 0)[None]]
        # a holder stops blocking a movement once its rear is past the conflict with it
        inside = rear - c0  # how far the rear is along the connector (negative: not yet on it)
        holds = holder[None] & (inside[None] < net.conflict_exit[np.maximum(cur, 0)[None], np.maximum(cur, 0)[:, None]])
        earlier = (since[None] < since[:, None]) | ((since[None] == since[:, None]) & (dist[None] < dist[:, None]))
        earlier |= (since[None] == since[:, None]) & (dist[None] == dist[:, None]) & (idx[None] < idx[:, None])
        blocked = (pair & holds).any(1) | (pair & cand[None] & earlier).any(1)
        grant = cand & (~blocked | committed)
        reserved = np.where(grant, cur, reserved)
        wall = np.where((cand & ~grant) | exit_blocked, np.minimum(wall, stop_line), wall)

        # speed wanted (allowed here and 1 s ahead, which makes up for the lag of tracking it),
        # then IDM against the nearer of the leader and the walls
        preview = np.minimum(_lookup_profile(ar, s), _lookup_profile(ar, s + ar.centre + v))
        # a lead brakes on the ego's lane (same next connector, neither in a junction, 8 m or
        # more of lane ahead), near the ego
        same_lane = (cur == cur[0]) & (dist > 8.0) & (dist[0] > 0)
        start = (time >= ar.brake[:, 0]) & (brake_end == -math.inf) & same_lane & (s - s[0] < 30.0)
        brake_end = np.where(start, time + ar.brake[:, 1], brake_end)
        braking = time < brake_end
        v_des = np.maximum(np.where(braking, np.minimum(preview, ar.brake[:, 2]), preview), 0.05)
        wall_gap = wall - front
        use_wall = wall_gap < gap
        gap = np.where(use_wall, wall_gap, gap)
        vlead = np.where(use_wall, 0.0, vlead)
        free = np.where(v <= v_des, st["accel"] * (1 - (v / v_des) ** 4), -np.minimum((v - v_des) / 0.8, 3.0))
        t = torch.from_numpy
        pressure = idm.interaction(t(v), t(vlead), t(np.maximum(gap, 0.05)), law).numpy()
        inter = np.where(np.isfinite(gap), -st["accel"] * pressure, 0.0)
        a = np.clip(free + inter, st["acc_min"], st["acc_max"])
        a = np.clip(a, acc - st["jerk"] * dt, acc + st["jerk"] * dt)
        v_new = np.maximum(v + a * dt, 0.0)
        acc = (v_new - v) / dt
        s = s + 0.5 * (v + v_new) * dt
        v = v_new
        active &= ~(ar.is_vehicle & (s + half_front >= end - 0.05) & (idx > 0))  # drives off the map edge
    xy, yaw = _lookup(ar, out_s)
    return np.concatenate([xy, yaw[..., None]], -1), out_v, out_on, brake_end > -math.inf, out_s


def _lookup_profile(ar: _Arrays, s: np.ndarray) -> np.ndarray:
    i = np.clip((s / DS).astype(np.int64), 0, ar.n_pts - 1)
    return ar.profile[np.arange(len(s)), i]


def ego_centre(pose: np.ndarray) -> np.ndarray:
    """Box centres ``[..., 2]`` of the ego's rear-axle poses ``[..., 3]``."""
    return box_centre(torch.from_numpy(pose), torch.tensor(ZOE.rear_axle_to_center, dtype=torch.float64)).numpy()


def _boxes(actors: list[Actor], pose: np.ndarray) -> torch.Tensor:
    """Every actor's box ``[N, T, 5]`` (centre x, y, yaw, length, width), grown by the safety margin."""
    xy = pose[..., :2].copy()
    ego = np.array([a.kind == "ego" for a in actors])
    xy[ego] = ego_centre(pose[ego])
    lw = np.array([[a.size[1], a.size[0]] for a in actors]) + 2 * _SAFETY_MARGIN
    size = np.broadcast_to(lw[:, None], (*pose.shape[:2], 2))
    return torch.from_numpy(np.concatenate([xy, pose[..., 2:3], size], -1))


def first_overlap(actors: list[Actor], pose: np.ndarray, active: np.ndarray) -> tuple[int, int] | None:
    """The first pair ``(i, j)``, ``i < j``, whose boxes overlap at some step, else ``None``."""
    boxes = _boxes(actors, pose)
    N, T = active.shape
    iu, ju = np.triu_indices(N, 1)
    centre = boxes[..., :2].numpy()
    reach = np.array([math.hypot(a.size[0], a.size[1]) / 2 + _SAFETY_MARGIN * 1.5 for a in actors])
    close = (np.hypot(*(centre[iu] - centre[ju]).transpose(2, 0, 1)) < (reach[iu] + reach[ju])[:, None])
    close &= active[iu] & active[ju]
    m, t = np.nonzero(close)
    if len(m) == 0:
        return None
    ti, tj, tt = (torch.from_numpy(x) for x in (iu[m], ju[m], t))
    hit = box_overlap(boxes[ti, tt], boxes[tj, tt]).numpy()
    if not hit.any():
        return None
    k = np.flatnonzero(hit)[np.argmin(t[hit])]
    return int(iu[m[k]]), int(ju[m[k]])


def near_miss(actors: list[Actor], pose: np.ndarray, speed: np.ndarray, active: np.ndarray,
              junction: np.ndarray) -> tuple[int, int] | None:
    """The first step and actor ``(k, j)`` at which the ego (``actors[0]``) fails the nuPlan
    time-to-collision check (METRICS.md 1.7) made stricter, else ``None``.

    ``pose``, ``speed``, ``active``: as in :class:`Drive`; ``junction`` bool ``[T]``: the ego is
    in a junction. Candidates are the actors less than :data:`_TTC_AHEAD_DEG` off the ego's
    heading (seen from its rear axle), or, in a junction, anything not behind it. Both boxes move
    on along their headings at their speeds for up to :data:`_TTC_S` s, the ego's grown by
    :data:`_TTC_MARGIN`: the replayed drive differs a little from the written one (tracking,
    2 Hz annotations), and the margins cover that.
    """
    N = len(actors)
    yaw = pose[..., 2]
    heading = np.stack([np.cos(yaw), np.sin(yaw)], -1)  # [N, T, 2]
    rear = pose[0, :, :2]
    centre = pose[..., :2].copy()
    centre[0] = ego_centre(pose[0])
    rel = pose[1:, :, :2] - rear[None]
    cos = (rel * heading[0][None]).sum(-1) / np.maximum(np.hypot(rel[..., 0], rel[..., 1]), 1e-9)
    cone = (cos > math.cos(math.radians(_TTC_AHEAD_DEG))) | (junction[None] & (cos >= math.cos(math.radians(150.0))))
    grow = np.r_[2 * _TTC_MARGIN, np.zeros(N - 1)]
    length = np.array([a.size[1] for a in actors]) + grow
    width = np.array([a.size[0] for a in actors]) + grow
    reach = 0.5 * (np.hypot(length[0], width[0]) + np.hypot(length[1:], width[1:]))[:, None]
    reach = reach + (speed[:1] + speed[1:]) * _TTC_S
    gap = np.hypot(*(centre[1:] - centre[:1]).transpose(2, 0, 1))
    cand = active[1:] & active[:1] & cone & (speed[:1] > 0.005) & (gap <= reach + 1e-3)
    n, k = np.nonzero(cand)
    if len(n) == 0:
        return None
    n = n + 1
    ahead = np.arange(1, int(round(_TTC_S / 0.1)) + 1) * 0.1  # [J] s

    def box(i: np.ndarray) -> torch.Tensor:  # boxes [M, J, 5] of actors i at steps k, moved on
        now = torch.from_numpy(np.stack([centre[i, k, 0], centre[i, k, 1], yaw[i, k], length[i], width[i]], -1))
        return moved_on(now[:, None], torch.from_numpy(speed[i, k])[:, None], torch.from_numpy(ahead))

    hit = box_overlap(box(np.zeros_like(n)), box(n)).numpy().any(1)
    if not hit.any():
        return None
    i = np.flatnonzero(hit)[np.argmin(k[hit])]
    return int(k[i]), int(n[i])


def _capped(path: Path, s0: float, s1: float, cap: float) -> Path:
    """``path`` with its speed limit at most ``cap`` between arc lengths ``s0`` and ``s1``."""
    s = np.arange(len(path.vmax)) * DS
    vmax = np.where((s >= s0) & (s <= s1), np.minimum(path.vmax, cap), path.vmax)
    return Path(path.xy, path.heading, vmax, path.lanes, path.lane_start)


def run_drive(net: Network, rng: np.random.Generator, steps: int, dt: float) -> Drive:
    """Place actors and simulate; drop actors until no two boxes overlap at any step, and until
    the ego has no near miss (:func:`near_miss`): one in a junction is first met by the ego taking
    that junction more slowly, then by it waiting longer at its mouth."""
    actors, route, movement = populate(net, rng, steps * dt)
    ego = actors[0]
    spans = np.array([(ego.path.lane_start[j], ego.path.lane_start[j + 1], lane)
                      for j, lane in enumerate(ego.path.lanes) if net.lanes[lane].is_connector]).reshape(-1, 3)
    waits: dict[int, float] = {}
    retries = 0
    for _ in range(len(actors) + _MAX_RETRIES):
        moving = [a for a in actors if a.path is not None]
        mp, speed, on, braked, arc = simulate(net, actors, steps, dt, waits)
        still = [a for a in actors if a.path is None]
        pose = np.concatenate([mp, np.array([a.pose for a in still]).reshape(-1, 1, 3).repeat(steps + 1, 1)])
        speed = np.concatenate([speed, np.zeros((len(still), steps + 1))])
        on = np.concatenate([on, np.ones((len(still), steps + 1), bool)])
        ordered = moving + still
        hit = first_overlap(ordered, pose, on)
        if hit is not None:
            victim = max(hit, key=lambda i: actors.index(ordered[i]))
            actors.remove(ordered[victim])
            continue
        s_ego = arc[0]
        in_junction = ((s_ego[:, None] > spans[None, :, 0] - 1.5) & (s_ego[:, None] < spans[None, :, 1] + 1.5)).any(1)
        miss = near_miss(ordered, pose, speed, on, in_junction)
        if miss is None:
            lead_braked = any(b and a.role == "lead" for a, b in zip(moving, braked))
            return Drive(tuple(ordered), pose, speed, on, tuple(route), _tags(movement, ordered, lead_braked))
        k, j = miss
        front = s_ego + ZOE.rear_axle_to_center + ZOE.length / 2
        at = (front[k] > spans[:, 0] - _MOUTH_M) & (s_ego[k] < spans[:, 1] + 1.5)  # the junction it is at, if any
        if at.any() and retries < _MAX_RETRIES:
            retries += 1
            c0, c1, c = spans[int(np.argmax(at))]
            if in_junction[k] and speed[0, k] * _SLOWER >= _MIN_TURN_SPEED:  # take the junction more slowly
                ego.path = _capped(ego.path, c0 - 3.0, c1 + 2.0, float(speed[0, k]) * _SLOWER)
                continue
            if ordered[j].path is not None:  # let the other actor pass first
                entered = front >= c0
                enter = int(np.argmax(entered)) * dt if entered.any() else k * dt
                waits[int(c)] = max(waits.get(int(c), -math.inf), enter) + _WAIT_S
                continue
        actors.remove(ordered[j])
    raise RuntimeError(f"{net.location}: the traffic did not settle")


def _tags(movement: str, actors: list[Actor], lead_braked: bool) -> tuple[str, ...]:
    """What happens in a drive, in words."""
    count = {k: sum(a.kind == k for a in actors) for k in ("pedestrian", "parked", "cone", "bicycle")}
    tags = ["left turn" if movement == "left" else "right turn" if movement == "right" else "straight through a junction"]
    if lead_braked:
        tags.append("lead vehicle brakes")
    if count["pedestrian"]:
        tags.append(f"pedestrians crossing ({count['pedestrian']})")
    if count["bicycle"]:
        tags.append("cyclist")
    if count["parked"]:
        tags.append(f"parked cars ({count['parked']})")
    if count["cone"]:
        tags.append("traffic cones")
    return tuple(tags)
