"""A version's files in a server's store, made from another version's and removed when the farm
no longer needs them.

Every version is a whole image (`vN.img`), so the stream reads each one as fast as an imported
image. A new version starts as a clone of its parent: a reflink (FICLONE) where the file system
shares extents (btrfs, XFS), else `copy_file_range`, which the kernel does without a round trip
through this process. Beside the image: its sidecar (`vN.img.sha256`), its chunk index
(`vN.img.chunks`) and its boot folder (`vN.boot`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from pvsd.errors import Failure
from pvsd.vdisk.chunk_files import index_image, keep_index, kept_index_path
from pvsd.vdisk.chunks import ChunkIndex
from pvsd.vdisk.image import boot_folder, image_path, read_sidecar, sidecar_path, write_sidecar

__all__ = ["clone_version", "remove_version_files", "seal_image", "version_files"]

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def clone_version(store: Path, vdisk: str, source: int, number: int, sealed: bool) -> Path:
    """Make version `number`'s files from version `source`'s; `sealed`: the copy keeps the
    source's hash (a merge), so its sidecar and chunk index are copied too. Whole or nothing."""
    origin, target = image_path(store, vdisk, source), image_path(store, vdisk, number)
    if not origin.is_file():
        raise Failure(f"cannot make {vdisk} version {number}: this server's store has no {origin}")
    if target.exists():
        raise Failure(f"cannot make {vdisk} version {number}: {target} exists already")
    staged = target.with_name(f".{target.name}.clone")
    try:
        _clone_file(origin, staged)
        staged.replace(target)
        if sealed:
            write_sidecar(target, _sidecar_sha(origin))
            if kept_index_path(origin).exists():
                shutil.copyfile(kept_index_path(origin), kept_index_path(target))
        if boot_folder(store, vdisk, source).is_dir():
            shutil.rmtree(boot_folder(store, vdisk, number), ignore_errors=True)
            shutil.copytree(boot_folder(store, vdisk, source), boot_folder(store, vdisk, number))
    except OSError as error:
        staged.unlink(missing_ok=True)
        remove_version_files(store, vdisk, number)
        raise Failure(f"cannot make {target} from {origin}: {error.strerror or error}") from None
    except BaseException:
        staged.unlink(missing_ok=True)
        remove_version_files(store, vdisk, number)
        raise
    return target


def _sidecar_sha(image: Path) -> str:
    sidecar = read_sidecar(image)
    if sidecar is None:
        raise Failure(f"{image} has no readable sidecar: its hash is unknown")
    return sidecar.sha256


def _clone_file(origin: Path, target: Path) -> None:
    with origin.open("rb") as source, target.open("wb") as destination:
        try:
            fcntl.ioctl(destination.fileno(), _FICLONE, source.fileno())
        except OSError:
            size = os.fstat(source.fileno()).st_size
            offset = 0
            while offset < size:
                done = os.copy_file_range(
                    source.fileno(), destination.fileno(), size - offset, offset, offset
                )
                if done == 0:
                    raise Failure(f"{origin} ended while it was copied") from None
                offset += done
        os.fsync(destination.fileno())


def seal_image(image: Path) -> ChunkIndex:
    """Hash a maintenance version's image once its writer is gone: the index (and the whole sha256
    in it) is kept beside the image, with the sidecar, so that peers and the scrub need not re-read it."""
    index = index_image(image)
    keep_index(image, index)
    write_sidecar(image, index.sha256)
    return index


def version_files(store: Path, vdisk: str, number: int) -> list[Path]:
    """Every file of one version in this store that exists: image, sidecar, index, boot folder,
    and what a pull in progress holds."""
    image = image_path(store, vdisk, number)
    named = [image, sidecar_path(image), kept_index_path(image), boot_folder(store, vdisk, number)]
    folder = image.parent
    with contextlib.suppress(OSError):
        named += [p for p in folder.iterdir() if p.name.startswith(f".{image.name}.")]
    return [p for p in named if p.exists()]


def remove_version_files(store: Path, vdisk: str, number: int) -> list[Path]:
    """Remove them; returns what was removed."""
    removed = []
    for path in version_files(store, vdisk, number):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
