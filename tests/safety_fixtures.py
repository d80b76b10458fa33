"""Hand-built observations, plans and JUnit files for the safety tests (ego frame, SI units).

The road: a straight two-lane road along +x, lane centres y = 0 and y = 3.5, drivable area
``x in [-50, 150]``, ``y in [-1.75, 5.25]`` (one rectangle ring, four edges).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import torch

from av.observation import Observation, Trajectory
from safety.verification import PROP_DIGEST, PROP_NODE, PROP_REQ, TestDecl

ROOT = Path(__file__).resolve().parents[1]

DT = 0.1
EGO_DIMS = (4.084, 1.730, 2.588, 1.292)


def make_observation(
    speed: float = 10.0,
    agents: Sequence[tuple[float, ...]] = (),
    batch: int = 1,
    history: int = 3,
    lanes: bool = True,
) -> Observation:
    """``batch`` identical rows; ``agents``: (x, y, yaw, vx, vy, length, width) box centres now,
    with a history consistent with constant velocity."""
    B, N, H = batch, max(1, len(agents)), history
    ego = torch.zeros(B, H, 5, dtype=torch.float64)
    ts = (torch.arange(H, dtype=torch.float64) - (H - 1)) * DT
    ego[:, :, 0], ego[:, :, 3] = speed * ts, speed
    ag = torch.zeros(B, N, H, 5, dtype=torch.float64)
    valid = torch.zeros(B, N, H, dtype=torch.bool)
    sizes = torch.ones(B, N, 2, dtype=torch.float64)
    for n, (x, y, yaw, vx, vy, length, width) in enumerate(agents):
        ag[:, n, :, 0], ag[:, n, :, 1] = x + vx * ts, y + vy * ts
        ag[:, n, :, 2], ag[:, n, :, 3], ag[:, n, :, 4] = yaw, vx, vy
        valid[:, n] = True
        sizes[:, n] = torch.tensor([length, width], dtype=torch.float64)
    xs = torch.linspace(-50, 150, 41, dtype=torch.float64)
    lane_pts = torch.stack([torch.stack([xs, torch.full_like(xs, y), torch.zeros_like(xs)], -1) for y in (0.0, 3.5)])
    x0, x1, y0, y1 = -50.0, 150.0, -1.75, 5.25
    edges = torch.tensor([[x0, y0, x1, y0], [x1, y0, x1, y1], [x1, y1, x0, y1], [x0, y1, x0, y0]], dtype=torch.float64)
    route = torch.stack([xs, torch.zeros_like(xs), torch.zeros_like(xs)], -1)
    return Observation(
        ego_history=ego, ego_dims=torch.tensor(EGO_DIMS, dtype=torch.float64).expand(B, 4).clone(),
        agents=ag, agent_valid=valid, agent_types=torch.where(valid[..., -1], 1, -1).long(), agent_sizes=sizes,
        lanes=lane_pts.expand(B, -1, -1, -1).clone(), lane_valid=torch.full((B, 2), lanes),
        lane_speed_limit=torch.full((B, 2), 13.9, dtype=torch.float64), lane_on_route=torch.tensor([[True, False]] * B),
        route=route.expand(B, -1, -1).clone(), route_valid=torch.ones(B, 41, dtype=torch.bool),
        drivable_edges=edges.expand(B, -1, -1).clone(), drivable_edge_valid=torch.ones(B, 4, dtype=torch.bool),
        pose=torch.zeros(B, 3, dtype=torch.float64), dt=DT, route_spacing=5.0,
    )


def straight_plan(speed: float = 10.0, accel: float = 0.0, steps: int = 50, y: float = 0.0, batch: int = 1) -> Trajectory:
    """Constant-acceleration plan along +x (stops at zero speed), lateral offset ``y``."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) * DT
    if accel < 0:
        t = torch.minimum(t, torch.tensor(speed / -accel, dtype=torch.float64))
    x = speed * t + 0.5 * accel * t**2
    poses = torch.stack([x, torch.full_like(x, y), torch.zeros_like(x)], -1)
    return Trajectory(poses=poses.expand(batch, -1, -1).clone(), dt=DT)


def lane_change_plan(speed: float = 10.0, dy: float = 3.5, duration: float = 3.0, steps: int = 50) -> Trajectory:
    """A smooth (cosine) lane change of ``dy`` metres over ``duration`` seconds at constant speed."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) * DT
    s = (t / duration).clamp(max=1.0)
    y = dy * (1 - torch.cos(torch.pi * s)) / 2
    x = speed * t
    dydx = dy * torch.pi / (2 * duration * speed) * torch.sin(torch.pi * s) * (t <= duration)
    return Trajectory(poses=torch.stack([x, y, torch.atan(dydx)], -1)[None], dt=DT)


def junit_for(decls: list[TestDecl], path: Path, outcome: dict[str, str] | None = None) -> Path:
    """A pytest-style JUnit file with one passing testcase per declaration (``outcome`` overrides
    by node id: "failure" or "skipped")."""
    suite = ET.Element("testsuite", {"name": "pytest", "timestamp": "2026-12-03T12:00:00+00:00"})
    for d in decls:
        case = ET.SubElement(suite, "testcase", {"classname": "x", "name": d.nodeid.split("::")[-1]})
        props = ET.SubElement(case, "properties")
        for name, value in [*((PROP_REQ, r) for r in d.requirements), (PROP_NODE, d.nodeid), (PROP_DIGEST, d.digest)]:
            ET.SubElement(props, "property", {"name": name, "value": value})
        kind = (outcome or {}).get(d.nodeid)
        if kind:
            ET.SubElement(case, kind, {"message": f"planted {kind}"})
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path)
    return path
