"""Teacher training and distillation with Lightning: resume equals an uninterrupted run, corrupt
checkpoints give one clear error, checkpoints load with weights_only, labels are cached under a
key of everything that produced them, the train/val split is by scene, distillation fits the
teacher's plans, and one short run of the real CLI (train teacher, then distill with the teacher's
search as the labeller). Tiny networks on hand-made scenarios; a few steps each."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from av.errors import AvError
from av.nets import StudentConfig, StudentNet, TeacherConfig, TeacherNet, load_network
from av.observe import ObservationSpec
from conftest import build_scenario
from distill.data import DataConfig, ScenarioDataModule, label_cache_key, sample_cache_key
from distill.labels import Labels, NetworkLabeller
from distill.config import DistillLossConfig
from distill.systems import DistillationSystem, OptimConfig, TeacherSystem
from distill.train import TrainerConfig, fit
from scenarios.store import write_store

SPEC = ObservationSpec(history_steps=10, future_steps=40, num_agents=4, num_lanes=4, lane_points=8, route_points=30)
TINY = TeacherConfig(d_model=16, layers=1, decoder_layers=1, heads=2, ff=32, modes=3, horizon=4)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three hand-made scenes (scene-a, scene-b, scene-c) at different speeds."""
    path = tmp_path_factory.mktemp("distill") / "store"
    write_store(path, [build_scenario(n, ego_speed=s) for n, s in (("a", 4.0), ("b", 6.0), ("c", 8.0))])
    return path


