"""The one tracking policy (requeue, unseen, lost, not understood) and the reconciliation of jobs
recorded without a scheduler id, on the store (SQLite and PostgreSQL) and the embedded cluster."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, event

from tacc_jobs.exceptions import PermanentSchedulerError
from tacc_jobs.models import JobRecord, JobStatus, parse_request
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.schedulers import JobSubmission, SchedulerJobState
from tacc_jobs.schedulers.job_script import JobPaths, scheduler_job_name
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.store import JobStore, JobUpdate, migrate
from tacc_jobs.tracking import (
    ADOPTED_REASON,
    NEVER_SUBMITTED_REASON,
    JobObservation,
    TrackingPolicy,
    reconcile_unsubmitted,
    record_observation,
)
from tests.conftest import state_of, wait_until

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
POLICY = TrackingPolicy(unseen_grace_seconds=600)


@pytest.fixture
def store(engine: Engine) -> JobStore:
    migrate(engine)
    return JobStore(engine)


def submitted(
    store: JobStore, system: str = "ls6", status: JobStatus = JobStatus.RUNNING, **update: object
) -> JobRecord:
    request = parse_request(
        {
            "agent": "AlphaCal",
            "dataset_id": "VLASS2.1.eb123456",
            "gpu_count": 3,
            "max_runtime": "1h",
            "user_id": "jdoe",
            "system": system,
        }
    )
    record = store.create(request, plan_request(request, PlanningContext()))
    store.transition(record.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="41", work_dir="/scratch/jobs/x"))
    if status is not JobStatus.QUEUING:
        store.transition(record.id, status, JobUpdate(**update))  # type: ignore[arg-type]
    return store.get(record.id)


def seen(
    state: str,
    start: datetime | None = None,
    end: datetime | None = None,
    in_queue: bool = False,
    exit_code: str | None = None,
) -> JobObservation:
    from tacc_jobs.schedulers.states import map_slurm_state

    observed = SchedulerJobState(job_id="41", state=state, start=start, end=end, in_queue=in_queue, exit_code=exit_code)
    status, reason = map_slurm_state(state, exit_code, None, in_queue)
    return JobObservation(scheduler_job_id="41", state=observed, status=status, reason=reason)


def test_an_observation_made_on_a_row_read_before_a_requeue_is_dropped_not_written_over_it(store: JobStore) -> None:
    """A sweep reads the job RUNNING; the waiting run then records Slurm's requeue (QUEUING, attempt
    2); the sweep's older RUNNING must not be written over it, or the next PENDING counts attempt 3."""
    read_by_the_sweep = submitted(store, started_at=T0)
    by_the_run = record_observation(store, read_by_the_sweep, seen("PENDING"), POLICY, T0 + timedelta(minutes=5))
    assert (by_the_run.record.status, by_the_run.record.attempt) == (JobStatus.QUEUING, 2)
    running = seen("RUNNING", start=T0)
    running.progress = 0.5  # what the sweep read with it, before the requeue
    stale = record_observation(store, read_by_the_sweep, running, POLICY, T0 + timedelta(minutes=5))
    assert stale is not None and not stale.moved
    assert (store.get(read_by_the_sweep.id).status, store.get(read_by_the_sweep.id).attempt) == (JobStatus.QUEUING, 2)
    fresh = store.get(read_by_the_sweep.id)
    again = record_observation(
        store, fresh, seen("RUNNING", start=T0 + timedelta(minutes=7)), POLICY, T0 + timedelta(minutes=8)
    )
    again = record_observation(store, again.record, seen("PENDING"), POLICY, T0 + timedelta(minutes=9))
    assert again.record.attempt == 3, "one more requeue is one more attempt, not two"


def test_a_requeued_running_job_waits_again_as_attempt_two_then_completes(store: JobStore) -> None:
    record = submitted(store, started_at=T0)
    requeued = record_observation(store, record, seen("PENDING"), POLICY, T0 + timedelta(minutes=5))
    assert requeued is not None and requeued.moved
    assert (requeued.record.status, requeued.record.attempt) == (JobStatus.QUEUING, 2)
    assert requeued.record.reason.startswith("requeued by Slurm (attempt 2)")
    running = record_observation(
        store, requeued.record, seen("RUNNING", start=T0 + timedelta(minutes=7)), POLICY, T0 + timedelta(minutes=8)
    )
    assert (running.record.status, running.record.attempt) == (JobStatus.RUNNING, 2)
    done = record_observation(
        store,
        running.record,
        seen("COMPLETED", T0 + timedelta(minutes=7), T0 + timedelta(minutes=37), exit_code="0:0"),
        POLICY,
        T0 + timedelta(minutes=40),
    )
    assert (done.record.status, done.record.attempt, done.record.charged_su) == (JobStatus.COMPLETED, 2, 2.0)


