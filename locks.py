"""Coordination between the processes of one machine: an exclusive file lock and a shared rate limit."""
from __future__ import annotations

import fcntl
import os
import random
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FileLock:
    """An exclusive flock on `path`, held for the duration of a `with` block.

    The file is opened on every entry, so a lock is never shared by accident with a
    process forked while it was open (flock locks belong to the open file).
    """

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> int:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self._fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)


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

    def wait(self) -> None:
        with FileLock(self.path) as fd:
            stored = os.pread(fd, self._SLOT.size, 0)
            next_free = self._SLOT.unpack(stored)[0] if len(stored) == self._SLOT.size else 0.0
            now = time.time()
            if next_free > now + self.MAX_QUEUE_SECONDS:
                next_free = now  # the wall clock stepped back: start afresh
            slot = max(now, next_free)
            os.pwrite(fd, self._SLOT.pack(slot + self.interval), 0)
        if slot > now:
            time.sleep(slot - now)


class SharedSlots:
    """At most `count` holders at once across every process: one lock file per slot."""

    def __init__(self, path: Path, count: int):
        self.paths = [path.with_name(f"{path.name}.{index}") for index in range(count)]

    @contextmanager
    def hold(self) -> Iterator[None]:
        while True:
            start = random.randrange(len(self.paths))  # spread holders over the slots
            for path in self.paths[start:] + self.paths[:start]:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield
                finally:
                    os.close(fd)
                return
            time.sleep(0.002)
