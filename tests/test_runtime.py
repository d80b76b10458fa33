"""The vehicle runtime: manifest checks, the model's plan, fault injection (non-finite output, a
plan through an agent, an overrun) -> the comfortable-stop fallback with its reason, the
fallback itself, and closed-loop equivalence of the exported and the PyTorch student."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from av.batch import collate
from av.checks import box_overlap, moved_on
from av.cli.main import main
from av.errors import AvError
from av.export import export_onnx, manifest_path, observed_features
from av.fallback import COMFORT_DECEL, COMFORT_JERK, comfortable_stop
from av.features import encode
from av.monitor import Verdict
from av.nets import StudentNet
from av.observation import Observation, Trajectory
from av.observe import ObservationSpec, observe
from av.runtime import VehiclePlanner
from av.vehicle import ego_box


@pytest.fixture(scope="module")
def student(real_scenarios: list, tmp_path_factory: pytest.TempPathFactory) -> tuple[StudentNet, Path]:
    """A seeded student and its ONNX export (parity on the real drives)."""
    torch.manual_seed(0)
    net = StudentNet(ObservationSpec()).eval()
    path = tmp_path_factory.mktemp("runtime") / "student.onnx"
    export_onnx(net, path, observed_features(real_scenarios, net.spec, steps=1), fp16=False)
    return net, path


@pytest.fixture(scope="module")
def observation(real_scenarios: list) -> Observation:
    """Four real drives observed 1 s after their history ends."""
    batch = collate(real_scenarios[:4])
    return observe(batch, batch.history_steps + 10, ObservationSpec())


def test_vehicle_planner_drives_the_models_plan(student: tuple, observation: Observation) -> None:
    net, path = student
    planner = VehiclePlanner(path)
    decision = planner.decide(observation)
    with torch.no_grad():
        eager = net(*encode(observation).as_tuple())
    assert not decision.fallback.any() and decision.reasons == ("",) * 4
    assert decision.trajectory.dt == 0.5 and planner.observation_spec == ObservationSpec()
    assert (decision.trajectory.poses - eager).abs().max() <= 1e-4
    assert decision.latency_ms > 0


# --------------------------------------------------------------------------- refusing bad models


def _copy(path: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, to / path.name)
    shutil.copy(manifest_path(path), to / manifest_path(path).name)
    return to / path.name


def _edit_manifest(path: Path, edit) -> None:
    m = json.loads(manifest_path(path).read_text())
    edit(m)
    manifest_path(path).write_text(json.dumps(m))


def test_tampered_or_mismatched_models_are_refused(student: tuple, tmp_path: Path) -> None:
    _, path = student
    tampered = _copy(path, tmp_path / "tampered")
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(AvError, match="does not match its manifest"):
        VehiclePlanner(tampered)

    version = _copy(path, tmp_path / "version")
    _edit_manifest(version, lambda m: m.update(feature_version=m["feature_version"] + 1))
    with pytest.raises(AvError, match="feature version"):
        VehiclePlanner(version)

    shape = _copy(path, tmp_path / "shape")
    _edit_manifest(shape, lambda m: m["inputs"][5].update(shape=["batch", 25, 4]))
    with pytest.raises(AvError, match="'route'"):
        VehiclePlanner(shape)

    bare = tmp_path / "bare" / "student.onnx"
    bare.parent.mkdir()
    shutil.copy(path, bare)
    with pytest.raises(AvError, match="no manifest"):
        VehiclePlanner(bare)


def test_closedloop_eval_refuses_a_tampered_model_in_one_line(
        student: tuple, real_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tampered = _copy(student[1], tmp_path / "m")
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    rc = main(["closedloop", "eval", "--planner", "onnx", "--planner-arg", f"model={tampered}",
               "--store", str(real_store), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("av: error:") and len(err.splitlines()) == 1
    assert "does not match its manifest" in err


# --------------------------------------------------------------------------- fault injection


class AgentOverlap:
    """Vetoes a plan whose ego box overlaps an agent's box driven on at constant velocity."""

    name = "agent_overlap"

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        poses = trajectory.poses  # [B, H, 3]
        H = poses.shape[1]
        t = torch.arange(1, H + 1, dtype=poses.dtype) * trajectory.dt  # [H]
        ego = ego_box(poses, observation.ego_dims[:, None])  # [B, H, 5]
        now = observation.agents[:, :, -1]  # [B, N, 5]
        box = torch.cat([now[..., :3], observation.agent_sizes], -1)
        speed = now[..., 3:5].norm(dim=-1)
        B, N = speed.shape
        future = moved_on(box[:, :, None].expand(B, N, H, 5), speed[:, :, None], t)  # [B, N, H, 5]
        hit = box_overlap(ego[:, None], future) & observation.agent_valid[:, :, -1, None]  # [B, N, H]
        veto = hit.flatten(1).any(1)
        first = hit.any(1).float().argmax(1)
        reasons = tuple(f"overlaps an agent at t = {float(t[first[i]]):.1f} s" if veto[i] else ""
                        for i in range(len(veto)))
        return Verdict(veto=veto, reasons=reasons)


