"""Packed allocations without a cluster: the member-state rules, the charge split, the store's
allocation methods (on SQLite and PostgreSQL) and the rendered submission."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tacc_jobs.exceptions import PermanentSchedulerError
from tacc_jobs.launcher import Manifest, MemberStatus
from tacc_jobs.models import JobRecord, JobStatus, parse_request
from tacc_jobs.planning.charges import split_charge
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.schedulers import JobSubmission, SchedulerJobState
from tacc_jobs.schedulers.job_script import (
    AgentRuntime,
    JobPaths,
    allocation_dir,
    record_job_name,
    scheduler_job_name,
)
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.schedulers.packed_script import PackedMember, render_allocation
from tacc_jobs.store import JobStore, JobUpdate, migrate
from tacc_jobs.tracking import (
    NEVER_SUBMITTED_REASON,
    PILE_REASON,
    JobObservation,
    TrackingPolicy,
    member_observation,
    reconcile_unsubmitted,
    record_observation,
)

START = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def allocation(state: str, status: JobStatus | None, reason: str | None = None) -> JobObservation:
    return JobObservation(
        scheduler_job_id="7",
        status=status,
        reason=reason,
        state=SchedulerJobState(job_id="7", name="tacc-a", state=state, start=START, end=None),
    )


def ended(state: str, exit_code: int = 0) -> MemberStatus:
    return MemberStatus(
        state=state,
        exit_code=exit_code,
        node="c001",
        gpus=[1],
        start=START + timedelta(minutes=1),
        end=START + timedelta(minutes=11),
        gpu_seconds=600.0,
    )


RUNNING_MEMBER = MemberStatus(state="RUNNING", node="c001", gpus=[2], start=START + timedelta(minutes=2))


@pytest.mark.parametrize(
    ("observed", "member", "status", "reason"),
    [
        (allocation("PENDING", JobStatus.QUEUING, "Priority"), None, JobStatus.QUEUING, "Priority"),
        (allocation("RUNNING", JobStatus.RUNNING), None, JobStatus.QUEUING, PILE_REASON),
        (allocation("RUNNING", JobStatus.RUNNING), RUNNING_MEMBER, JobStatus.RUNNING, None),
        (allocation("RUNNING", JobStatus.RUNNING), ended("COMPLETED"), JobStatus.COMPLETED, None),
        (allocation("RUNNING", JobStatus.RUNNING), ended("FAILED", 2), JobStatus.FAILED, "exit code 2"),
        (allocation("RUNNING", JobStatus.RUNNING), ended("CANCELLED", -15), JobStatus.CANCELLED, "cancelled"),
        (allocation("COMPLETED", JobStatus.COMPLETED), ended("TIMEOUT", -15), JobStatus.FAILED, "TIMEOUT"),
        (allocation("TIMEOUT", JobStatus.FAILED, "TIMEOUT"), RUNNING_MEMBER, JobStatus.FAILED, "TIMEOUT"),
        (
            allocation("CANCELLED by 1000", JobStatus.CANCELLED, "cancelled by uid 1000"),
            None,
            JobStatus.CANCELLED,
            "cancelled by uid 1000",
        ),
        (
            allocation("COMPLETED", JobStatus.COMPLETED),
            RUNNING_MEMBER,
            JobStatus.FAILED,
            "its allocation ended before it reported an end",
        ),
        (
            allocation("PENDING", JobStatus.QUEUING, "BeginTime"),
            RUNNING_MEMBER,
            JobStatus.QUEUING,
            "BeginTime",
        ),  # requeued
        (
            allocation("LAUNCH_FAILED", None, "unknown Slurm state 'LAUNCH_FAILED'"),
            RUNNING_MEMBER,
            None,
            "unknown Slurm state 'LAUNCH_FAILED'",
        ),
    ],
)
def test_a_members_status_follows_its_own_file_then_its_allocation(
    observed: JobObservation, member: MemberStatus | None, status: JobStatus | None, reason: str | None
) -> None:
    seen = member_observation(observed, member)
    assert (seen.status, seen.reason) == (status, reason)
    assert seen.allocation == observed.state and seen.member == member


def test_a_member_carries_its_own_start_and_end_not_the_allocations() -> None:
    running = member_observation(allocation("RUNNING", JobStatus.RUNNING), RUNNING_MEMBER)
    assert running.state.start == RUNNING_MEMBER.start and running.state.end is None
    waiting = member_observation(allocation("RUNNING", JobStatus.RUNNING), None)
    assert waiting.state.start is None
    done = member_observation(allocation("RUNNING", JobStatus.RUNNING), ended("COMPLETED"))
    assert (done.state.start, done.state.end) == (START + timedelta(minutes=1), START + timedelta(minutes=11))


def test_the_charge_is_split_by_gpu_seconds_and_sums_exactly() -> None:
    assert split_charge(8.0, [3600, 1800, 1800, 0]) == [4.0, 2.0, 2.0, 0.0]
    shares = split_charge(2.3333, [1, 1, 1])
    assert round(sum(shares), 4) == 2.3333 and round(max(shares) - min(shares), 4) <= 0.0001
    assert split_charge(1.0, []) == []


@pytest.fixture
def store(engine: Engine) -> JobStore:
    migrate(engine)
    return JobStore(engine)


def request(user: str = "jdoe", **fields: object):
    return parse_request(
        {
            "agent": "AlphaCal",
            "dataset_id": "d1",
            "gpu_count": 1,
            "max_runtime": "1h",
            "user_id": user,
            "system": "stampede3",
            "queue": "h100",
            **fields,
        }
    )


def create(store: JobStore, user: str = "jdoe"):
    job = request(user)
    return store.create(job, plan_request(job, PlanningContext()))


def test_members_share_one_allocation_name_and_are_submitted_in_one_transaction(store: JobStore) -> None:
    members = [create(store) for _ in range(3)]
    alone = create(store)
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.id: 1.0 for member in members}, name, 1)
    records = store.allocation_members(name)
    assert [record.estimated_su for record in records] == [1.0] * 3
    assert [record.id for record in records] == [member.id for member in members]
    assert all(record_job_name(record) == name and record.allocation_nodes == 1 for record in records)
    assert record_job_name(store.get(alone.id)) == scheduler_job_name(alone.id)
    store.transition(members[1].id, JobStatus.CANCELLED, JobUpdate(reason="cancelled by user"))
    store.mark_allocation_submit_started(name, START)
    transitions = store.record_allocation_submitted(
        name, "4242", {record.id: f"/s/jobs/{record.id}" for record in records}
    )
    assert [(t.previous, t.record.status, t.moved) for t in transitions] == [
        (JobStatus.QUEUED, JobStatus.QUEUING, True),
        (JobStatus.CANCELLED, JobStatus.CANCELLED, False),
        (JobStatus.QUEUED, JobStatus.QUEUING, True),
    ]
    assert {t.record.scheduler_job_id for t in transitions if t.moved} == {"4242"}
    assert all(record.submit_started_at == START for record in store.allocation_members(name))
    assert store.active_submissions("jdoe", "stampede3", "h100") == 1, "an allocation is one Slurm job"
    store.transition(alone.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="4243"))
    assert store.active_submissions("jdoe", "stampede3", "h100") == 2


def test_an_allocation_waits_for_its_charge_until_every_member_ended(store: JobStore) -> None:
    members = [create(store) for _ in range(2)]
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.id: 2.0 for member in members}, name, 1)
    store.record_allocation_submitted(name, "77", {member.id: f"/s/{member.id}" for member in members})
    now = datetime.now(timezone.utc)
    store.transition(members[0].id, JobStatus.COMPLETED, JobUpdate(completed_at=now))
    assert store.uncharged_allocations("stampede3", now - timedelta(hours=1)) == {}
    store.transition(members[1].id, JobStatus.FAILED, JobUpdate(completed_at=now))
    assert store.uncharged_allocations("stampede3", now - timedelta(hours=1)) == {name: "77"}
    assert store.uncharged_allocations("stampede3", now + timedelta(hours=1)) == {}
    store.set_member_charges({members[0].id: (3000.0, 3.0), members[1].id: (1000.0, 1.0)})
    assert store.uncharged_allocations("stampede3", now - timedelta(hours=1)) == {}
    assert [(r.gpu_seconds, r.charged_su) for r in store.allocation_members(name)] == [(3000.0, 3.0), (1000.0, 1.0)]


def test_a_member_that_ended_counts_against_the_budget_until_its_allocation_is_charged(store: JobStore) -> None:
    members = [create(store, "budget") for _ in range(2)]
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.id: 2.0 for member in members}, name, 1)
    store.record_allocation_submitted(name, "78", {member.id: f"/s/{member.id}" for member in members})
    assert store.su_committed("budget") == 4.0
    store.transition(members[0].id, JobStatus.COMPLETED, JobUpdate(completed_at=datetime.now(timezone.utc)))
    assert store.su_committed("budget") == 4.0, "the node is billed until the allocation ends"
    store.transition(members[1].id, JobStatus.COMPLETED, JobUpdate(completed_at=datetime.now(timezone.utc)))
    store.set_member_charges({members[0].id: (600.0, 0.75), members[1].id: (200.0, 0.25)})
    assert store.su_committed("budget") == 1.0, "then only the charge"


def test_the_allocation_script_runs_the_launcher_on_a_manifest_of_member_scripts() -> None:
    now = datetime.now(timezone.utc)
    members = []
    for index in range(2):
        job = request(dataset_id=f"d{index}")
        plan = plan_request(job, PlanningContext())
        record = JobRecord(
            id=uuid.uuid4(),
            user_id="jdoe",
            agent="AlphaCal",
            dataset_id=f"d{index}",
            system="stampede3",
            queue="h100",
            status=JobStatus.QUEUED,
            gpu_count=1,
            nodes=plan.nodes,
            created_at=now,
            updated_at=now,
        )
        members.append(PackedMember(record=record, request=job))
    name = scheduler_job_name(uuid.uuid4())
    args = ["-p", "h100", "-N", "1", "--ntasks-per-node", "4", "-t", "01:00:00"]
    submission = render_allocation(
        name, members, args, 4, "/scratch/u", AgentRuntime(agent_home="/scratch/u/agents"), "srun"
    )
    directory = allocation_dir("/scratch/u", name)
    assert submission.work_dir == directory and submission.stdout_path == f"{directory}/stdout.log"
    lines = submission.script.splitlines()
    assert lines[:8] == [
        "#!/bin/bash",
        f"#SBATCH -J {name}",
        f"#SBATCH -o {directory}/stdout.log",
        f"#SBATCH -e {directory}/stderr.log",
        "#SBATCH -p h100",
        "#SBATCH -N 1",
        "#SBATCH --ntasks-per-node 4",
        "#SBATCH -t 01:00:00",
    ]
    assert "export TACC_PYTHON=python3" in lines and f"{directory}/manifest.json" in lines[-1]
    manifest = Manifest.model_validate_json(submission.files[f"{directory}/manifest.json"])
    assert manifest.placement == "srun" and manifest.gpus_per_node == 4
    assert [m.name for m in manifest.members] == [scheduler_job_name(member.record.id) for member in members]
    for entry, member in zip(manifest.members, members):
        assert entry.work_dir == f"/scratch/u/jobs/{member.record.id}" and entry.runtime_seconds == 3600
        script = submission.files[entry.script]
        assert script.startswith("#!/bin/bash\n") and "#SBATCH" not in script
        assert f"export TACC_DATASET_DIR=/scratch/u/datasets/{member.record.dataset_id}" in script
        assert json.dumps({"rfi_strategy": "medium"}) in script


def test_a_requeued_allocation_is_one_more_attempt_for_its_running_members_and_charges_wait(store: JobStore) -> None:
    running, waiting = create(store), create(store)
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({running.id: 2.0, waiting.id: 2.0}, name, 1)
    store.record_allocation_submitted(name, "90", {running.id: "/s/a", waiting.id: "/s/b"})
    policy = TrackingPolicy()
    first = member_observation(allocation("RUNNING", JobStatus.RUNNING), RUNNING_MEMBER)
    record_observation(store, store.get(running.id), first, policy)
    record_observation(
        store, store.get(waiting.id), member_observation(allocation("RUNNING", JobStatus.RUNNING), None), policy
    )
    assert (store.get(running.id).status, store.get(waiting.id).status) == (JobStatus.RUNNING, JobStatus.QUEUING)
    requeued = allocation("PENDING", JobStatus.QUEUING, "BeginTime")
    for record in (running, waiting):
        record_observation(
            store,
            store.get(record.id),
            member_observation(requeued, RUNNING_MEMBER if record is running else None),
            policy,
        )
    assert (store.get(running.id).attempt, store.get(running.id).status) == (2, JobStatus.QUEUING)
    assert store.get(waiting.id).attempt == 1, "a member that never started has used no attempt"
    done = member_observation(allocation("RUNNING", JobStatus.RUNNING), ended("COMPLETED"))
    final = record_observation(store, store.get(running.id), done, policy).record
    assert (final.status, final.gpu_seconds, final.charged_su) == (JobStatus.COMPLETED, 600.0, None), (
        "charged when the allocation ends"
    )
    assert final.completed_at == START + timedelta(minutes=11)


def packed_unsubmitted(
    store: JobStore, cluster: LocalScheduler, count: int = 3
) -> tuple[list[JobRecord], JobSubmission]:
    """Members recorded QUEUED, their allocation's submission begun (as submit_allocation does before sbatch)."""
    members = []
    for _ in range(count):
        job = parse_request(
            {
                "agent": "AlphaCal",
                "dataset_id": "VLASS2.1.eb123456",
                "gpu_count": 1,
                "max_runtime": "00:01:00",
                "user_id": "jdoe",
                "system": "local",
                "queue": "local-gpu",
            }
        )
        members.append(
            PackedMember(
                record=store.create(job, plan_request(job, PlanningContext()), flow_run_id=uuid.uuid4()), request=job
            )
        )
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.record.id: 0.25 for member in members}, name, 1)
    store.mark_allocation_submit_started(name, datetime.now(timezone.utc))
    args = ["-p", "local-gpu", "-N", "1", "--ntasks-per-node", "4", "-t", "00:01:00"]
    submission = render_allocation(
        name, members, args, 4, cluster.scratch_root, AgentRuntime(agent_home="/nowhere"), "local"
    )
    return store.allocation_members(name), submission


