"""Attaching an NBD export to the kernel's NBD driver (`/dev/nbdN`), inside a diskless guest.

The driver speaks only the transmission phase of the protocol: whoever sets it up has done
the handshake, or, as here, there is none. pvsd's agent keeps one end of a socketpair and hands
the other to the driver with the ioctls of <linux/nbd.h>; `NBD_DO_IT` then blocks in a thread
for as long as the device is attached. The driver never sees the network, so a server that
dies under the guest costs latency (the agent fails over underneath), never an I/O error.

No NBD_SET_TIMEOUT is set: with none, the 6.1 driver logs a "possible stuck request" and waits
instead of failing a request that takes long, which is what a failover needs.
"""

from __future__ import annotations

import enum
import fcntl
import os
import socket
import threading
from pathlib import Path

from pvsd.errors import Failure
from pvsd.target.nbd_codec import TransmissionFlag

__all__ = ["KernelNbd", "NbdIoctl"]


class NbdIoctl(enum.IntEnum):
    """_IO(0xab, n) from <linux/nbd.h>."""

    SET_SOCK = 0xAB00
    SET_BLKSIZE = 0xAB01
    DO_IT = 0xAB03
    CLEAR_SOCK = 0xAB04
    SET_SIZE_BLOCKS = 0xAB07
    SET_FLAGS = 0xAB0A


class KernelNbd:
    """One `/dev/nbdN` bound to the driver's end of a socketpair; the agent serves the other end."""

    def __init__(self, device: Path, size: int, block_size: int, flags: TransmissionFlag) -> None:
        if size % block_size:
            raise Failure(f"the vDisk's size {size} is not a multiple of its {block_size}-byte sectors")
        self.device = device
        self.size = size
        self.block_size = block_size
        self.flags = flags
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self.ended: BaseException | None = None

    def attach(self) -> socket.socket:
        """Set the device up and start NBD_DO_IT; returns the agent's end of the socketpair."""
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as error:
            hint = "is the nbd module loaded?"
            raise Failure(f"cannot open {self.device}: {error.strerror} ({hint})") from None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fcntl.ioctl(fd, NbdIoctl.CLEAR_SOCK)
            fcntl.ioctl(fd, NbdIoctl.SET_BLKSIZE, self.block_size)
            fcntl.ioctl(fd, NbdIoctl.SET_SIZE_BLOCKS, self.size // self.block_size)
            fcntl.ioctl(fd, NbdIoctl.SET_FLAGS, int(self.flags))
            fcntl.ioctl(fd, NbdIoctl.SET_SOCK, theirs.fileno())
        except OSError as error:
            os.close(fd)
            ours.close()
            theirs.close()
            raise Failure(f"cannot attach {self.device}: {error.strerror}") from None
        self._fd = fd

        def run() -> None:
            try:
                fcntl.ioctl(fd, NbdIoctl.DO_IT)  # blocks until the device is disconnected
            except OSError as error:
                self.ended = error
            finally:
                theirs.close()

        self._thread = threading.Thread(target=run, name=f"nbd-do-it-{self.device.name}", daemon=True)
        self._thread.start()
        return ours

    def set_read_ahead(self, kib: int) -> str | None:
        """Let the kernel read ahead `kib` KiB on sequential reads; None, or why it could not.

        The driver's 128 KiB default costs one agent round trip (a Python hop in the guest) per
        128 KiB; a larger read-ahead moves the same bytes in fewer, larger requests, each split
        into the stream's datagrams by the agent anyway.
        """
        knob = Path("/sys/block") / self.device.name / "queue" / "read_ahead_kb"
        try:
            knob.write_text(f"{kib}\n")
        except OSError as error:
            return f"{knob}: {error.strerror or error}"
        return None
