"""closedloop: the batched simulator, behavior evaluator, baseline planners and closed-loop runs."""
