"""Shared test helpers: a hand-made scenario factory and the real nuScenes-mini data (if present).

``make_scenario`` (fixture, or :func:`build_scenario` directly) builds a small valid
:class:`~av.types.Scenario` with known geometry, local frame, SI units:

* Lanes (centrelines along +x, 0.5 m spacing, 3.5 m wide outlines):
  0 ``y = 0``, ``x in [-20, 40]``; 1 (connector) ``y = 0``, ``x in [40, 50]``;
  2 ``y = 0``, ``x in [50, road_length]``; 3 (only when ``num_lanes == 4``) ``y = 3.5``,
  ``x in [-20, road_length]``. Successors 0 -> 1 -> 2. Speed limit 13.9 m/s, NaN on the connector.
  Route ``[0, 1, 2]``.
* Drivable area: the rectangle ``x in [-20, road_length]``, ``y in [-1.75, 12]`` with a hole
  (a traffic island) ``x in [20, 30]``, ``y in [7, 10]``.
* Ego: rear axle at ``(ego_speed * t, 0)``, yaw 0, constant speed.
* Agents (the first ``num_agents`` of): ``"lead"`` vehicle in lane 0 at ``x = 15 + 4 t``;
  ``"left"`` vehicle in lane 3 at ``x = -5 + 7 t``; ``"late-ped"`` pedestrian at
  ``(10 + 1.2 t, 6.5)`` that appears at step ``num_steps // 2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytest
import torch

from av.paths import nuscenes_mini_dir
from av.types import AgentType, MapData, Provenance, Scenario, Source, VehicleParams
from safety.pytest_plugin import pytest_collection_modifyitems, pytest_configure  # noqa: F401  (req marker -> JUnit)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Test batches are tiny: extra intra-op threads only add synchronisation (and stall badly
    on a busy 2-core machine), so every test runs single-threaded and restores the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root() -> Path:
    """The real nuScenes-mini dataroot (skips the test where it is absent)."""
    r = nuscenes_mini_dir()
    if r is None:
        pytest.skip("real nuScenes-mini data not found ($AV_SHARED_DATA or ../shared/data/nuscenes-mini)")
    return r

LANE_WIDTH = 3.5
SPEED_LIMIT = 13.9


def rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Counter-clockwise ring ``[4, 2]`` of an axis-aligned rectangle (not repeated at the end)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def straight_lane(x0: float, x1: float, y: float) -> np.ndarray:
    """Centreline ``[P, 3]`` (x, y, heading 0) from ``x0`` to ``x1`` at 0.5 m spacing."""
    xs = np.linspace(x0, x1, int(round((x1 - x0) / 0.5)) + 1)
    return np.stack([xs, np.full_like(xs, y), np.zeros_like(xs)], axis=1)


def build_map(
    centrelines: Sequence[np.ndarray],
    connectors: Sequence[bool],
    speed_limits: Sequence[float],
    successors: Sequence[Sequence[int]],
    polygons: Sequence[np.ndarray],
    rings: Sequence[np.ndarray],
    lane_ids: Sequence[str] | None = None,
) -> MapData:
    """A :class:`MapData` from per-lane lists (the CSR offsets are computed here)."""

    def offsets(parts: Sequence[Any]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def stack(parts: Sequence[np.ndarray], width: int) -> np.ndarray:
        return np.concatenate(parts).reshape(-1, width) if len(parts) else np.zeros((0, width))

    return MapData(
        lane_ids=tuple(lane_ids) if lane_ids is not None else tuple(f"lane-{i}" for i in range(len(centrelines))),
        lane_is_connector=np.array(connectors, dtype=bool),
        lane_speed_limit=np.array(speed_limits, dtype=np.float64),
        lane_point_offsets=offsets(centrelines),
        lane_points=stack(centrelines, 3),
        lane_successor_offsets=offsets(successors),
        lane_successors=np.array([j for s in successors for j in s], dtype=np.int64),
        lane_polygon_offsets=offsets(polygons),
        lane_polygon_points=stack(polygons, 2),
        drivable_ring_offsets=offsets(rings),
        drivable_ring_points=stack(rings, 2),
    )


def road_map(road_length: float = 120.0, num_lanes: int = 4) -> MapData:
    """The straight road described in the module docstring (``num_lanes`` is 3 or 4)."""
    if num_lanes not in (3, 4):
        raise ValueError("num_lanes must be 3 or 4")
    h = LANE_WIDTH / 2
    spans = [(-20.0, 40.0, 0.0), (40.0, 50.0, 0.0), (50.0, road_length, 0.0), (-20.0, road_length, LANE_WIDTH)]
    spans = spans[:num_lanes]
    return build_map(
        centrelines=[straight_lane(x0, x1, y) for x0, x1, y in spans],
        connectors=[False, True, False, False][:num_lanes],
        speed_limits=[SPEED_LIMIT, np.nan, SPEED_LIMIT, SPEED_LIMIT][:num_lanes],
        successors=[[1], [2], [], []][:num_lanes],
        polygons=[rectangle(x0, y - h, x1, y + h) for x0, x1, y in spans],
        rings=[rectangle(-20.0, -h, road_length, 12.0), rectangle(20.0, 7.0, 30.0, 10.0)],
    )


def build_scenario(
    id: str = "hand-0",
    num_steps: int = 40,
    history_steps: int = 10,
    num_agents: int = 3,
    ego_speed: float = 5.0,
    road_length: float = 120.0,
    num_lanes: int = 4,
    dt: float = 0.1,
    provenance: Provenance | None = None,
    tags: tuple[str, ...] = ("hand-made",),
) -> Scenario:
    """A valid hand-made scenario on the straight road (see the module docstring)."""
    T = num_steps
    t = np.arange(T) * dt
    ego = np.zeros((T, 5))
    ego[:, 0] = ego_speed * t
    ego[:, 3] = ego_speed
    specs = [  # id, type, (length, width), x0, vx, y, first valid step
        ("lead", AgentType.VEHICLE, (4.5, 1.9), 15.0, 4.0, 0.0, 0),
        ("left", AgentType.VEHICLE, (4.8, 2.0), -5.0, 7.0, LANE_WIDTH, 0),
        ("late-ped", AgentType.PEDESTRIAN, (0.7, 0.7), 10.0, 1.2, 6.5, T // 2),
    ][:num_agents]
    N = len(specs)
    agents = np.zeros((N, T, 5))
    valid = np.zeros((N, T), dtype=bool)
    for i, (_, _, _, x0, vx, y, first) in enumerate(specs):
        valid[i, first:] = True
        agents[i, first:, 0] = x0 + vx * t[first:]
        agents[i, first:, 1] = y
        agents[i, first:, 3] = vx
    return Scenario(
        id=id,
        source=Source(
            dataset="hand", scene_token=f"token-{id}", scene_name=f"scene-{id}", location="test-town",
            origin=(1000.0, 2000.0), start_step=0,
        ),
        dt=dt,
        timestamps=t,
        history_steps=history_steps,
        ego=ego,
        ego_vehicle=VehicleParams(),
        agent_ids=tuple(s[0] for s in specs),
        agent_types=np.array([int(s[1]) for s in specs], dtype=np.int8),
        agent_sizes=np.array([s[2] for s in specs], dtype=np.float64).reshape(N, 2),
        agents=agents,
        agent_valid=valid,
        map=road_map(road_length, num_lanes),
        route=np.array([0, 1, 2]),
        tags=tags,
        provenance=provenance,
    ).validate()


@pytest.fixture
def make_scenario() -> Callable[..., Scenario]:
    """The :func:`build_scenario` factory: ``make_scenario(num_steps=30, num_agents=1, ...)``."""
    return build_scenario


@pytest.fixture
def scenario() -> Scenario:
    """The default hand-made scenario (40 steps, 3 agents, 4 lanes)."""
    return build_scenario()


@pytest.fixture(scope="session")
def real_scenarios() -> list[Scenario]:
    """The real nuScenes v1.0-mini drives, imported once per session with the default config."""
    from av.paths import nuscenes_mini_dir

    root = nuscenes_mini_dir()
    if root is None:
        pytest.skip("real nuScenes-mini data not found ($AV_SHARED_DATA or ../shared/data/nuscenes-mini)")
    from av.data.nuscenes import ImportConfig, load_nuscenes

    return list(load_nuscenes(root, ImportConfig()))


@pytest.fixture(scope="session")
def real_store(real_scenarios: list[Scenario], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scenario store holding :func:`real_scenarios` (skips where the real data is absent)."""
    from scenarios.store import write_store

    path = tmp_path_factory.mktemp("real") / "store"
    write_store(path, real_scenarios)
    return path
