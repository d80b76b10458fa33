"""scenarios: building Scenarios from logs, the scenario store, variants and adversarial search."""
