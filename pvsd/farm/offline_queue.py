"""Records a server could not write while the farm database was down, kept on its disk until then.

One JSON line per record, fsynced before the login that made it is answered, so that what a
target was told is never lost with a crash of the server. Each record carries a random event
key; the store writes it with the record's audit entry, under a unique index, so a record
written twice (the server crashed after the write, before it cut the queue) is written once.
A torn last line (a crash in the middle of a write) is dropped, with a warning by the caller.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["OfflineQueue", "OfflineRecord", "RecordKind", "new_event_key"]

QUEUE_FILE = "queue.jsonl"


class RecordKind(enum.StrEnum):
    SESSION_OPEN = "session.open"  # a fresh login granted from the snapshot
    SESSION_MOVE = "session.move"  # a target that came back with its ticket
    SESSION_CLOSE = "session.close"  # a session that ended here


def new_event_key(server: str) -> str:
    return f"{server}:{secrets.token_hex(12)}"


@dataclass(frozen=True)
class OfflineRecord:
    event: str
    kind: RecordKind
    at: float  # this server's clock, epoch seconds: the database's was out of reach
    actor: str
    mac: str
    server: str
    session: int
    io_port: int = 0
    vdisk: str | None = None
    version: int | None = None

    def to_line(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> OfflineRecord:
        fields = json.loads(line)
        fields["kind"] = RecordKind(fields["kind"])
        return cls(**fields)


class OfflineQueue:
    """Appended to from the event loop, written to the store from a thread: one lock for both."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / QUEUE_FILE
        self._lock = threading.Lock()
        self.torn = 0  # lines dropped because a crash cut them short

    def append(self, record: OfflineRecord) -> None:
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(descriptor, record.to_line())
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    def records(self) -> list[OfflineRecord]:
        with self._lock:
            return self._read()

    def __len__(self) -> int:
        return len(self.records())

    def _read(self) -> list[OfflineRecord]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(OfflineRecord.from_line(line))
            except (ValueError, TypeError, KeyError):
                self.torn += 1
        return records

    def discard(self) -> int:
        """Drop every queued record (they belong to another farm); returns how many."""
        with self._lock:
            count = len(self._read())
            self.path.unlink(missing_ok=True)
        return count

    def drain(self, write: Callable[[Sequence[OfflineRecord]], int]) -> tuple[int, int]:
        """Hand the queued records to `write` (the store, which says how many were new); once it
        returns, drop them from the queue, keeping any appended meanwhile. Returns (records
        handed over, new ones); raises what `write` raises, with the queue as it was."""
        records = self.records()
        if not records:
            return 0, 0
        new = write(records)
        with self._lock:
            written = {record.event for record in records}
            rest = [record for record in self._read() if record.event not in written]
            temporary = self.folder / f".{QUEUE_FILE}.{os.getpid()}"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(descriptor, b"".join(record.to_line() for record in rest))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            temporary.replace(self.path)
        return len(records), new
