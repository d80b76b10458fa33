"""The one place that turns per-step / per-agent metric values into sub-scores and scores.

Metric modules (:mod:`.nuplan`, :mod:`.navsim`, :mod:`.comfort`) return :class:`MetricValues` (and
:class:`Contacts` for collisions); everything here reduces them to per-scenario ``[B]`` tensors with
the exact thresholds and weights of METRICS.md (nuPlan CLS section 1, NAVSIM PDMS section 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from av.types import AgentType
from av.checks import COMFORT_BOUNDS
from closedloop.evaluator.comfort import LABELS, QUANTITIES, UNITS

# Collision groups of nuPlan's NC (METRICS.md 1.3) and their allowances.
VRU, VEHICLE, OBJECT = 0, 1, 2
GROUP_NAMES = ("VRU", "vehicle", "object")
ALLOWANCE = (0, 0, 1)

TAU_PROGRESS_M = 2.0
MAKING_PROGRESS_RATIO = 0.2
DDC_COMPLIANT_M, DDC_VIOLATION_M = 2.0, 6.0
OVERSPEED_NORMALISER = 2.23  # m/s
PDM_PROGRESS_FLOOR_M = 5.0

# Weights of the weighted sub-scores: nuPlan CLS weighs progress, TTC, speed limit and comfort;
# NAVSIM PDMS the same without the speed limit. The PDM-style planner scores its proposals with them.
WEIGHT_PROGRESS, WEIGHT_TTC, WEIGHT_SPEED_LIMIT, WEIGHT_COMFORT = 5.0, 5.0, 4.0, 2.0


@dataclass(frozen=True)
class MetricValues:
    """Raw metric values with a validity mask of the same shape.

    ``values`` ``[B, ...]`` (per step ``[B, T]``, per agent ``[B, N]``, per check and step
    ``[B, C, T]`` ...); ``valid`` bool, same shape: entries that exist and were evaluated.
    """

    values: Tensor
    valid: Tensor


@dataclass(frozen=True)
class Contacts:
    """The first contact of the ego with each agent (later frames of it are never looked at).

    ``step`` long ``[B, N]``: window step of the first overlap, -1 if none; ``kind`` long ``[B, N]``
    (:class:`closedloop.evaluator.nuplan.CollisionType`, -1 if none); ``at_fault`` bool ``[B, N]``;
    ``group`` long ``[B, N]``: VRU / VEHICLE / OBJECT, -1 for padding.
    """

    step: Tensor
    kind: Tensor
    at_fault: Tensor
    group: Tensor


def agent_group(agent_types: Tensor) -> Tensor:
    """Collision group ``[B, N]`` of each :class:`AgentType` ``[B, N]`` (-1 for padding)."""
    g = torch.full_like(agent_types, -1)
    g = torch.where(agent_types == int(AgentType.VEHICLE), VEHICLE, g)
    g = torch.where((agent_types == int(AgentType.PEDESTRIAN)) | (agent_types == int(AgentType.CYCLIST)), VRU, g)
    return torch.where(agent_types == int(AgentType.STATIC), OBJECT, g)


# ----------------------------------------------------------------------------- generic reductions
def any_flag(m: MetricValues) -> Tensor:
    """True ``[B]`` where a valid entry is set (all axes after the first are reduced)."""
    return (m.values.bool() & m.valid).flatten(1).any(1)


def first_flag_step(m: MetricValues) -> Tensor:
    """First step ``[B]`` (last axis) with a valid set entry, -1 if none."""
    hit = (m.values.bool() & m.valid)
    hit = hit.flatten(1, -2).any(1) if hit.dim() > 2 else hit
    idx = hit.to(torch.uint8).argmax(-1)
    return torch.where(hit.any(-1), idx, torch.full_like(idx, -1))


# ----------------------------------------------------------------------------- nuPlan sub-scores
def nc_nuplan(c: Contacts) -> Tensor:
    """NC ``[B]``: prod over groups of max(0, 1 - n_g / (allowance_g + 1)); 1 without at-fault contacts."""
    score = torch.ones(c.at_fault.shape[0], dtype=torch.float64)
    for g, allowance in enumerate(ALLOWANCE):
        n = (c.at_fault & (c.group == g)).sum(1).double()
        score = score * torch.clamp(1.0 - n / (allowance + 1), min=0.0)
    return score


def ddc_score(window_progress: MetricValues) -> tuple[Tensor, Tensor]:
    """DDC ``[B]`` from the 1.1 s windowed signed progress ``[B, T]`` (m), and ``m = -min W`` ``[B]``."""
    w = torch.where(window_progress.valid, window_progress.values.double(), torch.zeros((), dtype=torch.float64))
    m = torch.clamp(-w.amin(1), min=0.0) + 0.0 if w.shape[1] else torch.zeros(w.shape[0], dtype=torch.float64)
    score = torch.where(m < DDC_COMPLIANT_M, 1.0, torch.where(m < DDC_VIOLATION_M, 0.5, 0.0)).double()
    return score, m


def ep_mp(progress: MetricValues) -> tuple[Tensor, Tensor]:
    """EP and MP ``[B]`` from ``progress`` ``[B, 2]`` = (ego, expert) route progress (m).

    ``valid`` False (the expert was never on a lane) gives EP = MP = 1.
    """
    p_ego, p_exp = progress.values[:, 0].double(), progress.values[:, 1].double()
    ep = torch.clamp(
        torch.clamp(p_ego, min=TAU_PROGRESS_M) / torch.clamp(p_exp, min=TAU_PROGRESS_M), max=1.0
    )
    ep = torch.where(p_ego < -TAU_PROGRESS_M, 0.0, ep)
    has = progress.valid.all(1)
    ep = torch.where(has, ep, 1.0)
    mp = (ep >= MAKING_PROGRESS_RATIO).double()
    return ep, mp


def sl_score(overspeed: MetricValues, dt: float) -> Tensor:
    """SL ``[B]`` = max(0, 1 - sum(o) dt / (2.23 * duration)); 1 without over-speeding or duration <= 0."""
    o = torch.where(overspeed.valid, overspeed.values.double(), torch.zeros((), dtype=torch.float64))
    duration = (overspeed.valid.sum(1) - 1).double() * dt
    loss = o.sum(1) * dt / (OVERSPEED_NORMALISER * duration.clamp_min(1e-12))
    score = torch.clamp(1.0 - loss, min=0.0)
    return torch.where(((o > 0).any(1)) & (duration > 0), score, 1.0)


def comfort_score(within: MetricValues) -> tuple[Tensor, Tensor]:
    """C ``[B]`` from per-check, per-sample flags ``[B, 6, T]`` (True = within bound), and a bit mask
    ``[B]`` long of the failed checks (bit i = :data:`QUANTITIES` [i])."""
    failed = (~within.values.bool() & within.valid).any(-1)  # [B, 6]
    bits = (failed.long() * (2 ** torch.arange(failed.shape[1]))).sum(1)
    return (~failed.any(1)).double(), bits


def cls_score(nc: Tensor, dac: Tensor, ddc: Tensor, mp: Tensor, ep: Tensor, ttc: Tensor, sl: Tensor, c: Tensor) -> Tensor:
    """nuPlan scenario score S = NC DAC MP DDC (5 EP + 5 TTC + 4 SL + 2 C) / 16."""
    weighted = WEIGHT_PROGRESS * ep + WEIGHT_TTC * ttc + WEIGHT_SPEED_LIMIT * sl + WEIGHT_COMFORT * c
    return nc * dac * mp * ddc * weighted / (WEIGHT_PROGRESS + WEIGHT_TTC + WEIGHT_SPEED_LIMIT + WEIGHT_COMFORT)


# ----------------------------------------------------------------------------- NAVSIM PDMS sub-scores
def nc_pdms(c: Contacts) -> Tensor:
    """PDMS NC ``[B]``: min over at-fault contacts of 0 (vehicle, VRU) or 0.5 (static object)."""
    per = torch.where(c.group == OBJECT, 0.5, 0.0).double()
    per = torch.where(c.at_fault, per, torch.ones((), dtype=torch.float64))
    return per.amin(1) if per.shape[1] else torch.ones(per.shape[0], dtype=torch.float64)


def pdms_ep(raw: Tensor, multiplier: Tensor, reference: Tensor) -> Tensor:
    """PDMS EP ``[B]`` (NAVSIM v1): masked = raw * NC * DAC, M = max(masked, reference progress);
    masked / M if M > 5 m, else 1 where NC * DAC > 0 and 0 otherwise. All inputs ``[B]``, m."""
    masked = raw.double() * multiplier.double()
    best = torch.maximum(masked, reference.double())
    ep = masked / best.clamp_min(1e-12)
    return torch.where(best > PDM_PROGRESS_FLOOR_M, ep, (multiplier > 0).double())


def pdms_score(nc: Tensor, dac: Tensor, ttc: Tensor, ep: Tensor, c: Tensor) -> Tensor:
    """PDMS = NC DAC (5 TTC + 5 EP + 2 C) / 12 (DDC has weight 0 in v1)."""
    weighted = WEIGHT_TTC * ttc + WEIGHT_PROGRESS * ep + WEIGHT_COMFORT * c
    return nc * dac * weighted / (WEIGHT_TTC + WEIGHT_PROGRESS + WEIGHT_COMFORT)


# ----------------------------------------------------------------------------- NAVSIM v2 EPDMS
# Weights of EPDMS's weighted sub-scores (METRICS.md 3): progress, TTC, lane keeping, history comfort,
# extended comfort.
EPDMS_WEIGHTS = {"ep": 5.0, "ttc": 5.0, "lk": 2.0, "hc": 2.0, "ec": 2.0}


def epdms_ep(raw: Tensor, multiplier: Tensor, reference: Tensor) -> Tensor:
    """EPDMS EP ``[B]``: M = max(raw * NC DAC DDC TLC, reference's masked progress); if M > 5 m,
    clip(raw / M, 0, 1) with the numerator *not* masked, else 1. All inputs ``[B]``, m."""
    best = torch.maximum(raw.double() * multiplier.double(), reference.double())
    ep = torch.clamp(raw.double() / best.clamp_min(1e-12), 0.0, 1.0)
    return torch.where(best > PDM_PROGRESS_FLOOR_M, ep, torch.ones_like(ep))


def epdms_score(multipliers: Mapping[str, Tensor], weighted: Mapping[str, Tensor]) -> Tensor:
    """EPDMS ``[B]`` = prod(multipliers) * sum_m w_m s_m / sum_m w_m (weights :data:`EPDMS_WEIGHTS`).

    A sub-score that is not applicable (NaN: its inputs are missing, e.g. traffic-light states) is
    left out: a multiplier counts as 1, a weighted sub-score leaves both sums.
    """
    prod = None
    for v in multipliers.values():
        v = torch.nan_to_num(v.double(), nan=1.0)
        prod = v if prod is None else prod * v
    num = den = None
    for name, v in weighted.items():
        v = v.double()
        ok = ~torch.isnan(v)
        w = torch.where(ok, EPDMS_WEIGHTS[name], 0.0).double()
        num = w * v.nan_to_num(0.0) if num is None else num + w * v.nan_to_num(0.0)
        den = w if den is None else den + w
    assert prod is not None and num is not None and den is not None
    return prod * num / den.clamp_min(1e-12)


# ----------------------------------------------------------------------------- reports
def first_at_fault(c: Contacts) -> tuple[Tensor, Tensor]:
    """Step ``[B]`` of the first at-fault contact (-1 none) and the group ``[B]`` of its agent."""
    big = torch.iinfo(torch.long).max
    step = torch.where(c.at_fault, c.step, big)
    first = step.amin(1) if step.shape[1] else torch.full((step.shape[0],), big)
    agent = step.argmin(1) if step.shape[1] else torch.zeros(step.shape[0], dtype=torch.long)
    has = first < big
    group = torch.gather(c.group, 1, agent[:, None])[:, 0] if c.group.shape[1] else torch.full_like(first, -1)
    return torch.where(has, first, -1), torch.where(has, group, -1)


def max_collision_delta_v(delta_v: MetricValues, contacts: Contacts, at_fault: bool) -> Tensor:
    """Largest ego delta-v (m/s) ``[B]`` over the contacts (only the at-fault ones if ``at_fault``);
    NaN where there is none. ``delta_v`` ``[B, N]`` from :func:`closedloop.evaluator.nuplan.collision_delta_v`."""
    keep = delta_v.valid & (contacts.at_fault if at_fault else torch.ones_like(delta_v.valid))
    v = torch.where(keep, delta_v.values.double(), torch.full((), -math.inf, dtype=torch.float64))
    best = v.amax(1) if v.shape[1] else torch.full((v.shape[0],), -math.inf, dtype=torch.float64)
    return torch.where(keep.any(1) if v.shape[1] else torch.zeros_like(best, dtype=torch.bool), best, math.nan)


def _time(step: Tensor, start_time: Tensor, dt: float) -> Tensor:
    return torch.where(step >= 0, start_time + step.double() * dt, torch.full_like(start_time, math.nan))


def summarise_times(step: Tensor, start_step: Tensor, dt: float) -> Tensor:
    """Seconds since the scenario start ``[B]`` of window steps ``[B]`` (NaN where -1)."""
    return _time(step, start_step.double() * dt, dt)


def worst_window_step(window_progress: MetricValues) -> Tensor:
    """Step ``[B]`` ending the 1.1 s window with the most backward progress (DDC's ``m``), -1 if DDC = 1."""
    w = torch.where(window_progress.valid, window_progress.values.double(), torch.full((), math.inf, dtype=torch.float64))
    step = w.argmin(1)  # W >= 1 (see nuplan.build_scene)
    return torch.where(-w.amin(1) >= DDC_COMPLIANT_M, step, -1)


def max_value(m: MetricValues) -> Tensor:
    """Largest valid value ``[B]`` over the last axis (0 where none is valid), float64."""
    return torch.where(m.valid, m.values.double(), torch.zeros((), dtype=torch.float64)).amax(-1)


def comfort_failures(values: MetricValues, within: MetricValues) -> tuple[Tensor, Tensor]:
    """Per comfort check, the first sample outside its bound: window step ``[B, 6]`` (-1 if none) and
    the filtered value there ``[B, 6]`` (NaN if none). ``values`` ``[B, 6, W]`` filtered series,
    ``within`` their bool bound checks (both as :func:`closedloop.evaluator.nuplan.comfort_values`)."""
    hit = ~within.values.bool() & within.valid  # W >= 1 (see nuplan.build_scene)
    step = hit.to(torch.uint8).argmax(-1)
    has = hit.any(-1)
    v = torch.gather(values.values.double(), -1, step[..., None])[..., 0]
    return torch.where(has, step, -1), torch.where(has, v, torch.full_like(v, math.nan))


_NOTICEABLE = 5e-3  # continuous sub-scores (progress, speed limit) closer to 1 are not reported


def _at(t: float) -> str:
    return f"at t = {t:.1f} s" if math.isfinite(t) else "(time unknown)"


def _comfort_reason(v: Mapping[str, float]) -> str:
    parts = []
    for q in QUANTITIES:
        x, t = v.get(f"comfort_{q}_value", math.nan), v.get(f"comfort_{q}_time", math.nan)
        if not math.isfinite(x):
            continue
        lo, hi = COMFORT_BOUNDS[q]
        bound = f"> {hi:.2f}" if x >= hi else f"< {lo:.2f}"
        parts.append(f"{LABELS[q]} {x:.2f} {UNITS[q]} {bound} {_at(t)}")
    if not parts:  # scores written before the per-check details existed
        bits = int(v.get("comfort_failed", 0))
        parts = [LABELS[q] for j, q in enumerate(QUANTITIES) if bits >> j & 1]
    return "comfort: " + ", ".join(parts)


def reasons(scores: Mapping[str, Any]) -> list[str]:
    """Why each scenario lost points, in words, one reason per sub-score below 1 joined by "; "
    ("" when it lost none); each gives the first time (s since the scenario start) and the value
    that broke the sub-score, e.g. "comfort: longitudinal acceleration 2.61 m/s² > 2.40 at t = 4.1 s".

    ``scores``: the dict returned by :func:`closedloop.evaluator.evaluate` (tensors or numpy arrays
    ``[B]``); one string per scenario. Continuous sub-scores within 0.5 % of 1 are not reported.
    """
    out = []
    B = scores["cls"].shape[0]
    for i in range(B):  # report formatting only; every number was computed batched
        r: list[str] = []
        v = {k: float(t[i]) for k, t in scores.items()}
        if v["no_collision"] < 1:
            g = int(v["first_at_fault_group"])
            what = {0: "a pedestrian/cyclist", 1: "a vehicle", 2: "a static object"}.get(g, "an object")
            r.append(f"collision: at fault with {what} {_at(v['first_at_fault_time'])}"
                     f" ({int(v['at_fault_collisions'])} at-fault in total, no-collision score {v['no_collision']:.2f})")
        if v["drivable_area"] < 1:
            r.append(f"drivable area: a corner more than 0.3 m off the drivable area {_at(v['drivable_area_time'])}")
        if v["driving_direction"] < 1:
            r.append(f"driving direction: {v['ddc_max_backward_m']:.1f} m against the lane direction within 1.1 s"
                     f" (>= {DDC_COMPLIANT_M:.0f} m) {_at(v.get('ddc_time', math.nan))}")
        ep_text = (f"{v['progress_ego_m']:.1f} m along the expert route vs the expert's "
                   f"{v['progress_expert_m']:.1f} m ({100 * v['progress']:.0f} %)")
        if v["making_progress"] < 1:
            r.append(f"making progress: {ep_text} < {100 * MAKING_PROGRESS_RATIO:.0f} % over the whole drive")
        elif v["progress"] < 1 - _NOTICEABLE:
            r.append(f"progress: {ep_text} over the whole drive")
        if v["ttc"] < 1:
            r.append(f"time to collision: <= 0.95 s {_at(v['ttc_time'])}")
        if v["speed_limit"] < 1 - _NOTICEABLE:
            r.append(f"speed limit: over the limit {_at(v.get('speed_limit_time', math.nan))} and by up to "
                     f"{v.get('speed_limit_over_mps', math.nan):.1f} m/s (score {v['speed_limit']:.2f})")
        if v["comfort"] < 1:
            r.append(_comfort_reason(v))
        out.append("; ".join(r))
    return out
