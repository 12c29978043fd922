"""Callback URLs: which a client may name, and which addresses the gateways will POST to.

A callback makes the service send an HTTP request wherever a client says, from inside the
network the gateways run in: unchecked, that is a way to the broker's management API, a cloud
metadata service or anything else only the gateways can reach (server-side request forgery).
So a callback goes only to a public address: every address its host resolves to must be
globally routable, not loopback, private, link-local, multicast, unspecified or otherwise
reserved, unless the operator allows its network (``IMGQ_WEBHOOK_ALLOW_NETWORKS``; the tests
allow loopback, for a receiver in the test process).  The URL is checked when the job is
submitted (a 422 that says why) and its host again at every attempt
(``gateway/webhook_http.py``), since what a name resolves to can change in between; an
attempt connects only to the addresses it checked.

Only http and https, no user name or password in the URL, at most ``MAX_CALLBACK_CHARS``.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from yarl import URL

from shared.errors import CallbackRefused, SettingsError
from shared.messages import MAX_CALLBACK_CHARS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES: Final = ("http", "https")
# How long a submission waits for the callback's host to resolve: a resolver that takes
# longer will not do better at delivery time either.
RESOLVE_SECONDS: Final = 5.0


def parse_networks(name: str, items: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """``items`` as networks (``10.1.2.0/24``, ``::1/128``, a bare address), or a SettingsError
    naming the setting ``name``."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: {item!r} is not an IP network like 10.1.2.0/24") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses a callback may reach: public ones, and any in ``allowed``."""

    allowed: tuple[IPNetwork, ...] = ()

    def refusal(self, address: str) -> str | None:
        """Why a callback may not go to ``address`` (an IP address), in words ("a private
        address"), or None if it may."""
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 zone says nothing
        except ValueError:
            return "not an IP address"
        if self._allowed(ip):
            return None
        kind = _special(ip)
        # An IPv6 address that only wraps an IPv4 one reaches that IPv4 address.
        if kind is None and isinstance(ip, ipaddress.IPv6Address):
            inner = ip.ipv4_mapped or ip.sixtofour
            if inner is not None and not self._allowed(inner):
                kind = _special(inner)
        return None if kind is None else f"{kind} address"

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allowed)


def _special(ip: IPAddress) -> str | None:
    """What makes ``ip`` not a public address, in words; None for a public one."""
    checks = (
        (ip.is_unspecified, "an unspecified"),
        (ip.is_loopback, "a loopback"),
        (ip.is_link_local, "a link-local"),
        (ip.is_multicast, "a multicast"),
        (ip.is_private, "a private"),
        (ip.is_reserved, "a reserved"),
        # What is left: shared address space (100.64.0.0/10) and the like.
        (not ip.is_global, "a non-global"),
    )
    return next((words for special, words in checks if special), None)


@dataclass(frozen=True, slots=True)
class CallbackUrl:
    """A callback URL that passed the syntax checks: what to POST to and where to connect."""

    url: str
    # As DNS and the connection see it: IDNA-encoded, an IPv6 address without brackets.
    host: str
    port: int


def parse_callback_url(raw: str) -> CallbackUrl:
    """``raw`` as a callback URL, or ``CallbackRefused`` saying what is wrong with it."""
    if not 0 < len(raw) <= MAX_CALLBACK_CHARS:
        raise CallbackRefused(f"callback_url must have 1 to {MAX_CALLBACK_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise CallbackRefused("callback_url may not contain spaces or control characters")
    try:
        url = URL(raw)
    except ValueError as exc:
        raise CallbackRefused(f"callback_url is not a URL: {exc}") from None
    if url.scheme not in SCHEMES or not url.is_absolute() or not url.raw_host:
        raise CallbackRefused(
            f"callback_url must be an absolute http or https URL (https://host/path), got {raw!r}"
        )
    if url.user is not None or url.password is not None:
        raise CallbackRefused("callback_url may not carry a user name or password")
    host = url.raw_host
    if _legacy_ipv4(host):
        raise CallbackRefused(f"write the callback's IPv4 address as four numbers, not {host!r}")
    assert url.port is not None  # http and https have a default port
    return CallbackUrl(str(url.with_fragment(None)), host, url.port)


def _legacy_ipv4(host: str) -> bool:
    """A host that the resolver would read as an IPv4 address written some other way than
    four decimal numbers (``2130706433``, ``127.1``, ``0x7f.1``)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


_PUBLIC_ONLY: Final = (
    "callbacks go to public addresses only (not loopback, private, link-local, multicast, "
    "unspecified or reserved ones, unless the operator allows their network)"
)

# Resolves a host and port to IP addresses (``resolve_host`` below; tests give their own).
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def checked_addresses(
    host: str,
    port: int,
    policy: AddressPolicy,
    resolve: Resolver = resolve_host,
    seconds: float = RESOLVE_SECONDS,
) -> list[str]:
    """Every address ``host`` has, all of them allowed, or ``CallbackRefused`` saying why: a
    name with one address that may not be reached is refused whole, since the connection
    could land on any of them."""
    literal = ip_literal(host)
    if literal is not None:
        why = policy.refusal(literal)
        if why is not None:
            raise CallbackRefused(f"{_PUBLIC_ONLY}, and {host} is {why}")
        return [literal]
    try:
        async with asyncio.timeout(seconds):
            addresses = await resolve(host, port)
    except TimeoutError:
        raise CallbackRefused(
            f"the callback's host {host} did not resolve within {seconds:g} s"
        ) from None
    except OSError as exc:
        raise CallbackRefused(f"the callback's host {host} does not resolve: {exc}") from None
    if not addresses:
        raise CallbackRefused(f"the callback's host {host} has no address")
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            raise CallbackRefused(
                f"{_PUBLIC_ONLY}, and the callback's host {host} resolves to {address}, {why}"
            )
    return addresses


def ip_literal(host: str) -> str | None:
    """``host`` as an IP address, if it is one."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class CallbackRules:
    """What a submission's ``callback_url`` must be: a URL the gateways may POST to, for a
    client whose callbacks can be signed (``gateway/webhook_signing.py``)."""

    def __init__(
        self,
        can_sign: Callable[[str | None], bool],
        policy: AddressPolicy,
        resolve: Resolver = resolve_host,
    ) -> None:
        self._can_sign = can_sign
        self._policy = policy
        self._resolve = resolve

    async def check(self, raw: str, owner: str | None) -> str:
        """``raw``, normalised, or ``CallbackRefused`` saying why not."""
        if not self._can_sign(owner):
            raise CallbackRefused(
                "this gateway sends no callbacks: it has no secret to sign them with (it needs "
                "API tokens, IMGQ_API_TOKENS, or IMGQ_WEBHOOK_SECRET), and sends none unsigned"
            )
        url = parse_callback_url(raw)
        await checked_addresses(url.host, url.port, self._policy, self._resolve)
        return url.url