class SlowMonitor:
    """Passes every plan, after ``seconds`` of work."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        time.sleep(self.seconds)
        B = trajectory.poses.shape[0]
        return Verdict(veto=torch.zeros(B, dtype=torch.bool), reasons=("",) * B)


def _replace(obs: Observation, **changes: torch.Tensor) -> Observation:
    return dataclasses.replace(obs, **changes)


@pytest.mark.req("SR-PLAN-01")
def test_non_finite_model_output_drives_the_fallback(student: tuple, observation: Observation) -> None:
    """A localisation fault (NaN speed in row 1) makes the real model's output NaN there."""
    history = observation.ego_history.clone()
    history[1, -1, 3] = math.nan
    faulty = _replace(observation, ego_history=history)
    decision = VehiclePlanner(student[1]).decide(faulty)
    assert not torch.isfinite(decision.model_plan[1]).all()
    assert decision.fallback.tolist() == [False, True, False, False]
    assert decision.reasons[1] == "model output is not finite"
    assert torch.isfinite(decision.trajectory.poses).all()
    stop = comfortable_stop(faulty, 16, 0.5).poses[1]
    assert torch.equal(decision.trajectory.poses[1], stop)
    assert torch.equal(decision.trajectory.poses[0], decision.model_plan[0])


class ThroughAgent:
    """Fault injection at the model's output: row ``row`` plans straight into the nearest agent
    (reaching where it will be at 2 s); the other rows are the model's."""

    def __init__(self, model, observation: Observation, row: int) -> None:
        self.model, self.manifest, self.path = model, model.manifest, model.path
        now = observation.agents[row, :, -1]
        valid = observation.agent_valid[row, :, -1]
        dist = now[:, :2].norm(dim=-1).masked_fill(~valid, math.inf)
        agent = now[int(dist.argmin())]
        self.target = agent[:2] + 2.0 * agent[3:5]
        self.row = row

    def __call__(self, features):
        out = self.model(features).clone()
        H = out.shape[1]
        k = torch.arange(1, H + 1, dtype=out.dtype)[:, None] / 4.0  # at the target at step 4 (2 s)
        out[self.row, :, :2] = k * self.target
        out[self.row, :, 2] = torch.atan2(self.target[1], self.target[0])
        return out


@pytest.mark.req("SR-FB-01")
def test_a_plan_through_an_agent_is_vetoed_and_the_fallback_drives(student: tuple, observation: Observation) -> None:
    planner = VehiclePlanner(student[1], monitors=[AgentOverlap()])
    before = planner.decide(observation)
    row = int(torch.nonzero(observation.agent_valid[:, :, -1].any(1) & ~before.fallback)[0])
    planner.model = ThroughAgent(planner.model, observation, row)
    decision = planner.decide(observation)
    assert bool(decision.verdicts["agent_overlap"].veto[row]) and bool(decision.fallback[row])
    assert decision.reasons[row].startswith("agent_overlap vetoed: overlaps an agent at t = ")
    assert torch.equal(decision.trajectory.poses[row], comfortable_stop(observation, 16, 0.5).poses[row])
    assert torch.equal(decision.fallback[torch.arange(4) != row], before.fallback[torch.arange(4) != row])


@pytest.mark.req("SR-LAT-01")
def test_an_overrun_drives_the_fallback_in_every_row(student: tuple, observation: Observation) -> None:
    planner = VehiclePlanner(student[1], monitors=[SlowMonitor(0.03)], deadline_ms=10.0)
    decision = planner.decide(observation)
    assert decision.fallback.all() and decision.latency_ms > 10.0
    assert all("over its 10 ms deadline" in r for r in decision.reasons)
    assert torch.equal(decision.trajectory.poses, comfortable_stop(observation, 16, 0.5).poses)
    assert not VehiclePlanner(student[1], deadline_ms=1000.0).decide(observation).fallback.any()


# --------------------------------------------------------------------------- the fallback


