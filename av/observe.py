"""What a planner sees (:class:`Observation`) and what a privileged planner may add
(:class:`Privileged`), as a pure function of a scenario batch, a time and an
:class:`ObservationSpec`.

``observe(batch, t, spec)`` builds the observation from the log; the closed-loop driver builds
its observations through the same function from the simulated history (a :class:`Window`), so a
network sees identical inputs from a logged drive and from simulation.

The map is prepared once per batch (:func:`prepare_map`): every lane resampled to ``P`` points
and the route centreline resampled at 1 m (always running forward, even through lane changes:
see :func:`_forward_route`). Each observation then only ranks and gathers: the nearest agents,
lanes and drivable edges by top-k, and the next route points after the ego's projection onto
the route. Everything is vectorised over the batch (no Python loop over
scenarios, agents or lanes). Output tensors are in the ego frame at "now" (origin at the rear
axle, x forward, y left), SI units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from av.batch import ScenarioBatch
from av.errors import AvError
from av.geometry import to_frame, wrap_angle
from av.observation import Observation, Privileged

ROUTE_SPACING = 1.0  # m
_KEY_STRIDE = 1.0e6  # m; lanes are far shorter, so lane index * stride + arc length sorts points
# Where the route leaves a lane for one that does not continue it (a lane change, or a gap in the
# lane graph), it joins the new lane at least _JOIN_RAMP m forward per metre sideways, or at the
# latest _JOIN_MAX_M m along the new lane.
_JOIN_RAMP = 4.0
_JOIN_MAX_M = 15.0


@dataclass(frozen=True)
class MapCache:
    """Per-batch map tensors prepared once (``B`` scenarios, ``L`` lanes, ``S`` route points).

    * ``lanes`` ``[B, L, P, 3]``: each lane's centreline resampled to ``P`` points evenly spaced
      in arc length (x, y, heading); ``lane_valid`` bool ``[B, L]``; ``lane_on_route`` bool
      ``[B, L]``; ``lane_speed_limit`` ``[B, L]`` m/s (NaN unknown).
    * ``route`` ``[B, S, 3]``: the route lanes' centrelines concatenated and resampled every
      ``ROUTE_SPACING`` m; ``route_valid`` bool ``[B, S]``.
    * ``edges`` ``[B, E, 4]`` drivable-area edges, ``edge_valid`` bool ``[B, E]``, ``edge_mid``
      ``[B, E, 2]`` their midpoints (for ranking).

    Every axis has at least one (possibly invalid) entry, so lookups never meet an empty axis.
    """

    lanes: Tensor
    lane_valid: Tensor
    lane_on_route: Tensor
    lane_speed_limit: Tensor
    route: Tensor
    route_valid: Tensor
    edges: Tensor
    edge_valid: Tensor
    edge_mid: Tensor


def _interp_polyline(points: Tensor, key: Tensor, query: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Linear interpolation of ``points`` ``[B, Q, 3]`` (x, y, heading) at ``query`` ``[B, K]``.

    ``key`` ``[B, Q]`` is non-decreasing (float64); the segment index is kept in ``[lo, hi]``
    (``[B, K]``), so a query never interpolates across two polylines.
    """
    i = (torch.searchsorted(key, query, right=True) - 1).clamp_min(lo).minimum(hi)
    k0, k1 = key.gather(1, i), key.gather(1, i + 1)
    frac = ((query - k0) / (k1 - k0).clamp_min(1e-9)).clamp(0.0, 1.0).to(points.dtype)
    p0 = points.gather(1, i[..., None].expand(-1, -1, 3))
    p1 = points.gather(1, (i + 1)[..., None].expand(-1, -1, 3))
    xy = p0[..., :2] + frac[..., None] * (p1[..., :2] - p0[..., :2])
    heading = wrap_angle(p0[..., 2] + frac * wrap_angle(p1[..., 2] - p0[..., 2]))
    return torch.cat([xy, heading[..., None]], -1)


