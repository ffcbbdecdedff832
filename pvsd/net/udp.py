"""Thin UDP glue for the protocol servers: a non-blocking socket read in batches from the loop.

asyncio's datagram transports cost a callback and a buffer copy per packet; a reader
callback that drains the socket until it is empty costs one wake-up per burst. Sends go
straight to the socket. A window of equal-sized datagrams to one peer goes to the kernel
in one call with UDP segmentation offload (UDP_SEGMENT), when the kernel has it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable, Sequence

__all__ = ["IP_MTU", "UdpEndpoint", "path_mtu"]

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
IP_MTU = 14  # linux/in.h
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # the whole super-datagram must fit in one IP packet's length field

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]
ErrorHandler = Callable[[OSError], None]


def path_mtu(local: str, peer: Address) -> int | None:
    """The kernel's MTU for the route to `peer` (asks the routing table; sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((local, 0))
            probe.connect(peer)
            return int(probe.getsockopt(socket.IPPROTO_IP, IP_MTU))
        except OSError:
            return None


class UdpEndpoint:
    """One UDP socket served by the running loop. `on_error` hears ICMP errors (ECONNREFUSED)."""

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: DatagramHandler,
        on_error: ErrorHandler | None = None,
        max_batch: int = 256,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.on_datagram = on_datagram
        self.on_error = on_error
        self.max_batch = max_batch
        self.peer: Address | None = None
        self.dropped_sends = 0
        self._gso = True
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._closed = False

    @classmethod
    def bind(
        cls,
        host: str,
        port: int,
        on_datagram: DatagramHandler,
        on_error: ErrorHandler | None = None,
        connect_to: Address | None = None,
        reuse_port: bool = False,
        max_batch: int = 256,
    ) -> UdpEndpoint:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((host, port))
            if connect_to is not None:
                sock.connect(connect_to)
        except BaseException:
            sock.close()
            raise
        endpoint = cls(sock, on_datagram, on_error, max_batch)
        endpoint.peer = connect_to
        return endpoint

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()
        return str(host), int(port)

    def mtu(self) -> int | None:
        """The path MTU of a connected endpoint."""
        try:
            return int(self.sock.getsockopt(socket.IPPROTO_IP, IP_MTU))
        except OSError:
            return None

    def _readable(self) -> None:
        handler = self.on_datagram
        if self.peer is not None and self.max_batch == 1:
            # A connected socket in lockstep holds one datagram: one recv, no second one to
            # find it empty. The loop calls again if more is queued (level-triggered).
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if self.on_error is not None:
                    self.on_error(error)
                return
            handler(data, self.peer)
            return
        recvfrom = self.sock.recvfrom
        for _ in range(self.max_batch):
            try:
                data, address = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if self.on_error is not None:
                    self.on_error(error)
                if self._closed:
                    return
                continue
            handler(data, address)
            if self._closed:
                return

    def send(self, data: bytes, address: Address | None = None) -> None:
        try:
            if address is None:
                self.sock.send(data)
            else:
                self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self.dropped_sends += 1  # the socket buffer is full: the retransmit timer covers it
        except OSError as error:
            if self.on_error is not None:
                self.on_error(error)

    def send_many(self, datagrams: Sequence[bytes], address: Address | None = None) -> None:
        """Send datagrams in order; equal-sized runs go as one segmented send where possible."""
        if len(datagrams) == 1:
            self.send(datagrams[0], address)
            return
        if not self._gso:
            for data in datagrams:
                self.send(data, address)
            return
        segment = len(datagrams[0])
        start = 0
        per_send = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))
        while start < len(datagrams):
            batch = [datagrams[start]]
            index = start + 1
            while index < len(datagrams) and len(batch) < per_send:
                size = len(datagrams[index])
                if size > segment:
                    break
                batch.append(datagrams[index])
                index += 1
                if size < segment:
                    break  # only the last segment of a send may be short
            if len(batch) == 1 or not self._send_segmented(b"".join(batch), segment, address):
                for data in batch:
                    self.send(data, address)
            start = index

    def _send_segmented(self, payload: bytes, segment: int, address: Address | None) -> bool:
        control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
        try:
            if address is None:
                self.sock.sendmsg([payload], control)
            else:
                self.sock.sendmsg([payload], control, 0, address)
        except (BlockingIOError, InterruptedError):
            self.dropped_sends += 1
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE):
                self._gso = False  # this kernel or device cannot segment: send one by one from now on
                return False
            if self.on_error is not None:
                self.on_error(error)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
