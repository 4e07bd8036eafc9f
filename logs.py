"""Logging: the seed's line format, size-based rotation shared by processes, masking of every record."""
from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import traceback
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType
from typing import TextIO
from urllib.parse import unquote

from phones import mask_phones_in

LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s [in %(pathname)s:%(lineno)d]"
ACCESS_LOGGER = "sms_bulk_app.access"  # the development server's request lines (python sms_bulk_app.py)
LOG_MAX_BYTES = 1_000_000
LOG_BACKUP_COUNT = 10

# Credentials that travel in URLs or headers (webhook secret, MoyKlass token) are hidden
# by name even when their value is not known to this process.
SECRET_IN_TEXT = re.compile(
    r"(?i)((?:secret|token|pwd|password|apikey|api_key|accesstoken)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
)

# Werkzeug's development server colours its request lines; a log file wants plain text.
ANSI_COLOR = re.compile(r"\x1b\[[0-9;]*m")

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: any of them in a logged
# value could end its line early, forge the next one or garble a terminal.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def escape_controls(text: str) -> str:
    """`\\n`, `\\x00`, `\\u2028` in place of the characters themselves: a value stays on its line."""
    return CONTROL_CHARACTER.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def percent_decoded(text: str) -> str:
    """URLs arrive percent-encoded (`?phone=064%20987%206543`): decoded until nothing changes,
    so that neither single nor double encoding hides a phone, a secret or a control character."""
    while (decoded := unquote(text)) != text:
        text = decoded
    return text


class MaskingFilter(logging.Filter):
    """Masks phone numbers and known secrets in the message and traceback of every record, and
    escapes control characters in them, so that one record is one line (a traceback, one line
    per line of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self._secrets.add(value)

    def _hide_secrets(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def mask(self, text: str) -> str:
        """One line of log text: secrets hidden (as given and percent-decoded), phones masked, controls escaped."""
        text = percent_decoded(self._hide_secrets(ANSI_COLOR.sub("", text)))
        text = SECRET_IN_TEXT.sub(r"\1***", self._hide_secrets(text))
        return escape_controls(mask_phones_in(text))

    def _mask_lines(self, text: str) -> str:
        return "\n".join(self.mask(line) for line in text.split("\n"))

    def _traceback(self, exc_info: ExcInfo) -> str:
        """The traceback, its own line breaks kept; an exception's text (and notes) masked as one line each."""
        formatted = traceback.TracebackException(*exc_info)
        exception_texts: set[str] = set()
        pending = [formatted]
        while pending:
            current = pending.pop()
            exception_texts.update(current.format_exception_only())
            pending += [chained for chained in (current.__cause__, current.__context__) if chained]
        parts = [self.mask(part.removesuffix("\n")) + "\n" if part in exception_texts else self._mask_lines(part)
                 for part in formatted.format()]
        return "".join(parts).removesuffix("\n")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.mask(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self._traceback(record.exc_info)
        if record.stack_info:
            record.stack_info = self._mask_lines(record.stack_info)
        return True


class SharedRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler that several processes (gunicorn workers, the worker) can share.

    Each line is written under an exclusive file lock; a process whose file was rotated away
    by another reopens the new one, and the size that triggers rotation is the file's own, not
    this process's view of it, so no two processes rotate at once and no line is lost.
    """

    def __init__(self, filename: Path):
        super().__init__(filename, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUP_COUNT,
                         encoding="utf-8", delay=True)
        self._lock_path = f"{self.baseFilename}.lock"
        self._lock_fd: int | None = None
        self._lock_pid = 0

    def _lock_file(self) -> int:
        """The lock file, opened once per process (a descriptor inherited over fork would be shared)."""
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def _open(self) -> TextIO:
        """The log file, made readable by the service's user alone (its lines name clients)."""
        return open(os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                    encoding=self.encoding)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            lock = self._lock_file()
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.stream is not None:
                    size_and_inode = os.fstat(self.stream.fileno())
                    try:
                        rotated_away = os.stat(self.baseFilename).st_ino != size_and_inode.st_ino
                    except FileNotFoundError:
                        rotated_away = True
                    if rotated_away:
                        self.stream.close()
                        self.stream = None
                    elif size_and_inode.st_size + len(line.encode()) > self.maxBytes:
                        self.doRollover()
                if self.stream is None:
                    self.stream = self._open()
                self.stream.write(line)
                self.stream.flush()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = None


# One filter for the whole process: later code (the token store) registers secrets it learns.
masking_filter = MaskingFilter()


def setup_logging(log_file: Path, level: str, secrets: list[str]) -> None:
    """Send every logger's records, masked, to the rotating file; warnings also to stderr.

    stderr is the terminal, or journald under systemd: it gets what an operator must see
    (startup warnings, errors) without a second copy of every line of the file.
    """
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for secret in secrets:
        masking_filter.add_secret(secret)
    formatter = logging.Formatter(LOG_FORMAT)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "sms_bulk_app", False)]:
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    for handler in (SharedRotatingFileHandler(log_file), console):
        handler.sms_bulk_app = True
        handler.setFormatter(formatter)
        handler.addFilter(masking_filter)
        root.addHandler(handler)
    root.setLevel(level)
    # urllib3 logs full URLs at DEBUG; keep it quiet unless something breaks.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def setup_access_log(path: Path | None) -> None:
    """Request lines (ACCESS_LOGGER) to their own rotating file, masked like the log, or nowhere
    when `path` is None; never into the app log, where they would drown everything else."""
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.setLevel(logging.INFO)
    for handler in list(access.handlers):
        access.removeHandler(handler)
        handler.close()
    if path is None:
        access.addHandler(logging.NullHandler())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = SharedRotatingFileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(masking_filter)
    access.addHandler(handler)
