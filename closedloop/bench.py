"""Throughput of a full closed-loop evaluation: simulator + planner + every metric.

Used by ``av bench`` (JSON figures); never by tests as a timing assert.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from av.batch import collate
from av.types import Scenario
from closedloop.evaluator import evaluate
from closedloop.planner import make_planner
from closedloop.driver import rollout as drive
from closedloop.sim import make_simulator


def tile(scenarios: Sequence[Scenario], n: int) -> list[Scenario]:
    """``n`` scenarios made by repeating ``scenarios`` in order, each copy with a unique id."""
    return [scenarios[i % len(scenarios)].replace(id=f"{scenarios[i % len(scenarios)].id}#{i}") for i in range(n)]


def bench_eval(
    scenarios: Sequence[Scenario], planner: str = "idm", agents: str = "log", batch_size: int = 250
) -> dict[str, Any]:
    """Simulate and score ``scenarios`` with ``planner`` in batches; return wall time and rates.

    ``scenario_seconds_per_s`` is simulated driving time (from each scenario's start step to its
    end) per wall-clock second, everything included (collation, simulation, planning, metrics).
    """
    sim = make_simulator("builtin", agents=agents)
    plan = make_planner(planner)
    simulated = sum(s.timestamps[-1] - s.timestamps[s.history_steps] for s in scenarios)
    t_sim = t_eval = 0.0
    cls: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for i in range(0, len(scenarios), batch_size):
        batch = collate(scenarios[i : i + batch_size])
        with torch.no_grad():
            t1 = time.perf_counter()
            rollout = drive(sim, batch, plan, record_plans=False)
            t2 = time.perf_counter()
            cls.append(evaluate(rollout)["cls"])
            t3 = time.perf_counter()
        t_sim, t_eval = t_sim + t2 - t1, t_eval + t3 - t2
    wall = time.perf_counter() - t0
    return {
        "scenarios": len(scenarios),
        "planner": planner,
        "agents": agents,
        "batch": batch_size,
        "simulated_s": round(float(simulated), 1),
        "wall_s": round(wall, 2),
        "sim_and_planner_s": round(t_sim, 2),
        "metrics_s": round(t_eval, 2),
        "scenario_seconds_per_s": round(float(simulated) / wall, 1),
        "mean_cls": round(float(torch.cat(cls).mean()), 4),
    }
