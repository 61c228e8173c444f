"""Which hosts a ``callback_url`` may reach, for the API's check at submit and the worker's at delivery.

A callback is a request the service makes on a caller's behalf, so its address must be public (not
loopback, private, link-local such as 169.254.169.254, shared, multicast, reserved or unspecified;
IPv4-mapped and other IPv6 forms of those included) unless ``RUC_WEBHOOK_ALLOW_HOSTS`` names the host
or a network holding its address. The submit check tells a caller at once that a URL will never be
called; the delivery check (``worker.webhooks.vet``) stays the authority, since a name's DNS answer
can change between the two.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.settings import Settings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# A submit waits at most this long for DNS; a name that does not resolve in time is judged at delivery.
SUBMIT_RESOLVE_SECONDS = 2.0
NOT_PUBLIC_PROBLEM = (
    "the host is not a public address (loopback, private, link-local, ...); callbacks are only made to "
    "public addresses unless RUC_WEBHOOK_ALLOW_HOSTS lists the host"
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IpAddress) -> bool:
    """True for a globally routable unicast address (an IPv6 form of an IPv4 one is judged as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
    bad = ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local
    return ip.is_global and not bad


@dataclass(frozen=True)
class AllowList:
    """``RUC_WEBHOOK_ALLOW_HOSTS``: host names and networks callbacks may reach although not public."""

    names: frozenset[str]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def of(cls, settings: Settings) -> AllowList:
        names: set[str] = set()
        networks: list[IpNetwork] = []
        for item in (part.strip() for part in settings.webhook_allow_hosts.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                names.add(item.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def permits(self, host: str, ip: IpAddress) -> bool:
        """May a callback to ``host`` connect to ``ip``?"""
        if host.lower().rstrip(".") in self.names or is_public(ip):
            return True
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        return any(plain in net for net in self.networks)


def resolve(host: str, port: int, deadline: float) -> list[tuple[int, IpAddress]]:
    """(family, address) of each getaddrinfo answer, waiting until ``deadline`` (monotonic) at most;
    empty when the name does not resolve in time (the resolver's own timeouts are longer)."""
    found: list[Any] = []
    done = threading.Event()

    def run() -> None:
        with contextlib.suppress(OSError, UnicodeError):
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        done.set()

    threading.Thread(target=run, name="callback-dns", daemon=True).start()
    done.wait(max(0.0, deadline - time.monotonic()))
    out = []
    for family, _type, _proto, _name, sockaddr in list(found) if done.is_set() else []:
        with contextlib.suppress(ValueError):
            out.append((family, ipaddress.ip_address(sockaddr[0].split("%", 1)[0])))
    return out


def submit_problem(
    url: str, settings: Settings, *, resolve_seconds: float = SUBMIT_RESOLVE_SECONDS
) -> str | None:
    """Why ``url`` (an http(s) URL the spec already parsed) would never be called, or None.

    Refused: user info (``user:pass@``, also the ``public.example@10.0.0.1`` trick), port 0, and a
    host any of whose addresses the allow list does not permit. A name that does not resolve within
    ``resolve_seconds`` passes; delivery judges it again (and retries while it does not resolve).
    """
    try:
        parts = urlsplit(url)
        given = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain user info (user:password@); callbacks are authenticated by their signature"
    if given == 0:
        return "port 0 cannot be called"
    port = given or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "has no host"
    allowed = AllowList.of(settings)
    for _family, ip in resolve(host, port, time.monotonic() + resolve_seconds):
        if not allowed.permits(host, ip):
            return NOT_PUBLIC_PROBLEM
    return None
