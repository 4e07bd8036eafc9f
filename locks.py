"""Coordination between the processes of one machine: an exclusive file lock, a shared rate limit
and shared concurrency slots. Each wait can be bounded by a deadline (`time.monotonic()`); past
it the caller gets WouldWait instead of waiting on."""
from __future__ import annotations

import fcntl
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Protocol

POLL_START, POLL_MAX = 0.0001, 0.002  # a bounded lock wait polls, doubling its sleep up to this
SLOT_POLL_START, SLOT_POLL_MAX = 0.002, 0.05  # the same, for a send slot while all are taken


class WouldWait(Exception):
    """Going on would mean waiting past the caller's deadline."""


class FileLock:
    """An exclusive lock across the threads and processes of one machine, on the file `path`.

    The threads of a process queue on a thread lock, which wakes the next one the moment it is
    free; the thread holding it then takes an flock on the file, which this process keeps open
    (three system calls a turn fewer than opening it each time, and each one a chance for the
    GIL to change hands). A forked child opens the file afresh, and the lock is released with
    an explicit unlock, so a child never shares a held lock by accident. Without a deadline
    the kernel queues the waiting processes; with one, the flock is polled until the deadline.
    """

    def __init__(self, path: Path):
        self.path = path
        self._pid = os.getpid()
        self._threads = threading.Lock()
        self._fd: int | None = None

    @contextmanager
    def hold(self, deadline: float | None = None) -> Iterator[int]:
        """Hold the lock for the `with` block, yielding the open file; WouldWait past `deadline`."""
        if self._pid != os.getpid():  # forked: neither the thread lock nor the file is ours
            self._pid, self._threads, self._fd = os.getpid(), threading.Lock(), None
        threads = self._threads
        wait = -1 if deadline is None else max(deadline - time.monotonic(), 0)
        if not threads.acquire(timeout=wait):
            raise WouldWait(f"{self.path.name} stayed locked")
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._take(self._fd, deadline)
            try:
                yield self._fd
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            threads.release()

    def _take(self, fd: int, deadline: float | None) -> None:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        pause = POLL_START
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WouldWait(f"{self.path.name} stayed locked")
                time.sleep(min(pause, left))
                pause = min(pause * 2, POLL_MAX)


class RateLimiter(Protocol):
    """A rate limit shared by processes: here through a file, or through the database
    (store_postgresql.DatabaseRateLimiter)."""

    def wait(self, deadline: float | None = None) -> None: ...


class SharedRateLimiter:
    """At most `rate_per_sec` calls per second across every process using the same state file.

    The file holds the next free moment; each caller takes the next slot under the lock and
    sleeps until it. Slots are evenly spaced, so no one-second window ever holds more than
    the rate, whatever the number of processes and threads.
    """

    _SLOT = struct.Struct("<d")
    MAX_QUEUE_SECONDS = 60.0

    def __init__(self, path: Path, rate_per_sec: float):
        self.path = path
        self.interval = 1.0 / rate_per_sec
        self._lock = FileLock(path)

    def wait(self, deadline: float | None = None) -> None:
        """Take the next slot and sleep until it; WouldWait, taking nothing, if it is past `deadline`."""
        with self._lock.hold() as fd:
            stored = os.pread(fd, self._SLOT.size, 0)
            next_free = self._SLOT.unpack(stored)[0] if len(stored) == self._SLOT.size else 0.0
            now = time.time()
            if next_free > now + self.MAX_QUEUE_SECONDS:
                next_free = now  # the wall clock stepped back: start afresh
            slot = max(now, next_free)
            if deadline is not None and slot - now > deadline - time.monotonic():
                raise WouldWait(f"the next free slot is {slot - now:.1f} s away")
            os.pwrite(fd, self._SLOT.pack(slot + self.interval), 0)
        if slot > now:
            time.sleep(slot - now)


class PolledSlots:
    """At most `count` holders at once, across processes (and hosts) as a subclass takes a slot.

    A thread first waits for a turn among this process' own holders, on a semaphore: it sleeps
    there, and a slot freed in this process goes at once to the next of its threads. Only a
    process's own `count` holders try the shared slots, polling while every one is taken by
    others, the pause doubling up to SLOT_POLL_MAX: a 2 ms poll of every waiting sender cost two
    rate-limited workers half a core each.
    """

    def __init__(self, count: int, what: str):
        self.count = count
        self.what = what
        self._turns = threading.BoundedSemaphore(count)

    def _try_take(self) -> Callable[[], None] | None:
        """Take a free shared slot and return what frees it, or None if all are taken."""
        raise NotImplementedError

    @contextmanager
    def hold(self, deadline: float | None = None) -> Iterator[None]:
        """Hold a free slot for the `with` block; WouldWait if none frees up before `deadline`."""
        refusal = WouldWait(f"all {self.count} {self.what} stayed taken")
        if not self._turns.acquire(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0)):
            raise refusal
        try:
            pause = SLOT_POLL_START
            while (release := self._try_take()) is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise refusal
                time.sleep(pause)
                pause = min(pause * 2, SLOT_POLL_MAX)
            try:
                yield
            finally:
                release()
        finally:
            self._turns.release()


class SharedSlots(PolledSlots):
    """Slots of the processes of one machine: one lock file per slot, freed when its holder dies."""

    def __init__(self, path: Path, count: int):
        super().__init__(count, "slots")
        self.paths = [path.with_name(f"{path.name}.{index}") for index in range(count)]

    def _try_take(self) -> Callable[[], None] | None:
        start = random.randrange(len(self.paths))  # spread holders over the slots
        for path in self.paths[start:] + self.paths[:start]:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return partial(os.close, fd)
        return None
