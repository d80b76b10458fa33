"""Planner registry with settings: typed settings from strings and files, one contract over every
built-in planner, a user's planner plugged in by ``module:factory`` and by entry point, evaluated
from Python and from the CLI, and its settings recorded with the run."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pytest

from av.cli.main import main
from av.errors import AvError
from av.settings import build_settings, settings_dict, settings_help
from closedloop.planner import make_planner, planner_factory, planner_names, planner_settings, settings_type
from closedloop.runner import EvalConfig, read_summary, run_eval
from scenarios.store import write_store

from conftest import build_scenario

BUILTIN = ("log_replay", "constant_velocity", "idm", "pdm_closed")

USER_PLANNER = '''
from dataclasses import dataclass, field

import torch

from av.errors import AvError
from av.observation import Trajectory


@dataclass(frozen=True)
class CreepSettings:
    speed: float = field(default=2.0, metadata={"help": "constant forward speed, m/s"})
    horizon_steps: int = field(default=30, metadata={"help": "poses in a plan"})

    def validate(self):
        if self.speed < 0:
            raise AvError(f"creep: speed must be >= 0, got {self.speed}")
        return self


class Creep:
    name = "creep"
    privileged = False

    def __init__(self, settings: CreepSettings = CreepSettings()):
        self.settings = settings

    def plan(self, observation, privileged=None):
        B = observation.batch_size
        k = torch.arange(1, self.settings.horizon_steps + 1, dtype=torch.float32)
        x = (self.settings.speed * observation.dt * k).expand(B, -1)
        return Trajectory(poses=torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1), dt=observation.dt)


def make(settings: CreepSettings) -> Creep:
    return Creep(settings)


def not_a_planner():
    return 42
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module ``h5_user_planner`` outside the package, and an installed-looking
    distribution that declares its planner in the ``av.planners`` entry-point group."""
    (tmp_path / "h5_user_planner.py").write_text(textwrap.dedent(USER_PLANNER))
    dist = tmp_path / "h5_user_planner-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: h5-user-planner\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[av.planners]\ncreep = h5_user_planner:Creep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "h5_user_planner"
    sys.modules.pop("h5_user_planner", None)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "store"
    write_store(path, [build_scenario(id=f"reg-{i}", num_steps=30, ego_speed=4.0 + i) for i in range(2)])
    return path


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_planner_has_documented_checked_settings(name: str) -> None:
    cls = settings_type(planner_factory(name))
    assert cls is not None and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    default = planner_settings(name)
    assert default == cls() and callable(getattr(default, "validate", None))
    rows = settings_help(cls)
    assert rows and all(help_ for _, _, _, help_ in rows), rows
    assert make_planner(name).settings == default
    # Every setting round-trips through its string form (what --planner-arg passes).
    for key, _, value, _ in rows:
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert settings_dict(planner_settings(name, **{key: text})) == settings_dict(default), key


def test_settings_are_typed_from_strings_nested_and_checked() -> None:
    p = make_planner("pdm_closed", **{"horizon_steps": "60", "idm.accel": "2.5", "idm.max_jerk": "none",
                                      "proposals.lateral_offsets": "0,1.5"})
    assert (p.horizon_steps, p.params.accel, p.params.max_jerk) == (60, 2.5, None)
    assert p.config.lateral_offsets == (0.0, 1.5)
    assert make_planner("pdm_closed", idm={"accel": 2.5}).params.max_jerk == 3.0  # other defaults kept
    for bad, message in [({"horizon_steps": "6.5"}, "setting horizon_steps: expected int"),
                         ({"horizon_step": "6"}, "unknown setting horizon_step; known settings: idm.accel"),
                         ({"idm.headway": "-1"}, "idm.headway must be > 0"),
                         ({"idm": "3"}, "setting idm: expected a table")]:
        with pytest.raises(AvError, match=message):
            make_planner("idm", **bad)
    with pytest.raises(AvError, match="unknown planner 'nope'"):
        make_planner("nope")


def test_build_settings_types() -> None:
    @dataclasses.dataclass(frozen=True)
    class S:
        flag: bool = False
        mode: str = "a"
        path: Path | None = None
        sizes: tuple[int, ...] = (1,)

    s = build_settings(S, {"flag": "yes", "mode": "b", "path": "x/y", "sizes": "[2, 3]"})
    assert s == S(True, "b", Path("x/y"), (2, 3))
    assert build_settings(S, {"sizes": [4]}).sizes == (4,)
    with pytest.raises(AvError, match="setting flag: expected bool"):
        build_settings(S, {"flag": "maybe"})


