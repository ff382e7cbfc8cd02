"""Prefect flows of tacc-orchestrator: one flow per module, each a deployment in prefect.yaml."""
