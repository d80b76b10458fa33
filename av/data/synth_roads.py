"""Procedural road networks for the synthetic dataroot (:mod:`av.data.synth`), map frame, SI units.

A location is a grid of straight streets (2x3, 3x2 or 3x3, 110-160 m apart, each tilted by
up to 4 degrees) that run on past the outer junctions to the map edge. Random street segments are
removed, which turns 4-way junctions into T-junctions and corners into curved roads, and some
blocks get an S-bend. A street has 1 or 2 lanes per direction (right-hand traffic, 3.5 m), a
2.5 m kerb-side shoulder (a parking strip, drivable) and sidewalks beyond it. Junctions get lane
connectors for straight, left and right movements; some road arms get a pedestrian crossing.

Geometry is exact: a centreline is a chain of constant-curvature *pieces*, float ``[M, 5]`` rows
``(x0, y0, h0, length, curvature)`` (m, rad, 1/m). A turn is an arc entered and left through
three curvature steps (a piecewise-constant clothoid), so a vehicle following a lane never sees
its yaw rate jump by more than a quarter of the turn's peak. Each piece becomes one
``arcline_path_3`` record of the map expansion (:func:`map_expansion`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import shapely

LANE_WIDTH = 3.5
SHOULDER = 2.5
CROSSWALK_WIDTH = 4.0
CONNECTOR_LIMIT = 8.3
"""Speed limit (m/s) of every junction lane connector (30 km/h)."""
MAP_MARGIN = 500.0
"""Metres between the map-frame origin (and the canvas edge) and the nearest road."""

_RAMP = np.array([0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25])  # curvature of a turn's pieces / peak
_RAMP_LEN = np.array([1, 1, 1, 3, 1, 1, 1]) / 6.0  # their lengths, x |turn angle| / peak curvature
_CONFLICT_M = 3.3  # connectors closer than this (centrelines) cannot be driven at the same time
_STUB_M = (60.0, 80.0)  # streets run on this far past the outer junctions


class Infeasible(Exception):
    """A random draw gave geometry that does not fit; the caller draws again."""


# ---------------------------------------------------------------------------------------------
# Pieces: chains of constant-curvature path pieces


def piece_pose(pieces: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Pose ``[..., 3]`` (x, y, heading) at distance ``t`` ``[...]`` m along pieces ``[..., 5]``."""
    x0, y0, h0, k = pieces[..., 0], pieces[..., 1], pieces[..., 2], pieces[..., 4]
    half = 0.5 * k * t
    chord = t * np.sinc(half / math.pi)
    h = h0 + half
    return np.stack([x0 + chord * np.cos(h), y0 + chord * np.sin(h), h0 + 2.0 * half], axis=-1)


def chain(start: np.ndarray, lengths: np.ndarray, curvatures: np.ndarray) -> np.ndarray:
    """Pieces ``[M, 5]`` that start at pose ``start`` ``[3]`` with the given lengths/curvatures."""
    out = np.zeros((len(lengths), 5))
    pose = np.asarray(start, dtype=np.float64)
    for i, (length, k) in enumerate(zip(lengths, curvatures)):
        out[i] = [*pose, length, k]
        pose = piece_pose(out[i], length)
    return out


def end_pose(pieces: np.ndarray) -> np.ndarray:
    """Pose ``[3]`` at the end of a chain."""
    return piece_pose(pieces[-1], pieces[-1, 3])


def chain_length(pieces: np.ndarray) -> float:
    return float(pieces[:, 3].sum())


def offset(pieces: np.ndarray, o: float) -> np.ndarray:
    """The chain shifted sideways by ``o`` metres (positive: to the left of travel)."""
    scale = 1.0 - o * pieces[:, 4]
    if np.any(scale < 0.2):
        raise Infeasible("offset beyond a turn's centre")
    h = pieces[:, 2]
    return np.column_stack(
        [pieces[:, 0] - o * np.sin(h), pieces[:, 1] + o * np.cos(h), h, pieces[:, 3] * scale, pieces[:, 4] / scale]
    )


def reverse(pieces: np.ndarray) -> np.ndarray:
    """The same chain driven the other way."""
    ends = piece_pose(pieces, pieces[:, 3])
    heading = (ends[:, 2] + 2 * math.pi) % (2 * math.pi) - math.pi  # turned around, in [-pi, pi)
    out = np.column_stack([ends[:, 0], ends[:, 1], heading, pieces[:, 3], -pieces[:, 4]])
    return out[::-1].copy()


