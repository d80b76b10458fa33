"""Behavior evaluator: nuPlan's closed-loop score (CLS) and NAVSIM's PDMS on batched rollouts.

``evaluate(rollout)`` returns one ``[B]`` tensor per name in :data:`METRIC_NAMES`:

* nuPlan (METRICS.md 1): ``no_collision``, ``drivable_area``, ``driving_direction``,
  ``making_progress``, ``progress``, ``ttc``, ``speed_limit``, ``comfort`` and the scenario score
  ``cls``. CLS-NR and CLS-R are the same formula on a log-replay or a reactive-agent rollout.
* NAVSIM v1 (METRICS.md 2, on the first ``horizon_s_pdms`` of the simulated part, log-replayed
  agents): ``pdms_nc``, ``pdms_dac``, ``pdms_ttc``, ``pdms_ep``, ``pdms_c``, ``pdms_ddc`` (weight 0),
  ``pdms``; EPDMS (METRICS.md 3, same horizon and agents, after the human filter): ``epdms_nc``,
  ``epdms_dac``, ``epdms_ddc``,
  ``epdms_tlc``, ``epdms_ttc``, ``epdms_ep``, ``epdms_lk``, ``epdms_hc``, ``epdms_ec``, ``epdms``;
  NaN marks a sub-score that is not applicable (TLC: no traffic lights in our maps; EC: one
  executed trajectory per rollout), as NAVSIM leaves out metrics whose inputs are missing.
* Human-likeness: ``ade``, ``fde`` (m, simulated vs logged rear axle over the simulated part).
* Report fields: ``at_fault_collisions`` / ``collisions`` (counts), ``first_at_fault_step`` (scenario
  step, -1 if none), ``first_at_fault_time`` (s since the scenario start, NaN if none) and
  ``first_at_fault_group`` (0 VRU, 1 vehicle, 2 object, -1),
  ``drivable_area_time``, ``ttc_time`` (s, NaN if none), ``ddc_max_backward_m``, ``progress_ego_m``,
  ``progress_expert_m``, ``comfort_failed`` (bit i = :data:`comfort.QUANTITIES` [i]),
  ``pdms_progress_m``, ``pdms_reference_m``; ``collision_dv_max`` / ``at_fault_collision_dv_max``:
  the largest ego delta-v (m/s) over all / the at-fault collisions (nuPlan reports it; NaN if none);
  ``ddc_time`` (s, end of the most backward 1.1 s window,
  NaN if DDC = 1), ``speed_limit_time`` (s, first over-speed, NaN if none), ``speed_limit_over_mps``
  (largest over-speed, m/s) and, per comfort check ``q``, ``comfort_<q>_time`` / ``comfort_<q>_value``
  (:data:`COMFORT_DETAIL_NAMES`: the first sample outside the bound and its filtered value, NaN if none).
  :data:`PLACEHOLDERS` names the fields whose -1 means "none"; summaries leave those out.

:func:`reasons` turns such a dict into one sentence per scenario. Scenarios are processed in chunks
of ``chunk`` (memory), each fully vectorised; results do not depend on the chunking. The evaluator
runs on the CPU (rollouts on another device are copied chunk by chunk); results are deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import Tensor

from av.batch import ScenarioBatch
from av.errors import AvError
from closedloop.evaluator import aggregate as agg
from closedloop.evaluator import navsim, nuplan
from closedloop.evaluator.aggregate import reasons
from closedloop.evaluator.comfort import QUANTITIES
from closedloop.rollout import Rollout

PDMS_HORIZON_S = 4.0
"""NAVSIM scores the first 4 s of the simulated part (every ``pdms*`` value covers only them)."""
NUPLAN_NAMES = (
    "no_collision", "drivable_area", "driving_direction", "making_progress", "progress", "ttc",
    "speed_limit", "comfort", "cls",
)
PDMS_NAMES = ("pdms_nc", "pdms_dac", "pdms_ttc", "pdms_ep", "pdms_c", "pdms_ddc", "pdms")
EPDMS_NAMES = ("epdms_nc", "epdms_dac", "epdms_ddc", "epdms_tlc", "epdms_ttc", "epdms_ep", "epdms_lk", "epdms_hc", "epdms_ec", "epdms")
REPORT_NAMES = (
    "ade", "fde", "at_fault_collisions", "collisions", "first_at_fault_step", "first_at_fault_time",
    "first_at_fault_group",
    "drivable_area_time", "ttc_time", "ddc_max_backward_m", "progress_ego_m", "progress_expert_m",
    "comfort_failed", "pdms_progress_m", "pdms_reference_m", "collision_dv_max", "at_fault_collision_dv_max",
    "ddc_time", "speed_limit_time", "speed_limit_over_mps",
)
#: Per comfort check: the time (s) and filtered value of its first sample outside the bound (NaN if none).
COMFORT_DETAIL_NAMES = tuple(f"comfort_{q}_{k}" for q in QUANTITIES for k in ("time", "value"))
METRIC_NAMES = NUPLAN_NAMES + PDMS_NAMES + EPDMS_NAMES + REPORT_NAMES + COMFORT_DETAIL_NAMES
#: Placeholder values that mean "undefined" (no such event), left out of means and counts.
PLACEHOLDERS = {"first_at_fault_step": -1.0, "first_at_fault_group": -1.0}
#: Per-scenario details that a summary does not average.
UNAVERAGED = COMFORT_DETAIL_NAMES + ("comfort_failed",)

Reference = Callable[[ScenarioBatch], Rollout]
"""NAVSIM's progress normaliser, injected: drives the PDM-Closed planner (log-replayed agents) through
a batch from its start state, over the steps the batch marks valid, and returns that rollout."""


def _slice_batch(b: ScenarioBatch, sl: slice) -> ScenarioBatch:
    return dataclasses.replace(
        b, **{f.name: getattr(b, f.name)[sl] for f in dataclasses.fields(b) if f.name != "dt"}
    ).to("cpu")


def _slice_rollout(r: Rollout, sl: slice) -> Rollout:
    """Scenarios ``sl`` of a rollout, on the CPU (where the evaluator runs)."""
    changes = {
        f.name: getattr(r, f.name)[sl].cpu()
        for f in dataclasses.fields(r)
        if isinstance(getattr(r, f.name), Tensor)
    }
    return dataclasses.replace(r, scenario=_slice_batch(r.scenario, sl), **changes)


def _check(rollout: Rollout, horizon_s_pdms: float, reference_progress: Tensor | None) -> None:
    B, T = rollout.step_valid.shape
    if rollout.ego.shape[:2] != (B, T) or rollout.agents.shape[2] != T:
        raise AvError(f"evaluate: rollout tensors disagree on [B, T] = {[B, T]}")
    if rollout.scenario.batch_size != B or rollout.scenario.step_valid.shape[1] != T:
        raise AvError(f"evaluate: rollout has [B, T] = {[B, T]} but its scenario batch does not")
    if not (math.isfinite(horizon_s_pdms) and horizon_s_pdms > 0):
        raise AvError(f"evaluate: horizon_s_pdms must be a positive number of seconds, got {horizon_s_pdms}")
    if reference_progress is not None and tuple(reference_progress.shape) != (B,):
        raise AvError(f"evaluate: reference_progress must have shape [{B}], got {list(reference_progress.shape)}")


def _proposal(scene: nuplan.Scene, ms: nuplan.MapState, horizon: Tensor) -> dict[str, Tensor]:
    """NAVSIM sub-scores ``[B]`` of the simulated ego over ``horizon`` ``[B, H]`` (v1 and v2)."""
    contacts = navsim.no_at_fault_collisions(scene, ms, horizon)
    ddc1, ddc1_m = agg.ddc_score(navsim.oncoming_progress(scene, ms, horizon, skip_intersections=False))
    ddc2, _ = agg.ddc_score(navsim.oncoming_progress(scene, ms, horizon, skip_intersections=True))
    v2 = horizon[:, : navsim.EPDMS_TTC_STEPS]
    return {
        "nc": agg.nc_pdms(contacts),
        "dac": (~agg.any_flag(navsim.drivable_area(ms, horizon))).double(),
        "ttc": (~agg.any_flag(navsim.time_to_collision(scene, ms, horizon))).double(),
        "ttc_v2": (~agg.any_flag(navsim.time_to_collision(scene, ms, v2))).double(),
        "ddc_v1": ddc1,
        "ddc": ddc2,
        "lk": (~agg.any_flag(navsim.lane_keeping(scene, ms, horizon))).double(),
    }


def _horizon_batch(rollout: Rollout, horizon_s: float) -> ScenarioBatch:
    """The rollout's scenario batch with ``step_valid`` cut after ``horizon_s`` of simulation."""
    b = rollout.scenario
    T = b.step_valid.shape[1]
    H = int(round(horizon_s / b.dt)) + 1
    return dataclasses.replace(b, step_valid=b.step_valid & (torch.arange(T)[None] < rollout.start_step[:, None] + H))


