"""Prefect blocks of tacc-orchestrator: configuration and secrets."""

from blocks.tacc import TaccCredentials

__all__ = ["TaccCredentials"]
