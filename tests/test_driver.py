"""The one closed-loop driver: observations identical to the log's, monitors and fallback, and
any backend that implements the protocol runs through it unchanged."""

from __future__ import annotations

import dataclasses

import torch

from av.batch import ScenarioBatch, collate
from av.monitor import Verdict
from av.observation import Observation, Privileged, Trajectory
from av.observe import ObservationSpec, observe
from av.types import Scenario
from closedloop.driver import rollout
from closedloop.evaluator import evaluate
from closedloop.planner import make_planner
from closedloop.sim import BuiltinSimulator, Snapshot, make_simulator, register_simulator
from closedloop.sim.base import _BACKENDS
from conftest import build_scenario


class Recorder:
    """Wraps a planner and keeps every observation it was shown."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[attr-defined]
        self.privileged = inner.privileged  # type: ignore[attr-defined]
        self.seen: list[Observation] = []

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        self.seen.append(observation)
        return self.inner.plan(observation, privileged)  # type: ignore[attr-defined]


def _fields(o: Observation) -> dict[str, torch.Tensor]:
    return {f.name: getattr(o, f.name) for f in dataclasses.fields(o) if isinstance(getattr(o, f.name), torch.Tensor)}


def test_simulated_observations_equal_those_built_from_the_log(real_scenarios: list[Scenario]) -> None:
    batch = collate(real_scenarios)
    spec = ObservationSpec()
    planner = Recorder(make_planner("log_replay"))
    r = rollout(BuiltinSimulator(agents="log"), batch, planner)
    # At the start, what the car sees is the log itself (the ego's state now is the backend's:
    # the bicycle model has no lateral velocity).
    first, logged = planner.seen[0], observe(batch, batch.history_steps, spec)
    for name, value in _fields(logged).items():
        if name == "ego_history":
            assert torch.equal(first.ego_history[:, :-1], value[:, :-1])
            assert torch.equal(first.ego_history[:, -1, :3], value[:, -1, :3])
        else:
            assert torch.equal(torch.nan_to_num(getattr(first, name), nan=-7.0), torch.nan_to_num(value, nan=-7.0)), name
    # At every step, the observation is the one built from the drive as recorded, bit for bit.
    recorded = dataclasses.replace(batch, ego=r.ego, agents=r.agents, agent_valid=r.agent_valid)
    last = batch.step_valid.sum(1) - 1
    for k, seen in enumerate(planner.seen):
        t = batch.history_steps + k
        rows = t <= last
        rebuilt = observe(recorded, t, spec)
        for name, value in _fields(rebuilt).items():
            a, b = getattr(seen, name)[rows], value[rows]
            assert torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0)), (k, name)


class Swerve:
    """Keeps its speed and swerves right: 3 m sideways after one second."""

    name = "swerve"
    privileged = False

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        v = observation.speed
        s = torch.arange(1, 41, dtype=v.dtype) * 0.1
        x = v[:, None] * s
        y = -3.0 * s.square().expand_as(x)
        return Trajectory(torch.stack([x, y, torch.atan2(-6.0 * s, v[:, None].clamp_min(0.1))], -1), 0.1)


class LeavesRoadInOneSecond:
    """Toy monitor: vetoes a plan whose first second crosses a drivable-area edge."""

    name = "toy_drivable"

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        pts = torch.cat([torch.zeros_like(trajectory.poses[:, :1, :2]), trajectory.resampled(0.1)[:, :10, :2]], 1)
        p, q = pts[:, :-1, None, :], pts[:, 1:, None, :]  # [B, S, 1, 2]
        e = observation.drivable_edges[:, None]  # [B, 1, E, 4]
        a, b = e[..., :2], e[..., 2:]

        def cross(o: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return (u[..., 0] - o[..., 0]) * (w[..., 1] - o[..., 1]) - (u[..., 1] - o[..., 1]) * (w[..., 0] - o[..., 0])

        hit = ((cross(p, q, a) * cross(p, q, b)) < 0) & ((cross(a, b, p) * cross(a, b, q)) < 0)
        veto = (hit & observation.drivable_edge_valid[:, None]).flatten(1).any(1)
        return Verdict(veto, tuple("leaves the drivable area within 1 s" if v else "" for v in veto.tolist()))


def test_a_vetoing_monitor_hands_the_wheel_to_the_fallback() -> None:
    batch = collate([build_scenario(num_steps=60, history_steps=10)])
    free = rollout(BuiltinSimulator(), batch, Swerve())
    guarded = rollout(BuiltinSimulator(), batch, Swerve(), monitors=[LeavesRoadInOneSecond()])
    assert float(evaluate(free)["drivable_area"][0]) == 0.0
    assert float(evaluate(guarded)["drivable_area"][0]) == 1.0
    assert guarded.monitor_names == ("toy_drivable",)
    assert guarded.vetoes is not None and guarded.fallback_used is not None
    planned = torch.zeros_like(guarded.fallback_used)
    planned[0, 10:59] = True
    assert torch.equal(guarded.vetoes[..., 0], planned)  # every plan left the road, every one vetoed
    assert torch.equal(guarded.fallback_used, planned)
    assert guarded.veto_reasons[0] == (batch.ids[0], 10, "toy_drivable", "leaves the drivable area within 1 s")
    # the fallback is a comfortable stop: the ego ends standing, on its lane
    assert float(guarded.ego[0, 59, 3:5].norm()) < 0.5 and float(guarded.ego[0, 10:60, 1].abs().max()) < 0.5
    assert free.vetoes is not None and not bool(free.vetoes.any()) and free.monitor_names == ()


class Wrapped:
    """A second backend registered from outside the package: a thin wrapper of the builtin one."""

    name = "wrapped"

    def __init__(self, **settings: object) -> None:
        self.inner = BuiltinSimulator(**settings)
        self.calls = {"reset": 0, "step": 0, "close": 0}

    @property
    def agent_mode(self) -> str:
        return self.inner.agent_mode

    def reset(self, batch: ScenarioBatch) -> object:
        self.calls["reset"] += 1
        return self.inner.reset(batch)

    def step(self, state: object, trajectory: Trajectory | None = None) -> object:
        self.calls["step"] += 1
        return self.inner.step(state, trajectory)  # type: ignore[arg-type]

    def snapshot(self, state: object) -> Snapshot:
        return self.inner.snapshot(state)  # type: ignore[arg-type]

    def close(self) -> None:
        self.calls["close"] += 1

    def __enter__(self) -> "Wrapped":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_a_second_backend_runs_through_the_driver_unchanged() -> None:
    register_simulator("wrapped", f"{__name__}:Wrapped")
    try:
        batch = collate([build_scenario(id="a", num_steps=40), build_scenario(id="b", num_steps=30)])
        planner = make_planner("idm")
        with make_simulator("wrapped", agents="idm") as sim:
            theirs = rollout(sim, batch, planner)
        ours = rollout(BuiltinSimulator(agents="idm"), batch, planner)
        assert sim.calls == {"reset": 1, "step": 29, "close": 1}
        for f in ("ego", "ego_accel", "agents", "agent_valid", "planned"):
            assert torch.equal(torch.nan_to_num(getattr(theirs, f)), torch.nan_to_num(getattr(ours, f))), f
        assert theirs.agent_mode == "idm"
        assert torch.equal(evaluate(theirs)["cls"], evaluate(ours)["cls"])
    finally:
        _BACKENDS.pop("wrapped", None)