def _scored(r: Rollout, horizon_s: float) -> tuple[nuplan.Scene, nuplan.MapState, Tensor, dict[str, Tensor]]:
    """Scene, map state, horizon and NAVSIM sub-scores of another proposal ``r`` (on the CPU)."""
    r = _slice_rollout(r, slice(None))
    scene = nuplan.build_scene(r)
    ms = nuplan.build_map_state(scene, r.scenario)
    horizon = navsim.horizon_mask(scene, horizon_s)
    return scene, ms, horizon, _proposal(scene, ms, horizon)


def _reference(reference: Reference, rollout: Rollout, horizon_s: float, ms: nuplan.MapState) -> tuple[Tensor, Tensor]:
    """Masked progress (m) of the injected PDM-Closed reference from the same start states:
    ``(raw * NC * DAC, raw * NC * DAC * DDC)`` ``[B]`` (PDMS, EPDMS; no traffic lights, TLC = 1).
    Its raw progress is measured on the scored rollout's centerline (``ms``)."""
    cut = _horizon_batch(rollout, horizon_s)
    ref = dataclasses.replace(reference(cut), scenario=cut)
    scene, _, horizon, p = _scored(ref, horizon_s)
    raw = navsim.route_progress_of(ms, scene.centre, horizon).double()
    return raw * p["nc"] * p["dac"], raw * p["nc"] * p["dac"] * p["ddc"]


