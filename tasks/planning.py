"""Planning as a Prefect task: the planner fed with the user's history, budget and the system's block."""

from __future__ import annotations

from prefect import task

from blocks.clusters import saved_credentials
from blocks.credentials import TaccCredentials
from blocks.database import open_job_store, open_staging_store
from blocks.tapis import TapisCredentials, saved_tapis_credentials
from tacc_jobs.exceptions import PlanRefused, StagingError
from tacc_jobs.models import JobRequest, Plan
from tacc_jobs.planning.packing import BatchPlan, pack_requests
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.settings import get_settings
from tacc_jobs.staging.datasets import layout_advice, survey_dataset
from tacc_jobs.staging.transfer import LocalCopy
from tacc_jobs.webhooks import private_webhook_reason
from tasks.policies import ONCE_PER_FLOW_RUN


def system_credentials(system: str) -> TapisCredentials | TaccCredentials | None:
    """The block saved for a system: `TapisCredentials` first, else `TaccCredentials`, else None."""
    return saved_tapis_credentials(system) or saved_credentials(system)


@task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def plan_job_request(request: JobRequest, check_budget: bool = True) -> Plan:
    """Plan a request with this user's history and budget from the job store.

    Planning needs no account: the catalog is data. The system's `TapisCredentials` or
    `TaccCredentials` block, when one is saved, adds what only it knows (the allocation for
    `sbatch -A`, the bandwidth measured on past transfers to its host); `Plan.based_on` says
    which estimates used it.

    Args:
        request: The job to plan.
        check_budget: False when the batch plan has checked the user's budget already, on the
            request's share of its allocation (`submit_batch`).

    Example:
        ```python
        plan = plan_job_request(JobRequest(agent="AlphaCal", dataset_id="VLASS2.1.eb123456",
                                           gpu_count=4, max_runtime="2h", user_id="jdoe", system="ls6"))
        ```
    """
    settings = get_settings()
    store = open_job_store()
    system = request.system.value
    if request.webhook_url and not settings.allow_private_webhooks:
        if reason := private_webhook_reason(str(request.webhook_url)):
            raise PlanRefused("webhook_url", reason.removeprefix("webhook_url: "))
    try:
        dataset = survey_dataset(settings.dataset_root, request.dataset_id)
    except StagingError as error:
        raise PlanRefused("dataset_id", str(error)) from None
    credentials = system_credentials(system)
    host = LocalCopy.host if system == "local" else credentials.host if credentials else None
    measured = open_staging_store().bandwidth(host) if host else None
    based_on = [
        f"bandwidth measured on past transfers to {host}"
        if measured
        else f"default bandwidth of {settings.default_bandwidth_mb_per_s:g} MB/s (no transfer to {host or system} measured)"
    ]
    if system != "local":
        based_on.append(
            f"{type(credentials).__name__} block {system!r}: allocation {credentials.allocation or 'none set'}"
            if credentials
            else f"no TaccCredentials block {system!r} saved: no allocation (-A), default bandwidth"
        )
    context = PlanningContext(
        usd_per_gpu_hour=settings.usd_per_gpu_hour,
        usd_per_gpu_hour_by_type=settings.usd_per_gpu_hour_by_type,
        cost_warning_usd=settings.cost_warning_usd,
        su_budget=settings.su_budgets.get(request.user_id) if check_budget else None,
        su_committed=store.su_committed(request.user_id, since=settings.su_budget_since(request.user_id)),
        past_runtimes_minutes=store.past_runtimes_minutes(request.user_id, request.agent),
        account=credentials.allocation if credentials else None,
        dataset_bytes=dataset.bytes,
        bandwidth_bytes_per_second=measured or settings.default_bandwidth_mb_per_s * 1e6,
        bandwidth_measured=measured is not None,
        layout_advice=layout_advice(dataset),
    )
    return plan_request(request, context).model_copy(update={"based_on": based_on})


@task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def plan_request_batch(requests: list[JobRequest]) -> BatchPlan:
    """Pack a batch with the settings' dollar rates, each system's allocation from its saved
    block (none saved: no `-A`), and the SUs left of each user's budget (the settings' budget
    minus what the store has charged and holds for active jobs).

    Example:
        ```python
        batch = plan_request_batch([JobRequest(agent="AlphaCal", dataset_id=f"d{i}", gpu_count=1,
                                               max_runtime="1h", user_id="jdoe", system="stampede3")
                                    for i in range(24)])
        ```
    """
    settings = get_settings()
    accounts = {}
    for system in sorted({request.system.value for request in requests}):
        credentials = system_credentials(system)
        accounts[system] = credentials.allocation if credentials else None
    context = PlanningContext(
        usd_per_gpu_hour=settings.usd_per_gpu_hour, usd_per_gpu_hour_by_type=settings.usd_per_gpu_hour_by_type
    )
    store = open_job_store()
    su_left = {
        user: settings.su_budgets[user] - store.su_committed(user, since=settings.su_budget_since(user))
        for user in sorted({request.user_id for request in requests})
        if user in settings.su_budgets
    }
    return pack_requests(requests, context, accounts, su_left)
