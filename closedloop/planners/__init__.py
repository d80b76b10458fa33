"""Built-in planners, registered by name (imported lazily by :func:`closedloop.planner.make_planner`)."""

from closedloop.planner import register_planner

register_planner("log_replay", "closedloop.planners.log_replay:LogReplayPlanner")
register_planner("constant_velocity", "closedloop.planners.constant_velocity:ConstantVelocityPlanner")
register_planner("idm", "closedloop.planners.idm:IDMPlanner")
register_planner("pdm_closed", "closedloop.planners.pdm_closed:PDMClosedPlanner")
register_planner("onnx", "closedloop.planners.onnx:onnx_planner")
register_planner("teacher", "closedloop.planners.teacher:TeacherPlanner")
register_planner("student", "closedloop.planners.learned:StudentPlanner")
