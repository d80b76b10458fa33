"""Explanations of vetoed plans and of scenarios that lost points, from the run's own records.

:func:`explain_scenario` replays one scenario of an evaluation run with its planner (the
student) through the one closed-loop driver exactly as the run drove it (same simulator,
agents and planning rate, so the same scores), recording what the planner saw and planned at
each step; every runtime monitor then judges each recorded plan in shadow mode (the run had no
monitors in the loop). From these records it writes:

* the evaluator's sub-scores over time (:func:`scores_over_time`: the evaluator run on the
  rollout cut at each time, so a sub-score drops at the step that cost it), as JSON and a plot
  with the vetoes marked;
* every vetoed plan with the monitors that vetoed it and their reasons, and why the scenario
  lost points (:func:`closedloop.evaluator.reasons`);
* the student's attribution over the agents and lanes it saw (:func:`saliency`: gradient
  saliency of the planned positions w.r.t. each agent's and lane's features), for every vetoed
  plan and at the first point lost, drawn on the bird's-eye view (:func:`av.viz.render_attribution`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from av.batch import collate
from av.features import encode
from av.fileio import atomic_write_bytes, atomic_write_json
from av.observation import Observation, Privileged, Trajectory
from av.types import Scenario
from closedloop.driver import rollout as drive
from closedloop.evaluator import evaluate, reasons
from closedloop.rollout import Rollout
from closedloop.sim import make_simulator

TIME_METRICS = ("cls", "no_collision", "drivable_area", "driving_direction", "making_progress", "ttc", "comfort",
                "progress")


@dataclass
class Recorder:
    """``planner`` whose observations, plans and planning times (s) are kept, one per plan call."""

    planner: Any
    seen: list[tuple[Observation, Trajectory, float]] = field(default_factory=list)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.planner, item)

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        start = time.perf_counter()
        out = self.planner.plan(observation, privileged)
        self.seen.append((observation, out, time.perf_counter() - start))
        return out


def shadow_verdicts(seen: list[tuple[Observation, Trajectory, float]], monitors: list[Any]
                    ) -> list[list[tuple[str, str]]]:
    """The monitors' verdicts on each recorded plan, in order (shadow mode: judged, not acted
    on); the deadline watchdog is told each recorded planning time. Per plan, the ``(monitor,
    reason)`` of each veto of row 0."""
    out = []
    for obs, plan, latency in seen:
        vetoes = []
        for m in monitors:
            if hasattr(m, "record"):
                m.record(latency)
            v = m.judge(obs, plan)
            if bool(v.veto[0]):
                vetoes.append((m.name, v.reasons[0]))
        out.append(vetoes)
    return out


def saliency(net: nn.Module, obs: Observation) -> tuple[Tensor, Tensor]:
    """Gradient saliency of the student ``net``'s planned positions over the agents and lanes.

    For each output coordinate (x, y of each of the ``H`` poses) the gradient w.r.t. the agent
    features ``[B, N, F]`` and lane features ``[B, L, G]`` of :func:`av.features.encode`; the
    saliency of an agent (lane) is the root of the summed squares over outputs and features:
    ``[B, N]`` and ``[B, L]``, zero on padding. The max-pooling of the student gives an agent
    weight only where it wins a channel, so a zero means "not used"."""
    f = encode(obs)
    agents = f.agents.detach().clone().requires_grad_(True)
    lanes = f.lanes.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = net(f.ego, agents, f.agent_mask, lanes, f.lane_mask, f.route, f.route_mask)
        flat = out[..., :2].reshape(out.shape[0], -1)
        sq_a, sq_l = torch.zeros(agents.shape[:2]), torch.zeros(lanes.shape[:2])
        for j in range(flat.shape[1]):
            ga, gl = torch.autograd.grad(flat[:, j].sum(), (agents, lanes), retain_graph=j + 1 < flat.shape[1])
            sq_a = sq_a + ga.double().pow(2).sum(-1).float()
            sq_l = sq_l + gl.double().pow(2).sum(-1).float()
    return sq_a.sqrt() * f.agent_mask, sq_l.sqrt() * f.lane_mask


def _cut(r: Rollout, cuts: list[int]) -> Rollout:
    """Row 0 of ``r`` repeated once per step in ``cuts``, each with the steps after it invalid."""
    idx = torch.zeros(len(cuts), dtype=torch.long)
    keep = torch.arange(r.step_valid.shape[1])[None] <= torch.tensor(cuts)[:, None]

    def rows(obj: Any) -> Any:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == 1:
                changes[f.name] = v[idx]
            elif isinstance(v, tuple) and f.name == "ids":
                changes[f.name] = tuple(v[0] for _ in cuts)
        return dataclasses.replace(obj, **changes)

    batch = rows(r.scenario)
    batch = dataclasses.replace(batch, step_valid=batch.step_valid & keep)
    out = rows(r)
    return dataclasses.replace(out, scenario=batch, step_valid=out.step_valid & keep, veto_reasons=())


def scores_over_time(r: Rollout, every_s: float = 0.5) -> tuple[list[float], dict[str, list[float]]]:
    """The evaluator's sub-scores of scenario 0 of ``r`` with the rollout cut every ``every_s`` s
    after the start: times (s since the scenario start) and ``{metric: [K]}``."""
    dt = r.scenario.dt
    start, last = int(r.start_step[0]), int(r.step_valid[0].long().sum()) - 1
    step = max(1, int(round(every_s / dt)))
    cuts = [*range(start + step, last, step), last]
    scores = evaluate(_cut(r, cuts))
    return [round(c * dt, 2) for c in cuts], {m: [float(x) for x in scores[m]] for m in TIME_METRICS}


def _world(obs: Observation, xy: Tensor) -> np.ndarray:
    """Ego-frame points ``[..., 2]`` of row 0 of ``obs`` in the scenario's local frame."""
    x, y, yaw = (float(v) for v in obs.pose[0])
    c, s = math.cos(yaw), math.sin(yaw)
    p = xy.detach().double().cpu().numpy()
    return np.stack([x + c * p[..., 0] - s * p[..., 1], y + s * p[..., 0] + c * p[..., 1]], -1)