def test_a_job_restarted_between_two_sweeps_counts_an_attempt(store: JobStore) -> None:
    record = submitted(store, started_at=T0)
    restarted = record_observation(
        store, record, seen("RUNNING", start=T0 + timedelta(minutes=3)), POLICY, T0 + timedelta(minutes=4)
    )
    assert (restarted.record.status, restarted.record.attempt, restarted.record.started_at) == (
        JobStatus.RUNNING,
        2,
        T0 + timedelta(minutes=3),
    )
    same = record_observation(
        store, restarted.record, seen("RUNNING", start=T0 + timedelta(minutes=3)), POLICY, T0 + timedelta(minutes=5)
    )
    assert same.record.attempt == 2


def test_node_fail_is_an_end_only_once_the_controller_lets_the_job_go(store: JobStore) -> None:
    record = submitted(store, started_at=T0)
    held = record_observation(store, record, seen("NODE_FAIL", in_queue=True), POLICY, T0)
    assert held.record.status is JobStatus.QUEUING and "may requeue" in held.record.reason
    ended = record_observation(
        store, held.record, seen("NODE_FAIL", T0, T0 + timedelta(minutes=1)), POLICY, T0 + timedelta(minutes=9)
    )
    assert (ended.record.status, ended.record.reason) == (JobStatus.FAILED, "NODE_FAIL")


def test_an_unseen_job_is_waited_for_then_lost_after_the_grace(store: JobStore) -> None:
    record = submitted(store, started_at=T0)
    unseen = JobObservation(scheduler_job_id="41")
    assert record_observation(store, record, unseen, POLICY, T0) is None
    record = store.get(record.id)
    assert record.unseen_since == T0 and record.status is JobStatus.RUNNING
    assert record_observation(store, record, unseen, POLICY, T0 + timedelta(seconds=599)) is None
    assert store.get(record.id).unseen_since == T0, "only the first unseen poll writes"
    lost = record_observation(store, store.get(record.id), unseen, POLICY, T0 + timedelta(seconds=600))
    assert lost.record.status is JobStatus.FAILED and lost.record.reason.startswith(
        "lost: the scheduler has not reported job 41"
    )


def test_a_job_seen_again_is_no_longer_unseen(store: JobStore) -> None:
    record = submitted(store, started_at=T0)
    record_observation(store, record, JobObservation(scheduler_job_id="41"), POLICY, T0)
    record_observation(store, store.get(record.id), seen("RUNNING", start=T0), POLICY, T0 + timedelta(minutes=20))
    assert (store.get(record.id).unseen_since, store.get(record.id).status) == (None, JobStatus.RUNNING)


def test_a_state_not_understood_keeps_the_status_and_quotes_slurm(store: JobStore) -> None:
    record = submitted(store, started_at=T0)
    transition = record_observation(store, record, seen("LAUNCH_FAILED"), POLICY, T0)
    assert (transition.record.status, transition.record.reason) == (
        JobStatus.RUNNING,
        "unknown Slurm state 'LAUNCH_FAILED'",
    )


@pytest.fixture
def cluster(tmp_path: Path) -> LocalScheduler:
    return LocalScheduler(tmp_path / "cluster")


def unsubmitted(store: JobStore, cluster: LocalScheduler, attempted: bool = True) -> tuple[JobRecord, JobSubmission]:
    request = parse_request(
        {
            "agent": "AlphaCal",
            "dataset_id": "VLASS2.1.eb123456",
            "gpu_count": 1,
            "max_runtime": "1h",
            "user_id": "jdoe",
            "system": "local",
        }
    )
    record = store.create(request, plan_request(request, PlanningContext()), flow_run_id=uuid.uuid4())
    if attempted:  # as submit_to_scheduler does right before sbatch
        store.mark_submit_started(record.id, record.created_at)
        record = store.get(record.id)
    paths = JobPaths.for_job(cluster.scratch_root, record.id, record.dataset_id)
    return record, JobSubmission(
        name=scheduler_job_name(record.id),
        script="#!/bin/bash\nsleep 1\n",
        work_dir=paths.work_dir,
        stdout_path=paths.stdout,
        stderr_path=paths.stderr,
        sbatch_args=["-p", "local-gpu", "-t", "00:01:00"],
    )


def test_a_job_submitted_but_never_recorded_is_adopted_with_its_real_id(
    store: JobStore, cluster: LocalScheduler
) -> None:
    record, submission = unsubmitted(store, cluster)
    job_id = cluster.submit(submission)  # the submitter died before recording the answer
    transitions = reconcile_unsubmitted(store, cluster, [record], POLICY, lambda _: False, timedelta(days=1))
    adopted = store.get(record.id)
    assert transitions[0].record.reason == ADOPTED_REASON and adopted.scheduler_job_id == job_id
    assert adopted.work_dir == submission.work_dir and adopted.status in (
        JobStatus.QUEUING,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
    )
    assert cluster.submit(submission) == job_id, "a late retry of the dead submitter adopts the same job"


