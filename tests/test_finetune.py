"""Closed-loop fine-tuning (DAgger): a killed run resumes to the same result, Ray shards give the
same values as in-process, and a Ray worker that dies mid-shard is retried without losing or
duplicating results. Tiny student, a rule-proposal teacher with a small search, short hand-made
drives; one local Ray session for the module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from av.nets import StudentConfig, StudentNet, network_hparams
from av.observe import ObservationSpec
from closedloop import finetune as ft
from closedloop.distributed import RayBackend, map_shards
from conftest import build_scenario
from scenarios.store import write_store

SPEC = ObservationSpec(history_steps=10, future_steps=40, num_agents=4, num_lanes=4, lane_points=8, route_points=30)
TEACHER = {"speed_fractions": (0.6, 1.0), "lateral_offsets": (0.0,), "search_steps": 10}
RAY_JOBS = 2  # the log-agent shards: one per Ray worker
CONFIG = ft.FinetuneConfig(iterations=1, beta=0.5, epochs=1, batch_size=16, label_stride=5, plan_every=5,
                           eval_plan_every=5, shard_size=2, hardest=1, per_failure=1, teacher_search_steps=10,
                           progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store of three short drives (scene-c is held out) and an untrained tiny student."""
    root = tmp_path_factory.mktemp("finetune")
    store = root / "store"
    write_store(store, [build_scenario(n, num_steps=30, ego_speed=s) for n, s in (("a", 4.0), ("b", 6.0), ("c", 8.0))])
    torch.manual_seed(0)
    net = StudentNet(SPEC, StudentConfig(width=8, hidden=16, horizon=4))
    ckpt = root / "student.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
                "hyper_parameters": {"network": network_hparams(net)}}, ckpt)
    return store, ckpt


@pytest.fixture(scope="module")
def ray_backend():
    """One local Ray cluster (2 CPUs) for the module's Ray tests, shut down after them."""
    import ray.cloudpickle

    import test_finetune

    ray.cloudpickle.register_pickle_by_value(test_finetune)  # the workers cannot import the tests
    backend = RayBackend("local", num_cpus=2, max_retries=2).start()
    yield backend
    backend.close()


def _jobs(scenarios, student: Path) -> list[ft.ShardJob]:
    return [ft.ShardJob(tuple(scenarios[i:i + 2]), agents, str(student), {**TEACHER}, 0.5, 7, True, 5, 5)
            for agents in ("log", "idm") for i in range(0, len(scenarios), 2)]