def cut(pieces: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The part of a chain between arc lengths ``s0 < s1`` (m)."""
    cum = np.concatenate([[0.0], np.cumsum(pieces[:, 3])])
    rows = []
    for i, p in enumerate(pieces):
        a, b = max(s0, cum[i]), min(s1, cum[i + 1])
        if b - a > 1e-9:
            rows.append([*piece_pose(p, a - cum[i]), b - a, p[4]])
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def sample_at(pieces: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poses ``[S, 3]`` at arc lengths ``s`` ``[S]`` along a chain, and the piece index ``[S]``."""
    cum = np.concatenate([[0.0], np.cumsum(pieces[:, 3])])
    i = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(pieces) - 1)
    return piece_pose(pieces[i], s - cum[i]), i


def outline_s(pieces: np.ndarray, step: float = 3.0, max_angle: float = 0.15) -> np.ndarray:
    """Arc lengths ``[S]`` that trace a chain: piece ends, plus points on arcs every ``step`` m
    or ``max_angle`` rad, whichever is closer."""
    cum = np.concatenate([[0.0], np.cumsum(pieces[:, 3])])
    parts = []
    for i, (length, k) in enumerate(pieces[:, 3:5]):
        n = 1 if k == 0 else int(math.ceil(max(length / step, abs(k) * length / max_angle)))
        parts.append(cum[i] + length * np.arange(n) / n)
    parts.append(cum[-1:])
    return np.concatenate(parts)


