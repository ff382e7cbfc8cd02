"""The stack's automations: crash the flow runs whose process died, and (the example) notify
when a TACC job fails.

A flow run whose process is killed with its host (SIGKILL, a power cut, an OOM kill) cannot say
so: it stays Running in the UI for ever, and what keeps runs in step with their jobs only looks
at runs that ended. Prefect's answer is heartbeats: each run emits `prefect.flow-run.heartbeat`
every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (`scripts/stack.sh` sets 30), and
`crash-zombie-flow-runs` marks Crashed a run silent for 10 minutes (a suspended run is not: its
Suspended event answers). Its job runs on; `watch-jobs` follows it, and the crashed run then
takes its job's end, as after a SIGTERM. The window is much longer than the heartbeat because
the server also sees silence while it is itself down: after a restart it evaluates the windows
that ran out meanwhile before live runs can beat again, so a window shorter than an outage
would crash live runs.

Every job state change is a Prefect event (`tacc.job.<status>`, resource `tacc.job.<id>`). This
creates the automation `notify-on-failed-tacc-job`: on each `tacc.job.failed` event it sends a
notification through a Prefect notification block, either one you saved (Slack, Teams, email,
... in the UI's Blocks page) or a custom-webhook block made here from a URL (kept as a secret).
An existing automation of that name is left as it is (edits made in the UI's Automations page
stay), unless `--replace`.

Example:
    ```bash
    python -m deployments.automations --crash-zombie-runs 600
    python -m deployments.automations --webhook-url https://hooks.example.org/tacc
    python -m deployments.automations --block slack-webhook/ops-channel --replace
    ```
"""

from __future__ import annotations

import argparse
import uuid
from datetime import timedelta

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from tacc_jobs.settings import get_settings

AUTOMATION_NAME = "notify-on-failed-tacc-job"
ZOMBIE_AUTOMATION_NAME = "crash-zombie-flow-runs"
RUN_ANSWERS = ("Completed", "Failed", "Cancelled", "Crashed", "Suspended", "Paused")
WEBHOOK_BLOCK_NAME = "tacc-job-failures"
SUBJECT = "TACC job {{ event.resource['prefect.resource.name'] }} FAILED"
BODY = (
    "Job {{ event.payload.id }} ({{ event.resource['prefect.resource.name'] }}) failed on "
    "{{ event.payload.system }}/{{ event.payload.queue }} as scheduler job {{ event.payload.scheduler_job_id }}: "
    "{{ event.payload.reason }}. Progress {{ (event.payload.progress * 100) | round | int }}%, "
    "output in {{ event.payload.output_location }}."
)


def save_webhook_block(url: str) -> uuid.UUID:
    """Save (overwrite) the custom-webhook notification block that posts `{"text": ...}` to `url`;
    the URL (which often carries a token) is one of the block's secrets."""
    block = CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK_NAME,
        url="{{webhook_url}}",
        secrets={"webhook_url": url},
        json_data={"text": "{{subject}}\n{{body}}"},
        allow_private_urls=get_settings().allow_private_webhooks,
    )
    return block.save(WEBHOOK_BLOCK_NAME, overwrite=True)


def notify_on_failed_jobs(block_document_id: uuid.UUID, replace: bool = False) -> Automation:
    """Create the automation to notify through the block; one of the same name is kept as it is,
    or with `replace`, updated in place."""
    automation = Automation(
        name=AUTOMATION_NAME,
        description="Notify when a TACC job ends FAILED (a non-zero exit, TIMEOUT, OUT_OF_MEMORY, a node failure)",
        trigger=EventTrigger(
            expect={"tacc.job.failed"},
            match={"prefect.resource.id": "tacc.job.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)],
    )
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
    except ValueError:  # none of that name yet
        return automation.create()
    if not replace:
        return existing
    automation.id = existing.id
    automation.update()
    return automation


def crash_zombie_flow_runs(silent_seconds: int) -> Automation:
    """Create the automation that marks Crashed a flow run that stopped emitting heartbeats: its
    process died without a word. One that exists is kept as it is (updated in place only when
    the window changed): an update resets what it watches.

    Args:
        silent_seconds: How long a run may emit no heartbeat (several of its
            `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, and longer than a Prefect server outage).
    """
    automation = Automation(
        name=ZOMBIE_AUTOMATION_NAME,
        description=f"Crash a flow run silent for {silent_seconds} s: its process died (its job runs on)",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in RUN_ANSWERS)},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silent_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {silent_seconds} s: the run's process died",
            )
        ],
    )
    try:
        existing = Automation.read(name=ZOMBIE_AUTOMATION_NAME)
    except ValueError:  # none of that name yet
        return automation.create()
    trigger = existing.trigger
    if isinstance(trigger, EventTrigger) and (trigger.within, trigger.expect) == (
        automation.trigger.within,
        automation.trigger.expect,
    ):
        return existing  # an update would forget the runs it watches: a run killed before it would never crash
    automation.id = existing.id
    automation.update()
    return automation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--crash-zombie-runs",
        type=int,
        metavar="SILENT_SECONDS",
        help=f"create {ZOMBIE_AUTOMATION_NAME!r}: crash flow runs that emit no heartbeat this long",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--webhook-url", help=f"post notifications here (saved as the block {WEBHOOK_BLOCK_NAME!r})")
    target.add_argument("--block", help="an existing notification block, as TYPE-SLUG/NAME, e.g. slack-webhook/ops")
    parser.add_argument("--replace", action="store_true", help="update an existing automation of the same name")
    args = parser.parse_args()
    if args.crash_zombie_runs is None and not (args.webhook_url or args.block):
        parser.error("give --crash-zombie-runs, --webhook-url or --block")
    if args.crash_zombie_runs is not None:
        zombies = crash_zombie_flow_runs(args.crash_zombie_runs)
        print(f"automation {zombies.name} ({zombies.id}): crash runs silent for {zombies.trigger.within}")
        if not (args.webhook_url or args.block):
            return
    if args.webhook_url:
        block_id = save_webhook_block(args.webhook_url)
    else:
        try:
            block_id = Block.load(args.block)._block_document_id
        except (ValueError, ObjectNotFound) as error:
            raise SystemExit(f"--block {args.block}: no such notification block ({error})") from None
    automation = notify_on_failed_jobs(block_id, replace=args.replace)
    target = automation.actions[0].block_document_id if isinstance(automation.actions[0], SendNotification) else "?"
    print(f"automation {automation.name} ({automation.id}): on tacc.job.failed, notify through block {target}")


if __name__ == "__main__":
    main()
