"""Core immutable values: :class:`Scenario` and the map, source and provenance it carries.

Conventions used everywhere in the project:

* Units are SI: metres, seconds, radians, m/s. Angles are wrapped to ``[-pi, pi)``.
* Positions are in the scenario's *local frame*: the dataset's global map frame shifted by
  ``Source.origin`` (no rotation), so that float32 batches keep millimetre precision.
* A state row holds :data:`STATE_FIELDS` = ``(x, y, yaw, vx, vy)``: position of the reference
  point (rear axle for the ego, box centre for agents), heading, and world-frame velocity.
* ``T`` is the number of 10 Hz steps, ``N`` the number of agents, ``L`` the number of lanes.

Arrays inside these values are numpy arrays made read-only on construction; a value is never
changed in place, transforms build a new one (``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 1
STATE_FIELDS = ("x", "y", "yaw", "vx", "vy")
X, Y, YAW, VX, VY = range(5)
STATE_DIM = len(STATE_FIELDS)


class ScenarioError(ValueError):
    """A scenario value violates one of its invariants (raised by ``validate``)."""


class AgentType(enum.IntEnum):
    """Agent classes. nuScenes categories map onto these in :mod:`av.data.nuscenes`."""

    VEHICLE = 0
    PEDESTRIAN = 1
    CYCLIST = 2
    STATIC = 3


@dataclass(frozen=True)
class VehicleParams:
    """Ego vehicle geometry (metres). The ego state is the rear-axle pose.

    Defaults are the nuScenes data-collection car (Renault Zoe): 4.084 m x 1.730 m,
    wheelbase 2.588 m, rear axle 1.292 m behind the box centre.
    """

    length: float = 4.084
    width: float = 1.730
    wheelbase: float = 2.588
    rear_axle_to_center: float = 1.292


@dataclass(frozen=True)
class Source:
    """Where a scenario came from.

    ``origin`` is the (x, y) of the dataset's global frame that maps to (0, 0) locally, metres.
    ``start_step`` is the index of the scenario's first step among the scene's 10 Hz frames.
    """

    dataset: str
    scene_token: str
    scene_name: str
    location: str
    origin: tuple[float, float] = (0.0, 0.0)
    start_step: int = 0


@dataclass(frozen=True)
class Provenance:
    """How a derived scenario was made: enough to regenerate it exactly.

    ``params`` must be JSON-serialisable. ``transform`` is a registered variant name
    (a chain of transforms records ``"chain"`` with the steps in ``params``).
    """

    parent_id: str
    transform: str
    params: Mapping[str, Any]
    seed: int


def _frozen(a: Any, dtype: Any) -> np.ndarray:
    if isinstance(a, np.ndarray) and a.dtype == dtype and not a.flags.writeable and a.flags.owndata:
        return a  # made by this function (a field carried over by ``replace``): share it, never copy
    arr = np.array(a, dtype=dtype, copy=True)
    arr.flags.writeable = False
    return arr


def _ragged_ok(offsets: np.ndarray, n_items: int, n_values: int, what: str) -> None:
    if offsets.ndim != 1 or offsets.shape[0] != n_items + 1:
        raise ScenarioError(f"{what}: offsets must have shape [{n_items + 1}], got {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != n_values or np.any(np.diff(offsets) < 0):
        raise ScenarioError(f"{what}: offsets must rise from 0 to {n_values}")


@dataclass(frozen=True, eq=False)
class MapData:
    """The map near a drive, as flat arrays with CSR-style offsets (ragged lists).

    Lanes (``L`` of them; lanes and lane connectors alike):

    * ``lane_ids``: dataset tokens, tuple of ``L`` str.
    * ``lane_is_connector``: bool ``[L]``.
    * ``lane_speed_limit``: float ``[L]`` m/s, NaN where unknown.
    * ``lane_point_offsets`` int ``[L+1]``, ``lane_points`` float ``[P, 3]``: centreline
      polylines (x, y, heading), lane ``i`` is ``lane_points[off[i]:off[i+1]]``, spacing <= 0.5 m.
    * ``lane_successor_offsets`` int ``[L+1]``, ``lane_successors`` int ``[E]``: lane graph edges.
    * ``lane_polygon_offsets`` int ``[L+1]``, ``lane_polygon_points`` float ``[Q, 2]``: lane outlines.

    Drivable area: ``drivable_ring_offsets`` int ``[K+1]`` and ``drivable_ring_points`` ``[D, 2]``
    hold closed rings (exteriors and holes); a point is drivable iff it lies inside an odd number
    of rings (even-odd rule), which handles holes without a separate flag.
    """

    lane_ids: tuple[str, ...]
    lane_is_connector: np.ndarray
    lane_speed_limit: np.ndarray
    lane_point_offsets: np.ndarray
    lane_points: np.ndarray
    lane_successor_offsets: np.ndarray
    lane_successors: np.ndarray
    lane_polygon_offsets: np.ndarray
    lane_polygon_points: np.ndarray
    drivable_ring_offsets: np.ndarray
    drivable_ring_points: np.ndarray

    _DTYPES = {
        "lane_is_connector": bool,
        "lane_speed_limit": np.float64,
        "lane_point_offsets": np.int64,
        "lane_points": np.float64,
        "lane_successor_offsets": np.int64,
        "lane_successors": np.int64,
        "lane_polygon_offsets": np.int64,
        "lane_polygon_points": np.float64,
        "drivable_ring_offsets": np.int64,
        "drivable_ring_points": np.float64,
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "lane_ids", tuple(str(t) for t in self.lane_ids))
        for name, dtype in self._DTYPES.items():
            object.__setattr__(self, name, _frozen(getattr(self, name), dtype))
        for name in ("lane_points",):
            if getattr(self, name).size == 0:
                object.__setattr__(self, name, _frozen(np.zeros((0, 3)), np.float64))
        for name in ("lane_polygon_points", "drivable_ring_points"):
            if getattr(self, name).size == 0:
                object.__setattr__(self, name, _frozen(np.zeros((0, 2)), np.float64))

    @property
    def num_lanes(self) -> int:
        return len(self.lane_ids)

    def lane(self, i: int) -> np.ndarray:
        """Centreline of lane ``i``, ``[P_i, 3]`` (x, y, heading)."""
        o = self.lane_point_offsets
        return self.lane_points[o[i] : o[i + 1]]

    def successors(self, i: int) -> np.ndarray:
        """Indices of the lanes that start where lane ``i`` ends."""
        o = self.lane_successor_offsets
        return self.lane_successors[o[i] : o[i + 1]]

    def lane_polygon(self, i: int) -> np.ndarray:
        o = self.lane_polygon_offsets
        return self.lane_polygon_points[o[i] : o[i + 1]]

    def drivable_rings(self) -> list[np.ndarray]:
        o = self.drivable_ring_offsets
        return [self.drivable_ring_points[o[k] : o[k + 1]] for k in range(len(o) - 1)]

    def validate(self) -> None:
        L = self.num_lanes
        if self.lane_is_connector.shape != (L,) or self.lane_speed_limit.shape != (L,):
            raise ScenarioError("map: per-lane arrays must have shape [L]")
        _ragged_ok(self.lane_point_offsets, L, len(self.lane_points), "map lane points")
        _ragged_ok(self.lane_successor_offsets, L, len(self.lane_successors), "map lane successors")
        _ragged_ok(self.lane_polygon_offsets, L, len(self.lane_polygon_points), "map lane polygons")
        _ragged_ok(
            self.drivable_ring_offsets,
            len(self.drivable_ring_offsets) - 1,
            len(self.drivable_ring_points),
            "map drivable rings",
        )
        if self.lane_points.ndim != 2 or self.lane_points.shape[1] != 3:
            raise ScenarioError(f"map: lane_points must be [P, 3], got {self.lane_points.shape}")
        for name in ("lane_points", "lane_polygon_points", "drivable_ring_points"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ScenarioError(f"map: {name} has non-finite values")
        if L and np.any(np.diff(self.lane_point_offsets) < 2):
            raise ScenarioError("map: every lane needs at least 2 centreline points")
        if self.lane_successors.size and (
            self.lane_successors.min() < 0 or self.lane_successors.max() >= L
        ):
            raise ScenarioError("map: lane successor index out of range")
        limits = self.lane_speed_limit[np.isfinite(self.lane_speed_limit)]
        if np.any(limits <= 0):
            raise ScenarioError("map: speed limits must be positive (NaN where unknown)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MapData):
            return NotImplemented
        if self.lane_ids != other.lane_ids:
            return False
        return all(
            _array_equal(getattr(self, n), getattr(other, n)) for n in self._DTYPES
        )

    __hash__ = None  # type: ignore[assignment]


def _array_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Wrap angles (rad) to ``[-pi, pi)`` (robust to the float edge where ``x % 2pi == 2pi``)."""
    w = np.remainder(np.asarray(a) + math.pi, 2.0 * math.pi) - math.pi
    return np.where(w >= math.pi, w - 2.0 * math.pi, w)


