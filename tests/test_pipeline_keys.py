"""Work keyed by what it was made from: stable digests and manifests (``av.keys``), an eval run
that resumes an interrupted planner from its last finished batch with identical results, and
``av pipeline`` redoing exactly the stages whose inputs changed."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

import closedloop.runner as runner
from av.cli.main import main
from av.keys import Manifest, digest, needs_work, path_digests, stat_digest, tree_digest
from closedloop.runner import EvalConfig, keep_runs, read_results, read_summary, run_eval
from scenarios.store import write_store

from conftest import build_scenario

STAGES = ("data", "import", "eval", "variants")
ARGS = ["--drives", "1", "--planners", "constant_velocity", "--variants-per-scenario", "1", "--no-safety",
        "--adversarial-budget", "0", "--pictures", "0", "--worst", "0", "--no-learned"]


def test_digests_are_stable_and_content_keyed(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class S:
        a: float = 1.0
        b: tuple[int, ...] = (1, 2)

    assert digest({"x": 1, "y": [1, 2]}) == digest({"y": (1, 2), "x": 1})
    assert digest(S()) == digest({"b": [1, 2], "a": 1.0}) != digest(S(a=1.5))
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f.bin").write_bytes(b"abc")
    (d / ".tmp-partial").write_bytes(b"ignored")
    first, stat = tree_digest(d), stat_digest(d)
    os.utime(d / "sub" / "f.bin", ns=(1, 1))
    assert tree_digest(d) == first and stat_digest(d) != stat  # content vs. times
    (d / "sub" / "f.bin").write_bytes(b"abd")
    assert tree_digest(d) != first

    @dataclasses.dataclass(frozen=True)
    class Model:
        checkpoint: str
        mode: str = "log"

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights 1")
    first = path_digests(Model(str(ckpt)))
    ckpt.write_bytes(b"weights 2")
    assert set(first) == {"checkpoint"} and path_digests(Model(str(ckpt))) != first  # same path, new file

    path = tmp_path / "m.json"
    assert needs_work(path, {"k": 1}) == (True, False)
    Manifest.of({"k": 1}).write(path)
    assert needs_work(path, {"k": 1}) == (True, True)  # same inputs, unfinished: resume
    assert needs_work(path, {"k": 2}) == (True, False)  # other inputs: start over
    Manifest.of({"k": 1}, complete=True).write(path)
    assert needs_work(path, {"k": 1}) == (False, False)
    path.write_text("{not json")
    assert needs_work(path, {"k": 1}) == (True, False)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "store"
    write_store(path, [build_scenario(id=f"res-{i}", num_steps=30, ego_speed=3.0 + 2 * i) for i in range(3)])
    return path


def test_an_interrupted_eval_resumes_from_its_last_batch_with_identical_results(
    three: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = EvalConfig(store=three, planner="constant_velocity", agents="idm", out=tmp_path / "ref", batch_size=1, worst=1,
                     progress=False, report=False, threads=1, resume=True)
    reference = run_eval(cfg)
    run = tmp_path / "run"
    calls: list[int] = []
    evaluate = runner.evaluate

    def interrupted(rollout, **kw):  # the second batch is interrupted
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(rollout, **kw)

    monkeypatch.setattr(runner, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_eval(dataclasses.replace(cfg, out=run))
    assert [p.name for p in (run / "partial").rglob("*.pt")] == ["batch-00000.pt"]
    assert not (run / "results.parquet").exists()

    calls.clear()
    monkeypatch.setattr(runner, "evaluate", lambda rollout, **kw: calls.append(1) or evaluate(rollout, **kw))
    table = run_eval(dataclasses.replace(cfg, out=run))
    assert len(calls) == 2  # batches 1 and 2; batch 0 was loaded
    assert table.equals(reference) and read_results(run).equals(read_results(tmp_path / "ref"))
    ours, theirs = ([{k: v for k, v in r.items() if k != "latency_ms"} for r in read_summary(d)["rows"]]
                    for d in (run, tmp_path / "ref"))  # all but the measured planning time
    assert ours == theirs and ours[0]["worst"]  # identical summary, worst scenario included
    assert not (run / "partial").exists()

    # A partial run of other settings is not resumed: its batches are thrown away.
    monkeypatch.setattr(runner, "evaluate", interrupted)
    calls.clear()
    other = dataclasses.replace(cfg, out=run, worst=0, planner_settings={"horizon_steps": 50})
    with pytest.raises(KeyboardInterrupt):
        run_eval(other)
    monkeypatch.setattr(runner, "evaluate", lambda rollout, **kw: calls.append(1) or evaluate(rollout, **kw))
    calls.clear()
    run_eval(dataclasses.replace(other, planner_settings={"horizon_steps": 60}))
    assert len(calls) == 3
    assert not (run / "partial").exists()  # the stale partial run was removed


def _stage_lines(err: str) -> dict[str, str]:
    lines = [line for line in err.splitlines() if line.startswith("stage ")]
    return {line.split(":")[0].split()[1]: line.split(": ", 1)[1] for line in lines}


def test_pipeline_redoes_exactly_the_stages_whose_inputs_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    lines = _stage_lines(capsys.readouterr().err)
    assert lines == {s: "running (new)" for s in STAGES}
    manifests = {s: (out / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}
    store = (out / "store" / "manifest.json").stat().st_mtime_ns

    # A planner setting: evaluation is redone, nothing else. The run is interrupted after the
    # first agent mode, and the next run resumes it.
    evaluate, calls = runner.evaluate, []

    def interrupted(rollout, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(rollout, **kw)

    monkeypatch.setattr(runner, "evaluate", interrupted)
    arg = ["--planner-arg", "constant_velocity:horizon_steps=40"]
    assert main(["pipeline", "--out", str(out), *ARGS, *arg]) == 130
    lines = _stage_lines(capsys.readouterr().err)
    assert lines["eval"] == "running (inputs changed: runs)"
    assert all(lines[s] == "up to date, skipped" for s in ("data", "import")), lines
    monkeypatch.setattr(runner, "evaluate", lambda rollout, **kw: calls.append(1) or evaluate(rollout, **kw))
    calls.clear()
    assert main(["pipeline", "--out", str(out), *ARGS, *arg]) == 0
    lines = _stage_lines(capsys.readouterr().err)
    assert lines["eval"] == "running (resuming an interrupted run)" and len(calls) == 1  # the idm agent mode
    assert all(lines[s] == "up to date, skipped" for s in STAGES if s != "eval"), lines
    assert (out / "store" / "manifest.json").stat().st_mtime_ns == store
    for s in STAGES:
        changed = (out / "stages" / f"{s}.json").stat().st_mtime_ns != manifests[s]
        assert changed == (s == "eval"), s
    recorded = json.loads((out / "stages" / "eval.json").read_text())
    assert recorded["complete"] and recorded["inputs"]["runs"][0]["planner_settings"] == {"horizon_steps": 40}
    rows = read_summary(out / "eval")["rows"]
    assert [r["agents"] for r in rows] == ["idm", "log"]
    assert all(r["inputs"]["planner_settings"] == {"horizon_steps": 40} for r in rows)
    before = read_results(out / "eval")

    # More drives: the data stages are redone, and every stage that reads the new store.
    assert main(["pipeline", "--out", str(out), *ARGS[2:], *arg, "--drives", "2"]) == 0
    lines = _stage_lines(capsys.readouterr().err)
    assert lines["data"] == "running (inputs changed: synth)"
    assert lines["import"] == "running (inputs changed: dataroot_digest)"
    assert lines["variants"] == "running (inputs changed: store_digest)"
    assert lines["eval"] == "running (inputs changed: runs, store_digest)"
    assert len(read_results(out / "eval")) > len(before)


def test_keep_runs_drops_results_of_other_inputs(three: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(store=three, planner="constant_velocity", out=tmp_path / "run", worst=0, progress=False,
                     report=False, threads=1)
    run_eval(cfg)
    run_eval(dataclasses.replace(cfg, agents="idm"))
    keys = {r["agents"]: r["key"] for r in read_summary(tmp_path / "run")["rows"]}
    assert keep_runs(tmp_path / "run", set(keys.values())) == []
    assert keep_runs(tmp_path / "run", {keys["idm"]}) == [("constant_velocity", "log")]
    assert [r["agents"] for r in read_summary(tmp_path / "run")["rows"]] == ["idm"]
    assert set(read_results(tmp_path / "run").column("agents")) == {"idm"}


@pytest.mark.parametrize(("args", "message"), [
    (["--drives", "0"], "--drives must be >= 1"),
    (["--finetune-iterations", "-1"], "--finetune-iterations must be >= 0"),
    (["--planners", "idm", "--planner-arg", "horizon_steps=x"], "--planners idm: setting horizon_steps: expected int"),
    (["--planners", "idm,nope"], "--planners nope: unknown planner 'nope'"),
    (["--planner-arg", "horizon_steps=60"], "with several planners write PLANNER:KEY=VALUE"),
])
def test_pipeline_bad_settings_are_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["pipeline", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("av: error:") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
