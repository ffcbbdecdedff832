"""The pipe between the main process and its workers (TFTP's, and the stream's): a message larger
than the pipe holds arrives whole, and only a worker's exit counts as its death."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal

from support.tftp import oversized_report_worker

from pvsd.log import get_logger
from pvsd.processes import WorkerPool, WorkerSpec, run

SIZE = 1 << 20  # a pipe (a socketpair) holds a few hundred kB


def test_a_message_larger_than_the_pipe_arrives_whole_and_is_no_death() -> None:
    """The event loop (uvloop) switches a watched descriptor to non-blocking, so a large send
    stopped half-way and the receiver's read failed mid-message: taken for the worker's death."""
    messages: list[int] = []
    deaths: list[tuple[int, int | None]] = []

    async def scenario() -> None:
        pool = WorkerPool(
            "test",
            get_logger("test"),
            lambda _, message: messages.append(len(message) if isinstance(message, bytes) else -1),
            lambda key, code: deaths.append((key, code)),
        )
        await pool.start([WorkerSpec(1, "pvsd-test-1", oversized_report_worker, (SIZE,))])
        try:
            for _ in range(100):
                if len(messages) >= 3 or deaths:
                    break
                await asyncio.sleep(0.05)
            assert pool.alive(1)
        finally:
            await pool.close()

    run(scenario())
    assert deaths == []
    assert len(messages) >= 3 and set(messages) == {SIZE}


def test_a_worker_that_exits_is_reported_dead_with_its_exit_code() -> None:
    deaths: list[tuple[int, int | None]] = []

    async def scenario() -> None:
        pool = WorkerPool(
            "test", get_logger("test"), lambda *_: None, lambda key, code: deaths.append((key, code))
        )
        await pool.start([WorkerSpec(1, "pvsd-test-1", oversized_report_worker, (10,))])
        try:
            (worker,) = multiprocessing.active_children()
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            for _ in range(100):
                if deaths:
                    break
                await asyncio.sleep(0.05)
        finally:
            await pool.close()

    run(scenario())
    assert deaths == [(1, -signal.SIGKILL)]