def _turn_shape(delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and curvatures of a turn by ``delta`` rad with peak curvature 1 (1/m)."""
    return _RAMP_LEN * abs(delta), _RAMP * math.copysign(1.0, delta)


def _unit_tangent(delta: float) -> float:
    """Tangent length (start to the corner of the two tangent lines) of the unit turn."""
    e = end_pose(chain(np.zeros(3), *_turn_shape(delta)))
    return float(e[0] - e[1] * math.cos(delta) / math.sin(delta))


def turn_min_radius(delta: float, tangent: float) -> float:
    """Smallest radius (m) of a turn by ``delta`` rad whose tangent length is ``tangent`` m."""
    return tangent / _unit_tangent(delta)


def polyline(corners: np.ndarray, tangents: np.ndarray) -> np.ndarray:
    """Pieces along a polyline ``[M, 2]`` whose interior corners are rounded by turns.

    ``tangents`` ``[M]``: tangent length (m) of the turn at each corner (ends are ignored).
    Raises :class:`Infeasible` when neighbouring turns do not fit on a segment.
    """
    d = np.diff(corners, axis=0)
    seg = np.hypot(d[:, 0], d[:, 1])
    h = np.arctan2(d[:, 1], d[:, 0])
    rows: list[np.ndarray] = []
    used_start = 0.0
    for m in range(len(seg)):
        u = d[m] / seg[m]
        t_end = 0.0
        delta = 0.0
        if m + 1 < len(seg):
            delta = float((h[m + 1] - h[m] + math.pi) % (2 * math.pi) - math.pi)
            t_end = float(tangents[m + 1]) if abs(delta) > 1e-9 else 0.0
        straight = seg[m] - used_start - t_end
        if straight < -1e-9:
            raise Infeasible("turns overlap on a segment")
        if straight > 1e-9:
            start = corners[m] + used_start * u
            rows.append(np.array([[start[0], start[1], h[m], straight, 0.0]]))
        if t_end > 0.0:
            start = corners[m + 1] - t_end * u
            lengths, curv = _turn_shape(delta)
            scale = t_end / _unit_tangent(delta)
            rows.append(chain(np.array([start[0], start[1], h[m]]), lengths * scale, curv / scale))
        used_start = t_end
    return np.concatenate(rows)


def connector_pieces(p1: np.ndarray, p2: np.ndarray) -> np.ndarray | None:
    """A smooth path from pose ``p1`` to pose ``p2`` (each ``[3]``), or ``None`` if there is none.

    Aligned poses get a straight line or, when laterally offset, an S of two turns; others a
    single turn whose tangent lines meet ahead of ``p1`` and behind ``p2``.
    """
    h1 = np.array([math.cos(p1[2]), math.sin(p1[2])])
    h2 = np.array([math.cos(p2[2]), math.sin(p2[2])])
    d = p2[:2] - p1[:2]
    delta = (p2[2] - p1[2] + math.pi) % (2 * math.pi) - math.pi
    if abs(delta) < 1e-3:
        along, lateral = float(d @ h1), float(h1[0] * d[1] - h1[1] * d[0])
        if along < 1.0:
            return None
        if abs(lateral) < 1e-3:
            return polyline(np.stack([p1[:2], p2[:2]]), np.zeros(2))
        a, b = p1[:2] + along / 3 * h1, p2[:2] - along / 3 * h1
        t = 0.9 * min(along / 3, float(np.hypot(*(b - a))) / 2)
        return polyline(np.stack([p1[:2], a, b, p2[:2]]), np.array([0.0, t, t, 0.0]))
    ab = np.linalg.solve(np.column_stack([h1, h2]), d)  # p1 + a h1 = p2 - b h2
    if ab.min() < 0.5:
        return None
    corner = p1[:2] + ab[0] * h1
    return polyline(np.stack([p1[:2], corner, p2[:2]]), np.array([0.0, ab.min(), 0.0]))


# ---------------------------------------------------------------------------------------------
# The network


@dataclass(frozen=True)
class Lane:
    """A lane or lane connector. ``pieces`` ``[M, 5]``; ``speed_limit`` m/s.

    Road lanes: ``road`` index, ``side`` +1 (along the road's centreline) or -1, ``index`` 0 next
    to the centreline counting outwards, ``movement`` "". Connectors: ``road`` -1, ``junction``
    node, ``movement`` "straight", "left" or "right".
    """

    token: str
    pieces: np.ndarray
    speed_limit: float
    road: int = -1
    side: int = 0
    index: int = -1
    junction: int = -1
    movement: str = ""

    @property
    def is_connector(self) -> bool:
        return self.road < 0

    @property
    def length(self) -> float:
        return chain_length(self.pieces)


@dataclass(frozen=True)
class Road:
    """A two-way road between two nodes: ``centre`` pieces from node ``u`` to node ``v``
    (untrimmed), lanes start ``trim[0]`` m after ``u`` and end ``trim[1]`` m before ``v``."""

    centre: np.ndarray
    u: int
    v: int
    trim: tuple[float, float]
    lanes_per_side: int
    speed_limit: float

    @property
    def half_width(self) -> float:
        """Centreline to the outer edge of the shoulder, m."""
        return self.lanes_per_side * LANE_WIDTH + SHOULDER


@dataclass(frozen=True)
class Crosswalk:
    """A pedestrian crossing over road ``road``: a ``CROSSWALK_WIDTH`` band across the road at
    arc length ``s`` of its centre, ``centre`` ``[2]``, road direction ``heading`` rad,
    ``half_length`` m from the middle to each kerb. ``away``: +1 or -1 when the crossing is at
    a junction mouth (the direction along the road, as a sign of ``heading``, that leads away
    from the junction), 0 mid-block."""

    road: int
    s: float
    centre: np.ndarray
    heading: float
    half_length: float
    away: int

    def polygon(self) -> np.ndarray:
        """Corners ``[4, 2]`` of the crossing (kerb to kerb)."""
        u = np.array([math.cos(self.heading), math.sin(self.heading)])
        n = np.array([-u[1], u[0]])
        w, hl = CROSSWALK_WIDTH / 2, self.half_length
        return np.stack([self.centre + a * w * u + b * hl * n for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


@dataclass(frozen=True)
class Network:
    """One location's roads. ``L`` lanes (road lanes first, then connectors).

    * ``successors`` / ``predecessors``: lane graph; ``conflicts`` bool ``[L, L]``: connectors
      of a junction that cross, come closer than 3.3 m or merge into the same lane;
      ``conflict_exit`` ``[L, L]``: arc length (m) along connector ``a`` after which it is clear
      of connector ``b`` (0 where they do not conflict).
    * ``crossings``: per lane, ``(crosswalk index, s0, s1)`` where the lane runs over a crossing.
    * ``junctions``: node -> (position ``[2]``, radius m) of every junction.
    * ``drivable``: the drivable area (roads with shoulders, junctions), a shapely geometry.
    * ``canvas``: (width, height) m of the map canvas (all coordinates lie inside it).
    """

    location: str
    lanes: tuple[Lane, ...]
    successors: tuple[tuple[int, ...], ...]
    predecessors: tuple[tuple[int, ...], ...]
    conflicts: np.ndarray
    conflict_exit: np.ndarray
    roads: tuple[Road, ...]
    crosswalks: tuple[Crosswalk, ...]
    crossings: tuple[tuple[tuple[int, float, float], ...], ...]
    junctions: dict[int, tuple[np.ndarray, float]]
    drivable: Any
    canvas: tuple[float, float]


def map_token(*parts: object) -> str:
    """A deterministic UUID-formatted token (the map expansion's token format)."""
    h = hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build_network(location: str, rng: np.random.Generator) -> Network:
    """A random road network named ``location`` (deterministic for a given ``rng`` state)."""
    for _ in range(100):
        try:
            return _build(location, rng)
        except Infeasible:
            continue
    raise RuntimeError(f"no feasible road network for {location} in 100 draws")


def _line_intersection(p: np.ndarray, d: np.ndarray, q: np.ndarray, e: np.ndarray) -> np.ndarray:
    t = np.linalg.solve(np.column_stack([d, -e]), q - p)
    return p + t[0] * d


def _graph(rng: np.random.Generator) -> tuple[np.ndarray, int, list[tuple[int, int, int]], list[tuple[int, float]]]:
    """Node positions ``[V, 2]`` (the first ``G`` are the grid's junctions, then the street ends),
    ``G``, edges ``(a, b, street)`` and streets ``(lanes per side, speed limit m/s)``."""
    rows, cols = ((2, 3), (3, 2), (3, 3))[int(rng.integers(3))]
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(110, 160, rows - 1))])
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(110, 160, cols - 1))])
    ra, ca = rng.uniform(-0.07, 0.07, rows), rng.uniform(-0.07, 0.07, cols)
    rdir = np.column_stack([np.cos(ra), np.sin(ra)])
    cdir = np.column_stack([-np.sin(ca), np.cos(ca)])
    nodes = [
        _line_intersection(np.array([0.0, ys[r]]), rdir[r], np.array([xs[c], 0.0]), cdir[c])
        for r in range(rows) for c in range(cols)
    ]
    grid = np.arange(rows * cols).reshape(rows, cols)
    edges: list[tuple[int, int, int]] = []
    lines = [(list(grid[r]), rdir[r]) for r in range(rows)] + [(list(grid[:, c]), cdir[c]) for c in range(cols)]
    streets = []
    for street, (ids, direction) in enumerate(lines):
        lanes = 2 if rng.random() < 0.7 else 1
        streets.append((lanes, 13.9 if lanes == 2 else float(rng.choice([11.1, 13.9]))))
        first = len(nodes)
        nodes.append(nodes[ids[0]] - rng.uniform(*_STUB_M) * direction)
        nodes.append(nodes[ids[-1]] + rng.uniform(*_STUB_M) * direction)
        chain_ids = [first, *ids, first + 1]
        edges += [(a, b, street) for a, b in zip(chain_ids[:-1], chain_ids[1:])]
    return np.array(nodes), rows * cols, edges, streets


