"""Where webhooks may go: public addresses only, unless the operator allows private ones."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


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
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        kind = next((name for name, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                                              ("private", ip.is_private), ("reserved", ip.is_reserved)) if flag), None)
        if kind:
            return f"webhook_url: {host} is a {kind} address; set TACC_ORCH_ALLOW_PRIVATE_WEBHOOKS=true to allow it"
    return None
