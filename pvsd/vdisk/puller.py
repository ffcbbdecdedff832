"""Pulling one vDisk version into this server's store from the peers that hold it verified.

The peers serve `/replication/NAME/VERSION/index` and `.../chunks/N` (pvsd/api/replication.py).
A pull:
1. takes the index from the first peer whose index has the farm's sha256 and size;
2. writes into `.vN.img.partial` beside the final image, and records the chunks it holds in
   `.vN.img.SHA.progress` (a bitmap, pvsd/vdisk/chunks.py ChunkProgress), so a pull that a
   crash of either side stopped resumes where it was, and a progress file of another version
   of the same number is never taken for this one;
3. copies the chunks that another local version of the vDisk holds (content addressed: a new
   version moves about its changed bytes over the network);
4. fetches the rest, `parallel` at a time, spread over the peers; each chunk is checked against
   the index as it arrives, and a peer that fails is set aside for a while so that the others
   carry the copy;
5. hashes the whole file, and only if it is the farm's sha256 renames it into place (atomic,
   on one file system) with its sha256 sidecar: no half-written version is ever an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from pvsd.errors import Failure
from pvsd.net.reader import DecodeError
from pvsd.vdisk.chunk_files import chunk_matches, index_image, keep_index, kept_index
from pvsd.vdisk.chunks import ChunkIndex, ChunkProgress, decode_index, decode_progress, local_sources
from pvsd.vdisk.image import image_path, read_sidecar, sha256_file, write_sidecar
from pvsd.vdisk.ordered_hash import OrderedHash
from pvsd.vdisk.ratelimit import RateLimit

__all__ = ["Peer", "PullResult", "fetch_index", "pull_version", "repair_chunks"]

REQUEST_TIMEOUT_S = 30.0
PEER_REST_S = 5.0  # how long a peer that failed is left alone
SAVE_EVERY_S = 1.0  # how often the progress bitmap is written
ROUNDS = 20  # passes over the peers for one chunk before the pull gives up


Progress = Callable[[int, int, float], Awaitable[None]]
"""Called about once a second: bytes held, bytes fetched by this pull, bytes per second."""


@dataclass(frozen=True)
class Peer:
    name: str
    base: str  # http://ADDRESS:PORT


@dataclass(frozen=True)
class PullResult:
    path: Path
    fetched_bytes: int  # over the network
    reused_bytes: int  # copied from another local version
    resumed_chunks: int  # held by an earlier, interrupted pull
    seconds: float
    source: str  # the peer that gave the index


async def pull_version(
    store: Path,
    vdisk: str,
    version: int,
    sha256: str,
    size: int,
    peers: Sequence[Peer],
    session: aiohttp.ClientSession,
    log: structlog.stdlib.BoundLogger,
    parallel: int = 4,
    rate: RateLimit | None = None,
    on_progress: Progress | None = None,
) -> PullResult:
    """Pull one version; Failure says why not (and what is held stays for the next try)."""
    started = time.monotonic()
    if not peers:
        raise Failure(f"no peer holds {vdisk} version {version}")
    target = image_path(store, vdisk, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    # There before the index is asked for (a peer may take a second to make it): the replica scan
    # leaves a copying replica alone while its partial file exists.
    partial.touch(exist_ok=True)
    index, source = await fetch_index(session, peers, vdisk, version, sha256, size)
    progress_file = target.with_name(f".{target.name}.{sha256[:16]}.progress")
    progress = await asyncio.to_thread(_resume, partial, progress_file, index)
    resumed = len(progress.done)
    progress, reused = await asyncio.to_thread(_reuse_local, store, vdisk, version, index, partial, progress)
    if reused:
        await asyncio.to_thread(_save, progress_file, progress)
    whole = OrderedHash(partial, index, progress.done)
    hashing = asyncio.ensure_future(asyncio.to_thread(whole.run))
    puller = _Fetcher(
        session, peers, vdisk, version, index, partial, progress, progress_file, log, rate, on_progress
    )
    puller.landed = whole.mark
    try:
        await puller.run(parallel)
        actual = await hashing
    finally:
        whole.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await hashing
    await asyncio.to_thread(_finish, partial, target, sha256, actual)
    await asyncio.to_thread(keep_index, target, index)  # for the next peer, and for the scrub
    progress_file.unlink(missing_ok=True)
    result = PullResult(
        target,
        puller.fetched,
        index.chunk_bytes(reused),
        resumed,
        round(time.monotonic() - started, 2),
        source,
    )
    log.info(
        "version pulled",
        vdisk=vdisk,
        version=version,
        source=source,
        fetched_bytes=result.fetched_bytes,
        reused_bytes=result.reused_bytes,
        resumed_chunks=resumed,
        seconds=result.seconds,
    )
    return result


async def repair_chunks(
    image: Path,
    index: ChunkIndex,
    bad: Sequence[int],
    peers: Sequence[Peer],
    session: aiohttp.ClientSession,
    log: structlog.stdlib.BoundLogger,
    parallel: int = 4,
    rate: RateLimit | None = None,
) -> int:
    """Fetch only the `bad` chunks of a verified image into it, in place (readers see the right
    bytes as soon as each lands), then check the whole and record it; the bytes fetched."""
    done = frozenset(range(index.count)) - frozenset(bad)
    progress_file = image.with_name(f".{image.name}.repair.progress")
    vdisk, version = image.parent.name, _number(image)
    fetcher = _Fetcher(
        session,
        peers,
        vdisk,
        version,
        index,
        image,
        ChunkProgress(index.count, done),
        progress_file,
        log,
        rate,
    )
    try:
        await fetcher.run(parallel)
    finally:
        progress_file.unlink(missing_ok=True)

    def check() -> None:
        with image.open("rb+") as stream:
            os.fsync(stream.fileno())
        actual = sha256_file(image)
        if actual != index.sha256:
            raise Failure(f"{image}: still hashes to {actual} after the repair, not {index.sha256}")
        write_sidecar(image, index.sha256)
        keep_index(image, index)

    await asyncio.to_thread(check)
    return fetcher.fetched


async def fetch_index(
    session: aiohttp.ClientSession, peers: Sequence[Peer], vdisk: str, version: int, sha256: str, size: int
) -> tuple[ChunkIndex, str]:
    """The version's index from the first peer whose index is of the farm's image, and its name."""
    problems = []
    for peer in peers:
        try:
            async with session.get(f"{peer.base}/replication/{vdisk}/{version}/index") as response:
                body = await response.read()
                if response.status != 200:
                    problems.append(
                        f"{peer.name}: HTTP {response.status} {body[:120].decode(errors='replace').strip()}"
                    )
                    continue
            index = decode_index(body)
        except (aiohttp.ClientError, TimeoutError, DecodeError) as error:
            problems.append(f"{peer.name}: {error or type(error).__name__}")
            continue
        if index.sha256 != sha256 or index.size != size:
            problems.append(f"{peer.name}: holds another image (sha256 {index.sha256[:12]}, {index.size} B)")
            continue
        return index, peer.name
    raise Failure(f"no peer gave the index of {vdisk} version {version}: " + "; ".join(problems))


def _resume(partial: Path, progress_file: Path, index: ChunkIndex) -> ChunkProgress:
    """What an earlier pull of this very version left, re-checked chunk by chunk, or a fresh start."""
    if partial.exists() and partial.stat().st_size == index.size:
        try:
            progress = decode_progress(progress_file.read_bytes(), index.count)
        except (OSError, DecodeError):
            progress = ChunkProgress(index.count)
        # A chunk marked done but not on disk (the bitmap was saved before the data) is fetched again.
        good = [n for n in progress.done if chunk_matches(partial, index, n)]
        return ChunkProgress(index.count, frozenset(good))
    with partial.open("wb") as stream:
        stream.truncate(index.size)  # sparse: chunks land where they belong
    return ChunkProgress(index.count)


def _reuse_local(
    store: Path, vdisk: str, version: int, index: ChunkIndex, partial: Path, progress: ChunkProgress
) -> tuple[ChunkProgress, list[int]]:
    """Copy the chunks that the newest other verified local version of the vDisk already has."""
    folder = image_path(store, vdisk, version).parent
    for other in sorted(folder.glob("v*.img"), key=lambda p: -_number(p)):
        if _number(other) in (version, -1):
            continue
        held = _local_index(other, index.chunk_size)
        if held is None:
            continue
        copied = []
        fd = os.open(partial, os.O_WRONLY)
        source_fd = os.open(other, os.O_RDONLY)
        try:
            for wanted, source in local_sources(index, held).items():
                if wanted in progress.done:
                    continue
                # In the kernel (a reflink where the file system shares extents): the bytes never
                # pass through Python; the whole-file hash at the end checks them with the rest.
                _copy_range(source_fd, fd, held.span(source)[0], index.span(wanted)[0], index.span(wanted)[1])
                copied.append(wanted)
        finally:
            os.close(source_fd)
            os.close(fd)
        return progress.with_done(*copied), copied
    return progress, []


def _copy_range(source: int, target: int, source_offset: int, target_offset: int, length: int) -> None:
    while length:
        done = os.copy_file_range(source, target, length, source_offset, target_offset)
        if done == 0:
            raise Failure("a local version ended before the chunk it was to give")
        source_offset, target_offset, length = source_offset + done, target_offset + done, length - done


def _local_index(image: Path, chunk_size: int) -> ChunkIndex | None:
    sidecar = read_sidecar(image)
    if sidecar is None:
        return None
    info = image.stat()
    if (sidecar.size, sidecar.mtime_ns) != (info.st_size, info.st_mtime_ns):
        return None
    kept = kept_index(image, sidecar.sha256, chunk_size)
    if kept is not None:
        return kept
    index = index_image(image, chunk_size)
    return index if index.sha256 == sidecar.sha256 else None


def _number(image: Path) -> int:
    digits = image.stem.removeprefix("v")
    return int(digits) if digits.isdigit() else -1


def _save(progress_file: Path, progress: ChunkProgress) -> None:
    # A name of its own per save: the thread of a cancelled pull may still be saving.
    partial = progress_file.with_name(f"{progress_file.name}.{uuid.uuid4().hex[:8]}.part")
    partial.write_bytes(progress.encode())
    partial.replace(progress_file)


def _finish(partial: Path, target: Path, sha256: str, actual: str) -> None:
    """`actual`: the partial file's hash, read back from it as its chunks landed."""
    with partial.open("rb+") as stream:
        os.fsync(stream.fileno())
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise Failure(
            f"{target.name}: the pulled image hashes to {actual}, not {sha256}; pulled again next time"
        )
    partial.replace(target)
    write_sidecar(target, sha256)
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)


