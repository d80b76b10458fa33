"""The feature encoder (shapes, masks, values on the hand-made road) and the planner networks
(sizes, padding invariance of the student, ONNX export)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from av.batch import collate
from av.features import FEATURE_NAMES, Features, encode, feature_shapes, history_samples
from av.nets import TEACHER_PRESETS, StudentNet, TeacherConfig, TeacherNet, parameter_count
from av.nets.student import route_view
from av.observe import ObservationSpec, observe
from conftest import SPEED_LIMIT, build_scenario

SPEC = ObservationSpec(history_steps=10, num_agents=6, num_lanes=5, lane_points=8, route_points=30)


def _features(t: int = 10, spec: ObservationSpec = SPEC) -> Features:
    batch = collate([build_scenario("a"), build_scenario("b", ego_speed=8.0, num_agents=1)])
    return encode(observe(batch, torch.tensor([t, t]), spec)).validate()


def test_shapes_dtypes_and_masks() -> None:
    f = _features()
    shapes = feature_shapes(SPEC)
    assert tuple(shapes) == FEATURE_NAMES
    for name, x in zip(FEATURE_NAMES, f.as_tuple()):
        assert tuple(x.shape) == (2, *shapes[name]), name
        assert x.dtype == (torch.bool if name.endswith("_mask") else torch.float32), name
    # Scenario a: lead and left are seen, the pedestrian appears only at step 20; b has 1 agent.
    assert f.agent_mask.sum(1).tolist() == [2, 1]
    assert f.lane_mask.sum(1).tolist() == [4, 4]
    # Padding slots are all zeros.
    assert not f.agents[~f.agent_mask].any() and not f.lanes[~f.lane_mask].any()
    assert not f.route[~f.route_mask].any()
    assert f.route_mask.all()  # 30 m of route ahead on a 120 m road


def test_values_on_the_hand_made_road() -> None:
    f = _features()
    assert f.ego[:, 0].tolist() == pytest.approx([5.0, 8.0], abs=1e-4)  # forward speed, m/s
    assert f.ego[:, 1:4].abs().max() < 1e-4  # no lateral speed, acceleration or yaw rate
    assert f.ego[0, 4:].tolist() == pytest.approx([4.084, 1.73, 2.588, 1.292], abs=1e-3)
    # The lead car, newest sample: centre at 15 + 4 t, ego rear axle at 5 t, t = 1 s. Agents
    # come nearest first: the car on the left (2 m behind, 3.5 m left) before the lead.
    S = history_samples(SPEC.history_steps)
    assert f.agents[0, 0, :2].tolist() == pytest.approx([-3.0, 3.5], abs=1e-4)
    lead = f.agents[0, 1]
    assert lead[:7].tolist() == pytest.approx([14.0, 0.0, 1.0, 0.0, 4.0, 0.0, 1.0], abs=1e-4)
    # Its sample 0.5 s earlier, in the ego frame of now: 15 + 4 x 0.5 - 5 x 1 = 12 m ahead.
    assert lead[7].item() == pytest.approx(12.0, abs=1e-4)
    assert lead[7 * S:7 * S + 2].tolist() == pytest.approx([4.5, 1.9])
    assert lead[7 * S + 2:].tolist() == [1.0, 0.0, 0.0, 0.0]  # one-hot vehicle
    # Lanes: per-point (x, y, cos, sin), then limit, limit known, on route.
    lanes = f.lanes[0][f.lane_mask[0]]
    extra = lanes[:, -3:]
    known = extra[:, 1] == 1
    assert extra[known, 0].tolist() == pytest.approx([SPEED_LIMIT] * int(known.sum()))
    assert (extra[~known, 0] == 0).all() and (~known).sum() == 1  # the connector has no limit
    assert extra[:, 2].sum() == 3  # lanes 0, 1, 2 are on the route; lane 3 is not
    cos_sin = lanes[:, :-3].reshape(-1, SPEC.lane_points, 4)[..., 2:]
    assert torch.allclose(cos_sin, torch.tensor([1.0, 0.0]).expand_as(cos_sin), atol=1e-5)
    # Route points every 5 m straight ahead.
    assert f.route[0, :3, 0].tolist() == pytest.approx([0.0, 5.0, 10.0], abs=0.6)
    assert f.route[0, :, 1].abs().max() < 1e-4


def test_history_before_an_agent_appears_is_masked() -> None:
    f = _features(t=22)  # the pedestrian appears at step 20: only the newest sample sees it
    S = history_samples(SPEC.history_steps)
    types = f.agents[0, :, 7 * S + 2:]
    ped = int(torch.nonzero(types[:, 1] == 1)[0, 0])
    samples = f.agents[0, ped, : 7 * S].reshape(S, 7)
    assert samples[:, 6].tolist() == [1.0] + [0.0] * (S - 1)
    assert not samples[1:].any()  # invalid samples are zeros
    assert samples[0, :2].tolist() == pytest.approx([10 + 1.2 * 2.2 - 5 * 2.2, 6.5], abs=1e-4)


def test_validate_rejects_mismatched_features() -> None:
    f = _features()
    with pytest.raises(ValueError, match="mask"):
        Features.from_tuple([*f.as_tuple()[:2], f.agent_mask[:, :3], *f.as_tuple()[3:]]).validate()
    with pytest.raises(ValueError, match="dtype"):
        Features.from_tuple([*f.as_tuple()[:2], f.agent_mask.float(), *f.as_tuple()[3:]]).validate()


def test_default_student_is_at_most_a_twentieth_of_the_default_teacher() -> None:
    spec = ObservationSpec()
    teacher, student = TeacherNet(spec, TEACHER_PRESETS["default"]), StudentNet(spec)
    assert parameter_count(student) * 20 <= parameter_count(teacher)


def _pad(x: torch.Tensor, mask: torch.Tensor, extra: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the slots and append ``extra`` masked slots full of garbage."""
    perm = torch.randperm(x.shape[1], generator=gen)
    junk = torch.randn(x.shape[0], extra, x.shape[2], generator=gen) * 100
    return torch.cat([x[:, perm], junk], 1), torch.cat([mask[:, perm], torch.zeros(x.shape[0], extra, dtype=torch.bool)], 1)


