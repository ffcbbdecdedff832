"""A vDisk version as one streaming session sees it: the shared image, plus where its writes go.

Images are memory-mapped once per process and shared by every session reading them, so twenty
targets reading the same blocks cost one page-cache read. A session of a private vDisk writes
to the image itself, under an exclusive lock (one writer on this host); a standard vDisk with
the cache on the server writes to the device's overlay; with the cache on the device the
session has nothing to write to.

Reads are memory copies and run where the caller is. Opening, writing, syncing and closing
touch the disk and may block: the I/O worker runs them in threads, one session's in order.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pvsd.vdisk.fileio import pwrite_all
from pvsd.vdisk.image import image_path
from pvsd.vdisk.overlay import Overlay

__all__ = ["DiskSpec", "MappedImage", "SessionDisk", "SharedImages", "WriterBusy"]


class WriterBusy(Exception):
    """Another session already writes this private image."""


class MappedImage:
    """One vDisk version's image, mapped read-only; `users` counts the sessions holding it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self.fd).st_size
            self.map = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
        except BaseException:
            os.close(self.fd)
            raise
        self.users = 0

    def read(self, offset: int, length: int) -> bytes:
        return self.map[offset : offset + length]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class SharedImages:
    """The images this process has mapped, each shared by its sessions; safe to use from threads."""

    def __init__(self) -> None:
        self._images: dict[Path, MappedImage] = {}
        self._lock = threading.Lock()

    def acquire(self, path: Path) -> MappedImage:
        with self._lock:
            image = self._images.get(path)
            if image is None:
                image = self._images[path] = MappedImage(path)
            image.users += 1
            return image

    def release(self, image: MappedImage) -> None:
        with self._lock:
            image.users -= 1
            if image.users <= 0 and self._images.get(image.path) is image:
                del self._images[image.path]
                image.close()

    def __len__(self) -> int:
        return len(self._images)


@dataclass(frozen=True)
class DiskSpec:
    """Which disk a session opens: the version's image, and where its writes go."""

    store: Path
    vdisk: str
    version: int
    mac: str
    session: int
    private: bool
    overlay_dir: Path | None  # a standard vDisk cached on the server: the overlays' folder
    sector_size: int = 512


class SessionDisk:
    """One session's disk. Build it with `SessionDisk.open` (in a thread: it may touch the disk)."""

    def __init__(
        self, images: SharedImages, image: MappedImage, overlay: Overlay | None, writer_fd: int | None
    ) -> None:
        self._images = images
        self.image = image
        self.overlay = overlay
        self.writer_fd = writer_fd
        self._closed = False

    @classmethod
    def open(cls, images: SharedImages, spec: DiskSpec) -> SessionDisk:
        """Raises OSError when the image cannot be opened, WriterBusy when a private image has a
        writer already."""
        path = image_path(spec.store, spec.vdisk, spec.version)
        image = images.acquire(path)
        try:
            overlay = writer_fd = None
            if spec.private:
                writer_fd = _lock_for_writing(path)
            elif spec.overlay_dir is not None:
                overlay = Overlay.open(spec.overlay_dir, spec.mac, image.size, spec.sector_size, spec.session)
        except BaseException:
            images.release(image)
            raise
        return cls(images, image, overlay, writer_fd)

    @property
    def size(self) -> int:
        return self.image.size

    @property
    def writable(self) -> bool:
        return self.writer_fd is not None or self.overlay is not None

    def read(self, offset: int, length: int) -> bytes:
        if self.overlay is not None:
            return self.overlay.read(offset, length, self.image.read)
        return self.image.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Blocking; once it returns the data is in the file (not necessarily on the disk)."""
        if self.writer_fd is not None:
            pwrite_all(self.writer_fd, data, offset)
        elif self.overlay is not None:
            self.overlay.write(offset, data)
        else:
            raise OSError(errno.EROFS, "this session's writes stay on the device")

    def sync(self) -> None:
        """Blocking: every write so far survives a power loss once this returns."""
        if self.writer_fd is not None:
            os.fsync(self.writer_fd)
        elif self.overlay is not None:
            self.overlay.flush()

    def close(self) -> None:
        """Blocking: sync a private image, release its writer lock and the shared image."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.overlay is not None:
                self.overlay.close()
            if self.writer_fd is not None:
                try:
                    os.fsync(self.writer_fd)
                finally:
                    os.close(self.writer_fd)  # closing the descriptor releases the single-writer lock
        finally:
            self._images.release(self.image)


def _lock_for_writing(path: Path) -> int:
    """The image opened for writing under an exclusive lock: one writer on this host at a time."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise WriterBusy(f"another session writes {path.name}") from None
        raise
    return fd
