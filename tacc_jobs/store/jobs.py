"""The job repository: create, read, search and move jobs through their lifecycle."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import delete as sa_delete
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from tacc_jobs.exceptions import IllegalTransition, JobNotFound
from tacc_jobs.models import (
    ACTIVE_STATUSES,
    JobRecord,
    JobRequest,
    JobStatus,
    Page,
    Plan,
)
from tacc_jobs.schedulers.arrays import array_task_id
from tacc_jobs.schedulers.job_script import scheduler_job_name
from tacc_jobs.store.engine import upsert_into
from tacc_jobs.store.locks import database_lock
from tacc_jobs.store.tables import JobRow, SuChargeRow
from tacc_jobs.walltime import utcnow

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.QUEUING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUING: frozenset({JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class JobUpdate(BaseModel):
    """Fields a status transition may set; None leaves a field as it is."""

    reason: str | None = None
    progress: float | None = None
    scheduler_job_id: str | None = None
    work_dir: str | None = None
    result: dict[str, Any] | None = None
    notes: str | None = None
    charged_su: float | None = None
    gpu_seconds: float | None = None
    attempt: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class Transition(BaseModel):
    """The outcome of `JobStore.transition`: the record now, and the status it had before."""

    record: JobRecord
    previous: JobStatus

    @property
    def moved(self) -> bool:
        """Whether this call changed the status (only one of several racing callers does)."""
        return self.previous != self.record.status


class JobStore:
    """Jobs in a relational database, through one SQLAlchemy engine.

    Example:
        ```python
        engine = create_engine("sqlite:///jobs.db")
        migrate(engine)
        store = JobStore(engine)
        record = store.create(request, plan)
        store.transition(record.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="123"))
        store.history("jdoe").items
        ```
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """Hold the lock `name` while the block runs, if no other process holds it: yields
        whether this one got it (it never waits).

        The lock dies with its holder, however it dies (`database_lock`). Unlike a Prefect
        deployment concurrency slot, whose lease a killed run or a restarted server can hold for
        minutes or for ever, nothing is left behind to time out.

        Example:
            ```python
            with store.exclusive("watch-jobs") as mine:
                if mine: ...  # the only sweep now
            ```
        """
        return database_lock(self.engine, name)

    def create(self, request: JobRequest, plan: Plan, flow_run_id: uuid.UUID | None = None) -> JobRecord:
        """Record a new job, QUEUED, from its request and plan."""
        now = utcnow()
        row = JobRow(
            id=uuid.uuid4(),
            user_id=request.user_id,
            agent=request.agent,
            dataset_id=request.dataset_id,
            system=request.system.value,
            queue=plan.queue,
            status=JobStatus.QUEUED.value,
            progress=0.0,
            params=request.params.model_dump(mode="json"),
            estimated_runtime_minutes=plan.expected_runtime_minutes,
            estimated_su=plan.estimated_su,
            gpu_count=request.gpu_count,
            nodes=plan.nodes,
            priority=request.priority.value,
            webhook_url=str(request.webhook_url) if request.webhook_url else None,
            flow_run_id=flow_run_id,
            retention_days=request.retention_days,
            created_at=now,
            updated_at=now,
        )
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return JobRecord.model_validate(row)

    def get(self, job_id: uuid.UUID | str) -> JobRecord:
        """One job by id.

        Raises:
            JobNotFound: When no job has that id.
        """
        with Session(self.engine) as session:
            row = session.get(JobRow, uuid.UUID(str(job_id)))
            if row is None:
                raise JobNotFound(f"no job with id {job_id}")
            return JobRecord.model_validate(row)

    def find_by_flow_run(self, flow_run_id: uuid.UUID) -> JobRecord | None:
        """The job a flow run submitted, if any."""
        return self._first(select(JobRow).where(JobRow.flow_run_id == flow_run_id))

    def job_ids_by_flow_run(self, flow_run_ids: set[uuid.UUID]) -> dict[uuid.UUID, set[uuid.UUID]]:
        """Every job each of these flow runs recorded (a `submit-batch` run records many)."""
        jobs: dict[uuid.UUID, set[uuid.UUID]] = {flow_run_id: set() for flow_run_id in flow_run_ids}
        with Session(self.engine) as session:
            for job_id, flow_run_id in session.execute(
                select(JobRow.id, JobRow.flow_run_id).where(JobRow.flow_run_id.in_(flow_run_ids))
            ):
                jobs[flow_run_id].add(job_id)
        return jobs

    def _first(self, query: Select[tuple[JobRow]]) -> JobRecord | None:
        with Session(self.engine) as session:
            row = session.scalars(query.limit(1)).first()
            return JobRecord.model_validate(row) if row else None

    def search(
        self,
        *,
        user_id: str | None = None,
        agent: str | None = None,
        dataset_id: str | None = None,
        status: JobStatus | None = None,
        system: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """Jobs matching every given filter, newest first, one page at a time.

        `dataset_id` matches as a prefix (`VLASS2.1` finds every VLASS 2.1 block).
        """
        if not 1 <= limit <= 1000 or offset < 0:
            raise ValueError("limit must be 1-1000 and offset >= 0")
        conditions = [
            column == value
            for column, value in (
                (JobRow.user_id, user_id),
                (JobRow.agent, agent),
                (JobRow.status, status.value if status else None),
                (JobRow.system, system),
            )
            if value is not None
        ]
        if dataset_id is not None:
            escaped = dataset_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(JobRow.dataset_id.like(f"{escaped}%", escape="\\"))
        if created_from is not None:
            conditions.append(JobRow.created_at >= created_from)
        if created_to is not None:
            conditions.append(JobRow.created_at < created_to)
        with Session(self.engine) as session:
            total = session.scalar(select(func.count()).select_from(JobRow).where(*conditions)) or 0
            rows = session.scalars(
                select(JobRow)
                .where(*conditions)
                .order_by(JobRow.created_at.desc(), JobRow.id)
                .offset(offset)
                .limit(limit)
            ).all()
            items = [JobRecord.model_validate(row) for row in rows]
        return Page(items=items, total=total, has_more=offset + len(items) < total)

    def history(self, user_id: str, limit: int = 50, offset: int = 0) -> Page:
        """One user's jobs, newest first."""
        return self.search(user_id=user_id, limit=limit, offset=offset)

    def by_status(self, status: JobStatus, limit: int = 50, offset: int = 0) -> Page:
        """Jobs in one status, newest first."""
        return self.search(status=status, limit=limit, offset=offset)

    def _oldest_first(self, *conditions: ColumnElement[bool]) -> list[JobRecord]:
        """The jobs matching every condition, oldest first, read as plain rows (no ORM objects:
        a sweep reads thousands)."""
        query = select(JobRow.__table__).where(*conditions).order_by(JobRow.created_at)
        with self.engine.connect() as connection:
            return [JobRecord.model_validate(row) for row in connection.execute(query)]

    def active(self, system: str | None = None) -> list[JobRecord]:
        """Submitted jobs that have not ended (QUEUING or RUNNING), oldest first."""
        return self._oldest_first(
            JobRow.status.in_([JobStatus.QUEUING.value, JobStatus.RUNNING.value]),
            JobRow.scheduler_job_id.is_not(None),
            *([JobRow.system == system] if system is not None else []),
        )

    def unfinished(self) -> list[JobRecord]:
        """Every job that has not ended, submitted or not (QUEUED, QUEUING, RUNNING), oldest first."""
        return self._oldest_first(JobRow.status.in_([status.value for status in ACTIVE_STATUSES]))

    def unsubmitted(self, system: str, created_before: datetime) -> list[JobRecord]:
        """QUEUED jobs with no scheduler id, recorded before `created_before`, oldest first: jobs
        whose submitter may have died between `sbatch` and recording its answer."""
        return self._oldest_first(
            JobRow.system == system,
            JobRow.status == JobStatus.QUEUED.value,
            JobRow.scheduler_job_id.is_(None),
            JobRow.created_at < created_before,
        )

    def mark_submit_started(self, job_id: uuid.UUID, at: datetime) -> None:
        """Record that the job's submission begins: from now on a job of its name may exist."""
        with self.engine.begin() as connection:
            connection.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.submit_started_at.is_(None))
                .values(submit_started_at=at)
            )

    def mark_unseen(self, job_id: uuid.UUID, since: datetime | None) -> None:
        """Record since when the scheduler has not reported an active job (None: it is seen again)."""
        noted = JobRow.unseen_since.is_(None) if since is not None else JobRow.unseen_since.is_not(None)
        with self.engine.begin() as connection:  # a no-op when already so: the first unseen poll counts
            connection.execute(update(JobRow).where(JobRow.id == job_id, noted).values(unseen_since=since))

    def note_unobserved(self, system: str, reason_prefix: str, reason: str | None) -> int:
        """Say why the active jobs of `system` cannot be observed (the login node is unreachable),
        in one statement; with `reason` None, clear what was said once they can be again.

        Args:
            system: The system whose active jobs to note.
            reason_prefix: What every such reason starts with (what `None` clears).
            reason: The reason to note, or None to clear the reasons that start with the prefix.

        Returns:
            How many jobs' reasons changed: 0 when they say so already (the same outage).
        """
        if reason is None:
            condition = and_(JobRow.reason.is_not(None), JobRow.reason.startswith(reason_prefix, autoescape=True))
        else:
            condition = or_(JobRow.reason.is_(None), JobRow.reason != reason)
        with self.engine.begin() as connection:
            return connection.execute(
                update(JobRow)
                .where(
                    JobRow.system == system,
                    JobRow.status.in_([JobStatus.QUEUING.value, JobStatus.RUNNING.value]),
                    JobRow.scheduler_job_id.is_not(None),
                    condition,
                )
                .values(reason=reason, updated_at=utcnow())
            ).rowcount

    def past_runtimes_minutes(self, user_id: str, agent: str, limit: int = 20) -> list[float]:
        """Runtimes of the user's most recent completed runs of `agent`."""
        query = (
            select(JobRow.started_at, JobRow.completed_at)
            .where(
                JobRow.user_id == user_id,
                JobRow.agent == agent,
                JobRow.status == JobStatus.COMPLETED.value,
                JobRow.started_at.is_not(None),
                JobRow.completed_at.is_not(None),
            )
            .order_by(JobRow.completed_at.desc())
            .limit(limit)
        )
        with Session(self.engine) as session:
            return [(end - start).total_seconds() / 60 for start, end in session.execute(query)]

    def su_committed(self, user_id: str, since: datetime | None = None) -> float:
        """SUs the user has been charged (since `since`, the start of their budget period), from
        the ledger, which keeps charges after cleanup deletes their jobs; plus the estimates of
        the user's active jobs, and of packed members that ended in an allocation not charged
        yet (it bills the whole node until it ends: the split comes then)."""
        active = [status.value for status in ACTIVE_STATUSES]
        awaiting_split = and_(
            JobRow.allocation_name.is_not(None),
            JobRow.array_index.is_(None),
            JobRow.scheduler_job_id.is_not(None),
            JobRow.charged_su.is_(None),
        )
        charged = select(func.coalesce(func.sum(SuChargeRow.su), 0.0)).where(SuChargeRow.user_id == user_id)
        if since is not None:
            charged = charged.where(SuChargeRow.charged_at >= since)
        estimated = func.coalesce(func.sum(JobRow.estimated_su), 0.0)
        with Session(self.engine) as session:
            used = session.scalar(charged) or 0.0
            running = (
                session.scalar(
                    select(estimated).where(JobRow.user_id == user_id, or_(JobRow.status.in_(active), awaiting_split))
                )
                or 0.0
            )
        return float(used) + float(running)

    def _ledger(self, connection: Connection, job_ids: list[uuid.UUID]) -> None:
        """Write these jobs' charges to the SU ledger (again, when a charge changed), dated by each
        job's end, in the caller's transaction."""
        charges = select(
            JobRow.id,
            JobRow.user_id,
            JobRow.system,
            JobRow.charged_su,
            func.coalesce(JobRow.completed_at, JobRow.updated_at),
        ).where(JobRow.id.in_(job_ids), JobRow.charged_su.is_not(None))
        statement = upsert_into(self.engine, SuChargeRow.__table__).from_select(
            ["job_id", "user_id", "system", "su", "charged_at"], charges
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["job_id"],
                set_={"su": statement.excluded.su, "charged_at": statement.excluded.charged_at},
            )
        )

    def expired(self, default_days: int, now: datetime | None = None) -> list[JobRecord]:
        """Ended jobs whose retention (their own, else `default_days`; at least a day) has run out."""
        now = now or utcnow()
        ended = [status.value for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)]
        with Session(self.engine) as session:
            ended_at = func.coalesce(JobRow.completed_at, JobRow.updated_at)
            rows = session.scalars(select(JobRow).where(JobRow.status.in_(ended), ended_at <= now - timedelta(days=1)))
            records = [JobRecord.model_validate(row) for row in rows]
        return [
            record
            for record in records
            if (record.completed_at or record.updated_at) + timedelta(days=record.retention_days or default_days) <= now
        ]

    def delete(self, job_ids: list[uuid.UUID]) -> int:
        """Remove job records; returns how many were removed."""
        with self.engine.begin() as connection:
            return connection.execute(sa_delete(JobRow).where(JobRow.id.in_(job_ids))).rowcount

    def transition(
        self,
        job_id: uuid.UUID,
        status: JobStatus,
        update_fields: JobUpdate | None = None,
        current: JobRecord | None = None,
    ) -> Transition:
        """Move a job to `status` (or update it in place when it is already there). A move to
        another status clears the reason, unless `update_fields` gives the new one.

        The change is a conditional UPDATE on the status read, so two trackers racing on the
        same job cannot both apply a move. A terminal job accepts no move, only added fields
        (its result, its charge). Only the fields that differ are written; when none does, nothing is.

        Args:
            job_id: The job.
            status: Its status from now on.
            update_fields: Fields to set with it.
            current: The job as the caller last read it (a sweep's records): compared with
                instead of reading the job first, so an unchanged job costs no statement at
                all. The UPDATE is still conditional on its status; if another writer moved
                it meanwhile, nothing is written (the caller decided on a stale row: a
                RUNNING read before a requeue would go over the QUEUING the requeue wrote)
                and the job as it is now comes back, not moved. Without it, the job is read
                (again, after a concurrent move) and the call decides on what it finds.

        Raises:
            IllegalTransition: For a move the lifecycle forbids, e.g. COMPLETED -> RUNNING.
            JobNotFound: When no job has that id.
        """
        requested = (update_fields or JobUpdate()).model_dump(exclude_none=True)
        read_by_caller = current is not None and current.id == job_id
        for _ in range(3):
            current = current if current is not None and current.id == job_id else self.get(job_id)
            fields = requested
            if current.status == status and status.is_terminal:
                fields = {name: value for name, value in fields.items() if getattr(current, name) is None}
            if current.status != status and "reason" not in fields and current.reason is not None:
                fields = {**fields, "reason": None}  # a reason is its status's ("Priority", "waiting for a slot")
            fields = {
                name: value for name, value in fields.items() if getattr(current, name) != value
            }  # write what changed
            if current.status == status and not fields:
                return Transition(record=current, previous=current.status)
            if current.status != status and status not in ALLOWED_TRANSITIONS[current.status]:
                raise IllegalTransition(f"job {job_id}: {current.status.value} -> {status.value} is not allowed")
            values = {**fields, "status": status.value, "updated_at": utcnow()}
            with self.engine.begin() as connection:
                row = connection.execute(
                    update(JobRow)
                    .where(JobRow.id == current.id, JobRow.status == current.status.value)
                    .values(**values)
                    .returning(*JobRow.__table__.columns)
                ).first()
                if row is not None and "charged_su" in fields:
                    self._ledger(connection, [current.id])
            if row is not None:
                return Transition(record=JobRecord.model_validate(row), previous=current.status)
            if read_by_caller:
                now_stored = self.get(job_id)
                return Transition(record=now_stored, previous=now_stored.status)
            current = None
        raise IllegalTransition(f"job {job_id}: status kept changing under a concurrent update")

    def assign_allocation(
        self, estimated_su: Mapping[uuid.UUID, float], name: str, nodes: int, array: bool = False
    ) -> None:
        """Make unsubmitted jobs the members of one packed allocation (its Slurm job name and whole
        nodes), each estimated at its share of the allocation's SUs, in one transaction; with
        `array`, the tasks of one job array instead, task i the i-th job given (its nodes each)."""
        with self.engine.begin() as connection:
            for index, (job_id, share) in enumerate(estimated_su.items()):
                connection.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.scheduler_job_id.is_(None))
                    .values(
                        allocation_name=name,
                        allocation_nodes=nodes,
                        estimated_su=share,
                        array_index=index if array else None,
                        updated_at=utcnow(),
                    )
                )

    def allocation_members(self, name: str) -> list[JobRecord]:
        """Every member of a packed allocation, oldest first."""
        query = select(JobRow).where(JobRow.allocation_name == name).order_by(JobRow.created_at, JobRow.id)
        with Session(self.engine) as session:
            return [JobRecord.model_validate(row) for row in session.scalars(query)]

    def mark_allocation_submit_started(self, name: str, at: datetime) -> None:
        """Record, for every member at once, that the allocation's submission begins."""
        with self.engine.begin() as connection:
            connection.execute(
                update(JobRow)
                .where(JobRow.allocation_name == name, JobRow.submit_started_at.is_(None))
                .values(submit_started_at=at)
            )

    def record_allocation_submitted(
        self, name: str, scheduler_job_id: str, work_dirs: Mapping[uuid.UUID, str]
    ) -> list[Transition]:
        """In one transaction, every member still QUEUED gets the allocation's scheduler id (an array
        member its task's, `<id>_<index>`) and its own work directory and moves to QUEUING; members
        that ended meanwhile (a cancel) are left.

        Returns:
            One transition per member, in `allocation_members` order.
        """
        members = self.allocation_members(name)
        before = {record.id: record.status for record in members}
        task_ids = {
            record.id: scheduler_job_id
            if record.array_index is None
            else array_task_id(scheduler_job_id, record.array_index)
            for record in members
        }
        now = utcnow()
        with self.engine.begin() as connection:
            for job_id, work_dir in work_dirs.items():
                connection.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.allocation_name == name, JobRow.status == JobStatus.QUEUED.value)
                    .values(
                        status=JobStatus.QUEUING.value,
                        scheduler_job_id=task_ids[job_id],
                        work_dir=work_dir,
                        updated_at=now,
                    )
                )
        return [
            Transition(record=record, previous=before.get(record.id, record.status))
            for record in self.allocation_members(name)
        ]

    def set_member_charges(self, charges: Mapping[uuid.UUID, tuple[float, float]]) -> None:
        """Store each ended member's GPU-seconds and its share of the allocation's SUs, in one transaction."""
        with self.engine.begin() as connection:
            for job_id, (gpu_seconds, charged) in charges.items():
                connection.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id)
                    .values(gpu_seconds=gpu_seconds, charged_su=charged, updated_at=utcnow())
                )
            self._ledger(connection, list(charges))

    def uncharged_allocations(self, system: str, ended_after: datetime) -> dict[str, str]:
        """Allocation name -> scheduler id of the submitted packed allocations whose members have
        all ended (the last since `ended_after`) and are not charged yet: their charge waits for
        the allocation's end. (An array task is charged at its own end, as a job of its own.)"""
        active = [status.value for status in ACTIVE_STATUSES]
        query = (
            select(JobRow.allocation_name, func.max(JobRow.scheduler_job_id))
            .where(
                JobRow.system == system,
                JobRow.allocation_name.is_not(None),
                JobRow.array_index.is_(None),
                or_(JobRow.completed_at >= ended_after, JobRow.status.in_(active)),
            )  # recent allocations only
            .group_by(JobRow.allocation_name)
            .having(
                func.sum(case((JobRow.status.in_(active), 1), else_=0)) == 0,
                func.sum(case((JobRow.charged_su.is_(None), 1), else_=0)) > 0,
                func.count(JobRow.scheduler_job_id) > 0,
                func.max(JobRow.completed_at) >= ended_after,
            )
        )
        with Session(self.engine) as session:
            return {name: job_id for name, job_id in session.execute(query)}

    def active_submissions(self, user_id: str, system: str, queue: str) -> int:
        """How many Slurm jobs the user has in a queue now: a packed allocation counts once,
        however many members it runs; each live task of a job array counts, as Slurm counts it
        (TACC's per-user cap counts jobs)."""
        query = select(JobRow.id, JobRow.allocation_name, JobRow.array_index).where(
            JobRow.user_id == user_id,
            JobRow.system == system,
            JobRow.queue == queue,
            JobRow.status.in_([JobStatus.QUEUING.value, JobStatus.RUNNING.value]),
        )
        with Session(self.engine) as session:
            return len(
                {job_id if index is not None else name or job_id for job_id, name, index in session.execute(query)}
            )

    def agents_by_job_name(self, system: str) -> dict[str, str]:
        """Slurm job name -> agent of every job on a system, a packed allocation under its own
        name (accounting sees the allocation, and names models after agents)."""
        query = select(JobRow.id, JobRow.allocation_name, JobRow.agent).where(JobRow.system == system)
        with Session(self.engine) as session:
            return {name or scheduler_job_name(job_id): agent for job_id, name, agent in session.execute(query)}
