"""nuPlan closed-loop metrics as pure per-step / per-agent functions (METRICS.md section 1).

Everything works on a :class:`Scene`: a chunk of ``B`` scenarios cut to their simulated part and
left-aligned (window step ``j`` is scenario step ``start_step + j``), and on its :class:`MapState`
(lane occupancy and drivable-area predicates, computed once). ``W`` is the window length, ``N``
the number of agents, ``K`` the lanes kept near the paths.

Deviations from the devkit, all forced by our data or by batching:

* The ego box is the dataset's vehicle (``ScenarioBatch.ego_dims``), not nuPlan's Pacifica; the
  comfort shift distance ``d`` is its rear-axle-to-centre distance.
* DAC (1.4) is the batched equivalent: a corner is *off* when it is in no lane / connector polygon
  and outside the drivable rings, and *far* when, in addition, it is >= 0.3 m from every drivable
  ring edge and from the polygons of the centre's lane objects.
* EP / MP (1.6) follow ``PerFrameProgressAlongRouteComputer`` step by step (:func:`lanes.route_progress`),
  but the map has no roadblock layer: roadblocks are derived from the lane graph and geometry
  (:func:`lanes.roadblocks`: side-by-side lanes of one direction whose starts and ends line up;
  connectors between the same two roadblocks). Where the derived grouping differs from the real
  roadblocks (lanes that split or merge mid-way, lanes shorter than 2.5 m) progress differs.
  A block's polygon is the union of its lanes' polygons (only lanes near the driven paths are kept).
* "Intersection" is approximated as described in :mod:`.lanes`.

Equivalent reformulations (same answers): NC keeps the first overlap of each agent (nuPlan's
collided set), TTC only projects 0.1..0.9 s ahead since only ``TTC_k <= 0.95 s`` matters. Agent
types: VEHICLE -> vehicle, PEDESTRIAN and CYCLIST -> VRU, STATIC -> static object.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from av.batch import ScenarioBatch
from av.checks import bounding_radius, box_overlap, may_overlap, moved_on, within_comfort_bounds
from av.geometry import box_corners
from av.types import AgentType
from av.vehicle import box_centre, ego_box
from closedloop.evaluator import comfort as comfort_mod
from closedloop.evaluator import lanes
from closedloop.evaluator.aggregate import Contacts, MetricValues, agent_group
from closedloop.rollout import Rollout

EGO_STOPPED = 0.05  # m/s, collision typing (ego and agents)
EGO_STOPPED_TTC = 0.005  # m/s
AHEAD_DEG, BEHIND_DEG = 30.0, 150.0
DAC_TOLERANCE_M = 0.3
TTC_STEPS = 9  # projections at 0.1 .. 0.9 s decide "TTC_k <= 0.95 s"


class CollisionType(enum.IntEnum):
    """nuPlan collision classes, first matching rule wins (METRICS.md 1.3)."""

    STOPPED_EGO = 0
    STOPPED_TRACK = 1
    ACTIVE_REAR = 2
    ACTIVE_FRONT = 3
    ACTIVE_LATERAL = 4


# ----------------------------------------------------------------------------- the evaluated window
@dataclass(frozen=True)
class Scene:
    """``B`` scenarios cut to their simulated part, left-aligned (window step ``j`` = ``step[:, j]``).

    * ``dt`` s; ``valid`` bool ``[B, W]``; ``step`` long ``[B, W]`` scenario step index.
    * ``ego`` ``[B, W, 5]`` simulated rear-axle state; ``accel`` ``[B, W, 2]`` (lon, lat) m/s^2;
      ``yaw_rate`` ``[B, W]`` rad/s; ``yaw_accel`` ``[B, W]`` rad/s^2.
    * ``expert`` ``[B, W, 5]`` logged ego, ``expert_valid`` ``[B, W]``.
    * ``dims`` ``[B, 4]``: length, width, wheelbase, rear_axle_to_center (m).
    * ``centre``/``expert_centre`` ``[B, W, 2]`` box centres; ``box`` ``[B, W, 5]`` the ego box
      (centre x, y, yaw, length, width); ``corners`` ``[B, W, 4, 2]`` its corners (FL, RL, RR,
      FR); ``speed`` ``[B, W]`` norm of the rear-axle velocity.
    * ``agents`` ``[B, N, W, 5]``, ``agent_valid`` ``[B, N, W]`` as simulated; ``log_agents``,
      ``log_agent_valid`` log-replayed agents (the rollout's in ``"log"`` agent mode, else the
      batch's); ``agent_types`` long ``[B, N]`` (-1 padding);
      ``agent_sizes`` ``[B, N, 2]`` (length, width).
    """

    dt: float
    valid: Tensor
    step: Tensor
    ego: Tensor
    accel: Tensor
    yaw_rate: Tensor
    yaw_accel: Tensor
    expert: Tensor
    expert_valid: Tensor
    dims: Tensor
    centre: Tensor
    expert_centre: Tensor
    box: Tensor
    corners: Tensor
    speed: Tensor
    agents: Tensor
    agent_valid: Tensor
    log_agents: Tensor
    log_agent_valid: Tensor
    agent_types: Tensor
    agent_sizes: Tensor


def build_scene(rollout: Rollout) -> Scene:
    """Cut a rollout (and its batch) to the simulated steps ``start_step .. last valid step``."""
    batch = rollout.scenario
    B, T = rollout.step_valid.shape
    t = torch.arange(T)
    sim = rollout.step_valid & (t[None] >= rollout.start_step[:, None])
    n = sim.sum(1)
    W = max(int(n.max()) if B else 0, 1)
    step = (rollout.start_step[:, None] + torch.arange(W)[None]).clamp(max=T - 1)
    valid = torch.arange(W)[None] < n[:, None]

    def over_t(x: Tensor, dim: int) -> Tensor:
        shape = list(x.shape)
        idx = step.view(B, *([1] * (dim - 1)), W, *([1] * (x.dim() - dim - 1)))
        shape[dim] = W
        return torch.gather(x, dim, idx.expand(*shape))

    ego = over_t(rollout.ego.float(), 1)
    expert = over_t(batch.ego.float(), 1)
    expert_valid = over_t(batch.step_valid, 1) & valid
    agents = over_t(rollout.agents.float(), 2)
    agent_valid = over_t(rollout.agent_valid, 2) & valid[:, None]
    if rollout.agent_mode == "log":  # the replayed agents as simulated
        log_agents, log_agent_valid = agents, agent_valid
    else:
        log_agents = over_t(batch.agents.float(), 2)
        log_agent_valid = over_t(batch.agent_valid, 2) & valid[:, None]
    dims = batch.ego_dims.float()
    box = ego_box(ego[..., :3], dims[:, None])
    corners = box_corners(box[..., :2], box[..., 2], box[..., 3], box[..., 4])
    return Scene(
        dt=float(batch.dt),
        valid=valid,
        step=step,
        ego=ego,
        accel=over_t(rollout.ego_accel.float(), 1),
        yaw_rate=over_t(rollout.ego_yaw_rate.float(), 1),
        yaw_accel=over_t(rollout.ego_yaw_accel.float(), 1),
        expert=expert,
        expert_valid=expert_valid,
        dims=dims,
        centre=box[..., :2],
        expert_centre=box_centre(expert[..., :3], dims[:, 3:4].expand(B, W)),
        box=box,
        corners=corners,
        speed=torch.linalg.vector_norm(ego[..., 3:5], dim=-1),
        agents=agents,
        agent_valid=agent_valid & (batch.agent_types[..., None] >= 0),
        log_agents=log_agents,
        log_agent_valid=log_agent_valid & (batch.agent_types[..., None] >= 0),
        agent_types=batch.agent_types,
        agent_sizes=batch.agent_sizes.float(),
    )


# ----------------------------------------------------------------------------- map predicates
@dataclass(frozen=True)
class MapState:
    """Lane and drivable-area predicates of a :class:`Scene`, computed once.

    * ``table``: the kept lanes (:class:`lanes.LaneTable`).
    * ``centre_in``, ``rear_in``, ``expert_in`` bool ``[B, W, K]`` and ``corner_in`` ``[B, W, 4, K]``:
      lane / connector polygons holding the point.
    * ``corner_drivable``, ``corner_near_drivable`` ``[B, W, 4]``: inside the drivable rings / closer
      than 0.3 m to a ring edge; ``rear_intersection`` ``[B, W]`` (approximate, see :mod:`.lanes`).
    * ``route`` ``[B, W, K]`` nuPlan route of the ego centre, ``expert_route`` of the expert centre,
      ``corner_route`` ``[B, W, 4, K]``, ``in_lane`` ``[B, W]`` (InLane_k); ``baseline`` the expert route
      as one polyline (NAVSIM's centerline stand-in); ``roadblock`` long ``[B, K]``
      (:func:`lanes.roadblocks`) and ``blocks`` the expert route's roadblocks (nuPlan EP).
    * ``centre_intersection`` ``[B, W]``: the ego centre is in an intersection (approximate).
    """

    table: lanes.LaneTable
    centre_in: Tensor
    rear_in: Tensor
    expert_in: Tensor
    corner_in: Tensor
    corner_drivable: Tensor
    corner_near_drivable: Tensor
    rear_intersection: Tensor
    centre_intersection: Tensor
    route: Tensor
    expert_route: Tensor
    corner_route: Tensor
    in_lane: Tensor
    baseline: lanes.RouteBaseline
    roadblock: Tensor
    blocks: lanes.RouteBlocks


def build_map_state(scene: Scene, batch: ScenarioBatch) -> MapState:
    """Lane occupancy of the ego centre, corners and rear axle and of the expert centre."""
    B, W = scene.valid.shape
    half_diag = float(torch.hypot(scene.dims[:, 0], scene.dims[:, 1]).max()) / 2 if B else 0.0
    paths = torch.cat([scene.centre, scene.expert_centre], 1)
    path_valid = torch.cat([scene.valid, scene.expert_valid], 1)
    table = lanes.select_lanes(batch, paths, path_valid, radius=half_diag + lanes.HYSTERESIS_M + 1.0)
    # query points per step: centre, FL, RL, RR, FR, rear axle (around the centre); expert centre
    ego_pts = torch.cat([scene.centre[:, :, None], scene.corners, scene.ego[:, :, None, :2]], 2)  # [B, W, 6, 2]
    contain = torch.cat(
        [
            lanes.lanes_containing(table, ego_pts, scene.centre, half_diag + 1e-3, scene.valid),
            lanes.lanes_containing(table, scene.expert_centre[:, :, None], scene.expert_centre, 0.0, scene.expert_valid),
        ],
        2,
    )  # [B, W, 7, K]
    pts = torch.cat([ego_pts, scene.expert_centre[:, :, None]], 2)
    pv = torch.cat([scene.valid[..., None].expand(B, W, 6), scene.expert_valid[..., None]], 2)
    index = lanes.drivable_index(batch, pts.reshape(B, -1, 2), pv.reshape(B, -1), pad=DAC_TOLERANCE_M)
    inside, near = lanes.drivable_query(index, pts.reshape(B, -1, 2))
    inside, near = inside.view(B, W, 7), near.view(B, W, 7)
    on_lane = contain.any(-1)
    in_conn = (contain & table.is_connector[:, None, None]).any(-1)
    intersection = in_conn | (inside & ~on_lane)
    route = lanes.extract_route(table, contain[:, :, 0], scene.valid, scene.centre, intersection[:, :, 0])
    expert_route = lanes.extract_route(
        table, contain[:, :, 6], scene.expert_valid, scene.expert_centre, intersection[:, :, 6]
    )
    corner_route = lanes.extract_corner_routes(table, contain[:, :, 1:5], scene.valid)
    roadblock = lanes.roadblocks(table)
    return MapState(
        table=table,
        centre_in=contain[:, :, 0],
        rear_in=contain[:, :, 5],
        expert_in=contain[:, :, 6],
        corner_in=contain[:, :, 1:5],
        corner_drivable=inside[:, :, 1:5],
        corner_near_drivable=near[:, :, 1:5],
        rear_intersection=intersection[:, :, 5],
        centre_intersection=intersection[:, :, 0],
        route=route,
        expert_route=expert_route,
        corner_route=corner_route,
        in_lane=lanes.in_lane(table, corner_route),
        baseline=lanes.route_baseline(table, expert_route, scene.expert_valid, scene.expert_centre),
        roadblock=roadblock,
        blocks=lanes.route_blocks(table, roadblock, expert_route, scene.expert_valid),
    )


# ----------------------------------------------------------------------------- geometry helpers
def relative_angle(p: Tensor, heading: Tensor, q: Tensor) -> Tensor:
    """Angle (rad, in [0, pi]) between the heading at ``p`` and the direction to ``q``; NaN if q = p.

    ``p``, ``q`` ``[..., 2]``; ``heading`` ``[...]``.
    """
    v = q - p
    dist = torch.linalg.vector_norm(v, dim=-1)
    cos = (torch.cos(heading) * v[..., 0] + torch.sin(heading) * v[..., 1]) / dist.clamp_min(1e-12)
    ang = torch.acos(cos.clamp(-1.0, 1.0))
    return torch.where(dist > 0, ang, torch.full_like(ang, math.nan))


def segment_hits_box(p0: Tensor, p1: Tensor, corners: Tensor) -> Tensor:
    """Does segment ``p0``-``p1`` ``[..., 2]`` touch the box with ``corners`` ``[..., 4, 2]``? bool ``[...]``."""
    d = p1 - p0
    normal = torch.stack([-d[..., 1], d[..., 0]], -1)
    axes = torch.stack([corners[..., 0, :] - corners[..., 1, :], corners[..., 0, :] - corners[..., 3, :], normal], -2)
    seg = torch.stack([p0, p1], -2)
    ps = torch.einsum("...kd,...cd->...kc", axes, seg)
    pb = torch.einsum("...kd,...cd->...kc", axes, corners)
    separated = (ps.amax(-1) < pb.amin(-1)) | (pb.amax(-1) < ps.amin(-1))
    return ~separated.any(-1)


def agent_box(agents: Tensor, sizes: Tensor) -> Tensor:
    """Boxes ``[..., 5]`` of agent states ``[..., 5]`` (box centres) with ``sizes`` ``[..., 2]``."""
    return torch.cat([agents[..., :3], sizes], -1)


def _agent_corners(agents: Tensor, sizes: Tensor) -> Tensor:
    return box_corners(agents[..., :2], agents[..., 2], sizes[..., 0], sizes[..., 1])


def overlaps(scene: Scene, agents: Tensor, agent_valid: Tensor, steps: Tensor) -> Tensor:
    """Ego box at step t vs agent boxes at step t: bool ``[B, N, S]`` (touching counts).

    ``agents`` ``[B, N, W, 5]``, ``agent_valid`` ``[B, N, W]``; ``steps`` bool ``[B, S]`` (``S <= W``):
    the leading steps to test.
    """
    S = steps.shape[1]
    r = bounding_radius(scene.dims[:, :2])[:, None, None] + bounding_radius(scene.agent_sizes)[..., None]
    d = torch.linalg.vector_norm(agents[:, :, :S, :2] - scene.centre[:, None, :S], dim=-1)
    cand = (d <= r + 1e-3) & agent_valid[:, :, :S] & steps[:, None]
    b, n, t = cand.nonzero(as_tuple=True)
    out = torch.zeros_like(cand)
    out[b, n, t] = box_overlap(scene.box[b, t], agent_box(agents[b, n, t], scene.agent_sizes[b, n]))
    return out


def first_step(hit: Tensor) -> Tensor:
    """First index along the last axis where ``hit`` ``[..., W]`` is set, -1 if none."""
    return lanes.first_index(hit)


def classify_contacts(
    scene: Scene, agents: Tensor, step: Tensor, track_stopped: Tensor, lane_flag: Tensor
) -> Contacts:
    """Type the first contacts ``step`` ``[B, N]`` (-1 none) and decide fault (METRICS.md 1.3).

    ``track_stopped`` bool ``[B, N, W]``: the object counts as stopped at that step; ``lane_flag``
    bool ``[B, W]``: a lateral contact at that step is at fault (nuPlan: not InLane).
    """
    B, N = step.shape
    kind = torch.full((B, N), -1, dtype=torch.long)
    at_fault = torch.zeros(B, N, dtype=torch.bool)
    b, n = (step >= 0).nonzero(as_tuple=True)
    t = step[b, n]
    a = agents[b, n, t]
    ego_stopped = scene.speed[b, t] <= EGO_STOPPED
    behind = relative_angle(scene.ego[b, t, :2], scene.ego[b, t, 2], a[:, :2]) > math.radians(BEHIND_DEG)
    c = scene.corners[b, t]
    front = segment_hits_box(c[:, 0], c[:, 3], _agent_corners(a, scene.agent_sizes[b, n]))
    k = torch.full_like(t, int(CollisionType.ACTIVE_LATERAL))
    k = torch.where(front, int(CollisionType.ACTIVE_FRONT), k)
    k = torch.where(behind, int(CollisionType.ACTIVE_REAR), k)
    k = torch.where(track_stopped[b, n, t], int(CollisionType.STOPPED_TRACK), k)
    k = torch.where(ego_stopped, int(CollisionType.STOPPED_EGO), k)
    kind[b, n] = k
    at_fault[b, n] = (
        (k == CollisionType.STOPPED_TRACK)
        | (k == CollisionType.ACTIVE_FRONT)
        | ((k == CollisionType.ACTIVE_LATERAL) & lane_flag[b, t])
    )
    return Contacts(step=step, kind=kind, at_fault=at_fault, group=agent_group(scene.agent_types))


def _is_static(scene: Scene) -> Tensor:
    return scene.agent_types == int(AgentType.STATIC)


# ----------------------------------------------------------------------------- nuPlan metrics
def no_at_fault_collisions(scene: Scene, ms: MapState) -> Contacts:
    """nuPlan NC inputs: the first contact with every agent over the whole window, typed."""
    hit = overlaps(scene, scene.agents, scene.agent_valid, scene.valid)
    speed = torch.linalg.vector_norm(scene.agents[..., 3:5], dim=-1)
    stopped = _is_static(scene)[..., None] | (speed <= EGO_STOPPED)
    return classify_contacts(scene, scene.agents, first_step(hit), stopped, ~ms.in_lane)


def collision_delta_v(scene: Scene, contacts: Contacts) -> MetricValues:
    """Ego delta-v (m/s) of each first contact, ``[B, N]`` (nuPlan's ``ego_delta_v_collision`` with
    equal masses): ``0.5 sqrt(v_e^2 + v_o^2 - 2 v_e v_o cos(theta_e - theta_o))``, ``v_e`` the ego
    speed, ``theta_e`` its heading, ``v_o`` the object's speed and ``theta_o`` its box heading at the
    contact step. ``valid`` where there is a contact."""
    has = contacts.step >= 0
    t = contacts.step.clamp_min(0)  # [B, N]
    B, N = t.shape
    v_e = torch.gather(scene.speed, 1, t).double()
    th_e = torch.gather(scene.ego[..., 2], 1, t).double()
    a = torch.gather(scene.agents, 2, t[..., None, None].expand(B, N, 1, 5))[:, :, 0].double()
    v_o = torch.linalg.vector_norm(a[..., 3:5], dim=-1)
    sq = v_e**2 + v_o**2 - 2 * v_e * v_o * torch.cos(th_e - a[..., 2])
    return MetricValues(values=0.5 * sq.clamp_min(0.0).sqrt(), valid=has)


def time_to_collision(scene: Scene, ms: MapState, contacts: Contacts) -> MetricValues:
    """Per step: ``TTC_k <= 0.95 s`` (bool ``[B, W]``), i.e. an at-fault contact at k or a projected
    overlap within 0.1..0.9 s with a candidate object (METRICS.md 1.7).

    Candidates: valid objects not yet collided, ahead (< 30 deg) or, when the ego is not InLane or
    its rear axle is in an intersection, not behind (<= 150 deg); the ego must move (> 0.005 m/s).
    Both boxes move at constant speed along their headings (static objects stand still).
    """
    B, N, W = scene.agent_valid.shape
    t = torch.arange(W)
    v_a_all = torch.linalg.vector_norm(scene.agents[..., 3:5], dim=-1)
    v_a_all = torch.where(_is_static(scene)[..., None], torch.zeros(()), v_a_all)
    r_e = bounding_radius(scene.dims[:, :2])
    r_a = bounding_radius(scene.agent_sizes)
    horizon = TTC_STEPS * scene.dt
    reach = r_e[:, None, None] + r_a[..., None] + (scene.speed[:, None] + v_a_all) * horizon
    d = torch.linalg.vector_norm(scene.agents[..., :2] - scene.centre[:, None], dim=-1)
    not_collided = (contacts.step[..., None] < 0) | (contacts.step[..., None] > t)
    moving = (scene.speed > EGO_STOPPED_TTC) & scene.valid
    cand = scene.agent_valid & not_collided & moving[:, None] & (d <= reach + 1e-3)
    b, n, s = cand.nonzero(as_tuple=True)
    ego, a = scene.ego[b, s], scene.agents[b, n, s]
    phi = relative_angle(ego[:, :2], ego[:, 2], a[:, :2])
    wide = (~ms.in_lane | ms.rear_intersection)[b, s]
    cone = (phi < math.radians(AHEAD_DEG)) | (wide & ~(phi > math.radians(BEHIND_DEG)))
    b, n, s, ego, a = b[cone], n[cone], s[cone], ego[cone], a[cone]
    v_e, v_a = scene.speed[b, s], v_a_all[b, n, s]
    e_box, a_box = scene.box[b, s], agent_box(a, scene.agent_sizes[b, n])
    hit = torch.zeros(b.shape[0], dtype=torch.bool)
    for j in range(1, TTC_STEPS + 1):
        e, o = moved_on(e_box, v_e, j * scene.dt), moved_on(a_box, v_a, j * scene.dt)
        close = (~hit & may_overlap(e, o, 1e-3)).nonzero(as_tuple=True)[0]
        hit[close] = box_overlap(e[close], o[close])
    fail = torch.zeros(B, W, dtype=torch.bool)
    fail[b[hit], s[hit]] = True
    at_fault_now = torch.zeros(B, W + 1, dtype=torch.bool)
    bf, nf = contacts.at_fault.nonzero(as_tuple=True)
    at_fault_now[bf, contacts.step[bf, nf]] = True
    return MetricValues(values=fail | at_fault_now[:, :W], valid=scene.valid)


def drivable_area(scene: Scene, ms: MapState) -> MetricValues:
    """Per step: some corner is far (>= 0.3 m) from the drivable surface, bool ``[B, W]`` (batched DAC)."""
    off = ~ms.corner_in.any(-1) & ~ms.corner_drivable & ~ms.corner_near_drivable & scene.valid[..., None]
    # nuPlan's clause (a): within 0.3 m of a polygon of the centre's lane objects is not far
    cand = off[..., None] & ms.route[:, :, None, :]  # [B, W, 4, K]
    b, t, c, k = cand.nonzero(as_tuple=True)
    d = lanes.polygon_distance(ms.table, b, k, scene.corners[b, t, c])
    close = torch.zeros_like(off)
    close[b[d < DAC_TOLERANCE_M], t[d < DAC_TOLERANCE_M], c[d < DAC_TOLERANCE_M]] = True
    return MetricValues(values=(off & ~close).any(-1), valid=scene.valid)


def driving_direction(scene: Scene, ms: MapState) -> MetricValues:
    """Per step: signed progress along the lane baselines over the last 1.1 s (m), ``[B, W]``.

    nuPlan ``_extract_metric``: progress is ``s_k - s_{k-1}`` on the baseline of the first lane
    object while it stays the same; entering a new object resets (two zero steps); steps without a
    lane object add 0 and keep the state; an ``s_k`` of exactly 0 adds 0.
    """
    B, W = scene.valid.shape
    lane = lanes.first_index(ms.route)
    b, t = (lane >= 0).nonzero(as_tuple=True)
    s = torch.full((B, W), math.nan)
    s[b, t] = lanes.project_on_lanes(ms.table, b, lane[b, t], scene.centre[b, t])
    prev_id = lane[:, 0].clone()
    prev_s = torch.full((B,), math.nan)
    p = torch.zeros(B, W)
    for k in range(W):
        has = lane[:, k] >= 0
        same = has & (prev_id >= 0) & (lane[:, k] == prev_id)
        p[:, k] = torch.where(same & ~torch.isnan(prev_s) & (s[:, k] != 0), s[:, k] - prev_s, torch.zeros(()))
        prev_s = torch.where(same, s[:, k], torch.where(has, torch.full_like(prev_s, math.nan), prev_s))
        prev_id = torch.where(has & ~same, lane[:, k], prev_id)
    n = int(1.0 / scene.dt + 1e-6)
    c = torch.cumsum(torch.cat([torch.zeros(B, n + 1), p], 1), 1)
    window = c[:, n + 1 :] - c[:, : W]
    return MetricValues(values=window, valid=scene.valid)


def progress(scene: Scene, ms: MapState) -> MetricValues:
    """Route progress ``[B, 2]`` (m) of the ego and of the expert along the expert route's roadblocks
    (METRICS.md 1.6, :func:`lanes.route_progress`), both from ``B_0``.

    ``valid`` False where the expert route is empty (nuPlan then gives EP = MP = 1).
    """
    B = scene.valid.shape[0]
    ego = lanes.route_progress(ms.table, ms.blocks, ms.centre_in, scene.centre, scene.valid)
    expert = lanes.route_progress(ms.table, ms.blocks, ms.expert_in, scene.expert_centre, scene.expert_valid)
    values = torch.stack([ego.sum(1), expert.sum(1)], 1).double()
    return MetricValues(values=values, valid=ms.blocks.valid[:, 0:1].expand(B, 2))


def speed_limit(scene: Scene, ms: MapState) -> MetricValues:
    """Per step over-speed ``max(0, v - limit)`` (m/s), ``[B, W]``; 0 where no limit applies.

    Lane: its own limit. Connectors: the max over the predecessor and successor lanes of all of the
    centre's connectors, and no check if any of those limits is unknown.
    """
    table = ms.table
    f = lanes.first_index(ms.route)
    fi = f.clamp_min(0)
    first_conn = torch.gather(table.is_connector, 1, fi)
    lane_limit = torch.gather(table.speed_limit, 1, fi)
    b, t = ((f >= 0) & first_conn).nonzero(as_tuple=True)
    sets = ms.route[b, t]
    related = lanes.successors_of(table, b, sets) | lanes.predecessors_of(table, b, sets)  # [n, K]
    lim = table.speed_limit[b]
    known = ~(related & torch.isnan(lim)).any(-1) & related.any(-1)
    limit = lane_limit.clone()
    limit[b, t] = torch.where(related, lim.nan_to_num(-math.inf), -math.inf).amax(-1)
    checked = (f >= 0) & ~first_conn & ~torch.isnan(lane_limit)
    checked[b, t] = known
    over = torch.where(checked, torch.clamp(scene.speed - limit.nan_to_num(0.0), min=0.0), torch.zeros(()))
    return MetricValues(values=over, valid=scene.valid)


def comfort_values(scene: Scene) -> MetricValues:
    """The filtered nuPlan comfort series ``[B, 6, W]`` (units of :data:`.comfort.UNITS`; ``valid``:
    checked) that :func:`comfort` bounds.

    a_lon = a_x + d (omega^2 + alpha) (the devkit's shift, as written), a_lat = a_y, |a| of the rear axle.
    """
    ax, ay = scene.accel[..., 0].double(), scene.accel[..., 1].double()
    d = scene.dims[:, 3:4].double()
    a_lon = ax + d * (scene.yaw_rate.double() ** 2 + scene.yaw_accel.double())
    values, checked = comfort_mod.comfort_values(
        a_lon, ay, torch.hypot(ax, ay), scene.ego[..., 2].double(), scene.valid, scene.dt, comfort_mod.NUPLAN
    )
    return MetricValues(values=values, valid=checked)


def comfort(scene: Scene, values: MetricValues | None = None) -> MetricValues:
    """Per check and sample: inside the nuPlan comfort bounds, bool ``[B, 6, W]`` (METRICS.md 1.9),
    from :func:`comfort_values` (pass ``values`` when already computed)."""
    v = comfort_values(scene) if values is None else values
    return MetricValues(values=within_comfort_bounds(v.values) | ~v.valid, valid=v.valid)


def displacement(scene: Scene) -> MetricValues:
    """Per step rear-axle distance (m) between the simulated ego and the log, ``[B, W]``."""
    d = torch.linalg.vector_norm(scene.ego[..., :2] - scene.expert[..., :2], dim=-1)
    return MetricValues(values=d, valid=scene.valid & scene.expert_valid)
