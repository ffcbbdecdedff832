"""vDisk images in a server's store folder: where each version lives, importing one, checking one.

Version N of vDisk `name` is the raw image `store/name/vN.img`. Next to it, `vN.img.sha256`
(JSON: sha256, size, mtime_ns) records the hash computed when the image was imported or last
verified, so that a server starting up trusts an unchanged image without reading it all again.
The sidecar is only a cache: when it is missing, malformed or stale the image is hashed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvsd.errors import BadInput, Failure
from pvsd.vdisk.chunk_files import keep_index, kept_index_path
from pvsd.vdisk.chunks import ChunkIndex, IndexBuilder

__all__ = [
    "DEFAULT_CHUNK",
    "ImageCheck",
    "ImportResult",
    "Sidecar",
    "boot_folder",
    "check_source",
    "discard_image",
    "image_path",
    "import_image",
    "move_image",
    "read_sidecar",
    "sha256_file",
    "sidecar_path",
    "verify_image",
    "write_sidecar",
]

DEFAULT_CHUNK = 4 << 20
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Sidecar:
    """What the sidecar says: the image had this hash when it had this size and mtime."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ImportResult:
    size: int
    sha256: str


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of `verify_image`; `sha256` is None when the content was not hashed and not trusted."""

    ok: bool
    reason: str
    sha256: str | None


def image_path(store: Path, vdisk: str, version: int) -> Path:
    return store / vdisk / f"v{version}.img"


def boot_folder(store: Path, vdisk: str, version: int) -> Path:
    """The version's boot files beside its image: `vmlinuz` and, if it has one, `initrd.img`."""
    return store / vdisk / f"v{version}.boot"


def sidecar_path(image: Path) -> Path:
    return image.with_name(image.name + ".sha256")


def read_sidecar(image: Path) -> Sidecar | None:
    """The sidecar of `image`, or None if missing, unreadable or malformed: never raises for its content."""
    try:
        document = json.loads(sidecar_path(image).read_bytes())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(document, dict):
        return None
    sha256, size, mtime_ns = document.get("sha256"), document.get("size"), document.get("mtime_ns")
    if not (isinstance(sha256, str) and len(sha256) == 64 and set(sha256) <= _SHA256_HEX):
        return None
    # bool is an int to isinstance, and a JSON true is no size
    if type(size) is not int or type(mtime_ns) is not int or size < 0:
        return None
    return Sidecar(sha256=sha256, size=size, mtime_ns=mtime_ns)