class _Fetcher:
    """The chunks still missing, fetched by `parallel` workers over the peers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        peers: Sequence[Peer],
        vdisk: str,
        version: int,
        index: ChunkIndex,
        partial: Path,
        progress: ChunkProgress,
        progress_file: Path,
        log: structlog.stdlib.BoundLogger,
        rate: RateLimit | None,
        on_progress: Progress | None = None,
    ) -> None:
        self.session = session
        self.rate = rate
        self.on_progress = on_progress
        self._started = time.monotonic()
        self.peers = list(peers)
        self.path = f"/replication/{vdisk}/{version}/chunks/"
        self.index = index
        self.partial = partial
        self.progress = progress
        self.progress_file = progress_file
        self.log = log
        self.fetched = 0
        self._resting: dict[str, float] = {}
        self._saved_at = time.monotonic()
        self._saving = asyncio.Lock()
        self._fd = -1
        self.landed: Callable[[int], None] | None = None  # told of each chunk once it is written

    async def run(self, parallel: int) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in self.progress.remaining():
            queue.put_nowait(number)
        if queue.empty():
            return
        self._fd = os.open(self.partial, os.O_WRONLY)
        try:
            workers = [asyncio.create_task(self._work(queue)) for _ in range(max(1, parallel))]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                async with self._saving:
                    await asyncio.to_thread(_save, self.progress_file, self.progress)
        finally:
            os.close(self._fd)

    async def _work(self, queue: asyncio.Queue[int]) -> None:
        while not queue.empty():
            number = queue.get_nowait()
            if self.rate is not None:
                # Paced before the request, so that the cap holds for what is in flight too.
                wait = self.rate.delay(asyncio.get_running_loop().time(), self.index.span(number)[1])
                if wait > 0:
                    await asyncio.sleep(wait)
            data = await self._fetch(number)
            await asyncio.to_thread(os.pwrite, self._fd, data, self.index.span(number)[0])
            if self.landed is not None:
                self.landed(number)
            self.fetched += len(data)
            self.progress = self.progress.with_done(number)
            if time.monotonic() - self._saved_at >= SAVE_EVERY_S and not self._saving.locked():
                async with self._saving:
                    await self._checkpoint()

    async def _checkpoint(self) -> None:
        """The progress bitmap to disk, and the progress to whoever follows it."""
        self._saved_at = time.monotonic()
        progress = self.progress
        # The chunks on disk before the bitmap that says so; and the write-back spread over the
        # copy, so that the fsync at its end has a second's worth left, not the whole image.
        await asyncio.to_thread(os.fdatasync, self._fd)
        await asyncio.to_thread(_save, self.progress_file, progress)
        if self.on_progress is not None:
            held = self.index.chunk_bytes(self.progress.done)
            rate = self.fetched / max(1e-3, time.monotonic() - self._started)
            await self.on_progress(held, self.fetched, rate)

    async def _fetch(self, number: int) -> bytes:
        expected = self.index.chunks[number]
        length = self.index.span(number)[1]
        problems: list[str] = []
        for attempt in range(ROUNDS * len(self.peers)):
            # Neighbouring chunks go to different peers, so that a copy is spread over all of them.
            peer = self.peers[(number + attempt) % len(self.peers)]
            if self._resting.get(peer.name, 0.0) > time.monotonic():
                if all(self._resting.get(p.name, 0.0) > time.monotonic() for p in self.peers):
                    await asyncio.sleep(0.5)
                continue
            try:
                async with self.session.get(peer.base + self.path + str(number)) as response:
                    data = await response.read() if response.status == 200 else b""
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                problems.append(f"{peer.name}: {error or type(error).__name__}")
                self._rest(peer, problems[-1])
                continue
            if status != 200:
                problems.append(f"{peer.name}: HTTP {status}")
                self._rest(peer, problems[-1])
                continue
            # Hashed in a thread: the loop goes on reading the other chunks' bodies meanwhile.
            if len(data) != length or await asyncio.to_thread(_sha256, data) != expected:
                problems.append(f"{peer.name}: chunk {number} does not match the index")
                self._rest(peer, problems[-1])
                continue
            return data
        raise Failure(f"chunk {number} could not be fetched: " + "; ".join(problems[-3:]))

    def _rest(self, peer: Peer, problem: str) -> None:
        if self._resting.get(peer.name, 0.0) <= time.monotonic():
            self.log.warning("replication peer failed; trying the others", peer=peer.name, problem=problem)
        self._resting[peer.name] = time.monotonic() + PEER_REST_S


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
