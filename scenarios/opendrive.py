"""OpenDRIVE export of a scenario's road network (what CARLA loads with ``generate_opendrive_world``).

Every lane of :class:`~av.types.MapData` (lanes and lane connectors alike) becomes one OpenDRIVE
road with one driving lane, road id = lane index, road name = the dataset's lane token (a lane
that leaves and re-enters the same junction is cut into two roads, the second with an id from
``num_lanes`` up: :attr:`NetworkPlan.lane_of_road` maps road ids back to lanes). The road's reference line IS the lane's centreline: a chain of cubic Hermite curves
(``paramPoly3``, normalized) through knots picked from the centreline points so that the curve
stays within :data:`FIT_TOLERANCE_M` of every point. The single lane is lane ``-1`` (right of the
reference line, driven along +s) and ``<laneOffset>`` shifts it left by half its width, so the
lane's centre runs exactly on the reference line. Widths come from the lane polygons
(:func:`lane_widths`) and vary linearly along each road between its two ends.

Connectivity: lane connectors become connecting roads of junctions (connectors that share an
incoming or outgoing lane are in the same junction; junction ids follow the road ids); a lane whose
successors (predecessors) are connectors links to their junction, with one ``<connection>`` per
connector; an unambiguous lane -> lane edge is a direct road link. Where lanes meet, their ends are
made to coincide in position, heading and width (the lanes' own headings win over connectors'), so
the borders of linked lanes touch, as the ASAM checker requires.

Frame: OpenDRIVE's inertial x, y are the scenario's local frame (the dataset's map frame minus
``Source.origin``; both right-handed, heading counter-clockwise from +x). CARLA flips the y axis
when it loads a map: a point (x, y) of this file is ``carla.Location(x, -y, 0)`` and a heading h
is a CARLA yaw of ``-degrees(h)`` (see ``closedloop.sim.carla_backend``).

Output is byte-reproducible: the header's date is fixed (:data:`FIXED_DATE`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from av.errors import AvError
from av.fileio import atomic_write_bytes
from av.types import MapData, Scenario, wrap_angle

REV_MAJOR, REV_MINOR = 1, 7
"""OpenDRIVE version written (1.7: the ASAM checker runs all its rules; CARLA reads it)."""
FIT_TOLERANCE_M = 0.05
"""Largest distance of a centreline point from the exported reference line."""
MAX_SEGMENT_M = 25.0
"""Longest single ``paramPoly3`` piece."""
DEFAULT_WIDTH_M = 3.5
"""Width of a lane without a usable polygon."""
WIDTH_RANGE_M = (2.5, 6.0)
"""Widths measured from polygons are clipped to this range (cropped polygons can be huge)."""
FIXED_DATE = "2000-01-01T00:00:00"
"""Header date of every export (keeps exports byte-reproducible)."""
_WIDTH_SAMPLES = 9  # cross-sections per lane for its width
_CROSS_HALF_M = 10.0  # half length of a cross-section line
_CURVE_SAMPLES = 24  # default points per Hermite piece


@dataclass(frozen=True)
class RoadPlan:
    """One exported road before it becomes XML (local frame, metres, radians).

    ``road``: its OpenDRIVE id; ``lane``: the map lane it carries (a lane is one road, or two
    when it is cut, see :func:`plan_network`). ``knots`` float ``[K, 3]`` (x, y, heading): the ends of the Hermite pieces, ``K >= 2``.
    ``widths`` (start, end) m. ``junction``: id of the junction the road belongs to, or -1.
    ``predecessor`` / ``successor``: ``("road", id)``, ``("junction", id)`` or None.
    """

    road: int
    lane: int
    name: str
    knots: np.ndarray
    widths: tuple[float, float]
    junction: int
    predecessor: tuple[str, int] | None
    successor: tuple[str, int] | None


@dataclass(frozen=True)
class NetworkPlan:
    """The whole exported network: ``roads`` in lane order and ``junctions`` as
    ``{junction id: ((incoming road, connecting road, starts there), ...)}``."""

    roads: tuple[RoadPlan, ...]
    junctions: dict[int, tuple[tuple[int, int, bool], ...]]

    @property
    def lane_of_road(self) -> dict[int, int]:
        """``{OpenDRIVE road id: map lane index}``."""
        return {r.road: r.lane for r in self.roads}


# ---------------------------------------------------------------------------------------- widths


def lane_widths(m: MapData) -> np.ndarray:
    """Width of every lane, float ``[L]`` metres: the median length of cross-sections of its
    polygon, perpendicular to the centreline at interior points, clipped to :data:`WIDTH_RANGE_M`
    (:data:`DEFAULT_WIDTH_M` where the polygon gives nothing)."""
    out = np.full(m.num_lanes, DEFAULT_WIDTH_M)
    for i in range(m.num_lanes):
        ring = m.lane_polygon(i)
        line = m.lane(i)
        if len(ring) < 3:
            continue
        poly = shapely.make_valid(shapely.Polygon(ring))
        idx = np.unique(np.linspace(0, len(line) - 1, _WIDTH_SAMPLES + 2).round().astype(int)[1:-1])
        p = line[idx, :2]
        n = np.stack([-np.sin(line[idx, 2]), np.cos(line[idx, 2])], axis=1) * _CROSS_HALF_M
        cuts = shapely.intersection(shapely.linestrings(np.stack([p - n, p + n], axis=1)), poly)
        widths = []
        for point, cut in zip(shapely.points(p), cuts):
            parts = [g for g in getattr(cut, "geoms", [cut]) if g.geom_type == "LineString" and g.length > 0]
            hit = [g.length for g in parts if g.distance(point) < 1e-6]
            widths.extend(hit)
        if widths:
            out[i] = float(np.clip(np.median(widths), *WIDTH_RANGE_M))
    return out


# -------------------------------------------------------------------------------------- geometry


def hermite_uv(knots: np.ndarray) -> np.ndarray:
    """``paramPoly3`` coefficients of the cubic Hermite pieces between consecutive knots.

    ``knots`` float ``[K, 3]`` (x, y, heading). Returns float ``[K-1, 2, 4]``: for each piece the
    (a, b, c, d) of u(p) and v(p), ``p in [0, 1]``, in the frame of the piece's start (u along its
    heading, v to the left). Tangent magnitudes are the chord length, so the curve starts and ends
    at the knots with the knots' headings.
    """
    d = knots[1:, :2] - knots[:-1, :2]
    h0 = knots[:-1, 2]
    c, s = np.cos(h0), np.sin(h0)
    x1 = c * d[:, 0] + s * d[:, 1]
    y1 = -s * d[:, 0] + c * d[:, 1]
    chord = np.hypot(d[:, 0], d[:, 1])
    dh = knots[1:, 2] - h0
    tx1, ty1 = chord * np.cos(dh), chord * np.sin(dh)
    zero = np.zeros_like(chord)
    u = np.stack([zero, chord, 3 * x1 - 2 * chord - tx1, -2 * x1 + chord + tx1], axis=1)
    v = np.stack([zero, zero, 3 * y1 - ty1, -2 * y1 + ty1], axis=1)
    return np.stack([u, v], axis=1)


def hermite_points(knots: np.ndarray, samples: int | np.ndarray = _CURVE_SAMPLES) -> np.ndarray:
    """Points along the Hermite pieces in the local frame: at ``samples`` evenly spaced
    parameters (float ``[K-1, samples, 2]``), or at the parameters ``samples`` ``[S]`` in [0, 1]
    (same for every piece: ``[K-1, S, 2]``)."""
    coef = hermite_uv(knots)
    p = np.linspace(0.0, 1.0, samples) if np.ndim(samples) == 0 else np.asarray(samples, dtype=np.float64)
    powers = np.stack([np.ones_like(p), p, p**2, p**3])  # [4, S]
    uv = coef @ powers  # [K-1, 2, S]
    h0 = knots[:-1, 2, None]
    c, s = np.cos(h0), np.sin(h0)
    x = knots[:-1, 0, None] + c * uv[:, 0] - s * uv[:, 1]
    y = knots[:-1, 1, None] + s * uv[:, 0] + c * uv[:, 1]
    return np.stack([x, y], axis=-1)


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance of each of ``points`` ``[P, 2]`` to the polyline ``line`` ``[Q, 2]``, ``[P]``."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.einsum("pqd,qd->pq", points[:, None] - a[None], ab) / np.maximum((ab**2).sum(-1), 1e-12)
    closest = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(axis=1)


def fit_knots(points: np.ndarray, tolerance: float = FIT_TOLERANCE_M) -> np.ndarray:
    """Knots (a subset of ``points`` ``[P, 3]``, first and last always kept) whose Hermite curve
    passes within ``tolerance`` m of every point and has no piece longer than
    :data:`MAX_SEGMENT_M`. Pieces are split at their worst point until that holds (adjacent
    points are always accepted). Returns float ``[K, 3]``."""
    keep = [0, len(points) - 1]
    pending = [(0, len(points) - 1)]
    while pending:
        a, b = pending.pop()
        if b - a < 2:
            continue
        # Each point against the curve at its chord-length fraction (never less than its distance
        # to the curve, so the test is conservative).
        steps = np.hypot(*np.diff(points[a : b + 1, :2], axis=0).T).cumsum()
        curve = hermite_points(points[[a, b]], steps[:-1] / steps[-1])[0]
        err = np.hypot(*(curve - points[a + 1 : b, :2]).T)
        chord = float(np.hypot(*(points[b, :2] - points[a, :2])))
        if err.max() <= tolerance and chord <= MAX_SEGMENT_M:
            continue
        mid = a + 1 + int(np.argmax(err)) if err.max() > tolerance else (a + b) // 2
        mid = min(max(mid, a + 1), b - 1)
        keep.append(mid)
        pending += [(a, mid), (mid, b)]
    return points[sorted(keep)]


# ------------------------------------------------------------------------------------ road graph


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def plan_network(scenario: Scenario) -> NetworkPlan:
    """The exported roads and junctions of ``scenario.map`` (see the module docstring).

    Raises :class:`AvError` for a lane graph OpenDRIVE cannot express with this scheme: a
    connector with several predecessors or successors, two connected connectors, or a lane that
    branches into (or merges from) lanes that are not connectors.
    """
    m = scenario.map
    L = m.num_lanes
    if L == 0:
        raise AvError(f"{scenario.id}: the map has no lanes to export")
    conn = m.lane_is_connector
    succ = [m.successors(i).tolist() for i in range(L)]
    pred: list[list[int]] = [[] for _ in range(L)]
    for i in range(L):
        for j in succ[i]:
            pred[j].append(i)
    # Junction roads: connectors linked to any lane (an isolated one is a plain road).
    jr = conn & np.array([len(p) + len(q) > 0 for p, q in zip(pred, succ)])
    where = f"{scenario.id}: cannot export the lane graph to OpenDRIVE"
    for i in range(L):
        if conn[i] and (len(succ[i]) > 1 or len(pred[i]) > 1):
            raise AvError(f"{where}: connector {m.lane_ids[i]} has several predecessors or successors")
        if conn[i] and any(conn[j] for j in succ[i]):
            raise AvError(f"{where}: connector {m.lane_ids[i]} leads into another connector")
        for nbrs in (succ[i], pred[i]):
            if not jr[i] and len(nbrs) > 1 and not all(jr[j] for j in nbrs):
                raise AvError(f"{where}: lane {m.lane_ids[i]} branches into or merges from lanes "
                              "that are not connectors")

    # Junctions: junction roads sharing an incoming or outgoing lane.
    parent = list(range(L))
    for i in range(L):
        for nbrs in (succ[i], pred[i]):
            group = [j for j in nbrs if jr[j]]
            for j in group[1:]:
                _union(parent, group[0], j)
    roots = sorted({_find(parent, i) for i in range(L) if jr[i]})
    group = [_find(parent, i) if jr[i] else -1 for i in range(L)]
    ends_group = [  # the junction groups at a lane's start and end (-1: none)
        tuple(next((group[j] for j in nbrs if jr[j]), -1) if not jr[i] else -1 for nbrs in (pred[i], succ[i]))
        for i in range(L)]
    # A lane that leaves and enters the same junction is cut in two roads: OpenDRIVE could not
    # tell which of its ends a connection of that junction meets. The second half gets a new id.
    split = [i for i in range(L) if ends_group[i][0] == ends_group[i][1] != -1]
    end_road = list(range(L))
    for k, i in enumerate(split):
        end_road[i] = L + k
    junction_of = {r: L + len(split) + k for k, r in enumerate(roots)}
    junction = [junction_of[g] if g >= 0 else -1 for g in group]

    pose = _node_poses(m, succ, lane_widths(m))
    roads: list[RoadPlan] = []
    for i in range(L):
        line = m.lane(i).copy()
        (x0, y0, h0, w0), (x1, y1, h1, w1) = pose[i]
        line[0], line[-1] = (x0, y0, h0), (x1, y1, h1)
        line[:, 2] = wrap_angle(line[:, 2])
        knots = fit_knots(line)
        before = _link(i, pred[i], jr, junction, end_road)
        after = _link(i, succ[i], jr, junction, list(range(L)))
        if end_road[i] == i:
            roads.append(RoadPlan(i, i, m.lane_ids[i], knots, (w0, w1), junction[i], before, after))
            continue
        if len(knots) == 2:  # cut at the middle of the curve
            mid = hermite_points(knots, np.array([0.5, 0.5 + 1e-6]))[0]
            heading = math.atan2(*(mid[1] - mid[0])[::-1])
            knots = np.array([knots[0], [mid[0, 0], mid[0, 1], heading], knots[1]])
        cut = len(knots) // 2
        chord = np.hypot(*np.diff(knots[:, :2], axis=0).T).cumsum()
        wc = w0 + (w1 - w0) * chord[cut - 1] / chord[-1]
        roads.append(RoadPlan(i, i, m.lane_ids[i], knots[: cut + 1], (w0, wc), -1, before, ("road", end_road[i])))
        roads.append(RoadPlan(end_road[i], i, m.lane_ids[i], knots[cut:], (wc, w1), -1, ("road", i), after))

    # Connections: a connector starts at its incoming lane ("start", with the lane link); one
    # whose incoming lane the map crop cut off is only declared attached, at its end, to the lane
    # it leads into ("end", no lane link: nothing drives from that lane into it).
    junctions: dict[int, list[tuple[int, int, bool]]] = {junction_of[r]: [] for r in roots}
    for i in np.flatnonzero(jr):
        incoming, starts = (end_road[pred[i][0]], True) if pred[i] else (succ[i][0], False)
        junctions[junction[i]].append((incoming, int(i), starts))
    return NetworkPlan(tuple(roads), {k: tuple(v) for k, v in junctions.items()})


def _node_poses(m: MapData, succ: list[list[int]], widths: np.ndarray) -> list[tuple[tuple[float, ...], ...]]:
    """Per lane, the (x, y, heading, width) at its start and at its end, shared by every lane end
    that meets there: mean position; heading and width of the lanes (not connectors) there."""
    L = m.num_lanes
    nodes = list(range(2 * L))  # 2 i: start of lane i, 2 i + 1: its end
    for i in range(L):
        for j in succ[i]:
            _union(nodes, 2 * i + 1, 2 * j)
    members: dict[int, list[tuple[int, int]]] = {}
    for i in range(L):
        for k, row in ((0, 0), (1, -1)):
            members.setdefault(_find(nodes, 2 * i + k), []).append((i, row))
    at: dict[int, tuple[float, ...]] = {}
    for root, ends in members.items():
        lead = [e for e in ends if not m.lane_is_connector[e[0]]] or ends
        h = np.array([m.lane(i)[row, 2] for i, row in lead])
        xy = np.array([m.lane(i)[row, :2] for i, row in ends]).mean(axis=0)
        at[root] = (float(xy[0]), float(xy[1]), math.atan2(np.sin(h).mean(), np.cos(h).mean()),
                    float(np.mean([widths[i] for i, _ in lead])))
    return [(at[_find(nodes, 2 * i)], at[_find(nodes, 2 * i + 1)]) for i in range(L)]


def _link(
    i: int, nbrs: list[int], jr: np.ndarray, junction: list[int], road_of: list[int]
) -> tuple[str, int] | None:
    """Road link of lane ``i`` to its successors (or predecessors) ``nbrs``: the junction of the
    junction roads among them where ``i`` is not one itself, else the one plain road (the road
    of that lane ``road_of`` names: its end road for a predecessor)."""
    if not nbrs:
        return None
    if not jr[i] and any(jr[j] for j in nbrs):
        return ("junction", junction[next(j for j in nbrs if jr[j])])
    return ("road", road_of[nbrs[0]])


# ------------------------------------------------------------------------------------------- XML


def build_opendrive(scenario: Scenario) -> ET.Element:
    """The ``<OpenDRIVE>`` element of ``scenario``'s road network (scenariogeneration's model)."""
    from scenariogeneration import xodr

    plan = plan_network(scenario)
    odr = xodr.OpenDrive(scenario.id, revMajor=str(REV_MAJOR), revMinor=str(REV_MINOR))
    for road in plan.roads:
        odr.add_road(_road(xodr, road))
    for jid, connections in sorted(plan.junctions.items()):
        junction = xodr.Junction(f"junction {jid}", jid)
        for k, (incoming, connecting, starts) in enumerate(connections):
            c = xodr.Connection(incoming, connecting, xodr.ContactPoint.start if starts else xodr.ContactPoint.end, id=k)
            if starts:
                c.add_lanelink(-1, -1)
            junction.add_connection(c)
        odr.add_junction(junction)
    element = odr.get_element()
    element.find("header").set("date", FIXED_DATE)
    return element


def _road(xodr, road: RoadPlan):  # noqa: ANN001, ANN202 - scenariogeneration types
    planview = xodr.PlanView()
    coef = hermite_uv(road.knots)
    s = 0.0
    for (x, y, h), (u, v) in zip(road.knots[:-1], coef):
        geom = xodr.ParamPoly3(*u, *v, prange="normalized")
        planview.add_fixed_geometry(geom, float(x), float(y), float(h), s=s)
        s += geom.length
    w0, w1 = road.widths
    slope = (w1 - w0) / s
    lane = xodr.Lane(a=w0, b=slope)
    center = xodr.Lane()
    section = xodr.LaneSection(0, center)
    section.add_right_lane(lane)
    lanes = xodr.Lanes()
    lanes.add_laneoffset(xodr.LaneOffset(0, w0 / 2, slope / 2))
    lanes.add_lanesection(section)
    r = xodr.Road(road.road, planview, lanes, road_type=road.junction, name=road.name)
    for kind, link, contact in (("predecessor", road.predecessor, xodr.ContactPoint.end),
                                ("successor", road.successor, xodr.ContactPoint.start)):
        if link is None:
            continue
        element, eid = link
        if element == "junction":
            getattr(r, f"add_{kind}")(xodr.ElementType.junction, eid)
        else:
            getattr(r, f"add_{kind}")(xodr.ElementType.road, eid, contact)
            lane.add_link(kind, -1)
    return r


def opendrive_text(scenario: Scenario) -> str:
    """``scenario``'s road network as OpenDRIVE XML text (see the module docstring)."""
    element = build_opendrive(scenario)
    ET.indent(element)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(element, encoding="unicode") + "\n"


def write_opendrive(scenario: Scenario, path: Path) -> Path:
    """Write :func:`opendrive_text` of ``scenario`` to ``path`` atomically; returns ``path``."""
    atomic_write_bytes(path, opendrive_text(scenario).encode())
    return Path(path)