def _prune(rng: np.random.Generator, n_nodes: int, n_grid: int, edges: list[tuple[int, int, int]]) -> list[bool]:
    """Randomly drop edges while every grid node keeps 2+ edges, the graph stays connected and
    at least three junctions (3+ edges) remain."""
    alive = [True] * len(edges)

    def ok() -> bool:
        deg = np.zeros(n_nodes, dtype=int)
        adj: list[list[int]] = [[] for _ in range(n_nodes)]
        for (a, b, _), keep in zip(edges, alive):
            if keep:
                deg[a] += 1
                deg[b] += 1
                adj[a].append(b)
                adj[b].append(a)
        if deg[:n_grid].min() < 2 or (deg >= 3).sum() < 3:
            return False
        seen, todo = {0}, [0]
        while todo:
            for m in adj[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return len(seen) == int((deg > 0).sum())

    for e in rng.permutation(len(edges)):
        if rng.random() < 0.3:
            alive[e] = False
            if not ok():
                alive[e] = True
    return alive


def _build(location: str, rng: np.random.Generator) -> Network:
    """One draw of :func:`build_network`: streets, pruning, S-bends, junction sizes, roads."""
    nodes, n_grid, edges, streets = _graph(rng)
    alive = _prune(rng, len(nodes), n_grid, edges)
    node_list = list(nodes)
    adj: dict[int, list[tuple[int, int]]] = {}

    def link(a: int, b: int, street: int) -> None:
        adj.setdefault(a, []).append((b, street))
        adj.setdefault(b, []).append((a, street))

    for (a, b, street), keep in zip(edges, alive):
        if not keep:
            continue
        d = node_list[b] - node_list[a]
        length = float(np.hypot(*d))
        if a < n_grid and b < n_grid and length >= 110 and rng.random() < 0.35:  # an S-bend
            n = np.array([-d[1], d[0]]) / length
            o = rng.choice([-1.0, 1.0]) * rng.uniform(5, 9)
            ids = [a]
            for f, lat in ((0.3, 0.0), (0.42, o), (0.58, o), (0.7, 0.0)):
                node_list.append(node_list[a] + f * d + lat * n)
                ids.append(len(node_list) - 1)
            ids.append(b)
            for p, q in zip(ids[:-1], ids[1:]):
                link(p, q, street)
        else:
            link(a, b, street)
    pos = np.array(node_list)
    pos = pos - pos[list(adj)].min(axis=0) + MAP_MARGIN
    top = pos[list(adj)].max(axis=0) + MAP_MARGIN
    canvas = (float(top[0]), float(top[1]))
    deg = {a: len(nb) for a, nb in adj.items()}
    half_width = {s: lanes * LANE_WIDTH + SHOULDER for s, (lanes, _) in enumerate(streets)}

    radius: dict[int, float] = {}
    for a, nb in adj.items():
        if deg[a] < 3:
            continue
        ang = np.array([math.atan2(*(pos[b] - pos[a])[::-1]) for b, _ in nb])
        order = np.argsort(ang)
        need = 0.0
        for i in range(len(order)):
            j, k = order[i], order[(i + 1) % len(order)]
            gap = (ang[k] - ang[j]) % (2 * math.pi)
            if gap < 0.95 * math.pi:
                need = max(need, max(half_width[nb[j][1]], half_width[nb[k][1]]) / math.tan(gap / 2))
        radius[a] = need + 4.0

    roads = _roads(adj, deg, pos, radius, streets)
    return _assemble(location, rng, pos, roads, radius, canvas)


def _roads(
    adj: dict[int, list[tuple[int, int]]], deg: dict[int, int], pos: np.ndarray,
    radius: dict[int, float], streets: list[tuple[int, float]],
) -> list[Road]:
    """Chains of edges between junctions/dead ends (through bend nodes), as rounded roads."""
    used: set[tuple[int, int]] = set()
    roads = []
    for a in sorted(adj):
        if deg[a] == 2:
            continue
        for b, street in adj[a]:
            if (a, b) in used:
                continue
            ids = [a, b]
            used |= {(a, b), (b, a)}
            while deg[ids[-1]] == 2:
                cur, prev = ids[-1], ids[-2]
                nxt = next(m for m, _ in adj[cur] if m != prev)
                used |= {(cur, nxt), (nxt, cur)}
                ids.append(nxt)
            lanes, limit = streets[street]
            hw = lanes * LANE_WIDTH + SHOULDER
            corners = pos[ids]
            d = np.diff(corners, axis=0)
            seg = np.hypot(d[:, 0], d[:, 1])
            h = np.arctan2(d[:, 1], d[:, 0])
            turn = (np.diff(h) + math.pi) % (2 * math.pi) - math.pi
            want = np.where(np.abs(turn) > 0.6, 22.0, np.where(np.abs(turn) > 1e-6, 6.0, 0.0))
            tangents = np.concatenate([[0.0], want, [0.0]])
            trim = (radius.get(a, 0.0), radius.get(ids[-1], 0.0))
            reserve = np.zeros(len(seg))
            reserve[0] += trim[0] + (10.0 if trim[0] else 0.0)
            reserve[-1] += trim[1] + (10.0 if trim[1] else 0.0)
            for m in range(len(seg)):
                room = seg[m] - reserve[m] - 2.0
                need = tangents[m] + tangents[m + 1]
                if room <= 0.0:
                    raise Infeasible("segment too short")
                if need > room:
                    tangents[m] *= room / need
                    tangents[m + 1] *= room / need
            for m, t in enumerate(turn):
                if abs(t) > 1e-6 and turn_min_radius(float(t), tangents[m + 1]) < hw + 3.0:
                    raise Infeasible("bend too tight")
            roads.append(Road(polyline(corners, tangents), a, ids[-1], trim, lanes, limit))
    return roads


def _assemble(
    location: str, rng: np.random.Generator, pos: np.ndarray, roads: list[Road],
    radius: dict[int, float], canvas: tuple[float, float],
) -> Network:
    lanes: list[Lane] = []
    for ri, road in enumerate(roads):
        total = chain_length(road.centre)
        core = cut(road.centre, road.trim[0], total - road.trim[1])
        for k in range(road.lanes_per_side):
            o = (k + 0.5) * LANE_WIDTH
            lanes.append(Lane(map_token(location, "lane", ri, 1, k), offset(core, -o), road.speed_limit, ri, 1, k))
            lanes.append(Lane(map_token(location, "lane", ri, -1, k), reverse(offset(core, o)), road.speed_limit, ri, -1, k))
    succ: list[list[int]] = [[] for _ in lanes]
    pred: list[list[int]] = [[] for _ in lanes]
    junction_of: list[int] = []
    for j in sorted(radius):
        # an arm is (road, end): lanes with side +1 end at v, lanes with side -1 end at u
        arms = [(ri, end) for ri, r in enumerate(roads) for end, node in (("u", r.u), ("v", r.v)) if node == j]

        def arm_lanes(ri: int, end: str, incoming: bool) -> list[int]:
            side = (1 if end == "v" else -1) * (1 if incoming else -1)
            found = [(lanes[i].index, i) for i in range(len(lanes)) if lanes[i].road == ri and lanes[i].side == side]
            return [i for _, i in sorted(found)]

        for ain in arms:
            ins = arm_lanes(*ain, incoming=True)
            for aout in arms:
                if aout == ain:
                    continue
                outs = arm_lanes(*aout, incoming=False)
                p1 = end_pose(lanes[ins[0]].pieces)
                p2 = lanes[outs[0]].pieces[0, :3]
                delta = (p2[2] - p1[2] + math.pi) % (2 * math.pi) - math.pi
                if abs(delta) < 0.5:
                    movement, pairs = "straight", [(k, min(k, len(outs) - 1)) for k in range(len(ins))]
                elif delta > 0:
                    movement, pairs = "left", [(0, 0)]
                else:
                    movement, pairs = "right", [(len(ins) - 1, len(outs) - 1)]
                for ki, ko in pairs:
                    a, b = ins[ki], outs[ko]
                    pieces = connector_pieces(end_pose(lanes[a].pieces), lanes[b].pieces[0, :3])
                    if pieces is None:
                        continue
                    c = len(lanes)
                    token = map_token(location, "connector", a, b)
                    lanes.append(Lane(token, pieces, CONNECTOR_LIMIT, junction=j, movement=movement))
                    succ.append([b])
                    pred.append([a])
                    succ[a].append(c)
                    pred[b].append(c)
                    junction_of.append(j)
    conflicts, conflict_exit = _conflicts(lanes, pred, succ)
    crosswalks = _crosswalks(rng, roads, radius)
    crossings = _crossings(lanes, roads, crosswalks)
    drivable = _drivable(roads, lanes, radius, pos)
    return Network(
        location=location,
        lanes=tuple(lanes),
        successors=tuple(tuple(s) for s in succ),
        predecessors=tuple(tuple(p) for p in pred),
        conflicts=conflicts,
        conflict_exit=conflict_exit,
        roads=tuple(roads),
        crosswalks=tuple(crosswalks),
        crossings=crossings,
        junctions={j: (pos[j].copy(), r) for j, r in radius.items()},
        drivable=drivable,
        canvas=canvas,
    )


def _conflicts(lanes: list[Lane], pred: list[list[int]], succ: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    L = len(lanes)
    out = np.zeros((L, L), dtype=bool)
    clear = np.zeros((L, L))
    by_junction: dict[int, list[int]] = {}
    for i, lane in enumerate(lanes):
        if lane.is_connector:
            by_junction.setdefault(lane.junction, []).append(i)
    for ids in by_junction.values():
        pts, arc = [], []
        for i in ids:
            arc.append(np.linspace(0.0, lanes[i].length, max(2, int(lanes[i].length / 0.5) + 1)))
            pts.append(sample_at(lanes[i].pieces, arc[-1])[0][:, :2])
        for x, a in enumerate(ids):
            for y in range(x + 1, len(ids)):
                b = ids[y]
                if pred[a] == pred[b]:
                    continue  # same approach lane: car following keeps them apart
                close = np.sqrt(((pts[x][:, None] - pts[y][None]) ** 2).sum(-1)) < _CONFLICT_M
                if succ[a] == succ[b]:  # they merge: clear only at the end
                    out[a, b] = out[b, a] = True
                    clear[a, b], clear[b, a] = arc[x][-1], arc[y][-1]
                elif close.any():
                    out[a, b] = out[b, a] = True
                    clear[a, b] = arc[x][np.flatnonzero(close.any(1)).max()]
                    clear[b, a] = arc[y][np.flatnonzero(close.any(0)).max()]
    return out, clear


def _crosswalks(rng: np.random.Generator, roads: list[Road], radius: dict[int, float]) -> list[Crosswalk]:
    """Crossings at some junction mouths (just past the junction) and some mid-blocks."""
    found = []
    for ri, road in enumerate(roads):
        total = chain_length(road.centre)
        spots = []
        for away, node, trim in ((1, road.u, road.trim[0]), (-1, road.v, road.trim[1])):
            if node in radius and rng.random() < 0.45:
                d = trim + 1.5 + CROSSWALK_WIDTH / 2
                spots.append((d if away > 0 else total - d, away))
        if total - road.trim[0] - road.trim[1] > 70 and rng.random() < 0.25:
            spots.append((road.trim[0] + 0.5 * (total - road.trim[0] - road.trim[1]), 0))
        for s, away in spots:
            pose, i = sample_at(road.centre, np.array([s - 3.0, s, s + 3.0]))
            if np.any(road.centre[i, 4] != 0.0):
                continue  # crossings only on straight stretches
            found.append(Crosswalk(ri, float(s), pose[1, :2].copy(), float(pose[1, 2]), road.half_width, away))
    return found


def _crossings(
    lanes: list[Lane], roads: list[Road], crosswalks: list[Crosswalk]
) -> tuple[tuple[tuple[int, float, float], ...], ...]:
    out: list[tuple[tuple[int, float, float], ...]] = []
    for lane in lanes:
        spans = []
        for ci, cw in enumerate(crosswalks):
            if cw.road != lane.road:
                continue
            s = np.arange(0.0, lane.length, 0.1)
            p = sample_at(lane.pieces, s)[0][:, :2] - cw.centre
            u = np.array([math.cos(cw.heading), math.sin(cw.heading)])
            inside = np.abs(p @ u) <= CROSSWALK_WIDTH / 2
            if inside.any():
                spans.append((ci, float(s[inside].min()), float(s[inside].max())))
        out.append(tuple(spans))
    return tuple(out)


def _band(pieces: np.ndarray, left: float, right: float, step: float = 3.0) -> np.ndarray:
    """Outline ``[K, 2]`` of the strip between offsets ``left`` and ``-right`` of a chain."""
    pose = sample_at(pieces, outline_s(pieces, step))[0]
    n = np.column_stack([-np.sin(pose[:, 2]), np.cos(pose[:, 2])])
    return np.concatenate([pose[:, :2] + left * n, (pose[:, :2] - right * n)[::-1]])


def _drivable(roads: list[Road], lanes: list[Lane], radius: dict[int, float], pos: np.ndarray) -> Any:
    parts = [shapely.Polygon(_band(r.centre, r.half_width, r.half_width)) for r in roads]
    for j, r in radius.items():
        corners = [pos[j]]
        for road in roads:
            for node, pieces in ((road.u, road.centre), (road.v, reverse(road.centre))):
                if node == j:
                    p = piece_pose(pieces[0], r + 0.5)
                    n = np.array([-math.sin(p[2]), math.cos(p[2])])
                    corners += [p[:2] + road.half_width * n, p[:2] - road.half_width * n]
        parts.append(shapely.MultiPoint(np.array(corners)).convex_hull)
    half = LANE_WIDTH / 2 + 0.75  # covers the swept width of long vehicles in tight turns
    parts += [shapely.Polygon(_band(lane.pieces, half, half)) for lane in lanes if lane.is_connector]
    return shapely.union_all(shapely.make_valid(np.array(parts, dtype=object))).simplify(0.01)


# ---------------------------------------------------------------------------------------------
# Map expansion v1.3 JSON


class _Geometry:
    """The geometric layers (node, line, polygon) of a map expansion being written."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.node: list[dict] = []
        self.line: list[dict] = []
        self.polygon: list[dict] = []

    def _nodes(self, points: np.ndarray) -> list[str]:
        tokens = []
        for x, y in np.round(np.asarray(points, dtype=np.float64), 3):
            tokens.append(map_token(self.location, "node", len(self.node)))
            self.node.append({"token": tokens[-1], "x": float(x), "y": float(y)})
        return tokens

    def add_line(self, points: np.ndarray) -> str:
        token = map_token(self.location, "line", len(self.line))
        self.line.append({"token": token, "node_tokens": self._nodes(points)})
        return token

    def add_polygon(self, exterior: np.ndarray, holes: Sequence[np.ndarray] = ()) -> str:
        token = map_token(self.location, "polygon", len(self.polygon))
        self.polygon.append(
            {
                "token": token,
                "exterior_node_tokens": self._nodes(exterior),
                "holes": [{"node_tokens": self._nodes(h)} for h in holes],
            }
        )
        return token


def _ring(coords: Any) -> np.ndarray:
    return np.asarray(coords)[:-1, :2]


def _heading(a: float) -> float:
    """An angle wrapped to [-pi, pi), rounded for JSON."""
    return round(float((a + math.pi) % (2 * math.pi) - math.pi), 9)


def _arcline(pieces: np.ndarray) -> list[dict]:
    """``arcline_path_3`` records of a chain: one per piece (straight or arc)."""
    out = []
    for p in pieces:
        x, y, h, length, k = (float(v) for v in p)
        e = piece_pose(p, length)
        rec = {
            "start_pose": [round(x, 6), round(y, 6), _heading(h)],
            "end_pose": [round(float(e[0]), 6), round(float(e[1]), 6), _heading(e[2])],
        }
        if k == 0.0:
            rec.update(shape="LSL", radius=999.999, segment_length=[0.0, round(length, 6), 0.0])
        else:
            rec.update(shape="LSL" if k > 0 else "RSR", radius=round(1.0 / abs(k), 6),
                       segment_length=[round(length, 6), 0.0, 0.0])
        out.append(rec)
    return out


def map_expansion(net: Network) -> dict[str, Any]:
    """The network as a nuScenes map expansion (version 1.3) JSON object.

    Lanes and connectors carry the extension key ``speed_limit_mps``; ``drivable_area``,
    ``lane``, ``lane_connector``, ``ped_crossing``, ``road_divider`` and ``lane_divider`` are
    filled, the other layers are empty.
    """
    geo = _Geometry(net.location)
    lane_recs, connector_recs, arclines, connectivity = [], [], {}, {}
    half = LANE_WIDTH / 2
    for i, lane in enumerate(net.lanes):
        poly = geo.add_polygon(_band(lane.pieces, half, half))
        arclines[lane.token] = _arcline(lane.pieces)
        connectivity[lane.token] = {
            "incoming": [net.lanes[p].token for p in net.predecessors[i]],
            "outgoing": [net.lanes[s].token for s in net.successors[i]],
        }
        if lane.is_connector:
            connector_recs.append({"token": lane.token, "polygon_token": poly, "speed_limit_mps": lane.speed_limit})
            continue
        edges = []
        for p in (lane.pieces[0, :3], end_pose(lane.pieces)):
            n = np.array([-math.sin(p[2]), math.cos(p[2])]) * half
            edges.append(geo.add_line(np.stack([p[:2] + n, p[:2] - n])))
        lane_recs.append(
            {
                "token": lane.token,
                "polygon_token": poly,
                "lane_type": "CAR",
                "from_edge_line_token": edges[0],
                "to_edge_line_token": edges[1],
                "left_lane_divider_segments": [],
                "right_lane_divider_segments": [],
                "speed_limit_mps": lane.speed_limit,
            }
        )
    drivable = []
    for k, part in enumerate(shapely.get_parts(net.drivable)):
        poly = geo.add_polygon(_ring(part.exterior.coords), [_ring(h.coords) for h in part.interiors])
        drivable.append({"token": map_token(net.location, "drivable_area", k), "polygon_tokens": [poly]})
    road_dividers, lane_dividers = [], []
    for ri, road in enumerate(net.roads):
        core = cut(road.centre, road.trim[0], chain_length(road.centre) - road.trim[1])
        centre = sample_at(core, outline_s(core))[0][:, :2]
        road_dividers.append(
            {"token": map_token(net.location, "road_divider", ri), "line_token": geo.add_line(centre), "road_segment_token": None}
        )
        for k in range(1, road.lanes_per_side):
            for side in (1, -1):
                line = offset(core, side * k * LANE_WIDTH)
                lane_dividers.append(
                    {
                        "token": map_token(net.location, "lane_divider", ri, k, side),
                        "line_token": geo.add_line(sample_at(line, outline_s(line))[0][:, :2]),
                        "lane_divider_segments": [],
                    }
                )
    crossings = [
        {"token": map_token(net.location, "ped_crossing", k), "polygon_token": geo.add_polygon(cw.polygon()),
         "road_segment_token": None}
        for k, cw in enumerate(net.crosswalks)
    ]
    return {
        "version": "1.3",
        "polygon": geo.polygon,
        "line": geo.line,
        "node": geo.node,
        "drivable_area": drivable,
        "road_segment": [],
        "road_block": [],
        "lane": lane_recs,
        "ped_crossing": crossings,
        "walkway": [],
        "stop_line": [],
        "carpark_area": [],
        "road_divider": road_dividers,
        "lane_divider": lane_dividers,
        "traffic_light": [],
        "lane_connector": connector_recs,
        "arcline_path_3": arclines,
        "connectivity": connectivity,
        "canvas_edge": [round(net.canvas[0], 3), round(net.canvas[1], 3)],
    }
