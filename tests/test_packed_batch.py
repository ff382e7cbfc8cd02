"""A packed batch end to end on the embedded cluster: one allocation, many records, each with
its own GPUs, status, result, webhook, and share of the charge; one member's failure and one
member's cancel leave the others to complete."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from flows.batch import submit_batch
from flows.cancel import cancel_job
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.schedulers.job_script import allocation_dir
from tasks import cancellation
from tasks.cancellation import cancel_stored_job
from tasks.tracking import sweep_system
from tests.conftest import Webhook, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")


def request(user: str, webhook_url: str | None, **params: Any) -> dict[str, Any]:
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 1,
        "max_runtime": "00:30:00",
        "user_id": user,
        "system": "local",
        "queue": "local-gpu",
        "webhook_url": webhook_url,
        "params": {"rfi_strategy": "low", "step_seconds": 0.4, **params},
    }


def members_of(user: str) -> list[JobRecord]:
    return sorted(open_job_store().history(user, limit=100).items, key=lambda record: record.created_at)


def overlapping(first: dict[str, Any], second: dict[str, Any]) -> bool:
    return datetime.fromisoformat(first["start"]) < datetime.fromisoformat(second["end"]) and datetime.fromisoformat(
        second["start"]
    ) < datetime.fromisoformat(first["end"])


def test_a_packed_batch_runs_side_by_side_in_one_allocation(webhook: Webhook) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    requests = [request(user, webhook.url) for _ in range(3)]
    requests.append(
        request(user, webhook.url, step_seconds=1.5)
    )  # still running when the long one is cancelled, however slow the sweeps
    requests.append(request(user, webhook.url, step_seconds="not-a-number"))  # the agent rejects it: exit code 1
    requests.append(request(user, webhook.url, step_seconds=10))  # long enough to be cancelled while it runs
    submitted = submit_batch(requests, parallel_limit=2, wait=False)
    assert len({record.allocation_name for record in submitted}) == 1 and submitted[0].allocation_name
    assert len({record.scheduler_job_id for record in submitted}) == 1, "one scheduler job, six records"
    assert all(record.allocation_nodes == 2 for record in submitted), "6 one-GPU requests on 4-GPU nodes: 2 nodes"
    assert round(sum(record.estimated_su for record in submitted), 4) == 2 * 0.5, "the allocation's estimate, shared"
    long = submitted[5]
    store = open_job_store()
    wait_until(
        lambda: sweep_system("local") and store.get(long.id).status is JobStatus.RUNNING, timeout=60, interval=0.5
    )
    cancelled = cancel_job(long.id)
    assert cancelled.status is JobStatus.CANCELLED
    cluster = scheduler_for("local")
    allocation = cluster.states({long.scheduler_job_id: long.allocation_name})[long.scheduler_job_id]
    assert allocation.state == "RUNNING", "cancelling one member leaves the allocation running"

    def charged() -> list[JobRecord] | None:
        sweep_system("local")
        records = members_of(user)
        return (
            records if all(record.status.is_terminal and record.charged_su is not None for record in records) else None
        )

    records = wait_until(charged, timeout=120, interval=0.5)
    statuses = [record.status for record in records]
    assert statuses == [JobStatus.COMPLETED] * 4 + [JobStatus.FAILED, JobStatus.CANCELLED]
    assert records[4].reason == "exit code 1"
    work_dir = Path(records[5].work_dir)
    assert json.loads((work_dir / "output" / "status.json").read_text())["state"] == "CANCELLED"
    assert (work_dir / "cancel").exists()

    completed = records[:4]
    assert all(record.result["samples"] == 12000 and record.progress == 1.0 for record in completed)
    placements = [record.result["allocation"] for record in completed]
    assert all(
        placement["name"] == records[0].allocation_name and len(placement["gpus"]) == 1 for placement in placements
    )
    statuses_json = [json.loads((Path(record.work_dir) / "output" / "status.json").read_text()) for record in records]
    pairs = 0
    for first in range(len(records)):
        for second in range(first + 1, len(records)):
            a, b = statuses_json[first], statuses_json[second]
            if a["gpus"] and b["gpus"] and overlapping(a, b):
                pairs += 1
                assert (a["node"], a["gpus"]) != (b["node"], b["gpus"]), "members running at once have their own GPUs"
    assert pairs >= 4, "members ran side by side"

    final = cluster.states({records[0].scheduler_job_id: records[0].allocation_name})[records[0].scheduler_job_id]
    assert final.state == "COMPLETED"
    expected = charge_su(find_queue("local", "local-gpu"), 2, final.end - final.start)
    assert round(sum(record.charged_su for record in records), 4) == expected
    assert all(record.gpu_seconds > 0 for record in records[:5])
    used = sum(record.gpu_seconds for record in records)
    assert all(abs(record.charged_su - expected * record.gpu_seconds / used) <= 0.0004 for record in records), (
        "charged in proportion to GPU-seconds"
    )
    assert sorted(post["id"] for post in webhook.received) == sorted(str(record.id) for record in records)
    assert {post["status"] for post in webhook.received} == {"COMPLETED", "FAILED", "CANCELLED"}
    manifest = json.loads(
        (Path(allocation_dir(cluster.scratch_root, records[0].allocation_name)) / "manifest.json").read_text()
    )
    assert [member["name"] for member in manifest["members"]] == [f"tacc-{record.id.hex}" for record in submitted]


def test_two_cancels_at_once_of_the_last_two_members_cancel_the_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each canceller read the other member live, so each stopped only its own step, and the
    allocation, with nothing left to run, was never cancelled. The two reads are made to meet."""
    user = f"u{uuid.uuid4().hex[:8]}"
    members = submit_batch([request(user, None, step_seconds=20) for _ in range(2)], wait=False)
    assert members[0].allocation_name and members[0].allocation_name == members[1].allocation_name
    store = open_job_store()
    wait_until(
        lambda: sweep_system("local") and all(store.get(m.id).status is JobStatus.RUNNING for m in members), 60, 0.5
    )
    meet, read_live = threading.Barrier(2), cancellation._other_members_live

    def read_then_meet(store, record) -> bool:  # type: ignore[no-untyped-def]
        live = read_live(store, record)
        try:
            meet.wait(timeout=5)  # both read before either records its cancel (when nothing keeps them apart)
        except threading.BrokenBarrierError:
            pass
        return live

    monkeypatch.setattr(cancellation, "_other_members_live", read_then_meet)
    cancels = [threading.Thread(target=cancel_stored_job, args=(store, store.get(m.id), "by test")) for m in members]
    for thread in cancels:
        thread.start()
    for thread in cancels:
        thread.join(timeout=120)
    cluster = scheduler_for("local")
    job_id = members[0].scheduler_job_id
    ended = wait_until(
        lambda: (s := cluster.states({job_id: members[0].allocation_name})[job_id]).state != "RUNNING" and s, 60, 0.5
    )
    assert ended.state.startswith("CANCELLED"), ended  # not COMPLETED: the last member's cancel cancels it
    assert {store.get(m.id).status for m in members} == {JobStatus.CANCELLED}
