"""Units of work for tacc-orchestrator: Prefect tasks and the plain code they call."""