def _arc_length(points: Tensor, same: Tensor) -> Tensor:
    """Cumulative length ``[B, Q]`` (float64) along ``points`` ``[B, Q, >=2]``, counting only the
    steps ``q-1 -> q`` where ``same[:, q]`` (bool ``[B, Q]``, False at q = 0)."""
    step = (points[:, 1:, :2] - points[:, :-1, :2]).double().norm(dim=-1) * same[:, 1:]
    return torch.cat([torch.zeros_like(step[:, :1]), step.cumsum(1)], 1)


def prepare_map(batch: ScenarioBatch, spec: "ObservationSpec") -> MapCache:
    """Resample lanes (``spec.lane_points`` each) and the route (1 m) of every scenario of ``batch``."""
    lane_points = spec.lane_points
    dev = batch.lane_points.device
    B, Q, _ = batch.lane_points.shape
    L = batch.lane_valid.shape[1]
    if L == 0 or Q < 2:
        lanes = torch.zeros(B, 1, lane_points, 3, dtype=batch.ego.dtype, device=dev)
        none = torch.zeros(B, 1, dtype=torch.bool, device=dev)
        lane_cache = (lanes, none, none, torch.full((B, 1), math.nan, dtype=batch.ego.dtype, device=dev))
        route_pts, route_valid = lanes[:, 0, :1], none
    else:
        lane_cache, (route_pts, route_valid) = _resample_lanes(batch, lane_points)
    edges, edge_valid = batch.drivable_edges, batch.drivable_edge_valid
    if edges.shape[1] == 0:
        edges = torch.zeros(B, 1, 4, dtype=batch.ego.dtype, device=dev)
        edge_valid = torch.zeros(B, 1, dtype=torch.bool, device=dev)
    return MapCache(
        lanes=lane_cache[0], lane_valid=lane_cache[1], lane_on_route=lane_cache[2],
        lane_speed_limit=lane_cache[3], route=route_pts, route_valid=route_valid,
        edges=edges, edge_valid=edge_valid, edge_mid=0.5 * (edges[..., :2] + edges[..., 2:]),
    )