@dataclass(frozen=True, eq=False)
class Scenario:
    """One drive (or a window of one, or a variant of one), as an immutable value.

    Fields (``T`` steps of ``dt`` seconds, ``N`` agents):

    * ``ego``: float ``[T, 5]`` rear-axle state (x, y, yaw, vx, vy), local frame, SI.
    * ``timestamps``: float ``[T]`` seconds since the scenario start, strictly increasing.
    * ``history_steps``: index of the "current" step: steps ``[0, history_steps)`` are the past
      a planner may see at the start; simulation starts at ``history_steps``.
    * ``agents``: float ``[N, T, 5]`` box-centre states; ``agent_valid`` bool ``[N, T]``.
      Invalid entries are zeros (never extrapolated).
    * ``agent_types``: int8 ``[N]`` :class:`AgentType`; ``agent_sizes``: float ``[N, 2]``
      (length, width) metres; ``agent_ids``: dataset instance tokens.
    * ``route``: int ``[R]`` indices into ``map`` lanes, the lane sequence the logged ego drove.
    """

    id: str
    source: Source
    dt: float
    timestamps: np.ndarray
    history_steps: int
    ego: np.ndarray
    ego_vehicle: VehicleParams
    agent_ids: tuple[str, ...]
    agent_types: np.ndarray
    agent_sizes: np.ndarray
    agents: np.ndarray
    agent_valid: np.ndarray
    map: MapData
    route: np.ndarray
    tags: tuple[str, ...] = ()
    provenance: Provenance | None = None
    schema_version: int = SCHEMA_VERSION

    _DTYPES = {
        "timestamps": np.float64,
        "ego": np.float64,
        "agent_types": np.int8,
        "agent_sizes": np.float64,
        "agents": np.float64,
        "agent_valid": bool,
        "route": np.int64,
    }

    def __post_init__(self) -> None:
        for name, dtype in self._DTYPES.items():
            object.__setattr__(self, name, _frozen(getattr(self, name), dtype))
        object.__setattr__(self, "agent_ids", tuple(str(a) for a in self.agent_ids))
        object.__setattr__(self, "tags", tuple(str(t) for t in self.tags))
        n = len(self.agent_ids)
        if self.agents.size == 0:
            object.__setattr__(self, "agents", _frozen(np.zeros((n, len(self.timestamps), STATE_DIM)), np.float64))
            object.__setattr__(self, "agent_valid", _frozen(np.zeros((n, len(self.timestamps))), bool))
            object.__setattr__(self, "agent_sizes", _frozen(np.zeros((n, 2)), np.float64))

    # ------------------------------------------------------------------ shape helpers
    @property
    def num_steps(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def num_agents(self) -> int:
        return len(self.agent_ids)

    @property
    def duration(self) -> float:
        """Seconds from the first to the last step."""
        return float(self.timestamps[-1] - self.timestamps[0]) if self.num_steps else 0.0

    def replace(self, **changes: Any) -> "Scenario":
        """A new scenario with some fields changed (the value itself never changes)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ invariants
    def validate(self) -> "Scenario":
        """Check every invariant; raise :class:`ScenarioError` naming the first broken one.

        Returns ``self`` so that ``Scenario(...).validate()`` can be chained.
        """
        if self.schema_version != SCHEMA_VERSION:
            raise ScenarioError(f"{self.id}: schema_version {self.schema_version} != {SCHEMA_VERSION}")
        if not self.id:
            raise ScenarioError("scenario id is empty")
        T, N = self.num_steps, self.num_agents
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ScenarioError(f"{self.id}: dt must be positive, got {self.dt}")
        if T < 2:
            raise ScenarioError(f"{self.id}: needs at least 2 steps, got {T}")
        if not np.all(np.isfinite(self.timestamps)) or np.any(np.diff(self.timestamps) <= 0):
            raise ScenarioError(f"{self.id}: timestamps must be finite and strictly increasing")
        if not np.allclose(np.diff(self.timestamps), self.dt, atol=1e-3):
            raise ScenarioError(f"{self.id}: timestamps are not spaced by dt={self.dt}")
        if not 0 <= self.history_steps < T:
            raise ScenarioError(f"{self.id}: history_steps {self.history_steps} outside [0, {T})")
        if self.ego.shape != (T, STATE_DIM):
            raise ScenarioError(f"{self.id}: ego must be [{T}, {STATE_DIM}], got {self.ego.shape}")
        if not np.all(np.isfinite(self.ego)):
            raise ScenarioError(f"{self.id}: ego track has non-finite values")
        if not _is_wrapped(self.ego[:, YAW]):
            raise ScenarioError(f"{self.id}: ego yaw is not wrapped to [-pi, pi)")
        shapes = {
            "agents": (N, T, STATE_DIM),
            "agent_valid": (N, T),
            "agent_types": (N,),
            "agent_sizes": (N, 2),
        }
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ScenarioError(f"{self.id}: {name} must be {list(shape)}, got {list(getattr(self, name).shape)}")
        if len(set(self.agent_ids)) != N:
            raise ScenarioError(f"{self.id}: agent ids are not unique")
        if N:
            valid_states = self.agents[self.agent_valid]
            if not np.all(np.isfinite(valid_states)):
                raise ScenarioError(f"{self.id}: agent states have non-finite values where valid")
            if np.any(self.agents[~self.agent_valid] != 0):
                raise ScenarioError(f"{self.id}: agent states must be zero where the mask is false")
            if not _is_wrapped(valid_states[:, YAW]):
                raise ScenarioError(f"{self.id}: agent yaw is not wrapped to [-pi, pi)")
            if not np.all(np.isfinite(self.agent_sizes)) or np.any(self.agent_sizes <= 0):
                raise ScenarioError(f"{self.id}: agent sizes must be positive")
            known = {int(t) for t in AgentType}
            if not set(np.unique(self.agent_types).tolist()) <= known:
                raise ScenarioError(f"{self.id}: unknown agent type in {np.unique(self.agent_types)}")
        v = self.ego_vehicle
        if min(v.length, v.width, v.wheelbase) <= 0:
            raise ScenarioError(f"{self.id}: ego vehicle sizes must be positive")
        self.map.validate()
        if self.route.ndim != 1 or (
            self.route.size and (self.route.min() < 0 or self.route.max() >= self.map.num_lanes)
        ):
            raise ScenarioError(f"{self.id}: route indices must index map lanes")
        if self.provenance is not None and self.provenance.parent_id == self.id:
            raise ScenarioError(f"{self.id}: a variant cannot be its own parent")
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scenario):
            return NotImplemented
        plain = ("id", "source", "dt", "history_steps", "ego_vehicle", "agent_ids", "tags",
                 "provenance", "schema_version", "map")
        if any(getattr(self, n) != getattr(other, n) for n in plain):
            return False
        return all(_array_equal(getattr(self, n), getattr(other, n)) for n in self._DTYPES)

    __hash__ = None  # type: ignore[assignment]


def _is_wrapped(yaw: np.ndarray) -> bool:
    return bool(np.all((yaw >= -math.pi) & (yaw < math.pi)))


def empty_map() -> MapData:
    """A map with no lanes and no drivable area."""
    z = np.zeros(1, dtype=np.int64)
    return MapData(
        lane_ids=(),
        lane_is_connector=np.zeros(0, bool),
        lane_speed_limit=np.zeros(0),
        lane_point_offsets=z,
        lane_points=np.zeros((0, 3)),
        lane_successor_offsets=z,
        lane_successors=np.zeros(0, np.int64),
        lane_polygon_offsets=z,
        lane_polygon_points=np.zeros((0, 2)),
        drivable_ring_offsets=z,
        drivable_ring_points=np.zeros((0, 2)),
    )


__all__ = [
    "SCHEMA_VERSION",
    "STATE_FIELDS",
    "STATE_DIM",
    "X",
    "Y",
    "YAW",
    "VX",
    "VY",
    "AgentType",
    "MapData",
    "Provenance",
    "Scenario",
    "ScenarioError",
    "Source",
    "VehicleParams",
    "empty_map",
    "wrap_angle",
]
