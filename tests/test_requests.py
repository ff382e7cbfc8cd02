"""Request validation and wall-time parsing."""

from datetime import timedelta

import pytest

from tacc_jobs.exceptions import InvalidJobRequest
from tacc_jobs.models import JobRequest, parse_request
from tacc_jobs.walltime import format_walltime, parse_walltime

VALID = {
    "agent": "AlphaCal",
    "dataset_id": "VLASS2.1.eb123456",
    "params": {"rfi_strategy": "high_sensitivity"},
    "gpu_count": 2,
    "max_runtime": "02:00:00",
    "user_id": "jdoe",
    "system": "ls6",
}


def test_valid_request_round_trips_through_json() -> None:
    request = parse_request(VALID)
    assert request.max_runtime == timedelta(hours=2)
    assert JobRequest.model_validate(request.model_dump(mode="json")) == request
    assert request.model_dump(mode="json")["max_runtime"] == "02:00:00"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("agent", "Alpha Cal; rm -rf /", "agent: 'Alpha Cal; rm -rf /' is not allowed; use a letter"),
        ("dataset_id", "../../etc", "dataset_id: '../../etc' is not allowed"),
        ("dataset_id", "VLASS$(id)", "dataset_id: 'VLASS$(id)' is not allowed"),
        ("gpu_count", 0, "gpu_count: Input should be greater than or equal to 1 (got 0)"),
        ("max_runtime", "3 days", "max_runtime: '3 days' is not a wall time; use 'HH:MM:SS', 'D-HH:MM:SS'"),
        ("max_runtime", "00:00:00", "max_runtime: '00:00:00': a wall time must be longer than zero"),
        ("user_id", "j doe", "user_id: 'j doe' is not allowed"),
        ("system", "mars", "system: Input should be 'local', 'ls6', 'frontera', 'stampede3' or 'vista' (got 'mars')"),
        ("queue", "GPU A100", "queue: 'GPU A100' is not allowed; use lower-case letters"),
        ("webhook_url", "ftp://example.org/x", "webhook_url: URL scheme should be 'http' or 'https'"),
        ("priority", "urgent", "priority: Input should be 'normal' or 'high' (got 'urgent')"),
        (
            "params",
            {"rfi_strategy": "extreme"},
            "params.rfi_strategy: Input should be 'low', 'medium', 'high' or 'high_sensitivity'",
        ),
        (
            "params",
            {"rfi_strategy": "low", "Bad Key": 1},
            "params: 'Bad Key' is not allowed; parameter names are snake_case",
        ),
        (
            "params",
            {"rfi_strategy": "low", "nested": {"a": 1}},
            "params: nested: values are strings (max 256 characters), numbers or booleans",
        ),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(field: str, value: object, expected: str) -> None:
    with pytest.raises(InvalidJobRequest) as raised:
        parse_request({**VALID, field: value})
    assert expected in str(raised.value)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(InvalidJobRequest, match="gres: Extra inputs are not permitted"):
        parse_request({**VALID, "gres": "gpu:2"})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidJobRequest) as raised:
        parse_request({**VALID, "gpu_count": -1, "user_id": ""})
    assert "gpu_count:" in str(raised.value) and "user_id:" in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("02:30:00", timedelta(hours=2, minutes=30)),
        ("1-12:00:00", timedelta(days=1, hours=12)),
        ("48h", timedelta(hours=48)),
        ("1.5h", timedelta(minutes=90)),
        ("90m", timedelta(minutes=90)),
        ("0:00:05", timedelta(seconds=5)),
    ],
)
def test_walltime_forms(text: str, expected: timedelta) -> None:
    assert parse_walltime(text) == expected


@pytest.mark.parametrize("text", ["", "2 hours", "12:60:00", "1-2", "-1h", "00:00:00"])
def test_walltime_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_walltime(text)


def test_walltime_formats_as_slurm_does() -> None:
    assert format_walltime(timedelta(hours=48)) == "2-00:00:00"
    assert format_walltime(timedelta(minutes=5, seconds=0.2)) == "00:05:01"
