"""The proxy DHCP service: port 67 for DISCOVERs (broadcast), port 4011 for PXE boot-server REQUESTs.

Glue only: codec.decode and policy.decide do the work; this module tells the policy where a
request came in (IP_PKTINFO: the receiving interface, and that interface's subnets from
net.interfaces) and sends the reply out of that same interface, from the address the
request reached, so a broadcast answer never follows the routing table to another network.
Replies on 4011 leave from 4011 (iPXE drops others). A flood cannot starve the other
services: each MAC gets `per_mac_per_second` answers, delayed offers are bounded by
`queue`, the sockets are drained in bounded batches, and refusals and failed sends are
counted and logged once a minute per reason, never per packet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog

from pvsd.config import DhcpConfig
from pvsd.dhcp.codec import decode, encode
from pvsd.dhcp.policy import (
    ArchFamily,
    Arrival,
    BootPolicy,
    Decision,
    Refusal,
    Strategy,
    decide,
)
from pvsd.errors import Failure, Misuse
from pvsd.log import request_logger
from pvsd.net.interfaces import Interface, InterfaceTable
from pvsd.net.pktinfo import PacketInfo, PktinfoEndpoint
from pvsd.net.reader import DecodeError
from pvsd.net.udp import Address

__all__ = ["DhcpServer", "DhcpStats", "RefusalLog", "boot_policy"]

NOT_ANSWERED_LOG_INTERVAL_S = 60.0
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - broadcasts only reach a socket bound to INADDR_ANY
INTERFACES_MAX_AGE_S = 5.0  # addresses added or removed are seen within this long
ARRIVALS_CACHED = 4096


@dataclass
class DhcpStats:
    received: int = 0
    malformed: int = 0
    offers: int = 0
    acks: int = 0
    ignored: int = 0
    rate_limited: int = 0
    queue_full: int = 0
    server_messages: int = 0
    """BOOTREPLYs, OFFERs, ACKs and NAKs received: dropped, so that servers never answer each other."""
    bad_destinations: int = 0
    """Requests whose reply would go to an unusable or spoofed address or port."""
    relays_refused: int = 0
    unreachable: int = 0
    """Requests on an interface from which this server's address cannot be reached."""
    send_failures: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    """Refusals (not the quietly ignored) by reason."""


_COUNTERS = {
    Refusal.SERVER_MESSAGE: "server_messages",
    Refusal.BAD_DESTINATION: "bad_destinations",
    Refusal.RELAY_REFUSED: "relays_refused",
    Refusal.UNREACHABLE: "unreachable",
}
_EVENTS = {
    Refusal.SERVER_MESSAGE: "DHCP server message dropped (logged once a minute per reason)",
    Refusal.BAD_DESTINATION: "DHCP request refused: unsafe destination (logged once a minute per reason)",
    Refusal.RELAY_REFUSED: "relayed DHCP request refused (logged once a minute per reason)",
    Refusal.UNREACHABLE: (
        "server address not reachable from the receiving interface; not answered (logged once a minute)"
    ),
}
SEND_FAILED_EVENT = "DHCP reply not sent (logged once a minute per reason)"


