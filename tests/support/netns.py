"""Several hosts on one machine: Linux network namespaces joined by a bridge.

Each host is a namespace with its own loopback and one veth interface on the bridge,
at 10.<n>.0.<i>/24; the bridge itself, in the test's own namespace, is 10.<n>.0.254:
servers the test starts there (PostgreSQL, Redis, the service) are what the hosts
reach. Traffic stays inside this machine: the addresses exist only on the bridge and
its veths, and nothing routes them anywhere else. Needs root (ip netns, iproute2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def available() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    return None


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str
    interface: str  # its veth, in its namespace (gloo binds there)

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


class Hosts:
    def __init__(self, count: int, tag: str | None = None) -> None:
        tag = tag or f"{os.getpid() % 10000}"
        self.subnet = 64 + os.getpid() % 64  # 10.<64..127>.0.0/24: one per test process
        self.bridge = f"kdb{tag}"
        self.gateway = f"10.{self.subnet}.0.254"
        self.hosts: list[Host] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(1, count + 1):
                self.hosts.append(self._add(tag, i))
        except BaseException:
            self.close()
            raise

    def _add(self, tag: str, i: int) -> Host:
        ns, inside, outside = f"kd{tag}h{i}", f"kd{tag}v{i}", f"kd{tag}p{i}"
        address = f"10.{self.subnet}.0.{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return Host(ns, address, inside)

    def cut(self, host: Host) -> None:
        """Cut the host off the network (its veth goes down): what a pulled cable does."""
        _ip("-n", host.namespace, "link", "set", host.interface, "down")

    def restore(self, host: Host) -> None:
        _ip("-n", host.namespace, "link", "set", host.interface, "up")

    def close(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