@pytest.fixture(autouse=True)
def sample_cache(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached samples live beside the test store (shared by this module's tests), never in ~/.cache."""
    monkeypatch.setenv("AV_CACHE", str(store.parent / "cache"))


def _data(store: Path, labeller=None, **kw) -> ScenarioDataModule:
    cfg = DataConfig(stores=(str(store),), stride=3, batch_size=8, **kw)
    return ScenarioDataModule(cfg, SPEC, TINY.horizon, labeller)


def _teacher_run(store: Path, out: Path, epochs: int, resume: bool = False, callbacks=()) -> Path:
    pl.seed_everything(3, verbose=False)
    system = TeacherSystem(TeacherNet(SPEC, TINY))
    cfg = TrainerConfig(max_epochs=epochs, seed=3, accelerator="cpu", devices="1", progress=False, resume=resume)
    return fit(system, _data(store), out, "teacher", cfg, callbacks)[0]


class _Crash(pl.Callback):
    """Kills the run when epoch ``at`` starts (the checkpoint of the epoch before is written)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.at:
            raise RuntimeError("simulated crash")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(store: Path, tmp_path: Path) -> None:
    straight = _weights(_teacher_run(store, tmp_path / "straight", epochs=3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _teacher_run(store, tmp_path / "killed", epochs=3, callbacks=[_Crash(at=2)])
    assert (tmp_path / "killed" / "checkpoints" / "teacher" / "last.ckpt").is_file()
    assert not (tmp_path / "killed" / "teacher.ckpt").exists()
    with pytest.raises(AvError, match="--resume"):
        _teacher_run(store, tmp_path / "killed", epochs=3)
    resumed = _weights(_teacher_run(store, tmp_path / "killed", epochs=3, resume=True))
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    # Training moved the weights (the comparison is not between two untrained networks).
    pl.seed_everything(3, verbose=False)
    fresh = TeacherNet(SPEC, TINY).state_dict()
    assert any(not torch.equal(fresh[k], straight["net." + k]) for k in fresh)


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_network(store: Path, tmp_path: Path) -> None:
    path = _teacher_run(store, tmp_path / "run", epochs=1)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]["network"]
    assert hp["kind"] == "teacher" and hp["spec"] == SPEC.to_dict()
    net = load_network(path)
    assert isinstance(net, TeacherNet) and net.config == TINY and net.spec == SPEC
    data = _data(store)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    feats = [batch[k] for k in ("ego", "agents", "agent_mask", "lanes", "lane_mask", "route", "route_mask")]
    ref = TeacherNet(SPEC, TINY)
    ref.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    with torch.no_grad():
        assert torch.equal(net(*feats)[0], ref.eval()(*feats)[0])


def test_corrupted_checkpoint_is_one_clear_error(store: Path, tmp_path: Path) -> None:
    path = _teacher_run(store, tmp_path / "run", epochs=1)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:5000])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage):
        with pytest.raises(AvError, match="not a readable checkpoint"):
            load_network(bad)
    with pytest.raises(AvError, match="no such checkpoint"):
        load_network(tmp_path / "missing.ckpt")
    # Resuming from a corrupt last checkpoint.
    (tmp_path / "run" / "checkpoints" / "teacher" / "last.ckpt").write_bytes(b"\0" * 100)
    with pytest.raises(AvError, match="last.ckpt: not a readable checkpoint"):
        _teacher_run(store, tmp_path / "run", epochs=2, resume=True)


def test_cli_reports_a_corrupt_teacher_in_one_line(store: Path, tmp_path: Path, capsys) -> None:
    from av.cli.main import main

    bad = tmp_path / "teacher.ckpt"
    bad.write_bytes(b"PK\x03\x04 broken zip")
    rc = main(["distill", "--teacher", str(bad), "--store", str(store), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("av: error: ") and "teacher.ckpt" in err[0]


class _CountingLabeller:
    """The teacher network's labels, counting the calls."""

    def __init__(self, teacher: TeacherNet, sha: str) -> None:
        self.inner = NetworkLabeller(teacher, sha)
        self.settings = self.inner.settings
        self.calls = 0

    def __call__(self, batch, t) -> Labels:
        self.calls += 1
        return self.inner(batch, t)


def test_labels_are_cached_under_a_key_of_teacher_and_settings(store: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = TeacherNet(SPEC, TINY).eval()
    stores = (str(store),)
    samples = sample_cache_key(stores, SPEC, 4, 3, 32)
    assert samples == sample_cache_key(stores, SPEC, 4, 3, 32)
    other_samples = {
        sample_cache_key(stores, SPEC, 4, 2, 32), sample_cache_key(stores, SPEC, 6, 3, 32),
        sample_cache_key(stores, SPEC, 4, 3, 16),
        sample_cache_key(stores, ObservationSpec(history_steps=10, future_steps=40, num_agents=5), 4, 3, 32),
    }
    assert samples not in other_samples and len(other_samples) == 4
    key = label_cache_key({"labeller": "x", "teacher_sha256": "aa"}, samples)
    assert key == label_cache_key({"labeller": "x", "teacher_sha256": "aa"}, samples)
    others = {
        label_cache_key({"labeller": "x", "teacher_sha256": "bb"}, samples),
        label_cache_key({"labeller": "x", "teacher_sha256": "aa", "proposals": 8}, samples),
        *(label_cache_key({"labeller": "x", "teacher_sha256": "aa"}, k) for k in other_samples),
    }
    assert key not in others and len(others) == 6
    # The stores' contents are part of the key.
    changed = tmp_path / "changed"
    write_store(changed, [build_scenario(n, ego_speed=s) for n, s in (("a", 4.0), ("b", 6.0), ("c", 8.5))])
    assert sample_cache_key((str(changed),), SPEC, 4, 3, 32) != samples

    cache = tmp_path / "cache"
    first = _CountingLabeller(teacher, "aa")
    data = _data(store, first, cache=str(cache))
    data.setup()
    assert first.calls > 0 and data.label_cache_path is not None and data.label_cache_path.is_file()
    assert "plan" in data.train_set.tensors and data.train_set.tensors["proposals"].shape[1:] == (3, 4, 3)
    again = _CountingLabeller(teacher, "aa")
    data2 = _data(store, again, cache=str(cache))
    data2.setup()
    assert again.calls == 0 and data2.label_cache_path == data.label_cache_path
    assert torch.equal(data2.train_set.tensors["plan"], data.train_set.tensors["plan"])
    other = _CountingLabeller(teacher, "bb")  # another teacher checkpoint: labelled afresh
    data3 = _data(store, other, cache=str(cache))
    data3.setup()
    assert other.calls > 0 and data3.label_cache_path != data.label_cache_path
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["labels", "labels", "samples"]


def test_split_is_by_scene_with_an_explicit_held_out_list(store: Path) -> None:
    data = _data(store)
    data.setup()
    assert data.split.val_scenes == ["scene-c"] and data.split.train_scenes == ["scene-a", "scene-b"]
    assert data.split.train_samples == 2 * data.split.val_samples > 0
    # The held-out scene drives at 8 m/s; no training sample does.
    assert (data.val_set.tensors["ego"][:, 0] - 8.0).abs().max() < 1e-3
    assert (data.train_set.tensors["ego"][:, 0] < 7.0).all()
    chosen = _data(store, val_scenes=("scene-a",))
    chosen.setup()
    assert chosen.split.val_scenes == ["scene-a"]
    with pytest.raises(AvError, match="scene-z"):
        _data(store, val_scenes=("scene-z",)).setup()


class HalfSpeedLabeller:
    """A stand-in teacher whose plan drives the logged path at half the logged speed (a plan a
    route-following student can reach), proposing it beside the log itself."""

    settings = {"labeller": "half_speed_log"}

    def __call__(self, batch, t: torch.Tensor) -> Labels:
        from av.observe import privileged

        fut = privileged(batch, t, SPEC)
        steps = torch.arange(1, TINY.horizon + 1)
        half = (steps * 5 / 2).round().long() - 1  # log steps (0.1 s) at half of each 0.5 s output time
        full = steps * 5 - 1
        plan = fut.ego_future[:, half, :3].float()
        proposals = torch.stack([plan, fut.ego_future[:, full, :3].float()], 1)
        return Labels(plan=plan, proposals=proposals, scores=torch.tensor([[1.0, 0.0]]).expand(len(t), 2))


def test_distillation_pulls_the_student_to_the_teacher_plans(store: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = TeacherNet(SPEC, TINY).eval()
    data = _data(store, HalfSpeedLabeller(), cache=str(tmp_path / "cache"))
    data.setup()
    pl.seed_everything(0, verbose=False)
    student = StudentNet(SPEC, StudentConfig(width=8, hidden=16, horizon=4))
    only_plans = DistillLossConfig(plan_weight=1.0, log_weight=0.0)  # the log would pull the other way
    system = DistillationSystem(student, only_plans, optim=OptimConfig(lr=1e-2), teacher=teacher)
    val = data.train_set.tensors  # three hand-made scenes: fitting, not generalisation
    feats = [val[k] for k in ("ego", "agents", "agent_mask", "lanes", "lane_mask", "route", "route_mask")]

    full = val["target_valid"].all(1)  # states near a drive's end have no plan to reach

    def plan_error() -> float:
        with torch.no_grad():
            return float((student(*feats)[..., :2] - val["plan"][..., :2]).norm(dim=-1)[full].mean())

    before = plan_error()
    cfg = TrainerConfig(max_epochs=20, seed=0, accelerator="cpu", devices="1", progress=False)
    final, _ = fit(system, data, tmp_path / "run", "student", cfg)
    assert plan_error() < before / 3
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher") for k in ckpt["state_dict"])  # the teacher is not saved
    assert "teacher" not in ckpt["hyper_parameters"]
    assert isinstance(load_network(final), StudentNet)


def test_cli_trains_a_teacher_then_distills_a_student(store: Path, tmp_path: Path, capsys) -> None:
    import json

    from av.cli.main import main
    from av.nets import parameter_count

    run = tmp_path / "run"
    common = ["--store", str(store), "--out", str(run), "--max-epochs", "1", "--no-progress", "--accelerator", "cpu"]
    assert main(["train", "teacher", *common]) == 0
    # The default labeller: the teacher planner's search (closedloop), injected by the CLI.
    assert main(["distill", "--teacher", str(run / "teacher.ckpt"), "--cache", str(tmp_path / "cache"), *common]) == 0
    out = capsys.readouterr().out
    assert "teacher.ckpt" in out and "student.ckpt" in out and "held out scene-c" in out
    teacher, student = load_network(run / "teacher.ckpt"), load_network(run / "student.ckpt")
    summary = json.loads((run / "student.json").read_text())
    assert summary["params"] == parameter_count(student) and summary["teacher_params"] == parameter_count(teacher)
    assert summary["val_scenes"] == ["scene-c"] and summary["label_cache"].startswith(str(tmp_path / "cache"))
    assert summary["labeller"]["labeller"] == "teacher_search"
    assert summary["labeller"]["teacher_sha256"] == summary["teacher_sha256"]
    assert (run / "logs" / "student" / "metrics.csv").is_file()
    # A second run into the same directory without --resume is refused in one line.
    assert main(["train", "teacher", *common]) == 2
    assert "--resume" in capsys.readouterr().err
