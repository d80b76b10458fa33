"""NAVSIM v1 PDMS and v2 EPDMS sub-metrics on a closed-loop rollout, as pure per-step functions
(METRICS.md 2 and 3).

NAVSIM scores one 4 s plan per scene; here the plan is the simulated ego itself: the first
``H = horizon / dt + 1`` states (41 at 4 s, 0.1 s) of the simulated part, against **log-replayed**
agents (the batch's logged agents, whatever the rollout's agent mode). Deviations, by design:

* No LQR re-tracking: the rollout's states (already produced by our controller and bicycle model)
  are scored directly; state 0 is the logged start state, as in NAVSIM.
* EP: the centerline is the expert-route baseline (:func:`lanes.route_baseline`), not PDM-Closed's
  own route polyline. The normaliser is the injected PDM-Closed planner's progress
  (:data:`closedloop.evaluator.Reference`), driven closed loop from the same start state over the
  horizon with log-replayed agents and masked by its own NC * DAC (EPDMS: * DDC); its DDC route
  lanes come from the expert's route over the horizon only. Without a reference the logged
  expert's raw progress stands in for it.
* Route lanes (DDC's ONCOMING) are the lanes of the derived roadblocks of the expert route
  (:func:`lanes.roadblocks`); no roadblocks in the map.
* No traffic lights (no red-light polygons), so nothing is skipped for them and EPDMS's TLC is
  reported not applicable (NaN, multiplier 1). EPDMS's EC compares the plans of two scenes 0.5 s
  apart; a closed-loop rollout has one executed trajectory, so EC is not applicable (NaN) and
  leaves the weighted average (weights 5 EP, 5 TTC, 2 LK, 2 HC over 14). HC runs on the horizon's
  states only (NAVSIM prefixes the human's past states). The human filter (a sub-score that is 0
  for the logged human is 1 for the agent) covers NC, DAC, DDC, TTC and LK, not EP or HC (the log
  carries no accelerations).
* ROADBLOCK / INTERSECTION / CARPARK polygons are replaced by the lane / connector polygons and the
  drivable rings (NONDRIV), and the intersection test by :mod:`.lanes`' proxy.
* When a scenario has fewer than ``H`` simulated states, the available ones are scored.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from av.checks import bounding_radius, box_overlap, moved_on
from closedloop.evaluator import comfort as comfort_mod
from closedloop.evaluator import lanes
from closedloop.evaluator.aggregate import Contacts, MetricValues
from closedloop.evaluator.nuplan import (
    AHEAD_DEG,
    BEHIND_DEG,
    EGO_STOPPED,
    MapState,
    Scene,
    agent_box,
    _is_static,
    classify_contacts,
    first_step,
    overlaps,
    relative_angle,
)

TTC_OFFSETS = (0, 3, 6, 9)  # steps: 0, 0.3, 0.6, 0.9 s
EPDMS_TTC_STEPS = 32  # NAVSIM v2 checks TTC at t = 0 .. 31 only (t + 0.9 s stays within 4 s)
EGO_STOPPED_TTC = 0.005  # m/s, strict: v < 0.005 is skipped


def horizon_mask(scene: Scene, horizon_s: float) -> Tensor:
    """Steps ``0 .. H-1`` of the window, ``H = round(horizon_s / dt) + 1``: bool ``[B, min(H, W)]``."""
    H = min(int(round(horizon_s / scene.dt)) + 1, scene.valid.shape[1])
    return scene.valid[:, :H]


def multiple_lanes(ms: MapState) -> Tensor:
    """MULTI ``[B, W]``: more than one lane polygon holds a corner and none holds all four."""
    any_c = ms.corner_in.any(2)
    all_c = ms.corner_in.all(2)
    return (any_c.sum(-1) > 1) & ~all_c.any(-1)


def non_drivable(ms: MapState) -> Tensor:
    """NONDRIV ``[B, W]``: some corner is in no lane polygon and outside the drivable rings."""
    return (~ms.corner_in.any(-1) & ~ms.corner_drivable).any(-1)


def no_at_fault_collisions(scene: Scene, ms: MapState, horizon: Tensor) -> Contacts:
    """PDMS NC inputs: first contacts over the horizon ``[B, H]`` with the logged agents, typed as
    nuPlan with "object stopped" taken at the object's first observed frame (within the 0.9 s after
    the horizon too, as NAVSIM observes them) and MULTI or NONDRIV for lateral contacts."""
    B, N, W = scene.log_agent_valid.shape
    H = horizon.shape[1]
    hit = overlaps(scene, scene.log_agents, scene.log_agent_valid, horizon)
    first_seen = first_step(scene.log_agent_valid[:, :, : H + TTC_OFFSETS[-1]]).clamp_min(0)
    v0 = torch.linalg.vector_norm(
        torch.gather(scene.log_agents[..., 3:5], 2, first_seen[..., None, None].expand(B, N, 1, 2))[:, :, 0], dim=-1
    )
    stopped = (_is_static(scene) | (v0 <= EGO_STOPPED))[..., None].expand(B, N, W)
    lateral_at_fault = multiple_lanes(ms) | non_drivable(ms)
    return classify_contacts(scene, scene.log_agents, first_step(hit), stopped, lateral_at_fault)


def drivable_area(ms: MapState, horizon: Tensor) -> MetricValues:
    """Per step NONDRIV (bool ``[B, H]``); PDMS DAC is 0 if any is set (no tolerance)."""
    return MetricValues(values=non_drivable(ms)[:, : horizon.shape[1]], valid=horizon)


def time_to_collision(scene: Scene, ms: MapState, horizon: Tensor) -> MetricValues:
    """Per step: a qualifying projected overlap (bool ``[B, W]``), NAVSIM v1 ``_calculate_ttc``.

    For steps t in the horizon and offsets d in (0, 3, 6, 9): the ego box at t moved by
    ``v_t * d * dt`` along its heading vs the logged boxes at ``t + d``. Steps with ``v_t < 0.005``
    are skipped. An overlap qualifies if the object is ahead (< 30 deg) or, when the ego is in
    multiple lanes, off the drivable area or in an intersection, not behind (<= 150 deg). The first
    non-qualifying overlap with an object puts it on the ignore list for the rest of the horizon:
    events are ordered by (t, d), so an object fails TTC iff its first qualifying event comes first.
    """
    B, N, W = scene.log_agent_valid.shape
    H = horizon.shape[1]
    wide = multiple_lanes(ms) | non_drivable(ms) | ms.rear_intersection
    moving = (scene.speed[:, :H] >= EGO_STOPPED_TTC) & horizon
    r = bounding_radius(scene.dims[:, :2])[:, None, None] + bounding_radius(scene.agent_sizes)[..., None]
    big = len(TTC_OFFSETS) * (H + 1)
    first_q = torch.full((B, N), big, dtype=torch.long)
    first_nq = torch.full((B, N), big, dtype=torch.long)
    yaw = scene.ego[..., 2]
    for j, off in enumerate(TTC_OFFSETS):
        S = min(H, W - off)  # ego steps t < S see object frames t + off < W
        if S <= 0:
            break
        f = torch.arange(S)
        ego = moved_on(scene.box[:, :S], scene.speed[:, :S] * off, scene.dt)  # [B, S, 5]
        a = scene.log_agents[:, :, off : off + S]
        d = torch.linalg.vector_norm(a[..., :2] - ego[:, None, :, :2], dim=-1)
        cand = (d <= r + 1e-3) & scene.log_agent_valid[:, :, off : off + S] & moving[:, None, :S]
        b, n, t = cand.nonzero(as_tuple=True)
        hit = box_overlap(ego[b, t], agent_box(a[b, n, t], scene.agent_sizes[b, n]))
        b, n, t = b[hit], n[hit], t[hit]
        phi = relative_angle(scene.ego[b, t, :2], yaw[b, t], a[b, n, t, :2])
        qual = (phi < math.radians(AHEAD_DEG)) | (wide[b, t] & ~(phi > math.radians(BEHIND_DEG)))
        order = f[t] * len(TTC_OFFSETS) + j
        for target, sel in ((first_q, qual), (first_nq, ~qual)):
            flat = target.view(-1)
            flat.scatter_reduce_(0, (b * N + n)[sel], order[sel], "amin", include_self=True)
    fails = first_q < first_nq
    fail = torch.zeros(B, H + 1, dtype=torch.bool)
    bf, nf = fails.nonzero(as_tuple=True)
    fail[bf, first_q[bf, nf] // len(TTC_OFFSETS)] = True
    return MetricValues(values=fail[:, :H], valid=horizon)


def raw_progress(scene: Scene, ms: MapState, horizon: Tensor) -> MetricValues:
    """Raw centerline progress ``max(0, s(c_last) - s(c_0))`` (m) of the ego and of the expert over
    the horizon, ``[B, 2]``; ``valid`` False where there is no route (progress 0)."""
    B = horizon.shape[0]
    last = (horizon.sum(1) - 1).clamp_min(0)
    bi = torch.arange(B)
    pts = torch.stack(
        [scene.centre[:, 0], scene.centre[bi, last], scene.expert_centre[:, 0], scene.expert_centre[bi, last]], 1
    )
    s = lanes.project_on_route(ms.baseline, pts)
    raw = torch.stack([s[:, 1] - s[:, 0], s[:, 3] - s[:, 2]], 1).nan_to_num(0.0).clamp_min(0.0)
    return MetricValues(values=raw, valid=ms.baseline.has_route[:, None].expand(B, 2))


def comfort(scene: Scene, horizon: Tensor) -> MetricValues:
    """Per check and sample over the horizon: inside the bounds with NAVSIM v1 windows, ``[B, 6, H]``.

    Rear-axle accelerations (no centre shift): a_lon = a_x, a_lat = a_y.
    """
    H = horizon.shape[1]
    ax, ay = scene.accel[:, :H, 0].double(), scene.accel[:, :H, 1].double()
    ok, checked = comfort_mod.comfort_within_bounds(
        ax, ay, torch.hypot(ax, ay), scene.ego[:, :H, 2].double(), horizon, scene.dt, comfort_mod.NAVSIM_V1
    )
    return MetricValues(values=ok, valid=checked)


# ----------------------------------------------------------------------------- DDC, EPDMS extras
DDC_WINDOW_S = 1.0  # -> 11 steps at 0.1 s
LK_DEVIATION_M = 0.5
LK_DURATION_S = 2.0


def route_lanes(ms: MapState) -> Tensor:
    """NAVSIM's route lanes: every lane of the expert route's roadblocks, bool ``[B, K]``."""
    return ms.blocks.member.any(1)


def oncoming_progress(scene: Scene, ms: MapState, horizon: Tensor, skip_intersections: bool) -> MetricValues:
    """DDC input: distance (m) driven with the centre on no route lane over the last 1.1 s, ``[B, H]``.

    ``d_t = |c_t - c_{t-1}|`` where the centre is in no route lane / connector polygon (0 at t = 0,
    and, for EPDMS (``skip_intersections``), 0 where the centre is in an intersection);
    ``W_t = sum_{j = t-10..t} d_j``. Returned negated (``-W``), the sign :func:`aggregate.ddc_score`
    reads as "against the direction", so DDC = 1 / 0.5 / 0 for ``max W`` < 2 / < 6 / >= 6 m.
    Scenarios without a route (the expert never on a lane) get no check.
    """
    H = horizon.shape[1]
    c = scene.centre[:, :H]
    on_route = (ms.centre_in[:, :H] & route_lanes(ms)[:, None]).any(-1)
    oncoming = ~on_route & horizon
    if skip_intersections:
        oncoming = oncoming & ~ms.centre_intersection[:, :H]
    step = torch.linalg.vector_norm(c[:, 1:] - c[:, :-1], dim=-1)
    d = torch.cat([torch.zeros_like(c[:, :1, 0]), torch.where(oncoming[:, 1:], step, torch.zeros(()))], 1)
    n = int(DDC_WINDOW_S / scene.dt + 1e-6)
    cum = torch.cumsum(torch.cat([torch.zeros(d.shape[0], n + 1), d], 1), 1)
    window = cum[:, n + 1 :] - cum[:, :H]
    return MetricValues(values=-window, valid=horizon & ms.blocks.valid[:, :1])


def lane_keeping(scene: Scene, ms: MapState, horizon: Tensor) -> MetricValues:
    """EPDMS LK input: per step, the centre has been > 0.5 m from the centerline for >= 2 s (20
    consecutive steps), bool ``[B, H]``; steps in an intersection neither count nor reset the run."""
    H = horizon.shape[1]
    d = lanes.distance_to_route(ms.baseline, scene.centre[:, :H])
    off = (d > LK_DEVIATION_M) & horizon
    inter = ms.centre_intersection[:, :H]
    need = math.ceil(LK_DURATION_S / scene.dt - 1e-9)
    run = torch.zeros(off.shape[0], dtype=torch.long)
    fail = torch.zeros_like(off)
    for t in range(H):
        run = torch.where(inter[:, t], run, torch.where(off[:, t], run + 1, 0))
        fail[:, t] = run >= need
    return MetricValues(values=fail, valid=horizon & ms.baseline.has_route[:, None])


def history_comfort(scene: Scene, horizon: Tensor) -> MetricValues:
    """EPDMS HC input: the nuPlan comfort checks (windows 8 / 15 / 5, centre-shifted longitudinal
    acceleration) over the horizon's states, ``[B, 6, H]``."""
    H = horizon.shape[1]
    ax, ay = scene.accel[:, :H, 0].double(), scene.accel[:, :H, 1].double()
    d = scene.dims[:, 3:4].double()
    a_lon = ax + d * (scene.yaw_rate[:, :H].double() ** 2 + scene.yaw_accel[:, :H].double())
    ok, checked = comfort_mod.comfort_within_bounds(
        a_lon, ay, torch.hypot(ax, ay), scene.ego[:, :H, 2].double(), horizon, scene.dt, comfort_mod.NUPLAN
    )
    return MetricValues(values=ok, valid=checked)


def route_progress_of(ms: MapState, centres: Tensor, horizon: Tensor) -> Tensor:
    """Raw centerline progress ``max(0, s(c_last) - s(c_0))`` (m) of centres ``[B, H', 2]`` over the
    valid steps ``horizon`` ``[B, H']`` on the centerline of ``ms``: ``[B]`` (0 without a route)."""
    B = horizon.shape[0]
    last = (horizon.sum(1) - 1).clamp_min(0)
    bi = torch.arange(B)
    s = lanes.project_on_route(ms.baseline, torch.stack([centres[:, 0], centres[bi, last]], 1))
    return (s[:, 1] - s[:, 0]).nan_to_num(0.0).clamp_min(0.0)