def test_user_planner_by_module_path_and_entry_point(user_module: str) -> None:
    p = make_planner(f"{user_module}:make", speed="3.5")
    assert p.name == "creep" and p.settings.speed == 3.5
    assert "creep" in planner_names()
    assert make_planner("creep", horizon_steps=5).settings.horizon_steps == 5
    with pytest.raises(AvError, match="speed must be >= 0"):
        make_planner("creep", speed=-1)
    with pytest.raises(AvError, match="returned int"):
        make_planner(f"{user_module}:not_a_planner")
    with pytest.raises(AvError, match="takes no settings"):
        make_planner(f"{user_module}:not_a_planner", speed=1)
    with pytest.raises(AvError, match="cannot import 'no_such_module_h5'"):
        make_planner("no_such_module_h5:make")


def test_user_planner_evaluated_from_python_records_its_settings(user_module: str, tiny_store: Path,
                                                                 tmp_path: Path) -> None:
    cfg = EvalConfig(store=tiny_store, planner=f"{user_module}:make", out=tmp_path / "run",
                     planner_settings={"speed": 3.0}, worst=0, progress=False, report=False, threads=1)
    table = run_eval(cfg)
    assert len(table) == 2 and set(table.column("planner")) == {"creep"}
    row = read_summary(tmp_path / "run")["rows"][0]
    assert row["inputs"]["planner_settings"] == {"speed": 3.0, "horizon_steps": 30}
    assert row["inputs"]["simulator"]["name"] == "builtin"
    assert row["inputs"]["simulator"]["settings"]["agents"] == "log"
    assert len(row["inputs"]["store_digest"]) == 64 and len(row["key"]) == 64


def test_cli_planner_args_and_config_file(user_module: str, tiny_store: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "creep.toml"
    config.write_text("[creep]\nspeed = 1.0\nhorizon_steps = 20\n\n[idm]\nhorizon_steps = 40\n\n[idm.idm]\naccel = 1.0\n")
    run = tmp_path / "run"
    base = ["closedloop", "eval", "--store", str(tiny_store), "--out", str(run), "--worst", "0", "--no-progress",
            "--no-report", "--threads", "1"]
    assert main([*base, "--planner", "creep,idm", "--planner-config", str(config),
                 "--planner-arg", "creep:speed=2.5"]) == 0
    rows = {r["planner"]: r for r in read_summary(run)["rows"]}
    assert rows["creep"]["inputs"]["planner_settings"] == {"speed": 2.5, "horizon_steps": 20}
    assert rows["idm"]["inputs"]["planner_settings"]["horizon_steps"] == 40
    assert rows["idm"]["inputs"]["planner_settings"]["idm"]["accel"] == 1.0
    capsys.readouterr()
    for args, message in [
        (["--planner", "idm", "--planner-arg", "horizon_steps"], "expected [PLANNER:]KEY=VALUE"),
        (["--planner", "idm,creep", "--planner-arg", "horizon_steps=3"], "write PLANNER:KEY=VALUE"),
        (["--planner", "idm", "--planner-arg", "idm.accel=fast"], "setting idm.accel: expected float"),
        (["--planner", "idm", "--planner-config", str(tmp_path / "none.json")], "cannot read settings file"),
    ]:
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("av: error:") == 1 and message in err and "Traceback" not in err, err


def test_cli_lists_planner_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["closedloop", "planners", "idm"]) == 0
    out = capsys.readouterr().out
    assert "IDMSettings" in out and "idm.headway" in out and "horizon_steps" in out


def test_changing_a_setting_reruns_resume_keeps_same(tiny_store: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(store=tiny_store, planner="constant_velocity", out=tmp_path / "run", worst=0,
                     progress=False, report=False, threads=1, resume=True)
    run_eval(cfg)
    results = tmp_path / "run" / "results.parquet"
    first = results.stat().st_mtime_ns
    run_eval(cfg)
    assert results.stat().st_mtime_ns == first  # same inputs: kept
    run_eval(dataclasses.replace(cfg, planner_settings={"horizon_steps": 40}))
    assert results.stat().st_mtime_ns != first  # another setting: redone
    row = read_summary(tmp_path / "run")["rows"][0]
    assert row["inputs"]["planner_settings"] == {"horizon_steps": 40}
    assert json.dumps(row)  # the summary stays plain JSON
