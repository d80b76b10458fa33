"""The student planner in closed loop: it drives real scenarios through the simulator, the
evaluation records its parameter count and latency, and checkpoint mistakes are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from av.batch import collate
from av.cli.main import main
from av.errors import AvError
from av.nets import StudentNet, parameter_count
from av.nets.checkpoint import network_hparams
from av.observe import ObservationSpec
from av.types import Scenario
from closedloop.driver import rollout
from closedloop.evaluator import evaluate
from closedloop.planner import make_planner
from closedloop.sim import make_simulator
from scenarios.store import write_store


def save_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    """``net`` in the checkpoint layout of :mod:`av.nets` (what Lightning writes)."""
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"network": network_hparams(net)}}, path)
    return path


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(StudentNet(ObservationSpec()).eval(), tmp_path_factory.mktemp("ckpt") / "student.ckpt")


@pytest.fixture(scope="module")
def short(real_scenarios: list[Scenario]) -> list[Scenario]:
    """Two real drives cut to 5 s (3 s simulated), to keep closed-loop runs short."""

    def cut(s: Scenario) -> Scenario:
        T = s.history_steps + 31
        return s.replace(timestamps=s.timestamps[:T], ego=s.ego[:T], agents=s.agents[:, :T],
                         agent_valid=s.agent_valid[:, :T])

    return [cut(s) for s in real_scenarios[:2]]


@pytest.fixture(scope="module")
def short_store(short: list[Scenario], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("short") / "store"
    write_store(path, short)
    return path


def test_student_drives_real_scenarios_in_closed_loop(short: list[Scenario], student_ckpt: Path) -> None:
    planner = make_planner("student", checkpoint=str(student_ckpt))
    assert not planner.privileged and planner.observation_spec == ObservationSpec()
    batch = collate(short)
    for agents in ("log", "idm"):
        out = rollout(make_simulator("builtin", agents=agents), batch, planner, record_plans=True)
        assert torch.isfinite(out.ego[out.step_valid]).all()
        # The ego drives the student's plans: it leaves the logged track.
        sim_part = out.step_valid & (torch.arange(out.ego.shape[1])[None] > batch.history_steps[:, None])
        assert float((out.ego[..., :2] - batch.ego[..., :2]).norm(dim=-1)[sim_part].max()) > 0.5
        scores = evaluate(out)
        assert torch.isfinite(scores["cls"]).all()


def test_eval_records_params_and_latency(short_store: Path, student_ckpt: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["closedloop", "eval", "--store", str(short_store), "--planner", "student,constant_velocity",
                 "--planner-arg", f"student:checkpoint={student_ckpt}", "--out", str(out), "--worst", "0",
                 "--no-progress"]) == 0
    rows = {r["planner"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    net = make_planner("student", checkpoint=str(student_ckpt)).network
    assert rows["student"]["params"] == parameter_count(net) > 0
    assert rows["constant_velocity"]["params"] is None
    assert all(r["latency_ms"] > 0 for r in rows.values())
    page = (out / "report.html").read_text()
    assert "<th>params</th>" in page and "<th>latency_ms</th>" in page


def test_checkpoint_mistakes_are_one_line_errors(short_store: Path, student_ckpt: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(student_ckpt.read_bytes()[:1000])
    teacher_like = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, teacher_like)
    cases = [
        ({}, "no checkpoint"),
        ({"checkpoint": str(tmp_path / "missing.ckpt")}, "no such checkpoint"),
        ({"checkpoint": str(corrupt)}, "not a readable checkpoint"),
        ({"checkpoint": str(teacher_like)}, "no network hyperparameters"),
    ]
    for settings, words in cases:
        with pytest.raises(AvError) as e:
            make_planner("student", **settings)
        assert words in str(e.value) and "\n" not in str(e.value)
    # Through the CLI: exit 2 and one line on stderr, nothing written.
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["closedloop", "eval", "--store", str(short_store), "--planner", "student", "--checkpoint",
                 str(corrupt), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("av: error:") and "not a readable checkpoint" in err and len(err.splitlines()) == 1
    assert not (out / "summary.json").exists()