def _resample_lanes(batch: ScenarioBatch, lane_points: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, Tensor]]:
    """``(lanes, lane_valid, lane_on_route, lane_speed_limit)`` and ``(route, route_valid)`` of a
    batch with at least one lane and two lane points (see :class:`MapCache`)."""
    dev = batch.lane_points.device
    B, Q, _ = batch.lane_points.shape
    L = batch.lane_valid.shape[1]
    pts = batch.lane_points
    lane = batch.lane_point_lane
    lane_key = torch.where(lane < 0, torch.full_like(lane, L), lane)  # padding sorts last
    same = torch.zeros_like(lane, dtype=torch.bool)
    same[:, 1:] = (lane[:, 1:] == lane[:, :-1]) & (lane[:, 1:] >= 0)
    s = _arc_length(pts, same)
    lanes_idx = torch.arange(L, device=dev).expand(B, L).contiguous()
    first = torch.searchsorted(lane_key, lanes_idx).clamp_max(Q - 1)  # [B, L]
    count = torch.searchsorted(lane_key, lanes_idx, right=True) - first
    s_within = s - s.gather(1, first.gather(1, lane_key.clamp_max(L - 1)))
    key = lane_key.double() * _KEY_STRIDE + s_within
    length = torch.zeros(B, L, dtype=torch.float64, device=dev)
    length.scatter_reduce_(1, lane_key.clamp_max(L - 1), torch.where(lane >= 0, s_within, 0.0), "amax")
    frac = torch.linspace(0.0, 1.0, lane_points, dtype=torch.float64, device=dev)
    query = (lanes_idx.double()[..., None] * _KEY_STRIDE + length[..., None] * frac).reshape(B, L * lane_points)
    lo = first.repeat_interleave(lane_points, 1)
    hi = (first + (count - 2).clamp_min(0)).clamp_max(Q - 2).repeat_interleave(lane_points, 1)
    lanes = _interp_polyline(pts, key, query, lo, hi).reshape(B, L, lane_points, 3)
    lane_valid = batch.lane_valid & (count >= 2)
    lanes = lanes * lane_valid[..., None, None]

    route = batch.route  # [B, R]
    R = route.shape[1]
    on_route = torch.zeros(B, L + 1, dtype=torch.bool, device=dev)
    on_route.scatter_(1, torch.where(route < 0, torch.full_like(route, L), route), True)
    lane_on_route = on_route[:, :L] & lane_valid
    lanes_out = (lanes, lane_valid, lane_on_route, batch.lane_speed_limit)

    # Concatenate the route lanes' points in route order: slot m of row b is point ``within`` of
    # route entry ``e`` where the running point counts of the entries pass m.
    r_lane = route.clamp(0, L - 1)
    r_first = first.gather(1, r_lane)
    r_count = torch.where(route >= 0, count.gather(1, r_lane), 0)
    r_end = r_count.cumsum(1)
    total = r_end[:, -1] if R else torch.zeros(B, dtype=torch.long, device=dev)
    M = int(total.max()) if R else 0
    if M < 2:
        none = torch.zeros(B, 1, dtype=torch.bool, device=dev)
        return lanes_out, (torch.zeros(B, 1, 3, dtype=pts.dtype, device=dev), none)
    m = torch.arange(M, device=dev).expand(B, M).contiguous()
    e = torch.searchsorted(r_end, m, right=True).clamp_max(R - 1)
    within = m - (r_end - r_count).gather(1, e)
    flat = (r_first.gather(1, e) + within).clamp(0, Q - 1)
    rpts = pts.gather(1, flat[..., None].expand(-1, -1, 3))
    rvalid = m < total[:, None]
    if R >= 2:
        keep = _forward_route(rpts, rvalid, e, s_within.gather(1, flat), route, batch.lane_successors,
                              r_end, r_count)
        # Compact the kept points (in order) to the front of each row.
        total = keep.sum(1)
        src = torch.searchsorted(keep.long().cumsum(1), m + 1).clamp_max(M - 1)
        rpts = rpts.gather(1, src[..., None].expand(-1, -1, 3))
        rvalid = m < total[:, None]
    rs = _arc_length(rpts, torch.cat([torch.zeros_like(rvalid[:, :1]), rvalid[:, 1:]], 1))
    rlen = rs.gather(1, (total - 1).clamp_min(0)[:, None])[:, 0] * (total >= 2)
    S = int(math.floor(float(rlen.max()) / ROUTE_SPACING)) + 1
    rq = (torch.arange(S, device=dev, dtype=torch.float64) * ROUTE_SPACING).expand(B, S).contiguous()
    # Padding slots repeat the arc length of the last point, so the key stays sorted.
    rkey = torch.where(rvalid, rs, rlen[:, None])
    hi_r = (total - 2).clamp_min(0)[:, None].expand(B, S)
    route_pts = _interp_polyline(rpts, rkey, rq, torch.zeros_like(hi_r), hi_r)
    route_valid = (rq <= rlen[:, None] + 1e-6) & (total >= 2)[:, None]
    return lanes_out, (route_pts * route_valid[..., None], route_valid)


