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

    async def _once(self, name: str, stale: str, build: Callable[[Path], str]) -> Path:
        """`folder/name`, made by `build(path)` (in a thread; it returns what to log) unless it is
        there; other files matching the glob `stale` are then removed."""
        path = self.folder / name
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if path.is_file():
                return path
            loop = asyncio.get_running_loop()
            started = loop.time()
            self.log.info("building a boot file", path=str(path))
            try:
                await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
                what = await asyncio.to_thread(build, path)
            except PvsdError as error:
                self.log.error("cannot build a boot file", path=str(path), error=str(error))
                raise
            for old in self.folder.glob(stale):
                if old != path:
                    old.unlink(missing_ok=True)
            self.log.info(
                "boot file built", path=str(path), what=what, seconds=round(loop.time() - started, 1)
            )
            return path

    async def agent_overlay(self, vdisk: str, version: int, sha256: str, read_modules: ModuleReader) -> Path:
        """The overlay for one version, built if it is not there yet. PvsdError says why not."""

        def build(path: Path) -> str:
            kernel_version, modules = read_modules()
            size = build_agent_initramfs(path, kernel_version, modules)
            return f"agent overlay of {vdisk} v{version}: {kernel_version}, {len(modules)} modules, {size} B"

        return await self._once(
            f"agent-{vdisk}-{version}-{sha256[:12]}-{_code_hash()}.cpio.gz",
            f"agent-{vdisk}-{version}-*.cpio.gz",
            build,
        )

    async def media(self, key: str, build: Callable[[Path], str]) -> Path:
        """The boot media for one list of live servers (`key` names it)."""
        return await self._once(f"media-{key}-{_code_hash()}.iso", "media-*.iso", build)