HUMAN_FILTERED = ("nc", "dac", "ddc", "ttc_v2", "lk")
"""EPDMS sub-scores the human filter applies to (those computed for the log's states)."""


def _human_filter(rollout: Rollout, horizon_s: float, agent: dict[str, Tensor]) -> dict[str, Tensor]:
    """EPDMS human filter: a sub-score that is exactly 0 for the logged human over the horizon is 1
    for the agent. The human is the batch's logged ego with log-replayed agents."""
    b = _horizon_batch(rollout, horizon_s)
    human = dataclasses.replace(rollout, scenario=b, ego=b.ego.to(rollout.ego.dtype), step_valid=b.step_valid,
                                agents=b.agents, agent_valid=b.agent_valid, agent_mode="log")
    h = _scored(human, horizon_s)[3]
    return {k: torch.where(h[k] == 0, torch.ones_like(agent[k]), agent[k]) for k in HUMAN_FILTERED}


def _evaluate_chunk(rollout: Rollout, horizon_s: float, reference: Tensor | None,
                    planner_reference: Reference | None) -> dict[str, Tensor]:
    scene = nuplan.build_scene(rollout)
    ms = nuplan.build_map_state(scene, rollout.scenario)
    dt = scene.dt
    start = rollout.start_step

    # nuPlan
    contacts = nuplan.no_at_fault_collisions(scene, ms)
    nc = agg.nc_nuplan(contacts)
    far = nuplan.drivable_area(scene, ms)
    dac = (~agg.any_flag(far)).double()
    direction = nuplan.driving_direction(scene, ms)
    ddc, backward = agg.ddc_score(direction)
    prog = nuplan.progress(scene, ms)
    ep, mp = agg.ep_mp(prog)
    ttc_fail = nuplan.time_to_collision(scene, ms, contacts)
    ttc = (~agg.any_flag(ttc_fail)).double()
    overspeed = nuplan.speed_limit(scene, ms)
    sl = agg.sl_score(overspeed, dt)
    comfort_values = nuplan.comfort_values(scene)
    within = nuplan.comfort(scene, comfort_values)
    c, comfort_bits = agg.comfort_score(within)
    comfort_step, comfort_value = agg.comfort_failures(comfort_values, within)
    first_step, first_group = agg.first_at_fault(contacts)
    delta_v = nuplan.collision_delta_v(scene, contacts)

    # NAVSIM PDMS (v1) and EPDMS (v2) on the first horizon_s, log-replayed agents
    horizon = navsim.horizon_mask(scene, horizon_s)
    p = _proposal(scene, ms, horizon)
    raw = navsim.raw_progress(scene, ms, horizon).values.double()
    if reference is not None:
        ref_v1 = ref_v2 = reference.double()
    elif planner_reference is not None:
        ref_v1, ref_v2 = _reference(planner_reference, rollout, horizon_s, ms)
    else:  # the logged expert's raw progress stands in for PDM-Closed's
        ref_v1 = ref_v2 = raw[:, 1]
    p_ep = agg.pdms_ep(raw[:, 0], p["nc"] * p["dac"], ref_v1)
    p_c, _ = agg.comfort_score(navsim.comfort(scene, horizon))
    e_ep = agg.epdms_ep(raw[:, 0], p["nc"] * p["dac"] * p["ddc"], ref_v2)
    e_hc, _ = agg.comfort_score(navsim.history_comfort(scene, horizon))
    not_applicable = torch.full_like(nc, math.nan)
    e = _human_filter(rollout, horizon_s, p)
    epdms = agg.epdms_score(
        {"nc": e["nc"], "dac": e["dac"], "ddc": e["ddc"], "tlc": not_applicable},
        {"ep": e_ep, "ttc": e["ttc_v2"], "lk": e["lk"], "hc": e_hc, "ec": not_applicable},
    )

    disp = nuplan.displacement(scene)
    d = torch.where(disp.valid, disp.values.double(), torch.zeros((), dtype=torch.float64))
    n_disp = disp.valid.sum(1)
    last = (n_disp - 1).clamp_min(0)
    nan = torch.full_like(nc, math.nan)
    return {
        "no_collision": nc,
        "drivable_area": dac,
        "driving_direction": ddc,
        "making_progress": mp,
        "progress": ep,
        "ttc": ttc,
        "speed_limit": sl,
        "comfort": c,
        "cls": agg.cls_score(nc, dac, ddc, mp, ep, ttc, sl, c),
        "pdms_nc": p["nc"],
        "pdms_dac": p["dac"],
        "pdms_ttc": p["ttc"],
        "pdms_ep": p_ep,
        "pdms_c": p_c,
        "pdms_ddc": p["ddc_v1"],
        "pdms": agg.pdms_score(p["nc"], p["dac"], p["ttc"], p_ep, p_c),
        "epdms_nc": e["nc"],
        "epdms_dac": e["dac"],
        "epdms_ddc": e["ddc"],
        "epdms_tlc": not_applicable,
        "epdms_ttc": e["ttc_v2"],
        "epdms_ep": e_ep,
        "epdms_lk": e["lk"],
        "epdms_hc": e_hc,
        "epdms_ec": not_applicable,
        "epdms": epdms,
        "ade": torch.where(n_disp > 0, d.sum(1) / n_disp.clamp_min(1), nan),
        "fde": torch.where(n_disp > 0, d[torch.arange(d.shape[0]), last], nan),
        "at_fault_collisions": contacts.at_fault.sum(1),
        "collisions": (contacts.step >= 0).sum(1),
        "first_at_fault_step": torch.where(first_step >= 0, start + first_step, -1),
        "first_at_fault_time": agg.summarise_times(first_step, start, dt),
        "first_at_fault_group": first_group,
        "drivable_area_time": agg.summarise_times(agg.first_flag_step(far), start, dt),
        "ttc_time": agg.summarise_times(agg.first_flag_step(ttc_fail), start, dt),
        "ddc_max_backward_m": backward,
        "progress_ego_m": prog.values[:, 0].double(),
        "progress_expert_m": prog.values[:, 1].double(),
        "comfort_failed": comfort_bits,
        "pdms_progress_m": raw[:, 0],
        "pdms_reference_m": ref_v1,
        "collision_dv_max": agg.max_collision_delta_v(delta_v, contacts, at_fault=False),
        "at_fault_collision_dv_max": agg.max_collision_delta_v(delta_v, contacts, at_fault=True),
        "ddc_time": agg.summarise_times(agg.worst_window_step(direction), start, dt),
        "speed_limit_time": agg.summarise_times(agg.first_flag_step(overspeed), start, dt),
        "speed_limit_over_mps": agg.max_value(overspeed),
        **{f"comfort_{q}_time": agg.summarise_times(comfort_step[:, j], start, dt) for j, q in enumerate(QUANTITIES)},
        **{f"comfort_{q}_value": comfort_value[:, j] for j, q in enumerate(QUANTITIES)},
    }