def test_student_output_is_invariant_to_padding_and_slot_order() -> None:
    torch.manual_seed(0)
    student = StudentNet(SPEC).eval()
    f = _features()
    gen = torch.Generator().manual_seed(1)
    agents, agent_mask = _pad(f.agents, f.agent_mask, 9, gen)
    lanes, lane_mask = _pad(f.lanes, f.lane_mask, 3, gen)
    route = torch.where(f.route_mask[..., None], f.route, 1e3)  # garbage where masked
    route_mask = f.route_mask.clone()
    route_mask[:, -4:] = False
    route_ref = f.route * route_mask[..., None]
    with torch.no_grad():
        ref = student(f.ego, f.agents, f.agent_mask, f.lanes, f.lane_mask, route_ref, route_mask)
        got = student(f.ego, agents, agent_mask, lanes, lane_mask, torch.where(route_mask[..., None], route, 7.0),
                      route_mask)
    assert ref.shape == (2, student.config.horizon, 3)
    assert torch.allclose(ref, got, atol=1e-5)


def test_student_follows_the_car_in_its_lane_and_sees_a_crossing_pedestrian_coming() -> None:
    """The student's car-following prior (:func:`av.nets.student.route_view`) on the hand-made
    road: the lead car in the ego's lane is a leader at its bumper-to-bumper gap and speed, the
    car in the next lane is not; a pedestrian 4 m to the side walking towards the route at
    1.5 m/s becomes one once the extrapolation brings it within reach of the path (and one in
    the path walking out of it stays one); an untrained
    student with zero outputs stops behind a stopped car."""
    f = _features()
    H, dt = 16, 0.5
    lead, left, ped = 1, 0, 2  # slots in scenario "a" (sorted by distance; the pedestrian is not seen yet)
    assert float(f.agents[0, lead, 1]) == 0.0 and float(f.agents[0, left, 1]) > 3.0 and not bool(f.agent_mask[0, ped])
    view = route_view(f.ego, f.agents, f.agent_mask, f.route, f.route_mask, H, dt)
    weight = view.leaders.weight
    assert weight.shape == (2, H, SPEC.num_agents)
    assert bool((weight[0, :, lead] == 1).all()) and float(weight[0, :, left].max()) == 0
    front = float(f.ego[0, 7] + 0.5 * f.ego[0, 4])
    assert abs(float(view.leaders.gap[0, lead]) - (14.0 - 2.25 - front)) < 0.2  # lead at x = 19 m, ego at 5 m (blended s)
    assert abs(float(view.leaders.speed[0, lead]) - 4.0) < 0.1
    agents, mask = f.agents.clone(), f.agent_mask.clone()
    agents[0, ped, 0:7] = torch.tensor([10.0, 4.0, 0.0, -1.0, 0.0, -1.5, 1.0])  # walking towards the route
    agents[0, ped, -6:] = torch.tensor([0.7, 0.7, 0.0, 1.0, 0.0, 0.0])
    mask[0, ped] = True
    crossing = route_view(f.ego, agents, mask, f.route, f.route_mask, H, dt).leaders.weight[0, :, ped]
    assert float(crossing[0]) == 0 and float(crossing[-1]) == 1  # 4 - 0.35 m off now, 1 m in 2 s
    agents[0, ped, 1] = 0.5  # in the path now, walking out of it: stays a leader
    leaving = route_view(f.ego, agents, mask, f.route, f.route_mask, H, dt).leaders.weight[0, :, ped]
    assert bool((leaving == 1).all())
    student = StudentNet(SPEC).eval()
    with torch.no_grad():
        student.head[-1].weight.zero_()
        student.head[-1].bias.zero_()
        agents = f.agents.clone()
        for i in range(history_samples(SPEC.history_steps)):
            agents[0, lead, 7 * i + 4:7 * i + 6] = 0.0  # the lead car stands still 14 m ahead
        poses = student(f.ego, agents, f.agent_mask, f.lanes, f.lane_mask, f.route, f.route_mask)
    assert float(poses[0, -1, 0]) < 14.0 - 2.25 - front  # stopped short of it


