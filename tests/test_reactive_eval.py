"""CLS-R vs CLS-NR end to end (driver + evaluator): a reactive follower brakes for an ego that
stops in front of it and does not hit it, while the log-replayed follower drives into it.

(The simulator-level case is in test_sim_agents.py; this one checks that the difference reaches
the scores. A stopped ego hit from behind is not at fault in nuPlan, so NC and CLS stay 1 in both
modes: the difference shows in ``collisions`` and in the follower's gap.)
"""

from __future__ import annotations

import numpy as np
import torch
from test_sim_agents import ALWAYS, DT, T, track, with_agents

from av.batch import collate
from av.types import AgentType
from closedloop.driver import rollout
from closedloop.evaluator import evaluate
from closedloop.planners.log_replay import LogReplayPlanner
from closedloop.sim import BuiltinSimulator, SimConfig


def _ego_stopping(sc, stop_x: float = 20.0, speed: float = 8.0):  # type: ignore[no-untyped-def]
    """``sc`` with its logged ego braking at 2 m/s^2 from ``speed`` to a stop at ``stop_x``."""
    t = np.arange(T) * DT
    brake = speed / 2.0
    x0 = stop_x - speed * brake / 2.0
    tt = np.minimum(t, brake)
    ego = np.zeros((T, 5))
    ego[:, 0] = x0 + speed * tt - tt**2
    ego[:, 3] = np.maximum(speed - 2.0 * t, 0.0)
    return sc.replace(ego=ego).validate()


def test_reactive_follower_brakes_for_a_stopping_ego_and_the_log_one_hits_it() -> None:
    # The follower's log drives on at 8 m/s from 12 m behind the ego's start, straight through
    # where the ego stops.
    sc = _ego_stopping(with_agents([("follower", AgentType.VEHICLE, (4.5, 1.9), track(-12.0, 8.0), ALWAYS)]))
    batch = collate([sc])
    out = {}
    for mode in ("log", "idm"):
        with torch.no_grad():
            r = rollout(BuiltinSimulator(SimConfig(agents=mode)), batch, LogReplayPlanner(), record_plans=False)
        out[mode] = (r, evaluate(r))
    (_, s_log), (r_idm, s_idm) = out["log"], out["idm"]
    assert float(s_log["collisions"][0]) >= 1 and float(s_idm["collisions"][0]) == 0
    assert float(s_log["at_fault_collisions"][0]) == 0 and float(s_idm["at_fault_collisions"][0]) == 0
    assert float(s_log["no_collision"][0]) == 1 and float(s_idm["no_collision"][0]) == 1
    # The reactive follower ends stopped behind the ego, about its standstill gap away.
    last = int(batch.step_valid[0].sum()) - 1
    ego_rear = float(r_idm.ego[0, last, 0]) + 1.292 - 4.084 / 2
    follower_front = float(r_idm.agents[0, 0, last, 0]) + 4.5 / 2
    assert 0.3 < ego_rear - follower_front < 4.0
    assert float(r_idm.agents[0, 0, last, 3:5].norm()) < 0.1