class RefusalLog:
    """Counts events per key and says when to log one: the first at once, then at most one line
    per `interval` with how many happened since the last line. Time is passed in."""

    def __init__(self, interval: float = NOT_ANSWERED_LOG_INTERVAL_S, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._keys: dict[str, tuple[float, int]] = {}  # key -> (last logged, count since)

    def note(self, key: str, now: float) -> int | None:
        """Count one; return the count to log now (this one included), or None to stay quiet."""
        logged, count = self._keys.get(key, (-1e18, 0))
        count += 1
        if now - logged < self.interval:
            self._keys[key] = (logged, count)
            return None
        if key not in self._keys and len(self._keys) >= self.max_keys:
            self._keys.clear()  # forget rather than grow without bound under a flood of keys
        self._keys[key] = (now, 0)
        return count

    def pending(self) -> dict[str, int]:
        """Counts noted but not logged yet, by key."""
        return {key: count for key, (_, count) in self._keys.items() if count}


def boot_policy(config: DhcpConfig, server: str, http_port: int | None = None) -> BootPolicy:
    """The proxy's decisions from its config; with `http_port` (when [api] is on) UEFI HTTP boot
    clients are offered `http://SERVER:PORT/boot/` + their boot file."""
    files = config.bootfiles
    strategies = config.strategy
    return BootPolicy(
        server=ipaddress.IPv4Address(server),
        bootfiles={
            ArchFamily.BIOS: files.bios,
            ArchFamily.UEFI_X64: files.uefi_x64,
            ArchFamily.UEFI_IA32: files.uefi_ia32,
            ArchFamily.UEFI_ARM64: files.uefi_arm64,
            ArchFamily.HTTP_X64: files.http_x64,
            ArchFamily.HTTP_ARM64: files.http_arm64,
        },
        strategies={
            ArchFamily.BIOS: Strategy(strategies.bios),
            ArchFamily.UEFI_X64: Strategy(strategies.uefi_x64),
            ArchFamily.UEFI_IA32: Strategy(strategies.uefi_ia32),
            ArchFamily.UEFI_ARM64: Strategy(strategies.uefi_arm64),
        },
        ipxe_script=config.script,
        answer_all=config.answer == "all",
        relays=config.relay_networks,
        http_base=f"http://{server}:{http_port}/boot/" if http_port is not None else None,
    )


class _Reply(NamedTuple):
    """A reply on its way out: what, where, out of which interface, and what to log once sent."""

    wire: bytes
    address: Address
    ifindex: int
    source: str
    interface: str
    on_pxe_port: bool
    log: structlog.stdlib.BoundLogger
    fields: dict[str, Any]


class DhcpServer:
    def __init__(
        self,
        config: DhcpConfig,
        policy: BootPolicy,
        pxe_bind: str,
        is_known: Callable[[str], bool],
        log: structlog.stdlib.BoundLogger,
        interfaces: InterfaceTable | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.pxe_bind = pxe_bind
        self.is_known = is_known
        self.log = log.bind(component="dhcp")
        self.stats = DhcpStats()
        self.interfaces = interfaces or InterfaceTable(INTERFACES_MAX_AGE_S)
        self._dhcp: PktinfoEndpoint | None = None
        self._pxe: PktinfoEndpoint | None = None
        self._budget: dict[str, tuple[float, int]] = {}  # MAC -> (second, answers in it)
        self._not_answered_logged: dict[str, float] = {}
        self._refusals = RefusalLog()
        self._read_failures_seen = 0
        self._arrivals: dict[tuple[PacketInfo | None, Address, bool], tuple[Arrival, str]] = {}
        self._arrivals_generation = -1
        self._delayed = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        error = self.interfaces.refresh(self._loop.time())
        if error is not None:
            raise Failure(f"proxy DHCP cannot read this host's interfaces over rtnetlink: {error}")
        self._dhcp = self._bind(self.config.bind or ANY_ADDRESS, self.config.port, on_pxe_port=False)
        try:
            self._pxe = self._bind(self.pxe_bind, self.config.pxe_port, on_pxe_port=True)
        except BaseException:
            self._dhcp.close()
            raise
        self.log.info(
            "proxy DHCP listening",
            dhcp=f"{self.config.bind or ANY_ADDRESS}:{self._dhcp.address[1]}",
            pxe=f"{self.pxe_bind}:{self._pxe.address[1]}",
            interface=self.config.interface or "all",
            answer=self.config.answer,
            relays=self.config.relays or "on the receiving interface's subnets",
        )

    @property
    def ports(self) -> tuple[int, int]:
        """The bound DHCP and PXE ports (the configured ones, or the kernel's pick for 0)."""
        if self._dhcp is None or self._pxe is None:
            raise Misuse("DhcpServer.start() first")
        return self._dhcp.address[1], self._pxe.address[1]

    def _bind(self, host: str, port: int, on_pxe_port: bool) -> PktinfoEndpoint:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Several pvsd on one host (a lab, a demo) all hear the broadcasts.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for a boot storm's burst
            if self.config.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.config.interface.encode())
            sock.bind((host, port))
            return PktinfoEndpoint(
                sock, lambda data, peer, info: self._on_datagram(data, peer, info, on_pxe_port), max_batch=64
            )
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        for endpoint in (self._dhcp, self._pxe):
            if endpoint is not None:
                endpoint.close()
        self._dhcp = self._pxe = None
        pending = self._refusals.pending()
        if pending:
            # Refusals counted since their last line would otherwise never be said.
            self.log.info("proxy DHCP refusals not yet logged", counts=pending)

    def _arrival(
        self, peer: Address, info: PacketInfo | None, on_pxe_port: bool, now: float
    ) -> tuple[Arrival, str]:
        """Where a request came in, as the policy wants it, and the source address to answer from;
        cached per (interface, local address), peer and port (a boot storm's DISCOVERs all come
        from 0.0.0.0:68 on a few interfaces), and forgotten when the interfaces change."""
        interface = self.interfaces.get(info.ifindex, now) if info is not None else None
        if self.interfaces.read_failures != self._read_failures_seen:
            self._read_failures_seen = self.interfaces.read_failures
            count = self._refusals.note("interfaces", now)
            if count is not None:
                self.log.warning(
                    "cannot read this host's interfaces; using the last ones read (logged once a minute)",
                    error=str(self.interfaces.last_error),
                    count=count,
                )
        if self.interfaces.generation != self._arrivals_generation:
            self._arrivals.clear()
            self._arrivals_generation = self.interfaces.generation
        key = (info, peer, on_pxe_port)
        found = self._arrivals.get(key)
        if found is None:
            if len(self._arrivals) >= ARRIVALS_CACHED:
                self._arrivals.clear()
            arrival = self._new_arrival(peer, info, interface, on_pxe_port)
            found = self._arrivals[key] = (arrival, self._source(arrival, info))
        return found

    def _new_arrival(
        self, peer: Address, info: PacketInfo | None, interface: Interface | None, on_pxe_port: bool
    ) -> Arrival:
        source = (ipaddress.IPv4Address(peer[0]), peer[1])
        hosts = self.interfaces.host_addresses
        if interface is None:
            # No interface known: no subnets, so nothing is reachable and nothing is answered.
            name = f"#{info.ifindex}" if info is not None else "unknown"
            return Arrival(source, on_pxe_port, name, host_addresses=hosts)
        return Arrival(source, on_pxe_port, interface.name, interface.loopback, interface.addresses, hosts)

    def _on_datagram(self, data: bytes, peer: Address, info: PacketInfo | None, on_pxe_port: bool) -> None:
        self.stats.received += 1
        try:
            request = decode(data)
        except DecodeError as error:
            self.stats.malformed += 1
            self.log.debug("malformed DHCP packet dropped", peer=f"{peer[0]}:{peer[1]}", reason=str(error))
            return
        now = self._running_loop().time()
        arrival, source = self._arrival(peer, info, on_pxe_port, now)
        decision = decide(request, arrival, self.is_known, self.policy)
        # Bound after the decision: most packets on port 67 are not PXE and are dropped unlogged.
        log = request_logger(self.log, peer, request.mac)
        if decision.reply is None:
            self._refused(decision, arrival, log, now)
            return
        if decision.mac is None or decision.destination is None:
            raise Misuse("the policy answered a request without a MAC or a destination")
        if not self._within_budget(decision.mac):
            self.stats.rate_limited += 1
            log.debug("DHCP request over the per-MAC rate; dropped")
            return
        destination = decision.destination
        host = str(destination.address)
        reply = _Reply(
            wire=encode(decision.reply),
            address=(host, destination.port),
            ifindex=info.ifindex if info is not None and destination.on_link else 0,
            source=source,
            interface=arrival.interface,
            on_pxe_port=on_pxe_port,
            log=log,
            fields={
                "arch": str(decision.family),
                "ipxe": decision.ipxe,
                # What the reply carries: a via-4011 offer names no file, the 4011 ACK does.
                "bootfile": decision.reply.file.decode() or f"(ask on 4011 for {decision.bootfile})",
                "to": f"{host}:{destination.port}",
                "interface": arrival.interface,
            },
        )
        delay = 0.0 if on_pxe_port else self.config.offer_delay_ms / 1000
        if delay <= 0:
            self._send(reply)
        elif self._delayed >= self.config.queue:
            self.stats.queue_full += 1
            log.warning("too many delayed offers waiting; offer dropped", queue=self.config.queue)
        else:
            self._delayed += 1
            self._running_loop().call_later(delay, self._send_delayed, reply)

    def _source(self, arrival: Arrival, info: PacketInfo | None) -> str:
        """The reply's source address: the advertised address when the receiving interface has it
        (so source and option 54 agree), else the address the request reached (ipi_spec_dst)."""
        if any(subnet.ip == self.policy.server for subnet in arrival.subnets):
            return str(self.policy.server)
        return info.local if info is not None and info.local != ANY_ADDRESS else ""

    def _send_delayed(self, reply: _Reply) -> None:
        self._delayed -= 1
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        endpoint = self._pxe if reply.on_pxe_port else self._dhcp
        if endpoint is None:
            return  # closed while the offer waited
        error = endpoint.send(reply.wire, reply.address, reply.ifindex, reply.source)
        if error is not None:
            self._send_failed(reply, error)
            return
        if reply.on_pxe_port:
            self.stats.acks += 1
            reply.log.info("PXE boot server ACK", **reply.fields)
        else:
            self.stats.offers += 1
            reply.log.info("proxy offer", **reply.fields)

    def _send_failed(self, reply: _Reply, error: OSError) -> None:
        self.stats.send_failures += 1
        reason = f"send failed: {error.strerror or error}"
        self.stats.refusals[reason] = self.stats.refusals.get(reason, 0) + 1
        count = self._refusals.note(f"send {error.errno} {reply.interface}", self._running_loop().time())
        if count is not None:
            reply.log.warning(
                SEND_FAILED_EVENT,
                errno=error.errno,
                error=error.strerror or str(error),
                count=count,
                **reply.fields,
            )

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise Misuse("DhcpServer.start() first")
        return self._loop

    def _within_budget(self, mac: str) -> bool:
        second = int(self._running_loop().time())
        start, count = self._budget.get(mac, (second, 0))
        if start != second:
            start, count = second, 0
            if len(self._budget) > 10_000:  # forget old MACs rather than grow without bound
                self._budget = {m: v for m, v in self._budget.items() if v[0] == second}
        if count >= self.config.per_mac_per_second:
            self._budget[mac] = (start, count)
            return False
        self._budget[mac] = (start, count + 1)
        return True

    def _refused(
        self, decision: Decision, arrival: Arrival, log: structlog.stdlib.BoundLogger, now: float
    ) -> None:
        """Count a request that got no answer and say why: quietly for what is not for a proxy,
        once a minute per MAC and reason for PXE clients not served, and once a minute per
        reason, with the count since the last line, for what looks like a misconfiguration or
        an attack (server messages, unsafe destinations, refused relays, unreachable address)."""
        refusal = decision.refusal
        if refusal is Refusal.IGNORED or refusal is None:
            self.stats.ignored += 1
            log.debug("DHCP request ignored", reason=decision.reason)
            return
        if refusal is Refusal.NOT_ANSWERED:
            self.stats.ignored += 1
            self._not_answered(decision, log, now)
            return
        counter = _COUNTERS[refusal]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.stats.refusals[decision.reason] = self.stats.refusals.get(decision.reason, 0) + 1
        key = f"{decision.reason} {arrival.interface}"
        count = self._refusals.note(key, now)
        if count is None:
            return
        fields: dict[str, Any] = {"reason": decision.reason, "count": count, "interface": arrival.interface}
        if refusal is Refusal.UNREACHABLE:
            fields.update(
                address=str(self.policy.server),
                subnets=[str(subnet) for subnet in arrival.subnets],
                detail=decision.detail,
                hint="set [server] address to this host's address on the boot network, or [dhcp] interface",
            )
        else:
            fields["detail"] = decision.detail
        log.warning(_EVENTS[refusal], **fields)

    def _not_answered(self, decision: Decision, log: structlog.stdlib.BoundLogger, now: float) -> None:
        """Say why a PXE client got no answer, once a minute per MAC and reason, not per packet."""
        key = f"{decision.mac} {decision.reason}"
        if now - self._not_answered_logged.get(key, -1e9) < NOT_ANSWERED_LOG_INTERVAL_S:
            return
        if len(self._not_answered_logged) > 10_000:
            self._not_answered_logged.clear()
        self._not_answered_logged[key] = now
        log.info("PXE client not answered (logged once a minute)", reason=decision.reason)
