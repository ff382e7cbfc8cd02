"""What the tasks retry: failures that may pass next time, and only those."""

from __future__ import annotations

import pytest
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from tasks.policies import is_transient_error


def test_a_slot_asked_of_an_unreachable_prefect_api_is_retried() -> None:
    """The per-host SSH-session slot is a Prefect global concurrency limit: while the API is
    unreachable, asking for one fails, and a retry may pass once the server is back."""
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        with pytest.raises(ConcurrencySlotAcquisitionError) as raised:
            with concurrency("ssh-sessions-login1.example.org", occupy=1, strict=True):
                pass
    assert is_transient_error(raised.value), repr(raised.value.__cause__)


def test_a_slot_refused_for_a_missing_limit_is_not_retried() -> None:
    assert not is_transient_error(
        ConcurrencySlotAcquisitionError("Concurrency limits {'x'} must be created before acquiring slots")
    )
