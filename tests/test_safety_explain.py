"""Explanations from a run's records: the student's gradient saliency over agents and lanes, the
evaluator's sub-scores over time, every vetoed plan with its monitors, pictures on the BEV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from av.cli.main import main
from av.features import encode
from av.nets import StudentNet
from av.nets.checkpoint import network_hparams
from av.observe import ObservationSpec, observe
from conftest import build_scenario
from scenarios.store import write_store
from safety.explain import saliency


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = StudentNet(ObservationSpec()).eval()
    path = tmp_path_factory.mktemp("ckpt") / "student.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"network": network_hparams(net)}}, path)
    return path


def test_saliency_is_where_the_output_depends_on_the_input() -> None:
    from av.batch import collate

    torch.manual_seed(0)
    net = StudentNet(ObservationSpec()).eval()
    batch = collate([build_scenario(num_steps=40)])
    obs = observe(batch, batch.history_steps, ObservationSpec())
    wa, wl = saliency(net, obs)
    f = encode(obs)
    assert wa.shape == f.agent_mask.shape and wl.shape == f.lane_mask.shape
    assert (wa[~f.agent_mask] == 0).all() and (wl[~f.lane_mask] == 0).all() and (wa >= 0).all()
    assert wa.max() > 0 and wl.max() > 0
    with torch.no_grad():
        base = net(*f.as_tuple())

    def moved(kind: str, slot: int) -> float:  # the output change when one item's features move
        x = getattr(f, kind).clone()
        x[0, slot] += 0.05
        names = ("ego", "agents", "agent_mask", "lanes", "lane_mask", "route", "route_mask")
        args = dict(zip(names, f.as_tuple(), strict=True))
        args[kind] = x
        return float((net(*args.values()) - base).abs().max().detach())

    top = int(wa[0].argmax())
    assert moved("agents", top) > 0
    unused = [i for i in range(wa.shape[1]) if f.agent_mask[0, i] and wa[0, i] == 0]
    assert all(moved("agents", i) == 0 for i in unused)  # zero saliency: the max-pool ignores it
    assert moved("lanes", int(wl[0].argmax())) > 0


def test_cli_explains_vetoed_plans_and_lost_points(student_ckpt: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    write_store(store, [build_scenario(id="hand-0", num_steps=40, ego_speed=6.0)])
    run = tmp_path / "run"
    assert main(["closedloop", "eval", "--store", str(store), "--planner", "student", "--planner-arg",
                 f"student:checkpoint={student_ckpt}", "--out", str(run), "--worst", "0", "--no-progress"]) == 0
    out = tmp_path / "explain"
    assert main(["safety", "explain", "--run", str(run), "--store", str(store), "--checkpoint", str(student_ckpt),
                 "--scenario", "hand-0", "--out", str(out)]) == 0
    rec = json.loads((out / "hand-0" / "explain.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    over = rec["scores_over_time"]
    assert len(over["time_s"]) == len(over["cls"]) > 1
    assert over["cls"][-1] == pytest.approx(rec["scores"]["cls"])  # the last cut is the whole drive
    assert rec["scores"]["cls"] == pytest.approx(summary["rows"][0]["cls"], abs=1e-6)  # the run's score, replayed
    assert rec["vetoed_plans"], "an untrained student is vetoed"
    for e in rec["vetoed_plans"]:
        assert e["vetoed_by"] and all(v["reason"] for v in e["vetoed_by"])
        assert e["attribution"]["agents"] or e["attribution"]["lanes"]
    assert rec["pictures"] and all((out / "hand-0" / p).stat().st_size > 10_000 for p in rec["pictures"])
    assert (out / "hand-0" / "scores.png").is_file()
    other = tmp_path / "other.ckpt"
    torch.manual_seed(1)
    net = StudentNet(ObservationSpec())
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"network": network_hparams(net)}}, other)
    capsys.readouterr()
    assert main(["safety", "explain", "--run", str(run), "--store", str(store), "--checkpoint", str(other),
                 "--out", str(out)]) == 2
    assert "not the checkpoint" in capsys.readouterr().err
    assert main(["safety", "explain", "--run", str(run), "--store", str(store), "--checkpoint", str(student_ckpt),
                 "--scenario", "nope", "--out", str(out)]) == 2
