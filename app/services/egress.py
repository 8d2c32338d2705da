"""Where the service may send requests (webhooks, teacher endpoints): the SSRF policy.

A URL is checked twice: when a job is submitted (a clear 422) and again at every
delivery, because DNS may answer differently later. Both times the host is resolved and
*every* address must be public; the delivery then connects to the address that was
checked (not to whatever a second lookup returns), with the original name kept for the
Host header and TLS.

Refused by default: loopback, private (RFC 1918, ULA), link-local (cloud metadata at
169.254.169.254 included), CGNAT, multicast, reserved and unspecified addresses, IPv4
written as one number (2130706433) or in hex (0x7f000001) once resolved, and IPv4
embedded in IPv6 (mapped ::ffff:a.b.c.d, 6to4 2002::/16, NAT64's well-known prefix
64:ff9b::/96: each judged by the IPv4 address inside, so 64:ff9b::a9fe:a9fe is the
metadata address), and NAT64's local-use prefix 64:ff9b:1::/48 whole (its embedding
depends on the operator's prefix length). An on-premises receiver is allowed by
listing its host name, address or network in `KD_WEBHOOK_ALLOW` (comma-separated); an
in-house teacher endpoint (a vLLM server on the private network) in `KD_ENDPOINT_ALLOW`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# what the libraries the service loads would send out on their own (usage statistics,
# Hub calls): off unless the operator sets the variable otherwise. MLflow's client
# reports telemetry from 3.x; huggingface_hub and transformers honour HF_HUB_*; many
# libraries honour DO_NOT_TRACK. Every model and tokenizer is read from files, so the Hub
# is never needed (HF_HUB_OFFLINE).
QUIET_LIBRARIES = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}


def quiet_libraries(environ: MutableMapping[str, str] | None = None) -> None:
    """Turn off the outbound telemetry of the libraries the service loads, for this
    process and the training processes it starts (they inherit the environment)."""
    target = os.environ if environ is None else environ
    for name, value in QUIET_LIBRARIES.items():
        target.setdefault(name, value)


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


NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: IPv4 in the last 32 bits
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: never public


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64_LOCAL_USE:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _public(embedded)
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


def resolve(url: str, allow: AllowList, allow_setting: str = "KD_WEBHOOK_ALLOW") -> Target:
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
                f"or otherwise non-public address; list it in {allow_setting} to allow it"
            )
        addresses.append(address)
    if not addresses:
        raise EgressRefused(f"the host {host!r} does not resolve")
    return Target(scheme, host, port, str(addresses[0]), path)
