"""tacc-orchestrator's plain code: what the Prefect tasks call, importable and testable without Prefect.

- `planning`: the TACC queue catalog, the SU charge rule, the planner.
- `store`: the job store and the staging store (SQLAlchemy 2, Alembic), on SQLite or PostgreSQL.
- `schedulers`: the scheduler interface, the embedded local cluster, Slurm over SSH, job scripts.
- `staging`: dataset survey, transfer (local copy, rsync over SSH), verification.
- `accounting`: sacct/file/HTTP sources, normalization, the warehouse, analytics.
- `tracking`: observing jobs, recording what changed, pacing the polls.
- `exceptions`: every error, one base class; which are transient.
"""