def _same(a: list[ft.ShardResult], b: list[ft.ShardResult]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.scores == y.scores and x.teacher_driven == y.teacher_driven and x.state_ids == y.state_ids
        assert x.states.keys() == y.states.keys()
        for k in x.states:
            assert torch.equal(x.states[k], y.states[k]), k


@pytest.fixture(scope="module")
def in_process(inputs) -> tuple[list[ft.ShardJob], list[ft.ShardResult]]:
    from scenarios.store import read_store

    store, student = inputs
    jobs = _jobs(read_store(store), student)
    return jobs, map_shards(ft.run_shard, jobs)


def test_shards_relabel_the_visited_states_with_the_teacher(in_process) -> None:
    jobs, results = in_process
    assert any(r.teacher_driven for r in results) and not all(
        len(r.teacher_driven) == len(j.scenarios) for j, r in zip(jobs, results))
    for job, r in zip(jobs, results):
        assert set(r.scores) == {s.id for s in job.scenarios}
        n = len(r.state_ids)
        assert n > 0 and all(len(v) == n for v in r.states.values())
        assert r.states["plan"].shape == (n, 4, 3) and torch.isfinite(r.states["plan"]).all()
        assert {a for _, a, _ in r.state_ids} == {job.agents}


def test_ray_shards_equal_in_process(in_process, ray_backend) -> None:
    jobs, expected = in_process
    _same(map_shards(ft.run_shard, jobs[:RAY_JOBS], ray_backend), expected[:RAY_JOBS])


def crash_once(job: ft.ShardJob) -> ft.ShardResult:
    """``run_shard``, except that the worker process dies on the first attempt of the first shard
    (marker file next to the student's checkpoint)."""
    marker = Path(job.student).parent / f"crashed-{job.agents}-{job.scenarios[0].id}"
    if job.scenarios[0].id == "a" and job.agents == "log" and not marker.exists():
        marker.write_text("1")
        os._exit(1)
    return ft.run_shard(job)


def test_a_worker_that_dies_is_retried_without_losing_or_repeating_results(in_process, ray_backend, inputs) -> None:
    jobs, expected = in_process
    marker = inputs[1].parent / "crashed-log-a"
    assert not marker.exists()
    _same(map_shards(crash_once, jobs[:RAY_JOBS], ray_backend), expected[:RAY_JOBS])
    assert marker.exists()  # the first attempt did die


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_result(inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, student = inputs
    straight = ft.finetune([str(store)], str(student), dict(TEACHER), tmp_path / "straight", CONFIG)
    assert (tmp_path / "straight" / "iter-001" / "student.ckpt").is_file()
    assert (tmp_path / "straight" / "report.html").is_file() and (tmp_path / "straight" / "scores.png").is_file()
    it = straight["iterations"][1]
    assert it["states"] > 0 and it["aggregated_states"] == it["states"] and it["beta"] == 0.5
    # The logged states of the two training drives (30 steps, history 10, stride 5: t = 10..25) join.
    assert it["logged_states"] == 2 * 4 and it["started_from"] == 0
    assert "Failures fixed" in (tmp_path / "straight" / "report.html").read_text()
    assert all(set(f) >= {"scenario_id", "cls_before", "cls_after", "gifs"} for f in straight["fixed_failures"])
    assert straight["heldout_scenes"] == ["scene-c"] and straight["train_scenarios"] == 2
    assert straight["best_iteration"] in (0, 1) and Path(straight["best_student"]).is_file()

    # Killed while evaluating iteration 1 (its states and its checkpoint are written).
    real = ft.evaluate_student

    def dies_in_iteration_1(sets, student_path, config, backend):
        if "iter-001.partial" in student_path:
            raise _Killed()
        return real(sets, student_path, config, backend)

    monkeypatch.setattr(ft, "evaluate_student", dies_in_iteration_1)
    with pytest.raises(_Killed):
        ft.finetune([str(store)], str(student), dict(TEACHER), tmp_path / "resumed", CONFIG)
    assert (tmp_path / "resumed" / "iter-000").is_dir()
    assert (tmp_path / "resumed" / "iter-001.partial" / "states.pt").is_file()
    monkeypatch.setattr(ft, "evaluate_student", real)
    resumed = ft.finetune([str(store)], str(student), dict(TEACHER), tmp_path / "resumed", CONFIG)

    def weights(run: str) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / run / "iter-001" / "student.ckpt", weights_only=True)["state_dict"]

    a, b = weights("straight"), weights("resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for run in ("straight", "resumed"):
        assert not (tmp_path / run / "iter-001.partial").exists()
    assert json.loads((tmp_path / "straight" / "iter-001" / "eval.json").read_text()) == \
        json.loads((tmp_path / "resumed" / "iter-001" / "eval.json").read_text())
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight["iterations"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["iterations"]]


def test_cli_refuses_a_run_with_other_settings_in_one_line(inputs, tmp_path: Path, capsys) -> None:
    from av.cli.main import main

    store, student = inputs
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"schema_version": 0}))
    args = ["closedloop", "train", "--student", str(student), "--store", str(store), "--out", str(run),
            "--teacher-arg", "search_steps=10", "--no-progress"]
    assert main(args) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args[:-1], "--beta", "2"]) == 2
    assert "--beta" in capsys.readouterr().err


def test_fixed_failures_are_the_rollouts_that_failed_first_and_pass_last() -> None:
    def scores(**cls: float) -> dict:
        return {"train": {"log": {k: {"cls": v} for k, v in cls.items()}}}

    fixed = ft.fixed_failures(scores(a=0.0, b=0.2, c=0.9, d=0.1), scores(a=0.6, b=1.0, c=0.1, d=0.3), 0.5)
    assert [(f["scenario_id"], f["cls_before"], f["cls_after"]) for f in fixed] == [("b", 0.2, 1.0), ("a", 0.0, 0.6)]
    assert fixed[0]["set"] == "train" and fixed[0]["agents"] == "log"


def test_render_fixed_draws_before_and_after_once(inputs, tmp_path: Path) -> None:
    from scenarios.store import read_store

    store, student = inputs
    by_id = {s.id: s for s in read_store(store)}
    fixed = [{"set": "train", "agents": "idm", "scenario_id": "a", "cls_before": 0.0, "cls_after": 1.0}]
    out = ft.render_fixed(tmp_path, fixed, by_id, {0: str(student), 2: str(student)}, CONFIG)
    assert out[0]["gifs"] == ["fixed/a-idm-iter000.gif", "fixed/a-idm-iter002.gif"]
    for gif in out[0]["gifs"]:
        assert (tmp_path / gif).read_bytes()[:6] == b"GIF89a"
    when = (tmp_path / out[0]["gifs"][0]).stat().st_mtime_ns
    assert ft.render_fixed(tmp_path, fixed, by_id, {0: str(student), 2: str(student)}, CONFIG) == out
    assert (tmp_path / out[0]["gifs"][0]).stat().st_mtime_ns == when  # a resumed run does not redraw
