"""Agents: one job-script template per agent (`<Agent>.sh`), plus the demo agent's program."""

from __future__ import annotations

from pathlib import Path

AGENTS_DIR = Path(__file__).resolve().parent


def known_agents() -> set[str]:
    """Names of the agents that ship a job-script template.

    Example:
        >>> "AlphaCal" in known_agents()
        True
    """
    return {path.stem for path in AGENTS_DIR.glob("*.sh")}


def agent_template(agent: str) -> str:
    """The body of an agent's job script (runs after the `#SBATCH` lines and the job's exports)."""
    if agent not in known_agents():
        raise KeyError(f"unknown agent {agent!r}")
    return (AGENTS_DIR / f"{agent}.sh").read_text()
