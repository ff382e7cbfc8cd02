"""Job arrays: Slurm's task ids and pending-task notation, the embedded cluster's `--array`
(throttle, environment, one task failing or cancelled alone), and a batch of whole-node
requests submitted as one array end to end on the embedded cluster."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from flows.batch import has_slot, submit_batch
from flows.cancel import cancel_job
from tacc_jobs.models import JobRecord, JobStatus, parse_request
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.arrays import (
    array_spec,
    parse_array_spec,
    render_array,
    reported_task_ids,
    with_array_indexes,
)
from tacc_jobs.schedulers.job_script import (
    AgentRuntime,
    JobPaths,
    allocation_dir,
    scheduler_job_name,
)
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.schedulers.packed_script import PackedMember
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.store import JobStore, JobUpdate, migrate
from tacc_jobs.store.engine import sqlite_engine
from tacc_jobs.tracking import TrackingPolicy, reconcile_unsubmitted
from tasks.cancellation import cancel_stored_job
from tasks.tracking import sweep_system
from tests.conftest import state_of, wait_until


def test_array_specs_round_trip_and_keep_their_throttle() -> None:
    assert parse_array_spec("0-4%2") == ([0, 1, 2, 3, 4], 2)
    assert parse_array_spec("3") == ([3], None)
    assert array_spec([4, 0, 1, 3], 2) == "0-1,3-4%2"
    assert with_array_indexes(["-N", "1", "--array", "0-4%2"], [0, 2, 4]) == ["-N", "1", "--array", "0,2,4%2"]
    for bad in ("", "a-3", "1-3%x", "0-9:0"):
        with pytest.raises(ValueError):
            parse_array_spec(bad)


def test_lines_of_several_tasks_speak_for_the_wanted_tasks_they_cover() -> None:
    wanted = ["12_0", "12_4", "12_9", "13_4", "4"]
    assert reported_task_ids("12_[4-9%2]", wanted) == ["12_4", "12_9"]
    assert reported_task_ids("12_[0,9]", wanted) == ["12_0", "12_9"]
    assert reported_task_ids("12", wanted) == ["12_0", "12_4", "12_9"]
    assert reported_task_ids("12_4", wanted) == [], "a task's own line is matched by its id"


def encoded(*lines: str) -> str:
    return base64.b64encode("\n".join(lines).encode()).decode()


def test_a_poll_reads_array_tasks_one_per_line_pending_ones_together_and_ended_ones_from_accounting() -> None:
    wanted = {"50_0": "tacc-a", "50_1": "tacc-a", "50_2": "tacc-a", "50_3": "tacc-a", "51_0": "tacc-b"}
    queue = encoded(
        "50_0|RUNNING|None|2026-11-28T10:00:00|2026-11-28T11:00:00|2026-11-28T09:59:00|tacc-a",
        "50_[2-3%2]|PENDING|JobArrayTaskLimit|N/A|N/A|2026-11-28T09:59:00|tacc-a",
        "51_0|RUNNING|None|2026-11-28T10:00:00|N/A|2026-11-28T09:59:00|tacc-other",
    )  # a reused id: not ours
    accounted = "0 " + encoded(
        "50_0|RUNNING|0:0|2026-11-28T10:00:00|Unknown|None|tacc-a",
        "50_1|FAILED|3:0|2026-11-28T10:00:00|2026-11-28T10:05:00|None|tacc-a",
    )
    states = SlurmScheduler._answered(wanted, queue, [accounted])
    assert {job_id: state.state for job_id, state in states.items()} == {
        "50_0": "RUNNING",
        "50_1": "FAILED",
        "50_2": "PENDING",
        "50_3": "PENDING",
    }
    assert states["50_2"].reason == "JobArrayTaskLimit" and states["50_1"].exit_code == "3:0"
    cancelled = "0 " + encoded("50_[1-3%2]|CANCELLED by 1001|0:0|None|2026-11-28T10:01:00|None|tacc-a")
    states = SlurmScheduler._answered(wanted, encoded(), [cancelled])
    assert {job_id: state.state for job_id, state in states.items()} == {
        task: "CANCELLED by 1001" for task in ("50_1", "50_2", "50_3")
    }


def write_script(tmp_path: Path, body: str) -> JobSubmission:
    work_dir = tmp_path / f"w-{uuid.uuid4().hex[:6]}"
    return JobSubmission(
        name=scheduler_job_name(uuid.uuid4()),
        script=f"#!/bin/bash\n{body}\n",
        work_dir=str(work_dir),
        stdout_path=str(work_dir / "out-%A_%a.log"),
        stderr_path=str(work_dir / "err-%a.log"),
        sbatch_args=["-p", "local-gpu", "-N", "1", "-t", "00:05:00", "--array", "0-3%2"],
    )


def test_the_embedded_cluster_runs_an_array_as_slurm_does(tmp_path: Path) -> None:
    cluster = LocalScheduler(tmp_path / "cluster")
    body = (
        '[ "$SLURM_ARRAY_TASK_ID" = 2 ] && exit 7; echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT"; '
        "date +%s.%N; sleep 1.5; date +%s.%N"
    )
    submission = write_script(tmp_path, body)
    array = cluster.submit(submission)
    tasks = [f"{array}_{index}" for index in range(4)]
    assert cluster.submit(submission) == array, "the name is the key: a retry adopts the array"
    assert cluster.find([submission.name], datetime.now(timezone.utc))[submission.name].job_id.startswith(f"{array}_")
    throttled = wait_until(
        lambda: [state_of(cluster, task) for task in tasks if state_of(cluster, task).reason == "JobArrayTaskLimit"]
    )
    assert throttled[0].state == "PENDING", "with two tasks running the others wait for the throttle, not for nodes"
    ended = wait_until(
        lambda: all(state_of(cluster, task).end for task in tasks) and [state_of(cluster, task) for task in tasks],
        timeout=30,
    )
    assert [state.state for state in ended] == ["COMPLETED", "COMPLETED", "FAILED", "COMPLETED"]
    assert ended[2].exit_code == "7:0", "one task failing fails it alone"
    runs = []
    for index in (0, 1, 3):
        lines = (Path(submission.work_dir) / f"out-{array}_{index}.log").read_text().split()
        assert lines[:3] == [array, str(index), "4"]
        runs.append((float(lines[3]), float(lines[4])))
    for moment in [start for start, _ in runs]:
        assert sum(start <= moment < end for start, end in runs) <= 2, "at most 2 tasks at once (%2)"
    assert [
        row[0]
        for row in cluster.accounting(
            datetime.now(timezone.utc) - timedelta(hours=1), datetime.now(timezone.utc) + timedelta(hours=1)
        )
        if row[-1] == submission.name
    ] == tasks


def test_cancelling_one_task_of_an_array_leaves_the_others(tmp_path: Path) -> None:
    cluster = LocalScheduler(tmp_path / "cluster")
    submission = write_script(tmp_path, "sleep 2")
    array = cluster.submit(submission)
    wait_until(lambda: state_of(cluster, f"{array}_0").state == "RUNNING")
    cluster.cancel(f"{array}_0", submission.name)
    cluster.cancel(f"{array}_3", submission.name)  # still pending
    ended = wait_until(
        lambda: (
            all(state_of(cluster, f"{array}_{i}").end for i in range(4))
            and [state_of(cluster, f"{array}_{i}").state for i in range(4)]
        ),
        timeout=30,
    )
    assert [state.split()[0] for state in ended] == ["CANCELLED", "COMPLETED", "COMPLETED", "CANCELLED"]


def array_members(store: JobStore, count: int) -> list[PackedMember]:
    members = []
    for _ in range(count):
        job = parse_request(
            {
                "agent": "AlphaCal",
                "dataset_id": "VLASS2.1.eb123456",
                "gpu_count": 4,
                "max_runtime": "00:05:00",
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
    return members


def test_array_members_submitted_but_never_recorded_are_adopted_with_their_own_task_ids(tmp_path: Path) -> None:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    store = JobStore(engine)
    cluster = LocalScheduler(tmp_path / "cluster")
    members = array_members(store, 3)
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.record.id: 1.0 for member in members}, name, 1, array=True)
    store.mark_allocation_submit_started(name, datetime.now(timezone.utc))
    members = [member.model_copy(update={"record": store.get(member.record.id)}) for member in members]
    submission = render_array(
        name,
        members,
        ["-p", "local-gpu", "-N", "1", "-t", "00:05:00", "--array", "0-2%8", "--hold"],
        cluster.scratch_root,
        AgentRuntime(agent_home="/nowhere"),
    )
    assert "exec bash member.sh >>stdout.log 2>>stderr.log" in submission.script
    array = cluster.submit(submission)  # held: nothing runs; the submitter died before recording the answer
    reconcile_unsubmitted(
        store, cluster, store.allocation_members(name), TrackingPolicy(), lambda _: False, timedelta(days=1)
    )
    adopted = store.allocation_members(name)
    assert [(record.scheduler_job_id, record.status) for record in adopted] == [
        (f"{array}_{i}", JobStatus.QUEUING) for i in range(3)
    ]
    assert store.active_submissions("jdoe", "local", "local-gpu") == 3, "each live task is a Slurm job against the cap"
    assert store.uncharged_allocations("local", datetime.now(timezone.utc) - timedelta(days=1)) == {}, (
        "no split for arrays"
    )
    for index in range(3):
        cluster.cancel(f"{array}_{index}")


def request(user: str, strategy: str, **params: Any) -> dict[str, Any]:
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:30:00",
        "user_id": user,
        "system": "local",
        "queue": "local-gpu",
        "params": {"rfi_strategy": strategy, "step_seconds": 0.3, **params},
    }


@pytest.mark.usefixtures("prefect_server")
def test_a_batch_of_whole_node_requests_runs_as_one_array_with_a_record_per_task() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    strategies = ["low", "medium", "high", "low"]
    requests = [request(user, strategy) for strategy in strategies]
    requests.append(request(user, "medium", step_seconds="not-a-number"))  # the agent rejects it: exit code 1
    requests.append(request(user, "high", step_seconds=20))  # long enough to be cancelled while it runs
    submitted = submit_batch(requests, parallel_limit=2, wait=False)
    name = submitted[0].allocation_name
    assert name and {record.allocation_name for record in submitted} == {name}
    array = submitted[0].scheduler_job_id.split("_")[0]
    assert [record.scheduler_job_id for record in submitted] == [f"{array}_{index}" for index in range(6)], (
        "one sbatch, task i = request i"
    )
    script = (Path(allocation_dir(scheduler_for("local").scratch_root, name)) / "job.sbatch").read_text()
    assert "#SBATCH --array 0-5%8" in script, "throttled to local-gpu's 8-job cap"
    store = open_job_store()
    long = submitted[5]
    wait_until(
        lambda: sweep_system("local") and store.get(long.id).status is JobStatus.RUNNING, timeout=120, interval=0.5
    )
    assert cancel_job(long.id).status is JobStatus.CANCELLED

    def ended() -> list[JobRecord] | None:
        sweep_system("local")
        records = [store.get(record.id) for record in submitted]
        return records if all(record.status.is_terminal for record in records) else None

    records = wait_until(ended, timeout=180, interval=0.5)
    assert [record.status for record in records] == [JobStatus.COMPLETED] * 4 + [JobStatus.FAILED, JobStatus.CANCELLED]
    assert records[4].reason == "exit code 1"
    assert [record.result["rfi_strategy"] for record in records[:4]] == strategies, "each task ran its own request"
    cluster = scheduler_for("local")
    states = cluster.states({record.scheduler_job_id: name for record in records})
    assert states[records[5].scheduler_job_id].state.startswith("CANCELLED"), "the cancel stopped its task"
    spec = find_queue("local", "local-gpu")
    for record in records[:5]:
        state = states[record.scheduler_job_id]
        assert record.charged_su == charge_su(spec, 1, state.end - state.start), "its own node for its own run time"
    runs = sorted((states[record.scheduler_job_id].start, states[record.scheduler_job_id].end) for record in records)
    assert all(sum(start <= moment < end for start, end in runs) <= 2 for moment, _ in runs), (
        "two nodes: two tasks at once"
    )
    stdout = Path(records[0].work_dir, "stdout.log").read_text()
    assert (
        "alphacal: done" in stdout
        and json.loads(Path(records[0].work_dir, "output", "result.json").read_text())["rfi_strategy"] == "low"
    )


def test_an_array_waits_for_its_throttle_in_free_slots_then_counts_its_live_tasks(tmp_path: Path) -> None:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    store = JobStore(engine)
    running, *members = [member.record for member in array_members(store, 4)]
    store.transition(
        running.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="7")
    )  # one job of jdoe in local-gpu (cap 8)
    assert has_slot(store, members, [], slots=7) and not has_slot(store, members, [], slots=8)
    assert not has_slot(store, members, [(running, 2)], slots=6), "what is being launched counts too"
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.id: 1.0 for member in members}, name, 1, array=True)
    store.record_allocation_submitted(name, "9", {member.id: f"/s/{member.id}" for member in members})
    assert [record.scheduler_job_id for record in store.allocation_members(name)] == ["9_0", "9_1", "9_2"]
    assert store.active_submissions("jdoe", "local", "local-gpu") == 4


def test_a_member_cancelled_before_its_task_starts_does_not_run(tmp_path: Path) -> None:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    store = JobStore(engine)
    cluster = LocalScheduler(tmp_path / "cluster")
    members = array_members(store, 2)
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.record.id: 1.0 for member in members}, name, 1, array=True)
    members = [member.model_copy(update={"record": store.get(member.record.id)}) for member in members]
    submission = render_array(
        name,
        members,
        ["-p", "local-gpu", "-N", "1", "-t", "00:05:00", "--array", "0-1%8"],
        cluster.scratch_root,
        AgentRuntime(agent_home="/nowhere"),
    )
    ran, cancelled = (
        Path(JobPaths.for_job(cluster.scratch_root, member.record.id, member.record.dataset_id).work_dir)
        for member in members
    )
    cluster.cancel_member(str(cancelled))  # its record was cancelled while sbatch ran
    array = cluster.submit(submission)
    ended = wait_until(
        lambda: (
            all(state_of(cluster, f"{array}_{i}").end for i in range(2))
            and [state_of(cluster, f"{array}_{i}") for i in range(2)]
        ),
        timeout=30,
    )
    assert ended[1].state == "COMPLETED" and not (cancelled / "params.json").exists(), "its member.sh never ran"
    assert "cancelled before it started" in (Path(submission.work_dir) / "stderr-1.log").read_text()
    assert (ran / "params.json").exists() and ended[0].state == "FAILED", (
        "the other ran (and failed: no agent at /nowhere)"
    )


@pytest.mark.usefixtures("prefect_server")
def test_cancelling_an_array_member_before_the_array_is_submitted_leaves_it_out(tmp_path: Path) -> None:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    store = JobStore(engine)
    members = array_members(store, 3)
    name = scheduler_job_name(uuid.uuid4())
    store.assign_allocation({member.record.id: 1.0 for member in members}, name, 1, array=True)
    cancelled = cancel_stored_job(store, store.get(members[1].record.id), "cancelled by user")
    assert cancelled.status is JobStatus.CANCELLED
    cluster = scheduler_for("local")
    marker = Path(JobPaths.for_job(cluster.scratch_root, cancelled.id, cancelled.dataset_id).work_dir, "cancel")
    assert marker.exists(), "its marker stops its task should the array's sbatch be under way"
    live = [PackedMember(record=store.get(member.record.id), request=member.request) for member in members]
    live = [member for member in live if member.record.status is JobStatus.QUEUED]
    submission = render_array(
        name,
        live,
        ["-p", "local-gpu", "-N", "1", "-t", "00:05:00", "--array", "0-2%8"],
        cluster.scratch_root,
        AgentRuntime(agent_home="/nowhere"),
    )
    assert "--array" in submission.sbatch_args and submission.sbatch_args[-1] == "0,2%8", "the array leaves it out"
    assert not (Path(allocation_dir(cluster.scratch_root, name)) / ".abandoned").exists(), (
        "the array's name is not fenced"
    )
