"""Network faults: one Linux network namespace per villaged process, joined by a bridge.

    root namespace:  bridge vsbrXXXX  10.77.0.254/16   (netsim reaches every control API here)
                     |-- veth vsXXXXpNNN  <->  eth0 in namespace vsXXXX-NNN, 10.77.a.b/16
    per namespace:   tc qdisc on eth0 (egress): netem delay/jitter/loss, or tbf for a rate cap
    partitions:      blackhole routes inside each namespace to every address on the other side

Needs root and iproute2 (`ip`, `tc`); delay, jitter and loss also need the kernel's sch_netem
module (`netem_available` probes for it in a throwaway namespace). Every name carries netsim's
pid, so concurrent runs never touch each other's devices, and `Netns.close` removes everything
it created (deleting a namespace deletes its end of the veth pair, which deletes the pair).
netsim calls `close` from `finally`, `atexit` and its SIGTERM/SIGHUP handlers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


class NetnsUnavailable(Exception):
    """This machine cannot run netsim's network faults; the message says why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def check_available(need_netem: bool) -> None:
    """Raise `NetnsUnavailable` with the reason if namespaces (and netem) cannot be used here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network faults need root (network namespaces, veth, tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"network faults need iproute2: `{tool}` is not on PATH")
    probe = f"vsprobe{os.getpid()}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        raise NetnsUnavailable(f"cannot create a network namespace: {result.stderr.strip()}")
    try:
        if need_netem:
            tc = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                                capture_output=True, text=True)
            if tc.returncode != 0:
                raise NetnsUnavailable(f"tc netem is not available in this kernel (sch_netem): {tc.stderr.strip()}")
    finally:
        _ip("netns", "del", probe, check=False)


@dataclass(frozen=True)
class LinkShape:
    """What `tc` applies to each namespace's outgoing traffic."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate_mbit: float = 0.0

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_percent)

    def tc_args(self) -> list[str]:
        if self.needs_netem:
            args = ["netem", "delay", f"{self.delay_ms}ms"]
            if self.jitter_ms:
                args += [f"{self.jitter_ms}ms", "distribution", "normal"] if self.delay_ms > self.jitter_ms else [f"{self.jitter_ms}ms"]
            if self.loss_percent:
                args += ["loss", f"{self.loss_percent}%"]
            if self.rate_mbit:
                args += ["rate", f"{self.rate_mbit}mbit"]
            return args
        if self.rate_mbit:
            return ["tbf", "rate", f"{self.rate_mbit}mbit", "burst", "256kbit", "latency", "500ms"]
        return []


class Netns:
    """`count` namespaces on one bridge; `address(i)` is namespace i's IP."""

    def __init__(self, count: int, shape: LinkShape) -> None:
        if count > 250 * 250:
            raise ValueError("at most 62,500 namespaces")
        self.count = count
        self.shape = shape
        self.tag = f"{os.getpid() % 100000:05d}"
        self.bridge = f"vsbr{self.tag}"
        self.namespaces: list[str] = []
        self._bridge_made = False
        self._partition_routes: list[tuple[str, str]] = []

    def address(self, i: int) -> str:
        return f"10.77.{i // 250}.{i % 250 + 1}"

    def wrap(self, i: int) -> list[str]:
        """The command prefix that runs a process inside namespace i."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def open(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        _ip("addr", "add", "10.77.250.254/16", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.count):
            name, veth = f"vs{self.tag}-{i}", f"vs{self.tag}p{i}"
            _ip("netns", "add", name)
            self.namespaces.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", name, "addr", "add", f"{self.address(i)}/16", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            tc = self.shape.tc_args()
            if tc:
                subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "eth0", "root", *tc],
                               check=True, capture_output=True, text=True)

    def partition(self, side_a: list[int], side_b: list[int]) -> None:
        """Cut every path between the two sides (both directions), until `heal`."""
        for a in side_a:
            for b in side_b:
                for src, dst in ((a, b), (b, a)):
                    _ip("-n", self.namespaces[src], "route", "add", "blackhole", f"{self.address(dst)}/32")
                    self._partition_routes.append((self.namespaces[src], self.address(dst)))

    def heal(self) -> None:
        for namespace, address in self._partition_routes:
            _ip("-n", namespace, "route", "del", "blackhole", f"{address}/32", check=False)
        self._partition_routes.clear()

    def close(self) -> None:
        """Remove every namespace and the bridge; safe to call twice and after a partial `open`."""
        for name in self.namespaces:
            _ip("netns", "del", name, check=False)
        self.namespaces.clear()
        if self._bridge_made:
            _ip("link", "del", self.bridge, check=False)
            self._bridge_made = False