def _forward_route(rpts: Tensor, rvalid: Tensor, entry: Tensor, s_lane: Tensor, route: Tensor,
                   successors: Tensor, r_end: Tensor, r_count: Tensor) -> Tensor:
    """Which points (bool ``[B, M]``) of the concatenated route lanes to keep so the route only
    runs forward.

    ``rpts`` ``[B, M, 3]`` are the route lanes' points in route order (``rvalid`` bool ``[B, M]``);
    ``entry`` ``[B, M]`` the route entry of each slot, ``s_lane`` ``[B, M]`` its arc length along
    its own lane; ``route`` ``[B, R]`` (``R >= 2``), ``successors`` ``[B, L, S]`` the lane graph;
    ``r_end`` / ``r_count`` ``[B, R]`` each entry's end slot (exclusive) and point count.

    Where entry ``e + 1`` continues entry ``e`` (its lane is a successor) nothing is dropped. At
    any other transition A -> B (a lane change, or lanes the graph does not connect), A is cut at
    the projection of B's first point onto A (its nearest point of A, kept if B's first point
    lies ahead of it), and B's leading points are dropped until one lies ahead of the last point
    kept before B (the anchor): at least ``_JOIN_RAMP`` times as far forward, along the anchor's
    heading, as sideways, or ``_JOIN_MAX_M`` m along B (and forward in any case). So no kept
    point falls behind the route before it and a lane change becomes a gentle diagonal.
    """
    B, M, _ = rpts.shape
    R = route.shape[1]
    dev = rpts.device
    L, S = successors.shape[1], successors.shape[2]
    m = torch.arange(M, device=dev).expand(B, M)
    r_lane = route.clamp(0, L - 1)
    succ = successors.gather(1, r_lane[:, :-1, None].expand(-1, -1, S))  # [B, R - 1, S]
    linked = (succ == route[:, 1:, None]).any(-1) & (route[:, 1:] >= 0) & (route[:, :-1] >= 0)
    joined = torch.cat([torch.ones_like(linked[:, :1]), linked], 1)  # entry e continues e - 1
    r_start = (r_end - r_count).clamp_max(M - 1)
    xy, u = rpts[..., :2], torch.stack([torch.cos(rpts[..., 2]), torch.sin(rpts[..., 2])], -1)

    # 1. Cut A where B (not its successor) starts: keep A's points before B's first point.
    cut = torch.cat([~linked & (r_count[:, 1:] > 0), torch.zeros_like(linked[:, :1])], 1)  # [B, R]
    b0 = xy.gather(1, r_end.clamp_max(M - 1).gather(1, entry)[..., None].expand(-1, -1, 2))
    dist = torch.where(rvalid, (b0 - xy).norm(dim=-1), math.inf)
    dmin = torch.full((B, R), math.inf, dtype=dist.dtype, device=dev).scatter_reduce(
        1, entry, dist, "amin")
    at_min = rvalid & (dist <= dmin.gather(1, entry))
    nearest = torch.full((B, R), M, dtype=torch.long, device=dev).scatter_reduce(
        1, entry, torch.where(at_min, m, M), "amin").gather(1, entry)
    before = (m < nearest) | ((m == nearest) & (((b0 - xy) * u).sum(-1) > 0))
    keep0 = rvalid & (~cut.gather(1, entry) | before)

    # 2. Drop B's leading points until one lies well ahead of the anchor. Twice, so an entry
    # dropped whole in the first pass hands the anchor on to the entry after it.
    keep = keep0
    entries = torch.arange(R, device=dev)
    for _ in range(2):
        last = torch.full((B, R), -1, dtype=torch.long, device=dev).scatter_reduce(
            1, entry, torch.where(keep, m, -1), "amax")
        anchor = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], 1).cummax(1).values
        check = (anchor >= 0) & ~(joined & (entry.gather(1, anchor.clamp_min(0)) == entries - 1))
        a = anchor.gather(1, entry).clamp_min(0)
        v = xy - xy.gather(1, a[..., None].expand(-1, -1, 2))
        ua = u.gather(1, a[..., None].expand(-1, -1, 2))
        along = (v * ua).sum(-1)
        side = (v[..., 0] * ua[..., 1] - v[..., 1] * ua[..., 0]).abs()
        ok = (along > 1e-3) & ((along >= _JOIN_RAMP * side) | (s_lane >= _JOIN_MAX_M))
        ok = ok | ~check.gather(1, entry)
        count = ok.long().cumsum(1)
        passed = count > (count - ok.long()).gather(1, r_start.gather(1, entry))
        keep = keep0 & passed
    return keep


