"""safety: requirements, runtime monitors, traceability and monitor-diversity analysis."""
