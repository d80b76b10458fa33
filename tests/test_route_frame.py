"""The student's route frame: decoding along the observed route and route coordinates, on
hand-built straight and circular routes (exact answers known)."""

from __future__ import annotations

import math

import torch

from av.nets.route_frame import ACCEL_LIMIT, FOLLOW, Leaders, decode_along_route, no_leaders, route_coordinates

R, SPACING, H, DT = 20, 5.0, 16, 0.5
FREE = no_leaders(1, H, torch.zeros(1))


def straight(y: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    route = torch.zeros(1, R, 4)
    route[0, :, 0] = torch.arange(R) * SPACING
    route[0, :, 1] = y
    route[0, :, 2] = 1.0
    return route, torch.ones(1, R, dtype=torch.bool)


def circle(radius: float = 50.0) -> tuple[torch.Tensor, torch.Tensor]:
    th = torch.arange(R) * SPACING / radius
    route = torch.stack([radius * torch.sin(th), radius * (1 - torch.cos(th)), torch.cos(th), torch.sin(th)], -1)
    return route[None], torch.ones(1, R, dtype=torch.bool)


def ego(speed: float) -> torch.Tensor:
    e = torch.zeros(1, 8)
    e[0, 0] = speed
    return e


def test_zero_output_drives_the_route_at_constant_speed() -> None:
    route, mask = straight()
    poses = decode_along_route(torch.zeros(1, 2 * H + 1), ego(10.0), route, mask, H, DT, FREE)
    t = torch.arange(1, H + 1) * DT
    torch.testing.assert_close(poses[0, :, 0], 10.0 * t, atol=1e-3, rtol=0)
    assert poses[0, :, 1:].abs().max() < 1e-5
    route, mask = circle(50.0)
    poses = decode_along_route(torch.zeros(1, 2 * H + 1), ego(10.0), route, mask, H, DT, FREE)
    radius = (poses[0, :, 0] ** 2 + (poses[0, :, 1] - 50.0) ** 2).sqrt()
    assert (radius - 50.0).abs().max() < 0.1  # on the circle (chords 5 m apart)
    torch.testing.assert_close(poses[0, :, 2], 10.0 * t / 50.0, atol=0.02, rtol=0)  # yaw follows the road


def test_an_offset_ego_merges_back_and_past_the_route_end_it_goes_straight() -> None:
    route, mask = straight(y=-1.0)  # the ego is 1 m left of the route
    poses = decode_along_route(torch.zeros(1, 2 * H + 1), ego(10.0), route, mask, H, DT, FREE)
    lateral = poses[0, :, 1] + 1.0
    assert 0 < lateral[0] < 1.0 and lateral[-1] < 0.01 and bool((lateral[1:] <= lateral[:-1]).all())
    short = mask.clone()
    short[0, 3:] = False  # 10 m of route: the rest extends straight ahead
    poses = decode_along_route(torch.zeros(1, 2 * H + 1), ego(10.0), route * short[..., None], short, H, DT, FREE)
    assert abs(float(poses[0, -1, 0]) - 80.0) < 1e-3
    none = torch.zeros_like(mask)  # no route at all: the ego's x axis
    poses = decode_along_route(torch.zeros(1, 2 * H + 1), ego(5.0), torch.zeros_like(route), none, H, DT, FREE)
    assert abs(float(poses[0, -1, 0]) - 40.0) < 1e-3 and poses[0, :, 1].abs().max() < 1e-6


def test_braking_stops_without_reversing() -> None:
    route, mask = straight()
    raw = torch.zeros(1, H, 2)
    raw[..., 0] = -20.0  # full braking
    poses = decode_along_route(torch.cat([raw.flatten(1), torch.zeros(1, 1)], 1), ego(10.0), route, mask, H, DT, FREE)
    x = poses[0, :, 0]
    assert bool((x[1:] >= x[:-1] - 1e-6).all())  # never backwards
    # between the stops at -ACCEL_LIMIT and at -ACCEL_LIMIT plus the prior's free-road acceleration
    assert 10.0 ** 2 / (2 * ACCEL_LIMIT) - 1e-3 < float(x[-1]) < 10.0 ** 2 / (2 * (ACCEL_LIMIT - FOLLOW.accel))
    assert float(x[-1] - x[-2]) == 0.0  # stopped for good: no creeping
    route, mask = straight(y=-1.0)  # standing still 1 m left of the route: the plan stays put
    raw[..., 1] = 1.0  # even asking for a lateral offset
    poses = decode_along_route(torch.cat([raw.flatten(1), torch.zeros(1, 1)], 1), ego(0.0), route, mask, H, DT, FREE)
    assert poses[0, :, :2].abs().max() < 1e-4


def test_the_car_following_prior_keeps_a_gap_to_leaders_in_the_path() -> None:
    """Zero outputs behind a stopped car 30 m ahead: the ego stops short of it; behind a car at
    its own speed, far beyond the desired gap: it nearly keeps its speed; a car off the path changes nothing."""
    route, mask = straight()
    zero = torch.zeros(1, 2 * H + 1)

    def drive(gap: float, speed: float, weight: float) -> torch.Tensor:
        leaders = Leaders(torch.tensor([[gap]]), torch.tensor([[speed]]), torch.full((1, H, 1), weight))
        return decode_along_route(zero, ego(10.0), route, mask, H, DT, leaders)[0, :, 0]

    stopped = drive(30.0, 0.0, 1.0)
    assert bool((stopped[1:] >= stopped[:-1] - 1e-6).all())
    assert 30.0 - FOLLOW.min_gap - 1.0 < float(stopped[-1]) < 30.0  # stops about s0 behind it, never into it
    assert float(stopped[-1] - stopped[-2]) < 0.1  # nearly at rest, settling towards s0
    t = torch.arange(1, H + 1) * DT
    following = drive(60.0, 10.0, 1.0)  # 6 s behind a car at its speed: IDM's interaction is small
    assert 0.95 * 80.0 < float(following[-1]) <= 80.0
    torch.testing.assert_close(drive(30.0, 0.0, 0.0), 10.0 * t, atol=1e-3, rtol=0)  # not in the path


def test_route_coordinates_on_hand_built_routes() -> None:
    route, mask = straight()
    points = torch.tensor([[[10.0, 2.0], [-5.0, -1.0], [200.0, 0.5]]])
    s, d, u = route_coordinates(points, route, mask)
    torch.testing.assert_close(s, torch.tensor([[10.0, -5.0, 200.0]]))
    torch.testing.assert_close(d, torch.tensor([[2.0, -1.0, 0.5]]))
    torch.testing.assert_close(u, torch.tensor([[[1.0, 0.0]] * 3]))
    route, mask = circle(50.0)
    th = 0.6
    inside = torch.tensor([[[45.0 * math.sin(th), 50.0 - 45.0 * math.cos(th)]]])  # 5 m left of the road
    s, d, u = route_coordinates(inside, route, mask)
    assert abs(float(s) - 50.0 * th) < 0.3 and abs(float(d) - 5.0) < 0.1  # chords, not the arc
    torch.testing.assert_close(u[0, 0], torch.tensor([math.cos(th), math.sin(th)]), atol=0.06, rtol=0)