def test_teacher_outputs_proposals_and_ignores_padding() -> None:
    torch.manual_seed(0)
    teacher = TeacherNet(SPEC, TeacherConfig(d_model=32, layers=1, decoder_layers=1, heads=2, ff=64, modes=3,
                                             horizon=4)).eval()
    f = _features()
    with torch.no_grad():
        traj, logits = teacher(*f.as_tuple())
        gen = torch.Generator().manual_seed(2)
        agents, agent_mask = _pad(f.agents, f.agent_mask, 5, gen)
        traj2, logits2 = teacher(f.ego, agents, agent_mask, *f.as_tuple()[3:])
    assert traj.shape == (2, 3, 4, 3) and logits.shape == (2, 3)
    assert torch.allclose(traj, traj2, atol=1e-4) and torch.allclose(logits, logits2, atol=1e-4)
    # At rest output, the constant-velocity prior puts the poses ahead at the ego's speed.
    assert torch.isfinite(traj).all()


def test_student_exports_to_onnx_with_dynamic_batch_and_counts(tmp_path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    student = StudentNet(SPEC).eval()
    f = _features()
    path = tmp_path / "student.onnx"
    dynamic = {n: {0: "batch"} for n in FEATURE_NAMES}
    dynamic["agents"] = dynamic["agent_mask"] = {0: "batch", 1: "agents"}
    dynamic["lanes"] = dynamic["lane_mask"] = {0: "batch", 1: "lanes"}
    torch.onnx.export(student, f.as_tuple(), str(path), input_names=list(FEATURE_NAMES), output_names=["trajectory"],
                      dynamic_axes={**dynamic, "trajectory": {0: "batch"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Other batch, agent and lane counts than the export example.
    batch = collate([build_scenario(f"s{i}", ego_speed=3.0 + i) for i in range(3)])
    spec = ObservationSpec(history_steps=10, num_agents=9, num_lanes=3, lane_points=8, route_points=30)
    g = encode(observe(batch, torch.tensor([12, 15, 20]), spec))
    out = session.run(None, {n: x.numpy() for n, x in zip(FEATURE_NAMES, g.as_tuple())})[0]
    with torch.no_grad():
        ref = student(*g.as_tuple()).numpy()
    assert out.shape == (3, student.config.horizon, 3)
    assert np.abs(out - ref).max() < 1e-4
    assert not math.isnan(float(out.sum()))
