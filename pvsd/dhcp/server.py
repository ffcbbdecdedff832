"""The proxy DHCP service: port 67 for DISCOVERs (broadcast), port 4011 for PXE boot-server REQUESTs.

Glue only: codec.decode, policy.decide and policy.reply_destination do the work. Replies
on 4011 leave from 4011 (iPXE drops others). A flood cannot starve the other services:
each MAC gets `per_mac_per_second` answers, delayed offers are bounded by `queue`, and
the sockets are drained in bounded batches.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from pvsd.config import DhcpConfig
from pvsd.dhcp.codec import decode, encode
from pvsd.dhcp.policy import ArchFamily, BootPolicy, Decision, Strategy, decide, reply_destination
from pvsd.errors import Misuse
from pvsd.log import request_logger
from pvsd.net.reader import DecodeError
from pvsd.net.udp import Address, UdpEndpoint

__all__ = ["DhcpServer", "DhcpStats", "boot_policy"]

NOT_ANSWERED_LOG_INTERVAL_S = 60.0
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - broadcasts only reach a socket bound to INADDR_ANY


@dataclass
class DhcpStats:
    received: int = 0
    malformed: int = 0
    offers: int = 0
    acks: int = 0
    ignored: int = 0
    rate_limited: int = 0
    queue_full: int = 0


def boot_policy(config: DhcpConfig, server: str) -> BootPolicy:
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
    )


class DhcpServer:
    def __init__(
        self,
        config: DhcpConfig,
        policy: BootPolicy,
        pxe_bind: str,
        is_known: Callable[[str], bool],
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.config = config
        self.policy = policy
        self.pxe_bind = pxe_bind
        self.is_known = is_known
        self.log = log.bind(component="dhcp")
        self.stats = DhcpStats()
        self._dhcp: UdpEndpoint | None = None
        self._pxe: UdpEndpoint | None = None
        self._budget: dict[str, tuple[float, int]] = {}  # MAC -> (second, answers in it)
        self._not_answered_logged: dict[str, float] = {}
        self._delayed = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._dhcp = self._bind(self.config.bind or ANY_ADDRESS, self.config.port, on_pxe_port=False)
        self._pxe = self._bind(self.pxe_bind, self.config.pxe_port, on_pxe_port=True)
        self.log.info(
            "proxy DHCP listening",
            dhcp=f"{self.config.bind or ANY_ADDRESS}:{self.config.port}",
            pxe=f"{self.pxe_bind}:{self.config.pxe_port}",
            interface=self.config.interface or "all",
            answer=self.config.answer,
        )

    def _bind(self, host: str, port: int, on_pxe_port: bool) -> UdpEndpoint:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Several pvsd on one host (a lab, a demo) all hear the broadcasts.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for a boot storm's burst
            if self.config.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.config.interface.encode())
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return UdpEndpoint(sock, lambda data, peer: self._on_datagram(data, peer, on_pxe_port), max_batch=64)

    async def close(self) -> None:
        for endpoint in (self._dhcp, self._pxe):
            if endpoint is not None:
                endpoint.close()
        self._dhcp = self._pxe = None

    def _on_datagram(self, data: bytes, peer: Address, on_pxe_port: bool) -> None:
        self.stats.received += 1
        try:
            request = decode(data)
        except DecodeError as error:
            self.stats.malformed += 1
            self.log.debug("malformed DHCP packet dropped", peer=f"{peer[0]}:{peer[1]}", reason=str(error))
            return
        decision = decide(request, on_pxe_port, self.is_known, self.policy)
        # Bound after the decision: most packets on port 67 are not PXE and are dropped unlogged.
        log = request_logger(self.log, peer, request.mac)
        if decision.reply is None:
            self._ignored(decision, log)
            return
        if decision.mac is None:
            raise Misuse("the policy answered a request without a MAC")
        if not self._within_budget(decision.mac):
            self.stats.rate_limited += 1
            log.debug("DHCP request over the per-MAC rate; dropped")
            return
        destination = reply_destination(request, peer, on_pxe_port)
        endpoint = self._pxe if on_pxe_port else self._dhcp
        wire = encode(decision.reply)
        fields = {
            "arch": str(decision.family),
            "ipxe": decision.ipxe,
            # What the reply carries: a via-4011 offer names no file, the 4011 ACK does.
            "bootfile": decision.reply.file.decode() or f"(ask on 4011 for {decision.bootfile})",
            "to": f"{destination[0]}:{destination[1]}",
        }
        if on_pxe_port:
            self.stats.acks += 1
            log.info("PXE boot server ACK", **fields)
        else:
            self.stats.offers += 1
            log.info("proxy offer", **fields)
        delay = 0.0 if on_pxe_port else self.config.offer_delay_ms / 1000
        if delay <= 0:
            self._send(endpoint, wire, destination)
        elif self._delayed >= self.config.queue:
            self.stats.queue_full += 1
            log.warning("too many delayed offers waiting; offer dropped", queue=self.config.queue)
        else:
            self._delayed += 1
            self._running_loop().call_later(delay, self._send_delayed, endpoint, wire, destination)

    def _send_delayed(self, endpoint: UdpEndpoint | None, wire: bytes, destination: Address) -> None:
        self._delayed -= 1
        self._send(endpoint, wire, destination)

    def _send(self, endpoint: UdpEndpoint | None, wire: bytes, destination: Address) -> None:
        if endpoint is not None:
            endpoint.send(wire, destination)

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

    def _ignored(self, decision: Decision, log: structlog.stdlib.BoundLogger) -> None:
        """Say why a PXE client got no answer, once a minute per MAC and reason, not per packet."""
        self.stats.ignored += 1
        if decision.family is None and decision.reason.startswith(("not a", "message type")):
            log.debug("DHCP request ignored", reason=decision.reason)
            return
        now = self._running_loop().time()
        key = f"{decision.mac} {decision.reason}"
        if now - self._not_answered_logged.get(key, -1e9) < NOT_ANSWERED_LOG_INTERVAL_S:
            return
        if len(self._not_answered_logged) > 10_000:
            self._not_answered_logged.clear()
        self._not_answered_logged[key] = now
        log.info("PXE client not answered (logged once a minute)", reason=decision.reason)