def hand_observation(route: torch.Tensor, speed: float, valid: int | None = None) -> Observation:
    """One problem: ego at rest frame origin moving at ``speed`` m/s along x, route ``[R, 3]``
    (the first ``valid`` points valid), nothing else around."""
    R = route.shape[0]
    history = torch.zeros(1, 21, 5)
    history[0, :, 3] = speed
    history[0, :, 0] = speed * (torch.arange(21) - 20) * 0.1
    return Observation(
        ego_history=history, ego_dims=torch.tensor([[4.5, 1.9, 2.8, 1.4]]),
        agents=torch.zeros(1, 1, 21, 5), agent_valid=torch.zeros(1, 1, 21, dtype=torch.bool),
        agent_types=torch.full((1, 1), -1), agent_sizes=torch.zeros(1, 1, 2),
        lanes=torch.zeros(1, 1, 20, 3), lane_valid=torch.zeros(1, 1, dtype=torch.bool),
        lane_speed_limit=torch.full((1, 1), math.nan), lane_on_route=torch.zeros(1, 1, dtype=torch.bool),
        route=route[None], route_valid=(torch.arange(R) < (R if valid is None else valid))[None],
        drivable_edges=torch.zeros(1, 1, 4), drivable_edge_valid=torch.zeros(1, 1, dtype=torch.bool),
        pose=torch.zeros(1, 3), dt=0.1, route_spacing=1.0)


@pytest.mark.req("SR-FB-01")
def test_comfortable_stop_brakes_within_its_limits_and_stays_stopped() -> None:
    s = torch.arange(100, dtype=torch.float32)
    route = torch.stack([s, torch.full_like(s, 0.5), torch.zeros_like(s)], -1)  # 0.5 m to the left
    poses = comfortable_stop(hand_observation(route, 12.0), 100, 0.1).poses[0]
    x = torch.cat([torch.zeros(1), poses[:, 0]]).double()
    v = x.diff() / 0.1
    a = v.diff() / 0.1
    assert (v.diff() <= 1e-4).all() and v[-10:].abs().max() < 1e-6  # slows down, then stands
    assert a.min() >= -COMFORT_DECEL - 1e-3 and (a.diff() / 0.1).abs().max() <= COMFORT_JERK + 1e-2
    # Stopping distance: v^2 / 2 b plus the jerk-limited onset (about v * b / (2 j)).
    assert x[-1] == pytest.approx(12.0**2 / (2 * COMFORT_DECEL) + 12.0 * COMFORT_DECEL / (2 * COMFORT_JERK), abs=0.3)
    assert poses[:, 1].abs().max() < 1e-5 and poses[:, 2].abs().max() < 1e-6  # keeps its lane offset


@pytest.mark.req("SR-FB-01")
def test_comfortable_stop_follows_a_curved_route_and_goes_straight_without_one() -> None:
    radius = 20.0
    phi = torch.arange(60, dtype=torch.float32) / radius  # 1 m apart, turning left
    route = torch.stack([radius * torch.sin(phi), radius * (1 - torch.cos(phi)), phi], -1)
    poses = comfortable_stop(hand_observation(route, 8.0), 80, 0.1).poses[0]
    to_centre = (poses[:, :2] - torch.tensor([0.0, radius])).norm(dim=-1)
    assert (to_centre - radius).abs().max() < 0.05  # on the arc (chords of 1 m)
    arc = radius * torch.atan2(poses[:, 0], radius - poses[:, 1])
    assert (poses[:, 2] - arc / radius).abs().max() < 0.03  # heading along the arc
    assert poses[-1, 2] > 0.5
    straight = comfortable_stop(hand_observation(route, 8.0, valid=1), 80, 0.1).poses[0]
    assert straight[:, 1:].abs().max() == 0 and straight[-1, 0] > 10.0


# --------------------------------------------------------------------------- the simulator planner


def test_onnx_planner_is_registered_with_its_model_setting(student: tuple) -> None:
    from closedloop.planner import make_planner

    planner = make_planner("onnx", model=str(student[1]))
    assert isinstance(planner, VehiclePlanner) and planner.name == "onnx" and planner.deadline_ms is None
    with pytest.raises(AvError, match="model=student.onnx"):
        make_planner("onnx")


@pytest.mark.parametrize("B", [1, 3])
def test_onnx_planner_keeps_the_planner_contract(student: tuple, observation: Observation, B: int) -> None:
    """The registry-wide planner contract, for the planner that needs a model file."""
    from closedloop.planner import Planner, make_planner

    planner = make_planner("onnx", model=str(student[1]))
    assert isinstance(planner, Planner) and not planner.privileged
    same = Observation(**{k: v[:1].expand(B, *v.shape[1:]).clone() if isinstance(v, torch.Tensor) else v
                          for k, v in observation.__dict__.items()})
    out = planner.plan(same)
    assert out.poses.shape == (B, 16, 3) and out.poses.dtype == torch.float32 and out.dt == 0.5
    assert torch.isfinite(out.poses).all()
    assert torch.allclose(out.poses, out.poses[:1].expand_as(out.poses))
