"""The teacher's test-time search on real drives: more proposals never score worse, privileged
predictions follow the log only where agents do, labels fit the student's steps, and a bad
checkpoint is a one-line error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from av.batch import collate
from av.errors import AvError
from av.nets import TRAJECTORY_DT, TeacherConfig, TeacherNet
from av.nets.checkpoint import network_hparams
from av.observe import ObservationSpec, observe, privileged
from av.types import Scenario
from closedloop.planner import make_planner
from closedloop.planners.common import agents_on_path, build_path
from closedloop.planners.teacher import STEP, TeacherPlanner, TeacherSettings, make_labeller, prediction


def save_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    """``net`` in the checkpoint layout of :mod:`av.nets` (what Lightning writes)."""
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"network": network_hparams(net)}}, path)
    return path


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) small teacher network: its proposals are arbitrary, which is the point."""
    torch.manual_seed(0)
    net = TeacherNet(ObservationSpec(), TeacherConfig(d_model=32, layers=1, decoder_layers=1, ff=64, modes=6))
    return save_checkpoint(net.eval(), tmp_path_factory.mktemp("teacher") / "teacher.ckpt")


@pytest.fixture(scope="module")
def states(real_scenarios: list[Scenario]):
    """Observations and logged futures of three real drives at three log steps each (B = 9)."""
    spec = ObservationSpec()
    batch = collate([s for s in real_scenarios[:3] for _ in range(3)])
    t = batch.history_steps + torch.tensor([0, 40, 80] * 3)
    return observe(batch, t, spec), privileged(batch, t, spec)


def _best_score(planner: TeacherPlanner, obs, priv) -> torch.Tensor:
    _, scores, best = planner.search(obs, priv)
    return scores[torch.arange(len(best)), best]


def test_more_proposals_never_score_worse(states, teacher_ckpt: Path) -> None:
    obs, priv = states
    base = TeacherSettings(checkpoint=str(teacher_ckpt), search_steps=20)
    small = TeacherPlanner(replace(base, network_proposals=0))
    large = TeacherPlanner(replace(base, network_proposals=6))
    p_small, s_small, _ = small.search(obs, priv)
    p_large, s_large, _ = large.search(obs, priv)
    K = p_small.shape[1]
    assert p_large.shape[1] == K + 6 and p_large.shape[2:] == (80, 3)
    # The shared proposals score the same (no score depends on the other candidates)...
    torch.testing.assert_close(p_large[:, :K], p_small)
    torch.testing.assert_close(s_large[:, :K], s_small)
    # ...so the best of the superset is at least as good, state by state.
    best_small, best_large = _best_score(small, obs, priv), _best_score(large, obs, priv)
    assert bool((best_large >= best_small - 1e-9).all())
    assert bool(((s_large >= 0) & (s_large <= 1)).all())


def test_prediction_follows_the_log_only_where_the_agent_does(states) -> None:
    obs, priv = states
    agents = agents_on_path(obs, build_path(obs, TeacherPlanner().rules.params))
    steps = 30
    log = prediction(agents, priv, "auto", steps)
    # On logged states every replayed agent follows its logged future.
    follows = priv.agents_future_valid[:, :, 0] & agents.valid
    b, n = follows.nonzero()[0].tolist()
    torch.testing.assert_close(log.state[b, n], priv.agents_future[b, n, :steps].to(log.state.dtype))
    # An agent moved 3 m off its log (as a reactive agent may be) is predicted at constant velocity.
    moved = replace(agents, state=agents.state.clone())
    moved.state[b, n, 0] += 3.0
    cv = prediction(moved, priv, "auto", steps)
    expect = moved.state[b, n, :2] + STEP * torch.arange(1, steps + 1, dtype=moved.state.dtype)[:, None] * moved.state[b, n, 3:5]
    torch.testing.assert_close(cv.state[b, n, :, :2], expect)
    assert prediction(agents, priv, "constant_velocity", steps) is None


def test_labels_fit_the_students_steps(real_scenarios: list[Scenario], teacher_ckpt: Path) -> None:
    labeller = make_labeller(teacher_ckpt, network_proposals=2, search_steps=10)
    batch = collate(real_scenarios[:2])
    labels = labeller(batch, batch.history_steps)
    H = int(round(8.0 / TRAJECTORY_DT))
    labels.validate(2, H)
    assert labeller.settings["teacher_sha256"] and "checkpoint" not in labeller.settings["settings"]
    for i in range(2):  # the plan is a best-scoring proposal
        k = [j for j in range(labels.proposals.shape[1]) if torch.equal(labels.plan[i], labels.proposals[i, j])]
        assert k and float(labels.scores[i, k[0]]) >= float(labels.scores[i].max()) - 1e-6


def test_bad_teacher_checkpoints_are_one_line_errors(tmp_path: Path, teacher_ckpt: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    for path, words in ((tmp_path / "missing.ckpt", "no such checkpoint"), (bad, "not a readable checkpoint")):
        with pytest.raises(AvError) as e:
            make_planner("teacher", checkpoint=str(path))
        assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AvError, match="network_proposals must be >= 0"):
        make_planner("teacher", network_proposals="-1")
    assert make_planner("teacher", checkpoint=str(teacher_ckpt)).privileged
