"""Where the service may send requests (webhooks): the SSRF policy.

A URL is checked twice: when a job is submitted (a clear 422) and again at every
delivery, because DNS may answer differently later. Both times the host is resolved and
*every* address must be public; the delivery then connects to the address that was
checked (not to whatever a second lookup returns), with the original name kept for the
Host header and TLS.

Refused by default: loopback, private (RFC 1918, ULA), link-local (cloud metadata at
169.254.169.254 included), CGNAT, multicast, reserved and unspecified addresses, IPv4
written as one number (2130706433) or in hex (0x7f000001) once resolved, and IPv4
mapped into IPv6. An on-premises receiver is allowed by listing its host name, address
or network in `KD_WEBHOOK_ALLOW` (comma-separated).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(ValueError):
    """The URL may not be contacted; the message says why (and never contains a body)."""


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, present `host` (Host header, SNI)."""

    scheme: str
    host: str
    port: int
    address: str
    path: str

    @property
    def connect_url(self) -> str:
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


@dataclass(frozen=True)
class AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, text: str) -> AllowList:
        hosts, networks = set(), []
        for item in (part.strip().lower() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host in self.hosts or any(address in net for net in self.networks)


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return _public(mapped)
    # is_global is False for private, loopback, link-local, CGNAT (100.64/10), shared,
    # documentation, reserved and unspecified ranges; multicast is checked on its own
    return address.is_global and not address.is_multicast


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path+query) of an acceptable URL, or EgressRefused."""
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise EgressRefused("the URL contains spaces or control characters (CR/LF...)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressRefused(f"the URL is malformed ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise EgressRefused("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EgressRefused("the URL may not carry credentials (user:pass@)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise EgressRefused("the URL has no host")
    if parts.fragment:
        raise EgressRefused("the URL may not have a #fragment")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path


def resolve(url: str, allow: AllowList) -> Target:
    """Check `url` and pick the address to connect to. Every address the name resolves
    to must be public (or allowed), so a name with one public and one private address
    is refused rather than raced."""
    scheme, host, port, path = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise EgressRefused(f"the host {host!r} does not resolve") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not (_public(address) or allow.allows(host.lower(), address)):
            raise EgressRefused(
                f"the host {host!r} resolves to {address}, a loopback, private, link-local "
                "or otherwise non-public address; list it in KD_WEBHOOK_ALLOW to allow it"
            )
        addresses.append(address)
    if not addresses:
        raise EgressRefused(f"the host {host!r} does not resolve")
    return Target(scheme, host, port, str(addresses[0]), path)
