"""Webhooks: public addresses only (unless the operator allows private ones), sent to the address
that was checked, with URLs masked in every message."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx

from tacc_jobs.exceptions import TransientError, WebhookError

ALLOW_PRIVATE = "set TACC_ORCH_ALLOW_PRIVATE_WEBHOOKS=true to allow it"


class TransientWebhookError(WebhookError, TransientError):
    """A webhook send worth retrying: no answer, or a 5xx or 429 answer."""


def masked_url(url: str) -> str:
    """A webhook URL as messages may show it: its scheme and host; its path and query, which
    often carry a token, are left out.

    Example:
        >>> masked_url("https://hooks.example.org/services/T0/B0/s3cret?token=s3cret")
        'https://hooks.example.org/…'
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"


def _private_kind(addresses: list[str]) -> str | None:
    """The kind of the first of `addresses` that is not public (loopback, link-local, private, reserved)."""
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        kinds = (("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("private", ip.is_private))
        if kind := next((name for name, flag in (*kinds, ("reserved", ip.is_reserved)) if flag), None):
            return kind
    return None


def private_webhook_reason(url: str) -> str | None:
    """Why `url` may not receive webhooks (a loopback, private or link-local host), or None.

    A host that does not resolve now is not refused here: the send fails later, and is retried.

    Example:
        >>> print(private_webhook_reason("http://169.254.169.254/latest/meta-data"))
        webhook_url: 169.254.169.254 is a link-local address; set TACC_ORCH_ALLOW_PRIVATE_WEBHOOKS=true to allow it
    """
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return None
    kind = _private_kind(sorted(addresses))
    return f"webhook_url: {host} is a {kind} address; {ALLOW_PRIVATE}" if kind else None


def post_webhook(url: str, payload: dict[str, Any], allow_private: bool, timeout: float = 10.0) -> int:
    """POST `payload` as JSON to `url`, connecting to the address its host resolved to when it
    was checked: the name is resolved once, so a DNS answer that changes between the check and
    the connection (DNS rebinding) cannot point the request at a private address. The request
    still names the host (Host header, TLS server name and certificate check).

    Returns:
        The answer's status code (2xx or 3xx).

    Raises:
        WebhookError: A refused address, or a 4xx answer (not retried).
        TransientWebhookError: No answer, a 5xx or 429 answer (retried).
        Neither names more of the URL than `masked_url` shows.

    Example:
        ```python
        post_webhook("https://portal.example.org/hooks/jobs", {"status": "COMPLETED"}, allow_private=False)
        ```
    """
    parts, where = urlsplit(url), masked_url(url)
    host = parts.hostname or ""
    try:
        addresses = list(
            dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, parts.port, type=socket.SOCK_STREAM))
        )
    except socket.gaierror:
        raise TransientWebhookError(f"webhook to {where}: {host} does not resolve") from None
    if not allow_private and (kind := _private_kind(addresses)):
        raise WebhookError(f"webhook to {where}: {host} is a {kind} address; {ALLOW_PRIVATE}")
    netloc = f"{host}:{parts.port}" if parts.port else host
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    with httpx.Client(timeout=timeout) as client:
        for address in addresses:  # each address the check saw, in the resolver's order; no other
            literal = f"[{address}]" if ":" in address else address
            pinned = parts._replace(netloc=f"{literal}:{parts.port}" if parts.port else literal).geturl()
            try:
                response = client.post(pinned, json=payload, headers={"Host": netloc}, extensions=extensions)
                break
            except httpx.ConnectError:
                continue
            except httpx.TransportError as error:
                raise TransientWebhookError(f"webhook to {where}: {type(error).__name__}") from None
        else:
            raise TransientWebhookError(f"webhook to {where}: no address of {host} accepted a connection")
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientWebhookError(f"webhook to {where}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise WebhookError(f"webhook to {where}: HTTP {response.status_code}")
    return response.status_code