def test_members_whose_allocation_was_submitted_but_never_recorded_are_adopted_by_its_name_once(
    store: JobStore, tmp_path
) -> None:
    cluster = LocalScheduler(tmp_path / "cluster")
    members, submission = packed_unsubmitted(store, cluster)
    job_id = cluster.submit(submission)  # the submitter died before recording the answer
    transitions = reconcile_unsubmitted(store, cluster, members, TrackingPolicy(), lambda _: False, timedelta(days=1))
    assert len(transitions) == 3, "each member adopted once, and only QUEUING: its own state comes from its status file"
    adopted = store.allocation_members(submission.name)
    assert {(record.scheduler_job_id, record.status) for record in adopted} == {(job_id, JobStatus.QUEUING)}
    assert [record.work_dir for record in adopted] == [
        JobPaths.for_job(cluster.scratch_root, record.id, record.dataset_id).work_dir for record in adopted
    ]
    assert cluster.submit(submission) == job_id, "a late retry adopts the same allocation"


def test_members_of_an_allocation_that_never_reached_the_cluster_end_fenced(store: JobStore, tmp_path) -> None:
    cluster = LocalScheduler(tmp_path / "cluster")
    members, submission = packed_unsubmitted(store, cluster)
    transitions = reconcile_unsubmitted(store, cluster, members, TrackingPolicy(), lambda _: True, timedelta(days=1))
    assert [(t.record.status, t.record.reason) for t in transitions] == [(JobStatus.FAILED, NEVER_SUBMITTED_REASON)] * 3
    with pytest.raises(PermanentSchedulerError, match="abandoned"):
        cluster.submit(submission)
    assert cluster.find([submission.name], START) == {} and not (Path(submission.work_dir) / "manifest.json").exists()