def _agents_world(obs: Observation) -> np.ndarray:
    """Row 0's agent boxes now ``[N, 5]`` (x, y, yaw; velocities left in the ego frame) in the
    scenario's local frame."""
    now = obs.agents[0, :, -1].detach().double().cpu().numpy()
    yaw = now[:, 2:3] + float(obs.pose[0, 2])
    return np.concatenate([_world(obs, obs.agents[0, :, -1, :2]), yaw, now[:, 3:]], -1)


def _plot_scores(times: list[float], series: dict[str, list[float]], vetoes: list[float], title: str,
                 out: Path) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for m, v in series.items():
        ax.plot(times, v, label=m, lw=1.2)
    for t in vetoes:
        ax.axvline(t, color="#d62728", alpha=0.25, lw=1)
    ax.set_xlabel("time since scenario start (s); red lines: vetoed plans")
    ax.set_ylabel("sub-score up to that time")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(out, buf.getvalue())


def explain_scenario(scenario: Scenario, planner: Any, net: nn.Module, out: Path, agents: str = "log",
                     pictures: int = 4, every_s: float = 0.5, plan_every: int = 1) -> dict[str, Any]:
    """Replay the run's drive of ``scenario`` with ``planner`` (whose network is ``net``; same
    simulator, ``agents`` and ``plan_every`` as the evaluation, so the same rollout and scores),
    let every monitor judge each plan in shadow mode (:func:`shadow_verdicts`), and write
    ``explain.json``, ``scores.png`` and up to ``pictures`` attribution views (``bev-<step>.png``)
    under ``out``: the vetoed plans (first ones) and the first step a point was lost. Returns
    the JSON record."""
    from av.viz import render_attribution
    from safety.monitors import all_monitors

    rec = Recorder(planner)
    batch = collate([scenario])
    with make_simulator("builtin", agents=agents) as sim, torch.no_grad():
        r = drive(sim, batch, rec, plan_every=plan_every)
        final = evaluate(r)
    times, series = scores_over_time(r, every_s)
    dt, start = batch.dt, int(r.start_step[0])
    verdicts = shadow_verdicts(rec.seen, all_monitors())
    step_of = [start + k * plan_every for k in range(len(rec.seen))]
    vetoed_steps = [step_of[k] for k, v in enumerate(verdicts) if v]
    lost = [x for x in reasons(final)[0].split("; ") if x]
    first_lost = None
    if lost:  # the first time a time-series sub-score dropped below 1
        drops = [i for i in range(len(times)) if any(series[m][i] < (1 - 5e-3 if m == "progress" else 1)
                                                      for m in TIME_METRICS if m != "cls")]
        first_lost = int(round(times[drops[0]] / dt)) if drops else None

    def attribution(t: int) -> dict[str, Any]:
        obs, plan, _ = rec.seen[(t - start) // plan_every]
        sa, sl = saliency(net, obs)
        wa, wl = sa[0].numpy(), sl[0].numpy()
        order_a, order_l = np.argsort(-wa)[:3], np.argsort(-wl)[:3]
        total_a, total_l = max(float(wa.sum()), 1e-12), max(float(wl.sum()), 1e-12)
        return {"step": t, "time_s": round(t * dt, 2),
                "agents": [{"slot": int(i), "share": float(wa[i] / total_a),
                            "position": [round(float(v), 2) for v in _world(obs, obs.agents[0, i, -1, :2])]}
                           for i in order_a if wa[i] > 0],
                "lanes": [{"slot": int(i), "share": float(wl[i] / total_l)} for i in order_l if wl[i] > 0],
                "_draw": (obs, plan, wa, wl)}

    events: list[dict[str, Any]] = [
        {"step": step_of[k], "time_s": round(step_of[k] * dt, 2),
         "vetoed_by": [{"monitor": n, "reason": why} for n, why in v]} for k, v in enumerate(verdicts) if v]
    drawn: list[int] = vetoed_steps[: max(0, pictures - (first_lost is not None))]
    if first_lost is not None and first_lost >= start:
        drawn.append(first_lost)
    attributions = {t: attribution(t) for t in dict.fromkeys([*vetoed_steps, *drawn])
                    if 0 <= (t - start) // plan_every < len(rec.seen)}
    for e in events:
        e["attribution"] = {k: v for k, v in attributions[e["step"]].items() if k != "_draw"}
    pics = []
    for t in dict.fromkeys(drawn):
        if t not in attributions:
            continue
        obs, plan, wa, wl = attributions[t]["_draw"]
        vetoed = [v["monitor"] for e in events if e["step"] == t for v in e["vetoed_by"]]
        title = (f"{scenario.id} t={t * dt:.1f} s: " + (f"vetoed by {', '.join(vetoed)}" if vetoed else
                 f"first point lost ({lost[0]})") + "; red: agent saliency, blue: lane saliency")
        path = render_attribution(
            scenario, out / f"bev-{t:04d}.png", r.ego[0, t].double().numpy(),
            _agents_world(obs),
            obs.agent_sizes[0].double().numpy(), obs.agent_valid[0, :, -1].numpy(), wa,
            _world(obs, obs.lanes[0, ..., :2]), wl * obs.lane_valid[0].numpy(),
            _world(obs, plan.poses[0, :, :2]), title)
        pics.append(path.name)
    _plot_scores(times, series, [t * dt for t in vetoed_steps], f"{scenario.id}: sub-scores over time ({planner.name})",
                 out / "scores.png")
    record = {
        "scenario": scenario.id, "planner": planner.name, "agents": agents,
        "scores": {m: float(v[0]) for m, v in final.items()}, "lost_points": lost,
        "first_point_lost_time_s": None if first_lost is None else round(first_lost * dt, 2),
        "scores_over_time": {"time_s": times, **series},
        "monitors": [m.name for m in all_monitors()], "monitor_mode": "shadow (judged, not acted on, as in the run)",
        "vetoed_plans": events,
        "first_point_lost_attribution": ({k: v for k, v in attributions[first_lost].items() if k != "_draw"}
                                         if first_lost in attributions else None),
        "pictures": pics,
    }
    atomic_write_json(out / "explain.json", record)
    return record
