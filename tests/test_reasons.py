"""Reasons in words: every sub-score below 1 comes with the first time and the value that broke it.

Hand-built drives (the helpers of ``test_metrics_nuplan``), one broken sub-score each.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from closedloop.evaluator import reasons
from test_metrics_nuplan import DT, LIMIT, HALF_W, W, parked, score, single_lane, speed_profile, track


def _why(out: dict[str, float]) -> str:
    return reasons({k: torch.tensor([v]) for k, v in out.items()})[0]


def test_collision_names_the_object_and_the_time() -> None:
    out = score(track(40, v=8.0), [parked(40, 20.0, yaw=-math.pi)])
    assert _why(out).startswith("collision: at fault with a vehicle at t = 1.9 s (1 at-fault in total")


def test_drivable_area_gives_the_first_time() -> None:
    ego = track(30, v=5.0)
    ego[10:, 1] = -W / 2 - 0.5 + HALF_W
    assert "drivable area: a corner more than 0.3 m off the drivable area at t = 1.0 s" in _why(score(ego, map=single_lane()))


def test_driving_direction_gives_the_distance_and_the_time() -> None:
    ego = speed_profile([-6.0] * 21 + [0.0] * 9, x0=60.0)  # 2 s reversing at 6 m/s
    why = _why(score(ego))
    assert "driving direction: 6.6 m against the lane direction within 1.1 s (>= 2 m) at t = 1.2 s" in why


def test_progress_gives_metres_and_the_ratio() -> None:
    out = score(track(101, x0=20.0, v=1.2), ego_log=track(101, x0=20.0, v=8.0))
    assert "making progress: 12.0 m along the expert route vs the expert's 80.0 m (15 %) < 20 %" in _why(out)
    out = score(track(101, x0=20.0, v=4.0), ego_log=track(101, x0=20.0, v=8.0))
    assert "progress: 40.0 m along the expert route vs the expert's 80.0 m (50 %)" in _why(out)


def test_ttc_gives_the_time() -> None:
    ego = np.zeros((12, 5))
    ego[0, 0], ego[:2, 3] = -1.0, 10.0
    out = score(ego, [parked(12, 3.334 + 8.5 + 2.25)], history=1)
    assert out["ttc"] == 0.0 and "time to collision: <= 0.95 s at t = 0.1 s" in _why(out)


def test_speed_limit_gives_the_first_time_and_the_largest_excess() -> None:
    out = score(speed_profile([LIMIT] * 20 + [LIMIT + 2.23] * 30 + [LIMIT] * 101))
    assert out["speed_limit_time"] == pytest_approx(2.0) and out["speed_limit_over_mps"] == pytest_approx(2.23)
    assert "speed limit: over the limit at t = " in _why(out) and "by up to 2.2 m/s (score 0.80)" in _why(out)


def test_comfort_names_quantity_value_bound_and_time() -> None:
    T = 30
    out = score(track(T, v=20.0, a=-4.5), accel=[np.tile([-4.5, 0.0], (T, 1))])
    assert out["comfort_lon_accel_value"] == pytest_approx(-4.5) and out["comfort_lon_accel_time"] == 0.0
    assert math.isnan(out["comfort_lon_jerk_value"]) and math.isnan(out["comfort_lon_jerk_time"])
    assert _why(out).endswith("; comfort: longitudinal acceleration -4.50 m/s² < -4.05 at t = 0.0 s")  # 20 m/s: speeding too
    t = np.arange(T) * DT
    ego = speed_profile([3.0] * T)
    ego[:, 2] = (t + math.pi) % (2 * math.pi) - math.pi
    assert _why(score(ego, yaw_rate=[np.ones(T)])) == "comfort: yaw rate 1.00 rad/s > 0.95 at t = 0.0 s"


def test_a_clean_drive_has_no_reasons() -> None:
    assert _why(score(track(40, v=5.0))) == ""


def pytest_approx(x: float):  # type: ignore[no-untyped-def]
    import pytest

    return pytest.approx(x, abs=1e-3)