def test_a_job_that_never_reached_the_cluster_waits_for_its_submitter_then_ends_fenced(
    store: JobStore, cluster: LocalScheduler
) -> None:
    record, submission = unsubmitted(store, cluster)
    assert reconcile_unsubmitted(store, cluster, [record], POLICY, lambda _: False, timedelta(days=1)) == []
    assert store.get(record.id).status is JobStatus.QUEUED, "its submitter may still be staging"
    transitions = reconcile_unsubmitted(store, cluster, [record], POLICY, lambda _: True, timedelta(days=1))
    ended = store.get(record.id)
    assert [t.record.status for t in transitions] == [JobStatus.FAILED] and ended.reason == NEVER_SUBMITTED_REASON
    assert store.su_committed("jdoe") == 0, "a job that never ran counts nothing against the budget"
    with pytest.raises(PermanentSchedulerError, match="abandoned"):
        cluster.submit(submission)  # the dead submitter's retry cannot run it now
    assert cluster.find([submission.name], T0) == {}


def test_an_old_job_found_by_name_is_adopted_not_abandoned(store: JobStore, cluster: LocalScheduler) -> None:
    record, submission = unsubmitted(store, cluster)
    too_old = timedelta(seconds=0)
    job_id = cluster.submit(submission)
    reconcile_unsubmitted(store, cluster, [record], POLICY, lambda _: False, too_old)
    assert store.get(record.id).scheduler_job_id == job_id
    wait_until(lambda: state_of(cluster, job_id).state == "COMPLETED", timeout=30)


def test_a_job_never_submitted_is_left_to_its_live_run_however_old(store: JobStore, cluster: LocalScheduler) -> None:
    """A batch holds requests back for TACC's per-user limit: days old, never attempted, fine."""
    record, submission = unsubmitted(store, cluster, attempted=False)
    long_after = record.created_at + timedelta(days=3)
    assert reconcile_unsubmitted(store, cluster, [record], POLICY, lambda _: False, timedelta(days=1), long_after) == []
    assert store.get(record.id).status is JobStatus.QUEUED
    ended = reconcile_unsubmitted(store, cluster, [record], POLICY, lambda _: True, timedelta(days=1), long_after)
    assert [t.record.reason for t in ended] == [NEVER_SUBMITTED_REASON], "once its run has ended, it is settled"


def test_an_unchanged_job_costs_no_statement_and_an_end_one_write_with_its_result(store: JobStore) -> None:
    record = submitted(store, started_at=T0)
    statements: list[str] = []

    def note(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        assert not record_observation(store, record, seen("RUNNING", start=T0), POLICY, T0).moved
        assert statements == [], "a sweep compares with the records it read: an unchanged job is not read again"
        ended = seen("COMPLETED", start=T0, end=T0 + timedelta(hours=1), exit_code="0:0")
        ended.result = {"rms": 1.5}
        transition = record_observation(store, record, ended, POLICY, T0 + timedelta(hours=1))
        assert [statement.split()[0] for statement in statements] == ["UPDATE", "INSERT"], (
            "the end, its result and its charge in one write, the charge also to the ledger"
        )
    finally:
        event.remove(store.engine, "before_cursor_execute", note)
    assert transition.moved and store.get(record.id) == transition.record
    assert (transition.record.status, transition.record.result) == (JobStatus.COMPLETED, {"rms": 1.5})


def test_a_record_moved_meanwhile_is_read_again_before_a_change(store: JobStore) -> None:
    stale = submitted(store, started_at=T0)
    store.transition(stale.id, JobStatus.CANCELLED, JobUpdate(reason="cancelled by jdoe"))
    transition = record_observation(
        store, stale, seen("COMPLETED", start=T0, end=T0 + timedelta(hours=1), exit_code="0:0"), POLICY
    )
    assert (transition.record.status, transition.moved) == (JobStatus.CANCELLED, False)


class ReusedIds:
    """A scheduler whose job id 57 now belongs to another job (ids restart after a controller reset)."""

    def states(self, jobs: dict[str, str]) -> dict[str, SchedulerJobState]:
        return {"57": SchedulerJobState(job_id="57", name="tacc-new", state="RUNNING")}

    def read_files(self, offsets: dict[str, int], limit: int = 65536) -> dict[str, object]:
        from tacc_jobs.schedulers import FileTail

        return {path: FileTail(data="", next_offset=0) for path in offsets}

    def poll(
        self, jobs: dict[str, str], offsets: dict[str, int], results: dict[str, str], limit: int = 65536
    ) -> object:
        from tacc_jobs.schedulers.states import poll_in_parts

        return poll_in_parts(self, jobs, offsets, results, limit)  # type: ignore[arg-type]


def test_a_state_answered_for_another_name_is_not_this_jobs() -> None:
    from tacc_jobs.tracking import TrackedJob, observe

    old, new = (
        TrackedJob(scheduler_job_id="57", name=name, progress_path=f"/p/{name}") for name in ("tacc-old", "tacc-new")
    )
    seen_old, seen_new = observe(ReusedIds(), [old, new])  # type: ignore[arg-type]
    assert seen_old.unseen and seen_new.status is JobStatus.RUNNING
