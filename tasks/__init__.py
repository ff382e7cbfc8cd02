"""Prefect tasks of tacc-orchestrator, one module per concern; the plain code they call is in `tacc_jobs`."""
