"""The SSRF guard: tools send HTTP requests only to public addresses, unless the admin allowed more.

Declarative HTTP tools take their URL from the registry, and the SaaS tools take their base URL
from the agent tool's config, so an admin (or a model filling a template) could aim the worker
at its own network: the cloud metadata service, the NATS port, a database. Every request a tool
sends goes through `GuardedTransport`, which, for the first request and for every redirect:

1. allows only `http` and `https`;
2. resolves the host name (an IP literal is taken as is) and refuses the request if *any*
   resolved address is loopback, private, shared (CGNAT), link-local, multicast, reserved or
   otherwise not globally routable — IPv6 forms included (ULA, link-local, IPv4-mapped, NAT64
   and 6to4 addresses are judged by the IPv4 address they carry);
3. connects to the address it checked, not to a second DNS answer (no DNS rebinding): the URL's
   host becomes the IP, while the `Host` header and the TLS server name (SNI, certificate check)
   stay the original host name.

A redirect is followed only within the request's origin (or from http to https on the same host):
tools send credentials in headers and bodies that httpx would carry to any other host.

An agent tool's config may carry `network_allowlist`: host names (`crm.internal`,
`*.corp.example`) whose addresses are allowed whatever they are, and networks (`10.20.0.0/16`,
`fd12::/64`) whose addresses are allowed. Cloud metadata endpoints are refused even then: no tool
has a reason to read the worker's cloud credentials.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The agent tool config key an admin uses to open the guard for internal APIs.
ALLOWLIST_CONFIG_KEY = "network_allowlist"
# The request extension that carries the allowlist of the agent tool a request belongs to.
ALLOWLIST_EXTENSION = "voiceagents.network_allowlist"

# Not globally routable, by RFC (IANA special-purpose registries).
_BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (CGNAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, ...)
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)

# Cloud metadata services (AWS, GCP, Azure, OCI, ECS, Alibaba): refused even when allowlisted.
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RequestRefused(Exception):
    """The guard refused the destination; the message says which and why."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to."""


class SystemResolver:
    """The operating system's resolver (`getaddrinfo`), without blocking the event loop."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        # Zone ids ("fe80::1%eth0") are dropped: the address alone decides.
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True)
class Allowlist:
    """What an admin allowed beyond public addresses for one agent tool."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Allowlist:
        """The allowlist in an agent tool's config; a bad entry is named in the error."""
        entries = config.get(ALLOWLIST_CONFIG_KEY) or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{ALLOWLIST_CONFIG_KEY} must be a list of host names or networks")
        return cls.parse(entries)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or not _looks_like_host(entry):
                    raise ValueError(
                        f"{ALLOWLIST_CONFIG_KEY}: {raw!r} is neither a host name nor a network"
                    ) from None
                hosts.add(entry)
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]):
                    return True
            elif host == entry:
                return True
        return False

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def _looks_like_host(entry: str) -> bool:
    labels = entry.removeprefix("*.").split(".")
    return all(label and all(c.isalnum() or c == "-" for c in label) for label in labels)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_metadata(address: IPAddress) -> bool:
    inner = embedded_ipv4(address)
    return address in _METADATA_ADDRESSES or (inner is not None and inner in _METADATA_ADDRESSES)


def blocked_reason(address: IPAddress) -> str | None:
    """Why a request must not go to `address`, or None when it is a public address."""
    if is_metadata(address):
        return "a cloud metadata address"
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = blocked_reason(inner)
        return None if reason is None else f"{reason} (inside {address})"
    if any(address in network for network in _BLOCKED_NETWORKS):
        return "not a public address"
    return None


async def check_destination(url: httpx.URL, allowlist: Allowlist, resolver: Resolver) -> IPAddress:
    """The address to connect to for `url`, or `RequestRefused` saying why not."""
    if url.scheme not in ("http", "https"):
        raise RequestRefused(f"scheme {url.scheme!r} is not allowed; use http or https")
    host = url.host
    if not host:
        raise RequestRefused("the URL has no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await resolver.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise RequestRefused(f"{host} does not resolve ({type(exc).__name__})") from None
    if not addresses:
        raise RequestRefused(f"{host} does not resolve")
    host_allowed = allowlist.allows_host(host)
    for address in addresses:
        if is_metadata(address):
            raise RequestRefused(f"{host} is {address}, a cloud metadata address")
        if host_allowed or allowlist.allows_address(address):
            continue
        reason = blocked_reason(address)
        if reason is not None:
            # A single bad answer refuses the host: otherwise a round-robin answer could mix one.
            raise RequestRefused(f"{host} is {address}, {reason}")
    return addresses[0]


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks and pins the destination of every request it sends
    (redirects included, since the client sends each hop through its transport)."""

    def __init__(
        self,
        *,
        allowlist: Allowlist | None = None,
        resolver: Resolver | None = None,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allowlist = allowlist or Allowlist()
        self._resolver: Resolver = resolver or SystemResolver()
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        allowlist = request.extensions.get(ALLOWLIST_EXTENSION, self._allowlist)
        address = await check_destination(request.url, allowlist, self._resolver)
        extensions = dict(request.extensions)
        if request.url.scheme == "https":
            # TLS still names (and verifies) the host the request was for.
            extensions["sni_hostname"] = request.url.host
        pinned = httpx.Request(
            request.method,
            request.url.copy_with(host=str(address)),
            # httpx set `Host` from the original URL when the request was built.
            headers=request.headers,
            stream=request.stream,
            extensions=extensions,
        )
        return await self._inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def same_origin_redirects_only(response: httpx.Response) -> None:
    """Refuse a redirect that leaves the request's origin (scheme, host, port), except from http
    to https on the same host.

    Tools carry credentials httpx cannot tell apart (a Shopify or API-key header, any header or
    body value of a declarative tool's template; a 307 re-sends the body), and httpx strips only
    `Authorization` when a redirect changes origin: the others would follow it to another host,
    even over plain http."""
    if not response.has_redirect_location:
        return
    source = response.request.url
    target = source.join(response.headers["Location"])
    same_origin = (target.scheme, target.host, target.port) == (
        source.scheme,
        source.host,
        source.port,
    )
    upgrade = (
        (source.scheme, target.scheme) == ("http", "https")
        and target.host == source.host
        and source.port is None
        and target.port is None
    )
    if not (same_origin or upgrade):
        raise RequestRefused(f"a redirect from {source.host} to another origin is not followed")


def guarded_client(
    *,
    allowlist: Allowlist | None = None,
    resolver: Resolver | None = None,
    timeout: float = 10.0,
    max_redirects: int = 5,
    base_url: str = "",
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """An HTTP client for tools: follows redirects within the request's origin, each hop checked
    and pinned."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allowlist=allowlist, resolver=resolver),
        follow_redirects=True,
        max_redirects=max_redirects,
        timeout=timeout,
        base_url=base_url,
        headers=headers,
        event_hooks={"response": [same_origin_redirects_only]},
    )