def write_sidecar(image: Path, sha256: str) -> None:
    """Record that `image`, as it is now (size and mtime), has this hash."""
    info = image.stat()
    document = {"sha256": sha256.lower(), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    target = sidecar_path(image)
    temporary = target.with_name(target.name + ".part")
    # Replaced rather than rewritten in place so that a reader never sees half a document. No
    # fsync: a sidecar lost in a crash costs one re-hash, not correctness.
    temporary.write_text(json.dumps(document) + "\n", encoding="utf-8")
    temporary.replace(target)


def sha256_file(path: Path, chunk: int = DEFAULT_CHUNK) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        while count := file.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def verify_image(path: Path, expected_sha256: str, expected_size: int) -> ImageCheck:
    """Check that the image at `path` has the expected size and hash, trusting a matching sidecar."""
    expected_sha256 = expected_sha256.lower()
    try:
        info = path.stat()
    except FileNotFoundError:
        return ImageCheck(ok=False, reason="missing", sha256=None)
    if info.st_size != expected_size:
        return ImageCheck(
            ok=False, reason=f"size is {info.st_size} bytes, expected {expected_size}", sha256=None
        )
    sidecar = read_sidecar(path)
    if sidecar == Sidecar(sha256=expected_sha256, size=info.st_size, mtime_ns=info.st_mtime_ns):
        return ImageCheck(ok=True, reason="sidecar", sha256=expected_sha256)
    actual = sha256_file(path)
    if actual != expected_sha256:
        return ImageCheck(ok=False, reason=f"sha256 is {actual}, expected {expected_sha256}", sha256=actual)
    write_sidecar(path, actual)
    return ImageCheck(ok=True, reason="hashed", sha256=actual)


def import_image(
    source: Path,
    destination: Path,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = DEFAULT_CHUNK,
    sector_size: int = 512,
) -> ImportResult:
    """Copy the raw image `source` to `destination`, hashing it on the way, and write its sidecar.

    The copy goes to `destination` with the suffix `.img.part` and is renamed over only once
    complete and fsynced, so a crash never leaves a partial image under the real name. A
    stale `.part` left by an earlier crash is overwritten. `progress(done, total)` is called
    after every chunk. Raises BadInput for an unusable source or an existing destination, and
    Failure when writing the destination fails.
    """
    if chunk <= 0 or sector_size <= 0:
        raise ValueError(f"chunk ({chunk}) and sector size ({sector_size}) must be positive")
    if destination.exists():
        raise BadInput(f"cannot import to {destination}: it exists already")
    source_fd = _open_source(source)
    try:
        total = _check_source(source, os.fstat(source_fd), sector_size)
        # Hashing needs the bytes in user space anyway, so sendfile or copy_file_range would
        # mean reading the source twice: one read and one write per chunk is cheaper.
        part = destination.with_suffix(".img.part")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            index = _copy(source, source_fd, part, total, chunk, progress)
            sha256 = index.sha256
            part.replace(destination)
            write_sidecar(destination, sha256)
            # Made on the way: a peer asking for it to pull the version gets it at once.
            keep_index(destination, index)
            _fsync_directory(destination.parent)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    finally:
        os.close(source_fd)
    return ImportResult(size=total, sha256=sha256)


def check_source(source: Path, sector_size: int) -> int:
    """The size of an image that `import_image` would accept; BadInput naming the reason if not."""
    source_fd = _open_source(source)
    try:
        return _check_source(source, os.fstat(source_fd), sector_size)
    finally:
        os.close(source_fd)


def _open_source(source: Path) -> int:
    try:
        return os.open(source, os.O_RDONLY)
    except FileNotFoundError:
        raise BadInput(f"cannot import {source}: no such file") from None
    except PermissionError:
        raise BadInput(f"cannot import {source}: not readable (permission denied)") from None
    except OSError as error:
        raise BadInput(f"cannot import {source}: {error.strerror or error}") from None


def _check_source(source: Path, info: os.stat_result, sector_size: int) -> int:
    if stat.S_ISDIR(info.st_mode):
        raise BadInput(f"cannot import {source}: it is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"cannot import {source}: not a regular file")
    if info.st_size == 0:
        raise BadInput(f"cannot import {source}: the file is empty")
    if info.st_size % sector_size:
        raise BadInput(
            f"cannot import {source}: its size, {info.st_size} bytes, "
            f"is not a multiple of the {sector_size}-byte sector size"
        )
    return info.st_size


def _copy(
    source: Path,
    source_fd: int,
    part: Path,
    total: int,
    chunk: int,
    progress: Callable[[int, int], None] | None,
) -> ChunkIndex:
    digest = IndexBuilder()
    buffer = bytearray(min(chunk, total))
    view = memoryview(buffer)
    done = 0
    try:
        part_fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as error:
        raise Failure(f"cannot write {part}: {error.strerror or error}") from None
    try:
        while True:
            try:
                count = os.readv(source_fd, [buffer])
            except OSError as error:
                raise BadInput(f"cannot import {source}: read failed: {error.strerror or error}") from None
            if not count:
                break
            digest.feed(view[:count])
            _write_all(part_fd, part, view[:count])
            done += count
            if progress is not None:
                progress(done, total)
        if done != total:
            raise BadInput(f"cannot import {source}: it changed size while copying ({total} -> {done} bytes)")
        try:
            os.fsync(part_fd)
        except OSError as error:
            raise Failure(f"cannot write {part}: {error.strerror or error}") from None
    finally:
        os.close(part_fd)
    return digest.finish()


def _write_all(fd: int, path: Path, data: memoryview) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except OSError as error:
            raise Failure(f"cannot write {path}: {error.strerror or error}") from None
        data = data[written:]


def move_image(image: Path, destination: Path) -> None:
    """Give an imported image (and its sidecar) its version's name, in the same folder."""
    if destination.exists():
        raise BadInput(f"cannot import to {destination}: it exists already")
    image.replace(destination)
    sidecar_path(image).replace(sidecar_path(destination))
    if kept_index_path(image).exists():
        kept_index_path(image).replace(kept_index_path(destination))
    _fsync_directory(destination.parent)


def discard_image(image: Path) -> None:
    """Remove an image and its sidecar if they are there: an import that was not recorded."""
    for path in (image, sidecar_path(image), kept_index_path(image), image.with_suffix(".img.part")):
        path.unlink(missing_ok=True)


def _fsync_directory(folder: Path) -> None:
    # Makes the rename durable. Some filesystems (network shares among them) refuse to fsync a
    # directory; the image is complete either way, so that is not worth failing the import for.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
