"""What a server builds to boot targets, on demand, once, and keeps in `[boot] cache_dir`: each
Linux version's agent overlay (pvsd/boot/agent_initramfs.py, with the modules of that image).

A build runs in a thread, one at a time per file: a boot storm that asks for a new overlay
waits for one build, not one each. A file already built is reused until what it was made from
changes: the overlay's name carries the hash of the image version, of pvsd itself and of the
modules it holds.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

import pvsd
from pvsd.boot.agent_initramfs import AgentModule, build_agent_initramfs
from pvsd.errors import PvsdError

__all__ = ["AGENT_MODULES", "OPTIONAL_MODULES", "BootBuilds"]

# What the agent needs of the image's /lib/modules, besides what the kernel has built in: the
# NICs QEMU and most labs use, nbd for the root, ext4 (and the crc32c it asks the crypto API for,
# which TCG's CPU has no instruction for).
AGENT_MODULES = ("virtio_pci", "virtio_net", "e1000", "nbd", "crc32c_generic", "ext4")
# The NICs of real PCs and servers: loaded when the image has them, no warning when it does not.
OPTIONAL_MODULES = ("e1000e", "igb", "igc", "ixgbe", "r8169", "tg3", "bnx2", "bnxt_en", "vmxnet3")

ModuleReader = Callable[[], tuple[str, Sequence[AgentModule]]]
"""Reads (kernel version, modules in load order) out of an image; runs in a thread."""


@functools.cache
def _code_hash() -> str:
    digest = hashlib.sha256(pvsd.__version__.encode())
    package = Path(pvsd.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


class BootBuilds:
    def __init__(self, folder: Path, log: structlog.stdlib.BoundLogger) -> None:
        self.folder = folder
        self.log = log
        self._locks: dict[str, asyncio.Lock] = {}

    async def agent_overlay(self, vdisk: str, version: int, sha256: str, read_modules: ModuleReader) -> Path:
        """The overlay for one version, built if it is not there yet. PvsdError says why not."""
        name = f"agent-{vdisk}-{version}-{sha256[:12]}-{_code_hash()}.cpio.gz"
        path = self.folder / name
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if path.is_file():
                return path
            self.log.info("building the agent overlay", vdisk=vdisk, version=version, path=str(path))
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                kernel_version, modules = await asyncio.to_thread(read_modules)
                size = await asyncio.to_thread(build_agent_initramfs, path, kernel_version, modules)
            except PvsdError as error:
                self.log.error(
                    "cannot build the agent overlay", vdisk=vdisk, version=version, error=str(error)
                )
                raise
            for stale in self.folder.glob(f"agent-{vdisk}-{version}-*.cpio.gz"):
                if stale != path:
                    stale.unlink(missing_ok=True)
            self.log.info(
                "agent overlay built",
                vdisk=vdisk,
                version=version,
                kernel=kernel_version,
                modules=len(modules),
                bytes=size,
                seconds=round(loop.time() - started, 1),
            )
            return path
