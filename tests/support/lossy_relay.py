"""A UDP relay that drops a share of the datagrams both ways, for loss tests where tc netem is missing.

Each relayed server address (say 127.0.0.11) gets a relay address (127.0.0.21) listening on the
same ports. A target talks to the relay address; the relay forwards from one upstream socket per
(target, port), so the server sees a stable peer. Login replies are rewritten so that the I/O
address and the server list name relay addresses too: the whole session goes through the relay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import random
import selectors
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from pvsd.net.reader import DecodeError
from pvsd.stream.wire import LoginReply, decode, encode

Address = tuple[str, int]


class LossyRelay:
    def __init__(self, routes: Mapping[str, str], ports: Sequence[int], loss: float, seed: int = 1) -> None:
        self.routes = dict(routes)  # relay address -> server address
        self.back = {server: relay for relay, server in routes.items()}
        self.loss = loss
        self.random = random.Random(seed)
        self.dropped = 0
        self.forwarded = 0
        self.selector = selectors.DefaultSelector()
        self.listeners: dict[socket.socket, Address] = {}
        self.upstream: dict[tuple[Address, Address], socket.socket] = {}  # (client, relay addr) -> socket
        self.downstream: dict[socket.socket, tuple[socket.socket, Address]] = {}
        for relay in routes:
            for port in ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                sock.bind((relay, port))
                sock.setblocking(False)
                self.listeners[sock] = (relay, port)
                self.selector.register(sock, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lossy-relay", daemon=True)

    def _drop(self) -> bool:
        if self.random.random() < self.loss:
            self.dropped += 1
            return True
        self.forwarded += 1
        return False

    def _rewrite(self, data: bytes) -> bytes:
        try:
            header, message = decode(data)
        except DecodeError:
            return data
        if not isinstance(message, LoginReply):
            return data

        def swap(address: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
            return ipaddress.IPv4Address(self.back.get(str(address), str(address)))

        rewritten = dataclasses.replace(
            message,
            io_address=swap(message.io_address),
            servers=tuple(dataclasses.replace(s, address=swap(s.address)) for s in message.servers),
        )
        return encode(rewritten, header.request_id, header.session, header.flags)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        data, source = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    if sock in self.listeners:
                        self._from_client(sock, data, source)
                    else:
                        self._from_server(sock, data)

    def _from_client(self, listener: socket.socket, data: bytes, client: Address) -> None:
        relay = self.listeners[listener]
        upstream = self.upstream.get((client, relay))
        if upstream is None:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            upstream.bind((relay[0], 0))
            upstream.connect((self.routes[relay[0]], relay[1]))
            upstream.setblocking(False)
            self.upstream[(client, relay)] = upstream
            self.downstream[upstream] = (listener, client)
            self.selector.register(upstream, selectors.EVENT_READ)
        if not self._drop():
            with contextlib.suppress(OSError):
                upstream.send(data)

    def _from_server(self, upstream: socket.socket, data: bytes) -> None:
        listener, client = self.downstream[upstream]
        if not self._drop():
            with contextlib.suppress(OSError):
                listener.sendto(self._rewrite(data), client)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [*self.listeners, *self.downstream]:
            sock.close()
        self.selector.close()


@contextmanager
def lossy_relay(routes: Mapping[str, str], ports: Sequence[int], loss: float) -> Iterator[LossyRelay]:
    relay = LossyRelay(routes, ports, loss)
    relay.start()
    try:
        yield relay
    finally:
        relay.close()