def evaluate(
    rollout: Rollout,
    horizon_s_pdms: float = PDMS_HORIZON_S,
    reference_progress: Tensor | None = None,
    reference: Reference | None = None,
    chunk: int = 256,
    threads: int | None = 1,
) -> dict[str, Tensor]:
    """Score a batch of rollouts: ``{name: [B] tensor}`` for every name in :data:`METRIC_NAMES`.

    ``horizon_s_pdms``: PDMS horizon (s) from the start step. ``reference_progress`` ``[B]`` (m):
    the PDM-Closed planner's raw centerline progress over that horizon, used as the PDMS EP
    normaliser (masked by nothing: given as is). ``reference``: instead, the PDM-Closed planner
    injected as a :data:`Reference` (the evaluator never imports planners): it is driven from each
    scenario's start state over the horizon and its progress on the scored rollout's centerline,
    masked by its own NC * DAC (EPDMS: * DDC), is the normaliser, as NAVSIM does. Without either,
    the logged expert's raw progress stands in for it. ``chunk``: scenarios
    evaluated at once (memory only). ``threads``: torch intra-op threads while evaluating (restored
    afterwards; ``None`` keeps the caller's setting). The evaluator runs many small tensor ops, and
    on a busy 2-core machine 2 threads measured 15x slower than 1 (threads waiting on each other).
    """
    _check(rollout, horizon_s_pdms, reference_progress)
    B = rollout.step_valid.shape[0]
    parts = []
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        with torch.no_grad():
            step = max(int(chunk), 1)
            for i in range(0, B, step):
                sl = slice(i, min(i + step, B))
                ref = None if reference_progress is None else reference_progress[sl]
                parts.append(_evaluate_chunk(_slice_rollout(rollout, sl), horizon_s_pdms, ref, reference))
    finally:
        torch.set_num_threads(previous)
    return {k: torch.cat([p[k] for p in parts]) for k in METRIC_NAMES}


__all__ = ["COMFORT_DETAIL_NAMES", "METRIC_NAMES", "PDMS_HORIZON_S", "PLACEHOLDERS", "Reference", "UNAVERAGED",
           "evaluate", "reasons"]