def _nearest(dist: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices ``[B, k]`` of the ``k`` smallest valid ``dist`` ``[B, M]`` (nearest first) and
    whether each slot holds a valid item (``k`` may exceed ``M``: the rest is padding)."""
    B, M = dist.shape
    d = torch.where(valid, dist, torch.full_like(dist, math.inf))
    kk = min(k, M)
    if kk:
        vals, idx = torch.topk(d, kk, dim=1, largest=False, sorted=True)
    else:
        vals = torch.zeros(B, 0, dtype=dist.dtype, device=dist.device)
        idx = torch.zeros(B, 0, dtype=torch.long, device=dist.device)
    pad = k - kk
    if pad:
        idx = torch.cat([idx, torch.zeros(B, pad, dtype=idx.dtype, device=idx.device)], 1)
        vals = torch.cat([vals, torch.full((B, pad), math.inf, dtype=vals.dtype, device=vals.device)], 1)
    return idx, torch.isfinite(vals)


def _states_to_frame(states: Tensor, pose: Tensor) -> Tensor:
    """States ``[B, ..., 5]`` (x, y, yaw, vx, vy) in the frame of ``pose`` ``[B, 3]``."""
    extra = states.dim() - 2
    p = pose.reshape(pose.shape[0], *([1] * extra), 3)
    xy = to_frame(states[..., :2], p)
    c, s = torch.cos(p[..., 2]), torch.sin(p[..., 2])
    vx, vy = states[..., 3], states[..., 4]
    yaw = wrap_angle(states[..., 2] - p[..., 2])
    return torch.cat([xy, yaw[..., None], (c * vx + s * vy)[..., None], (-s * vx + c * vy)[..., None]], -1)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b, k], ...]`` for ``x`` ``[B, M, ...]`` and ``idx`` ``[B, K]`` (zeros where
    ``M == 0``)."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], idx.shape[1], *x.shape[2:])
    b = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[b, idx]


@dataclass(frozen=True)
class ObservationSpec:
    """How much a planner sees; saved with anything trained on it (SI units).

    ``history_steps`` past steps plus the current one; the ``num_agents`` agents nearest the ego
    now; the ``num_lanes`` nearest lanes, each resampled to ``lane_points`` points; the next
    ``route_points`` route points, ``ROUTE_SPACING`` m apart; the ``num_edges`` nearest
    drivable-area edges; ``future_steps`` logged future steps in :class:`Privileged` values.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    history_steps: int = field(default=20, metadata={"help": "past steps in observations (plus the current one)"})
    future_steps: int = field(default=80, metadata={"help": "logged future steps in privileged inputs"})
    num_agents: int = field(default=32, metadata={"help": "nearest agents in observations"})
    num_lanes: int = field(default=16, metadata={"help": "nearest lanes in observations"})
    lane_points: int = field(default=20, metadata={"help": "points per observed lane"})
    route_points: int = field(default=100, metadata={"help": "route points (1 m apart) ahead of the ego"})
    num_edges: int = field(default=64, metadata={"help": "nearest drivable-area edges in observations"})

    def validate(self) -> "ObservationSpec":
        """Raise :class:`AvError` naming the first bad size; return ``self``."""
        for name in ("future_steps", "num_agents", "num_lanes", "route_points", "num_edges"):
            if int(getattr(self, name)) < 1:
                raise AvError(f"observation spec: {name} must be >= 1, got {getattr(self, name)}")
        if self.history_steps < 0:
            raise AvError(f"observation spec: history_steps must be >= 0, got {self.history_steps}")
        if self.lane_points < 2:
            raise AvError(f"observation spec: lane_points must be >= 2, got {self.lane_points}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, with the schema version."""
        return {"schema_version": self.SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ObservationSpec":
        """Inverse of :meth:`to_dict`; refuses other schema versions and unknown keys."""
        d = dict(d)
        version = d.pop("schema_version", cls.SCHEMA_VERSION)
        if version != cls.SCHEMA_VERSION:
            raise AvError(f"observation spec schema version {version}, this av reads {cls.SCHEMA_VERSION}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise AvError(f"observation spec: unknown field(s) {', '.join(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()}).validate()


@dataclass(frozen=True)
class Window:
    """The world over the last ``H`` steps, oldest first, now last (local frame, SI).

    * ``ego`` ``[B, H, 5]``: ego rear-axle states (x, y, yaw, vx, vy); the ego pose now is
      ``ego[:, -1, :3]``.
    * ``agents`` ``[B, N, H, 5]``: agent box-centre states, zero where invalid;
      ``agent_valid`` bool ``[B, N, H]``.

    From the log (:func:`log_window`) or from a simulation (the closed-loop driver pushes each
    simulated step with :meth:`push`): observations are built from either the same way.
    """

    ego: Tensor
    agents: Tensor
    agent_valid: Tensor

    @property
    def pose(self) -> Tensor:
        """The ego pose now ``[B, 3]`` (x, y, yaw)."""
        return self.ego[:, -1, :3]

    def push(self, ego: Tensor, agents: Tensor, agent_valid: Tensor) -> "Window":
        """Drop the oldest step and append ``ego`` ``[B, 5]``, ``agents`` ``[B, N, 5]``,
        ``agent_valid`` bool ``[B, N]`` as now."""
        return Window(
            ego=torch.cat([self.ego[:, 1:], ego[:, None]], 1),
            agents=torch.cat([self.agents[:, :, 1:], (agents * agent_valid[..., None])[:, :, None]], 2),
            agent_valid=torch.cat([self.agent_valid[:, :, 1:], agent_valid[:, :, None]], 2),
        )


def log_window(batch: ScenarioBatch, t: Tensor, history_steps: int) -> Window:
    """The logged :class:`Window` of ``history_steps + 1`` steps ending at log step ``t``
    (long ``[B]``); steps before 0 repeat step 0."""
    B = batch.batch_size
    dev = batch.ego.device
    t = t.to(dev)
    H = history_steps + 1
    steps = (t[:, None] - torch.arange(H - 1, -1, -1, device=dev)).clamp_min(0)  # [B, H]
    b = torch.arange(B, device=dev)[:, None]
    ego = batch.ego[b, steps]
    if batch.agents.shape[1]:
        agents = batch.agents[b[..., None], torch.arange(batch.agents.shape[1], device=dev)[None, :, None],
                              steps[:, None, :]]
        valid = batch.agent_valid[b[..., None], torch.arange(batch.agents.shape[1], device=dev)[None, :, None],
                                  steps[:, None, :]]
    else:
        agents = batch.agents.new_zeros(B, 0, H, 5)
        valid = torch.zeros(B, 0, H, dtype=torch.bool, device=dev)
    return Window(ego=ego, agents=agents * valid[..., None], agent_valid=valid)


def nearest_agents(window: Window, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` agents nearest the ego now: indices ``[B, k]`` and slot validity ``[B, k]``."""
    d = (window.agents[:, :, -1, :2] - window.pose[:, None, :2]).norm(dim=-1)
    return _nearest(d, window.agent_valid[:, :, -1], k)


def observe(batch: ScenarioBatch, t: Tensor, spec: ObservationSpec, *, window: Window | None = None,
            cache: MapCache | None = None) -> Observation:
    """What the car sees at log step ``t`` (long ``[B]``), ego frame at now.

    ``window`` is the history to show (default: the log's, :func:`log_window`); ``cache`` the
    batch's prepared map (default: prepared here with ``spec``; pass it when observing a batch
    many times). The same inputs give the same output bit for bit, whether they came from a log
    or from a simulation.
    """
    if window is None:
        window = log_window(batch, t, spec.history_steps)
    if cache is None:
        cache = prepare_map(batch, spec)
    pose = window.pose
    ego_hist = _states_to_frame(window.ego, pose)

    idx, slot = nearest_agents(window, spec.num_agents)
    agents = _gather_rows(window.agents, idx)  # [B, K, H, 5]
    agent_valid = _gather_rows(window.agent_valid, idx) & slot[..., None]
    agents = _states_to_frame(agents, pose) * agent_valid[..., None]
    types = torch.where(slot, _gather_rows(batch.agent_types, idx), torch.full_like(idx, -1))
    sizes = _gather_rows(batch.agent_sizes, idx) * slot[..., None]

    lane_d = (cache.lanes[..., :2] - pose[:, None, None, :2]).norm(dim=-1).amin(-1)  # [B, L]
    lidx, lslot = _nearest(lane_d, cache.lane_valid, spec.num_lanes)
    lanes = _gather_rows(cache.lanes, lidx)
    lanes_xy = to_frame(lanes[..., :2], pose[:, None, None, :])
    lanes_h = wrap_angle(lanes[..., 2] - pose[:, None, None, 2])
    lanes = torch.cat([lanes_xy, lanes_h[..., None]], -1) * lslot[..., None, None]
    lane_limit = torch.where(lslot, _gather_rows(cache.lane_speed_limit, lidx), math.nan)
    on_route = _gather_rows(cache.lane_on_route, lidx) & lslot

    route, route_valid = route_ahead(cache, pose, spec.route_points)

    ed = (cache.edge_mid - pose[:, None, :2]).norm(dim=-1)
    eidx, eslot = _nearest(ed, cache.edge_valid, spec.num_edges)
    edges = _gather_rows(cache.edges, eidx)
    e0 = to_frame(edges[..., :2], pose[:, None, :])
    e1 = to_frame(edges[..., 2:], pose[:, None, :])
    edges = torch.cat([e0, e1], -1) * eslot[..., None]

    return Observation(
        ego_history=ego_hist,
        ego_dims=batch.ego_dims,
        agents=agents,
        agent_valid=agent_valid,
        agent_types=types,
        agent_sizes=sizes,
        lanes=lanes,
        lane_valid=lslot,
        lane_speed_limit=lane_limit,
        lane_on_route=on_route,
        route=route,
        route_valid=route_valid,
        drivable_edges=edges,
        drivable_edge_valid=eslot,
        pose=pose,
        dt=batch.dt,
        route_spacing=ROUTE_SPACING,
    )


def route_ahead(cache: MapCache, pose: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The next ``count`` route points ``[B, count, 3]`` (frame of ``pose`` ``[B, 3]``) from the
    ego's projection onto the route (the nearest route point heading the same way, within 90
    degrees), and their validity ``[B, count]``."""
    S = cache.route.shape[1]
    d = (cache.route[..., :2] - pose[:, None, :2]).square().sum(-1)
    against = wrap_angle(cache.route[..., 2] - pose[:, None, 2]).abs() > math.pi / 2
    d = torch.where(cache.route_valid & ~against, d, torch.where(cache.route_valid, d + 1e6, math.inf))
    start = d.argmin(1)  # [B]
    idx = start[:, None] + torch.arange(count, device=pose.device)
    inside = idx < S
    idx = idx.clamp_max(S - 1)
    pts = _gather_rows(cache.route, idx)
    valid = inside & _gather_rows(cache.route_valid, idx)
    xy = to_frame(pts[..., :2], pose[:, None, :])
    h = wrap_angle(pts[..., 2] - pose[:, None, 2])
    return torch.cat([xy, h[..., None]], -1) * valid[..., None], valid


def privileged(batch: ScenarioBatch, t: Tensor, spec: ObservationSpec, *, window: Window | None = None,
               cache: MapCache | None = None) -> Privileged:
    """Logged futures after log step ``t`` (long ``[B]``): ``spec.future_steps`` of them, ego frame
    at now, the agents in the same order as :func:`observe` shows them. ``window`` as in
    :func:`observe` (it fixes "now": the ego pose and the agents' order); ``cache`` is unused and
    accepted so both functions take the same arguments."""
    if window is None:
        window = log_window(batch, t, 0)
    B, T = batch.step_valid.shape
    F = spec.future_steps
    pose = window.pose
    t = t.to(pose.device)
    tf = t[:, None] + torch.arange(1, F + 1, device=pose.device)  # [B, F]
    inside = tf < T
    tc = tf.clamp_max(T - 1)
    b = torch.arange(B, device=pose.device)[:, None]
    ego_valid = inside & batch.step_valid[b, tc]
    ego_future = _states_to_frame(batch.ego[b, tc], pose) * ego_valid[..., None]
    idx, slot = nearest_agents(window, spec.num_agents)
    K = idx.shape[1]
    if batch.agents.shape[1]:
        agents = batch.agents[b[..., None], idx[..., None], tc[:, None, :]]  # [B, K, F, 5]
        a_valid = batch.agent_valid[b[..., None], idx[..., None], tc[:, None, :]]
        a_valid = a_valid & slot[..., None] & inside[:, None, :]
    else:
        agents = batch.agents.new_zeros(B, K, F, 5)
        a_valid = torch.zeros(B, K, F, dtype=torch.bool, device=pose.device)
    agents = _states_to_frame(agents, pose) * a_valid[..., None]
    return Privileged(ego_future=ego_future, ego_future_valid=ego_valid, agents_future=agents,
                      agents_future_valid=a_valid)
