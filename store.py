"""The outbox: one SQLite table is the single source of truth for every SMS.

Statuses: QUEUED -> SENDING -> SENT -> DELIVERED | UNDELIVERED, and FAILED (permanent error
or attempts used up), EXPIRED (deadline passed before sending), CANCELED (cancelled before
sending). Every status change is an UPDATE in this module whose WHERE allows only the
statuses TRANSITIONS lists for the new one, so no code path can move a message backwards:
DELIVERED, EXPIRED and CANCELED are final, and FAILED / UNDELIVERED leave only by an
operator's retry.

A message being sent holds a lease (owner, until). Claiming happens in one write
transaction, so any number of workers on one database never hold the same message; a
lease left by a dead worker is taken over once it expires. Its holder renews the lease while
it works on the message, and a send starts only while the lease outlives the send's deadline
(see `lease_state`), so a lease never expires under a send that is still running.

Every SQL statement of the service is here, those of clients, mailings and API keys too: other
modules call the named methods below and catch this module's exceptions (ClientConflict,
DatabaseUnavailable, InvalidTransition), never a driver's, so another database can take SQLite's place.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from database import INTEGRITY_ERRORS
from locks import FileLock, SharedRateLimiter, SharedSlots, WouldWait
from token_store import FileTokenKeeper, TokenKeeper

MAX_ID = 2**63 - 1  # SQLite's largest integer: no id, and no MoyKlass id kept here, is larger

QUEUED, SENDING, SENT = "QUEUED", "SENDING", "SENT"
DELIVERED, UNDELIVERED = "DELIVERED", "UNDELIVERED"
FAILED, EXPIRED, CANCELED = "FAILED", "EXPIRED", "CANCELED"
STATUSES = (QUEUED, SENDING, SENT, DELIVERED, UNDELIVERED, FAILED, EXPIRED, CANCELED)
# A message's priority as stored (messages.priority): the worker claims the lower first. Every
# message is "normal" unless a batch request says otherwise.
PRIORITIES = {"high": 0, "normal": 1, "low": 2}

# A mailing: scheduled -> started -> finished (no message left QUEUED or SENDING), or canceled.
SCHEDULED, STARTED, FINISHED, CANCELED_STATE = "scheduled", "started", "finished", "canceled"
MAILING_STATES = (SCHEDULED, STARTED, FINISHED, CANCELED_STATE)
FINAL_STATUSES = frozenset({DELIVERED, UNDELIVERED, FAILED, EXPIRED, CANCELED})
PUSHED_STATES = (DELIVERED, UNDELIVERED, FAILED)  # what a report a gateway pushed may say

# Clients (by id) written by one INSERT of a fan-out: each statement stays well inside
# DATABASE_TIMEOUT (PostgreSQL's statement_timeout), and its trigger's transition tables small.
FAN_OUT_CLIENTS = 50_000
LATE_ERROR = "its window does not open before the mailing ends"  # a mailing message EXPIRED at its start
MAILING_COLUMNS = ("start_at", "end_at", "text", "filter", "window_from", "window_to")  # those a caller sets
# The columns of a message the API shows.
MESSAGE_COLUMNS = ("id", "status", "phone", "text", "encoding", "segments", "attempts", "mailing_id", "client_id",
                   "user_id", "provider", "gateway_ref", "cost", "currency", "last_error", "created_at", "sent_at")
CLIENT_COLUMNS = ("phone", "operator_code", "timezone", "name", "moyklass_user_id")  # and created_at, set here

# new status -> the statuses it may be reached from
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({SENDING, FAILED, UNDELIVERED}),  # retry later; operator's retry-failed
    SENDING: frozenset({QUEUED, SENDING}),  # claim; take over an expired lease
    SENT: frozenset({SENDING, QUEUED}),  # QUEUED: a phone's late report of a message it was handed (devices.py)
    DELIVERED: frozenset({SENT}),
    UNDELIVERED: frozenset({SENT}),
    FAILED: frozenset({QUEUED, SENDING, SENT}),  # SENT: the delivery report says it failed
    EXPIRED: frozenset({QUEUED, SENDING}),
    CANCELED: frozenset({QUEUED, SENDING}),  # SENDING: its worker learns it before the send (lease_state)
}

MIGRATIONS = [
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        source TEXT NOT NULL,
        event TEXT,
        dedup_key TEXT,
        user_id INTEGER,
        phone TEXT,
        text TEXT,
        encoding TEXT,
        segments INTEGER,
        provider TEXT,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        deadline REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        gateway_ref TEXT,
        error_code TEXT,
        last_error TEXT,
        sent_at REAL,
        done_at REAL,
        report_next_at REAL,
        report_until REAL,
        report_text TEXT
    );
    CREATE INDEX messages_dedup ON messages (dedup_key, created_at);
    CREATE INDEX messages_due ON messages (status, next_attempt_at);
    CREATE INDEX messages_lease ON messages (status, lease_until);
    CREATE INDEX messages_deadline ON messages (status, deadline);
    CREATE INDEX messages_report ON messages (report_next_at) WHERE report_next_at IS NOT NULL;
    CREATE TABLE provider_pauses (
        provider TEXT PRIMARY KEY,
        paused_at REAL NOT NULL,
        retry_at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    """,
    # Bulk mailings: clients, mailings, API keys; a mailing's messages are outbox rows too.
    """
    CREATE TABLE clients (
        id INTEGER PRIMARY KEY,
        phone TEXT NOT NULL UNIQUE,
        operator_code TEXT NOT NULL,
        timezone TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        moyklass_user_id INTEGER UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE INDEX clients_operator ON clients (operator_code);
    CREATE TABLE client_tags (
        tag TEXT NOT NULL,
        client_id INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
        PRIMARY KEY (tag, client_id)
    ) WITHOUT ROWID;
    CREATE INDEX client_tags_client ON client_tags (client_id);
    CREATE TABLE mailings (
        id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        start_at REAL NOT NULL,
        end_at REAL NOT NULL,
        text TEXT NOT NULL,
        filter TEXT NOT NULL,
        window_from TEXT,
        window_to TEXT,
        state TEXT NOT NULL,
        started_at REAL
    );
    CREATE INDEX mailings_due ON mailings (state, start_at);
    ALTER TABLE messages ADD COLUMN mailing_id INTEGER REFERENCES mailings (id);
    ALTER TABLE messages ADD COLUMN client_id INTEGER;
    ALTER TABLE messages ADD COLUMN timezone TEXT;
    ALTER TABLE messages ADD COLUMN window_from TEXT;
    ALTER TABLE messages ADD COLUMN window_to TEXT;
    CREATE UNIQUE INDEX messages_mailing_client ON messages (mailing_id, client_id) WHERE mailing_id IS NOT NULL;
    CREATE INDEX messages_mailing_status ON messages (mailing_id, status) WHERE mailing_id IS NOT NULL;
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        daily_quota INTEGER,
        created_at REAL NOT NULL,
        revoked_at REAL,
        quota_day TEXT,
        quota_used INTEGER NOT NULL DEFAULT 0
    );
    """,
    # Ids are never reused (AUTOINCREMENT); sends whose outcome is unknown are counted; webhooks
    # for events without a text are counted, not sent.
    lambda db: _rebuild_with_autoincrement(db, ("messages", "clients", "mailings", "api_keys")),
    """
    ALTER TABLE messages ADD COLUMN unknown_outcomes INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_unknown ON messages (id) WHERE unknown_outcomes > 0;
    CREATE TABLE ignored_webhooks (
        event TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        last_at REAL NOT NULL
    );
    """,
    # The fields of a webhook's object its event's text may use ({summa}, {date}, ...), as JSON.
    "ALTER TABLE messages ADD COLUMN event_fields TEXT",
    # Lesson reminders: a webhook names a lesson; the worker reads its students and queues their messages.
    """
    CREATE TABLE lesson_reminders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        event TEXT NOT NULL,
        lesson_id INTEGER NOT NULL,
        dedup_key TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        deadline REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        messages INTEGER,
        last_error TEXT
    );
    CREATE INDEX lesson_reminders_due ON lesson_reminders (state, next_attempt_at);
    CREATE INDEX lesson_reminders_dedup ON lesson_reminders (dedup_key, created_at);
    ALTER TABLE messages ADD COLUMN recipient TEXT;
    ALTER TABLE messages ADD COLUMN reminder_id INTEGER REFERENCES lesson_reminders (id);
    CREATE UNIQUE INDEX messages_reminder_key ON messages (dedup_key) WHERE source = 'reminder';
    """,
    # Rate limits shared through the database (PostgreSQL: by every host; SQLite keeps files, see
    # Store.rate_limiter): the next free moment of each limit, in the database's clock.
    """
    CREATE TABLE rate_limits (
        name TEXT PRIMARY KEY,
        next_free REAL NOT NULL
    );
    """,
    # The MoyKlass token shared through the database (PostgreSQL: by every host; SQLite keeps
    # TOKEN_FILE_PATH, see Store.token_keeper).
    """
    CREATE TABLE moyklass_tokens (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        until_rejected INTEGER NOT NULL
    );
    """,
    # Counters per mailing, kept by triggers, so its statistics need not count its messages.
    lambda db: add_mailing_counts(db, _sqlite_count_triggers()),
    # Delivery reports a gateway pushed (a callback, a deliver_sm), kept until their message is SENT.
    """
    CREATE TABLE pushed_reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        provider TEXT NOT NULL,
        reference TEXT NOT NULL,
        state TEXT NOT NULL,
        description TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX pushed_reports_reference ON pushed_reports (provider, reference);
    CREATE INDEX messages_gateway_ref ON messages (provider, gateway_ref) WHERE gateway_ref IS NOT NULL;
    """,
    # Several providers: what each message cost (NULL for those sent before), each provider's run
    # of failed sends (the circuit breaker, see Store.record_provider_failure), and the indexes of
    # each provider's figures (sent and failed in the last hour, cost per day).
    """
    ALTER TABLE messages ADD COLUMN cost REAL;
    ALTER TABLE messages ADD COLUMN currency TEXT;
    CREATE TABLE provider_health (
        provider TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        down_until REAL,
        reason TEXT NOT NULL
    );
    CREATE INDEX messages_provider_sent ON messages (provider, sent_at) WHERE sent_at IS NOT NULL;
    CREATE INDEX messages_provider_failed ON messages (provider, done_at) WHERE status = 'FAILED';
    """,
    # Templates with versions and approval, batch requests (their messages have a priority and
    # name their request; `recent_texts` holds a phone and text's first message within DEDUP_SECONDS),
    # and the index of the reports (messages by created_at). The claim takes each priority in turn.
    """
    CREATE TABLE templates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE template_versions (
        template_id INTEGER NOT NULL REFERENCES templates (id),
        version INTEGER NOT NULL,
        text TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        approved_at REAL,
        approved_by TEXT,
        PRIMARY KEY (template_id, version)
    );
    CREATE TABLE batch_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        template_id INTEGER NOT NULL REFERENCES templates (id),
        template_version INTEGER NOT NULL,
        api_key_id INTEGER,
        recipients INTEGER NOT NULL,
        rejected TEXT NOT NULL
    );
    CREATE TABLE recent_texts (
        key TEXT PRIMARY KEY,
        message_id INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX recent_texts_created ON recent_texts (created_at);
    ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE messages ADD COLUMN request_id INTEGER REFERENCES batch_requests (id);
    DROP INDEX messages_due;
    CREATE INDEX messages_due ON messages (status, priority, next_attempt_at);
    CREATE INDEX messages_request_status ON messages (request_id, status) WHERE request_id IS NOT NULL;
    CREATE INDEX messages_created ON messages (created_at);
    """,
    # The web console: people's accounts, their sessions (by the SHA-256 of their token), failed
    # logins (throttling, shared by every process), and the indexes of the dashboard's figures.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        email TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        must_change_password INTEGER NOT NULL,
        created_at REAL NOT NULL,
        disabled_at REAL
    );
    CREATE TABLE console_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users (id),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX console_sessions_user ON console_sessions (user_id);
    CREATE TABLE login_failures (
        key TEXT NOT NULL,
        failed_at REAL NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures (key, failed_at);
    CREATE INDEX login_failures_at ON login_failures (failed_at);
    CREATE INDEX messages_sent_at ON messages (sent_at) WHERE sent_at IS NOT NULL;
    CREATE INDEX messages_done ON messages (status, done_at) WHERE done_at IS NOT NULL;
    """,
    # Phones as gateways (the android pull provider, devices.py): the registered phones (their tokens
    # by SHA-256), which phone each message was handed to (the report check and the per-phone rate
    # limits), and on a message the phone holding it, until when, and its acknowledgement.
    """
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        token_hash TEXT UNIQUE,
        login TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        push_token TEXT,
        sim_cards TEXT NOT NULL,
        app_version TEXT,
        created_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        events_until REAL,
        disabled_at REAL
    );
    CREATE TABLE device_handouts (
        message_id INTEGER NOT NULL,
        device_id INTEGER NOT NULL REFERENCES devices (id),
        handed_at REAL NOT NULL,
        PRIMARY KEY (message_id, device_id)
    );
    CREATE INDEX device_handouts_device ON device_handouts (device_id, handed_at);
    ALTER TABLE messages ADD COLUMN device_id INTEGER;
    ALTER TABLE messages ADD COLUMN device_lease_until REAL;
    ALTER TABLE messages ADD COLUMN device_acked_at REAL;
    ALTER TABLE messages ADD COLUMN device_states TEXT;
    CREATE INDEX messages_phone_leases ON messages (lease_owner, priority, id) WHERE status = 'SENDING';
    CREATE INDEX messages_device ON messages (device_id, sent_at) WHERE device_id IS NOT NULL;
    """,
    # The daily report by e-mail (daily_report.py): a row per reported day, claimed by one worker of
    # any host with an atomic insert, held under a lease while it sends (then the time of the next
    # try after a failure), and marked sent after.
    """
    CREATE TABLE daily_reports (
        day TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        lease_until REAL,
        attempts INTEGER NOT NULL,
        sent_at REAL,
        last_error TEXT
    );
    """,
    # 16. The audit log (audit.py): who changed what, through which channel; read newest first,
    # filtered by actor, action or time (the console's Audit page).
    """
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        channel TEXT NOT NULL,
        actor TEXT NOT NULL,
        actor_id INTEGER,
        action TEXT NOT NULL,
        object_type TEXT NOT NULL,
        object_id TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_log_at ON audit_log (at);
    CREATE INDEX audit_log_actor ON audit_log (actor, id);
    CREATE INDEX audit_log_action ON audit_log (action, id);
    """,
    # 17. The console's figures at scale: messages sent, delivered and failed by quarter hour, mailing,
    # provider and currency, kept by triggers (the dashboard's 14 days and every mailing's cost read
    # a few thousand rows, not a million messages); the index of a search by phone, and the one of
    # the oldest message of a status.
    lambda db: add_message_activity(db, sqlite_activity_triggers()),
]

# The tables that hold the service's data, referenced ones first: what migrate-db copies. The
# shared limits, the token and the anti-duplicate window (rate_limits, moyklass_tokens,
# recent_texts) start afresh on the new database.
DATA_TABLES = ("mailings", "lesson_reminders", "clients", "client_tags", "templates", "template_versions",
               "batch_requests", "messages", "api_keys", "provider_pauses", "ignored_webhooks", "pushed_reports",
               "users", "devices", "device_handouts", "audit_log")


# mailing_counts' columns: one per status, and `segments`, those of its messages with a sent_at.
COUNT_COLUMNS = tuple(status.lower() for status in STATUSES)


def is_status_sql(row: str, status: str) -> str:
    return f"CASE WHEN {row}.status = '{status}' THEN 1 ELSE 0 END"


def sent_segments_sql(row: str) -> str:
    return f"CASE WHEN {row}.sent_at IS NOT NULL THEN coalesce({row}.segments, 0) ELSE 0 END"


def mailing_counts_schema(integer: str) -> list[str]:
    """The counters' table, its backfill from the messages there are, and the index that gives a
    mailing's first and last sent_at (a minimum is not kept exact by counting: a message sent again
    moves its sent_at later)."""
    columns = ", ".join(f"{column} {integer} NOT NULL DEFAULT 0" for column in (*COUNT_COLUMNS, "segments"))
    sums = ", ".join([*(f"sum({is_status_sql('m', status)})" for status in STATUSES), f"sum({sent_segments_sql('m')})"])
    return [f"CREATE TABLE mailing_counts (mailing_id {integer} PRIMARY KEY, {columns})",
            # Only webhooks have a dedup key and only leased messages a lease: a million mailing
            # messages need not put a NULL into each of those indexes (a tenth of a fan-out's time).
            "DROP INDEX messages_dedup",
            "CREATE INDEX messages_dedup ON messages (dedup_key, created_at) WHERE dedup_key IS NOT NULL",
            "DROP INDEX messages_lease",
            "CREATE INDEX messages_lease ON messages (status, lease_until) WHERE lease_until IS NOT NULL",
            f"INSERT INTO mailing_counts (mailing_id, {', '.join(COUNT_COLUMNS)}, segments)"
            f" SELECT m.mailing_id, {sums} FROM messages m WHERE m.mailing_id IS NOT NULL GROUP BY m.mailing_id",
            "CREATE INDEX messages_mailing_sent ON messages (mailing_id, sent_at)"
            " WHERE mailing_id IS NOT NULL AND sent_at IS NOT NULL"]


def _sqlite_count_triggers() -> list[str]:
    """Row triggers: SQLite compiles them into the statement, so a message's status change costs
    one more primary-key update, and an UPDATE that sets none of status, sent_at, segments nothing."""
    def change(plus: str | None, minus: str | None) -> str:
        """SET clauses adding row `plus` and taking away row `minus` (either may be None)."""
        def term(value: Callable[[str], str]) -> str:
            return (f" + {value(plus)}" if plus else "") + (f" - {value(minus)}" if minus else "")
        return ", ".join([*(f"{column} = {column}{term(partial(is_status_sql, status=status))}"
                            for column, status in zip(COUNT_COLUMNS, STATUSES, strict=True)),
                          f"segments = segments{term(sent_segments_sql)}"])

    insert_values = ", ".join([*(is_status_sql("new", status) for status in STATUSES), sent_segments_sql("new")])
    add = ", ".join(f"{column} = {column} + excluded.{column}" for column in (*COUNT_COLUMNS, "segments"))
    moved = f"old.status IS NOT new.status OR {sent_segments_sql('old')} != {sent_segments_sql('new')}"
    return [
        "CREATE TRIGGER messages_counted_insert AFTER INSERT ON messages WHEN new.mailing_id IS NOT NULL BEGIN"
        f" INSERT INTO mailing_counts (mailing_id, {', '.join(COUNT_COLUMNS)}, segments)"
        f" VALUES (new.mailing_id, {insert_values}) ON CONFLICT (mailing_id) DO UPDATE SET {add}; END",
        "CREATE TRIGGER messages_counted_update AFTER UPDATE OF status, sent_at, segments ON messages"
        f" WHEN new.mailing_id IS NOT NULL AND ({moved}) BEGIN"
        f" UPDATE mailing_counts SET {change('new', 'old')} WHERE mailing_id = new.mailing_id; END",
        "CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages WHEN old.mailing_id IS NOT NULL BEGIN"
        f" UPDATE mailing_counts SET {change(None, 'old')} WHERE mailing_id = old.mailing_id; END",
    ]


def add_mailing_counts(db: Any, triggers: list[str], integer: str = "INTEGER") -> None:
    for statement in (*mailing_counts_schema(integer), *triggers):
        db.execute(statement)


# --- the console's figures at scale (migration 17): message_activity, kept by triggers ---

ACTIVITY_KEY = ("bucket", "mailing_id", "provider", "currency")
ACTIVITY_SUMS = ("sent", "parts", "cost", "delivered", "failed")
ACTIVITY_COLUMNS = ", ".join((*ACTIVITY_KEY, *ACTIVITY_SUMS))
ENDED = ("DELIVERED", "FAILED", "UNDELIVERED")  # done_at is set with these: the dashboard's delivered and failed


def activity_parts(row: str, sign: int, bucket: Callable[[str], str]) -> list[tuple[list[str], str]]:
    """What message `row` adds to message_activity, times `sign`: (values of ACTIVITY_COLUMNS, when).
    Its send counts in the quarter hour of its sent_at; its end (DELIVERED, or FAILED or UNDELIVERED)
    in that of its done_at."""
    def key(moment: str) -> list[str]:
        return [bucket(f"{row}.{moment}"), f"coalesce({row}.mailing_id, 0)", f"coalesce({row}.provider, '')",
                f"coalesce({row}.currency, '')"]

    delivered = is_status_sql(row, "DELIVERED")
    return [(key("sent_at") + [f"{sign}", f"{sign} * coalesce({row}.segments, 0)", f"{sign} * coalesce({row}.cost, 0)",
                               "0", "0"], f"{row}.sent_at IS NOT NULL"),
            (key("done_at") + ["0", "0", "0", f"{sign} * {delivered}", f"{sign} * (1 - {delivered})"],
             f"{row}.done_at IS NOT NULL AND {row}.status IN ({', '.join(repr(status) for status in ENDED)})")]


def aliased(values: list[str]) -> str:
    """`values` named as ACTIVITY_COLUMNS (the first SELECT of a UNION names its columns)."""
    return ", ".join(f"{value} AS {name}" for value, name in zip(values, (*ACTIVITY_KEY, *ACTIVITY_SUMS), strict=True))


def _sqlite_bucket(moment: str) -> str:
    return f"CAST({moment} / {REPORT_BUCKET_SECONDS} AS INTEGER)"  # moments > 0: truncation floors


def sqlite_activity_triggers() -> list[str]:
    """Row triggers (compiled into the statement): a message's send or end costs one or two
    primary-key upserts; an UPDATE that changes none of the counted columns, nothing."""
    add = ", ".join(f"{column} = {column} + excluded.{column}" for column in ACTIVITY_SUMS)

    def upserts(row: str, sign: int) -> str:
        return " ".join(f"INSERT INTO message_activity ({ACTIVITY_COLUMNS}) SELECT {', '.join(values)} WHERE {when}"
                        f" ON CONFLICT ({', '.join(ACTIVITY_KEY)}) DO UPDATE SET {add};"
                        for values, when in activity_parts(row, sign, _sqlite_bucket))

    counted = ("status", "sent_at", "done_at", "segments", "cost", "provider", "currency", "mailing_id")
    moved = " OR ".join(f"old.{column} IS NOT new.{column}" for column in counted)
    return [
        "CREATE TRIGGER messages_activity_insert AFTER INSERT ON messages"
        f" WHEN new.sent_at IS NOT NULL OR new.done_at IS NOT NULL BEGIN {upserts('new', 1)} END",
        f"CREATE TRIGGER messages_activity_update AFTER UPDATE OF {', '.join(counted)} ON messages"
        f" WHEN {moved} BEGIN {upserts('old', -1)} {upserts('new', 1)} END",
        "CREATE TRIGGER messages_activity_delete AFTER DELETE ON messages"
        f" WHEN old.sent_at IS NOT NULL OR old.done_at IS NOT NULL BEGIN {upserts('old', -1)} END",
    ]


def add_message_activity(db: Any, triggers: list[str], integer: str = "INTEGER", real: str = "REAL",
                         bucket: Callable[[str], str] = _sqlite_bucket) -> None:
    """The table, filled from the messages there are, its triggers, and migration 17's indexes."""
    columns = ", ".join([f"bucket {integer} NOT NULL", f"mailing_id {integer} NOT NULL", "provider TEXT NOT NULL",
                         "currency TEXT NOT NULL", *(f"{column} {real if column == 'cost' else integer} NOT NULL"
                                                     for column in ACTIVITY_SUMS)])
    rows = " UNION ALL ".join(f"SELECT {aliased(values)} FROM messages m WHERE {when}"
                              for values, when in activity_parts("m", 1, bucket))
    for statement in (
            f"CREATE TABLE message_activity ({columns}, PRIMARY KEY ({', '.join(ACTIVITY_KEY)}))",
            "CREATE INDEX message_activity_mailing ON message_activity (mailing_id) WHERE mailing_id > 0",
            f"INSERT INTO message_activity ({ACTIVITY_COLUMNS}) SELECT {', '.join(ACTIVITY_KEY)},"
            f" {', '.join(f'sum({column})' for column in ACTIVITY_SUMS)} FROM ({rows}) AS d"
            f" GROUP BY {', '.join(ACTIVITY_KEY)}",
            *triggers,
            "CREATE INDEX messages_phone ON messages (phone, created_at)",
            "CREATE INDEX messages_status_created ON messages (status, created_at)"):
        db.execute(statement)


def _rebuild_with_autoincrement(db: sqlite3.Connection, tables: tuple[str, ...]) -> None:
    """Recreate each table with `id INTEGER PRIMARY KEY AUTOINCREMENT`, keeping rows and indexes.

    SQLite's documented way to change a table: create the new one, copy, drop, rename (run with
    foreign keys off, see Store.initialize). The copied ids seed sqlite_sequence, so a new row
    never takes the id of a row deleted later.
    """
    for table in tables:
        schema = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        indexes = [row[0] for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,))]
        rebuilt = schema.replace("id INTEGER PRIMARY KEY,", "id INTEGER PRIMARY KEY AUTOINCREMENT,", 1)
        db.execute(rebuilt.replace(f"CREATE TABLE {table}", f"CREATE TABLE {table}_rebuilt", 1))
        db.execute(f"INSERT INTO {table}_rebuilt SELECT * FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_rebuilt RENAME TO {table}")
        for index in indexes:
            db.execute(index)


class InvalidTransition(Exception):
    pass


class DatabaseUnavailable(Exception):
    """The database cannot be written (locked for too long, disk full, read-only)."""


class ClientConflict(Exception):
    """The phone (or MoyKlass user) belongs to another client already."""


@dataclass(frozen=True)
class Accepted:
    message_id: int
    duplicate: bool  # an identical webhook was accepted within the dedup window
    status: str
    also_queued: tuple[int, ...] = ()  # the messages to its other recipients (a parent)
    row: dict[str, Any] | None = None  # the first message as written (None for a duplicate)


@dataclass(frozen=True)
class Change:
    """A status change waiting to be written, with the fields that go with it."""

    message_id: int
    status: str
    fields: dict[str, Any] = field(default_factory=dict)
    count_attempt: int = 0  # sends made (True: one; a failover makes several in one attempt)
    unknown_outcome: bool = False  # the send reached the gateway but no verdict came back


@dataclass(frozen=True)
class LeaseState:
    """What a lease holder must know just before it sends."""

    ours: bool  # still SENDING under our lease: nobody took it over, it was not cancelled
    canceled: bool  # its mailing was cancelled: it must not be sent
    seconds_left: float  # until the lease expires


@dataclass(frozen=True)
class ProviderPause:
    provider: str
    retry_at: float
    reason: str


@dataclass(frozen=True)
class ProviderState:
    """What the database says of a provider: paused (credentials or balance refused), down (a
    run of failed sends, see record_provider_failure), or neither."""

    failures: int = 0  # failed sends in a row
    paused_until: float | None = None
    pause_reason: str = ""
    down_until: float | None = None
    down_reason: str = ""


@dataclass(frozen=True)
class CostLine:
    """Messages sent (SENT and after) of one group (a day, a mailing) through one provider."""

    group: Any  # the day (YYYY-MM-DD, UTC) or the mailing id
    provider: str
    currency: str  # "" when the provider has no price
    messages: int
    parts: int
    cost: float


@dataclass(frozen=True)
class Mailing:
    """A mailing as stored: times are seconds since the epoch, `filter` its JSON."""

    id: int
    created_at: float
    updated_at: float
    start_at: float
    end_at: float
    text: str
    filter: str
    window_from: str | None
    window_to: str | None
    state: str
    started_at: float | None

    @property
    def window(self) -> tuple[str, str] | None:
        """The local-time window ("09:00", "21:00") of each client, or None: any time."""
        return (self.window_from, self.window_to) if self.window_from and self.window_to else None


MAILING_ROW = ", ".join(Mailing.__dataclass_fields__)  # the columns a Mailing is read from, in its order


@dataclass(frozen=True)
class MailingProgress:
    mailing_id: int
    state: str
    counts: dict[str, int]  # its messages by status, only the statuses they have
    segments: int  # of the messages sent
    first_sent_at: float | None
    last_sent_at: float | None


@dataclass(frozen=True)
class FanOut:
    """What starting a mailing queues: one message per client matching the filter, its text the
    template with the client's `name` and `first_name` (its first word, as Python's str.split()
    gives it), due when `opening(timezone)` says the client's window opens next."""

    tags: list[str]
    operator_codes: list[str]
    pieces: list[tuple[str, str | None]]  # the template: (literal text, then a placeholder or None)
    render: Callable[[str], str]  # the text for a name, for the names SQL cannot split as Python does
    opening: Callable[[str], float]  # when the window opens next in a time zone
    window_from: str | None
    window_to: str | None
    deadline: float  # the mailing's end_at


# What Python's str.split() splits at (every c with c.isspace()). A name of words separated by
# single spaces, with none of the others, splits in SQL at its first space just as in Python.
PYTHON_SPACES = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
OTHER_SPACES = PYTHON_SPACES.replace(" ", "")


@dataclass(frozen=True)
class ClientUpsert:
    """A client to create, or, when one has its phone already, the fields to change of that one."""

    phone: str
    # Each made only when it is needed, so a row costs no more than it did when it was written inline:
    new: Callable[[], dict[str, Any]]  # the whole new client, as create_client takes it
    changes: Callable[[], dict[str, Any]]  # the fields given, `tags` among them


@dataclass(frozen=True)
class ApiKey:
    """An active API key, as a request is authorized by it."""

    id: int
    name: str
    scopes: frozenset[str]


class TemplateConflict(Exception):
    """Another template has this name."""


@dataclass(frozen=True)
class StoredTemplate:
    """A template with its latest version and the approved version in use (None: none yet)."""

    id: int
    name: str
    created_at: float
    updated_at: float
    version: int
    text: str
    approved_version: int | None
    approved_text: str | None


@dataclass(frozen=True)
class TemplateVersion:
    version: int
    text: str
    created_at: float
    created_by: str  # the API key's name, or "cli"
    approved_at: float | None
    approved_by: str | None


@dataclass(frozen=True)
class BatchMessage:
    """One recipient of a batch request, checked and rendered."""

    index: int  # its place in the request
    phone: str
    text: str
    due: float  # its send_at, or now
    priority: int  # PRIORITIES' value


@dataclass(frozen=True)
class BatchRequestState:
    id: int
    created_at: float
    template_id: int
    template_version: int
    recipients: int  # in the request, rejected ones too
    rejected: str  # JSON: [{"index", "reason"}]
    counts: dict[str, int]  # its messages by status, only the statuses they have


@dataclass(frozen=True)
class QueueGauges:
    """The outbox's queue as /metrics shows it."""

    depth: dict[str, int]  # messages QUEUED and SENDING
    oldest_due_age: float  # seconds the most overdue QUEUED message has been due; 0: none is due


@dataclass(frozen=True)
class ReportClaim:
    """What claiming a day's report gave: this worker sends it, it was sent, or another holds it
    (or it waits for its next try) until `lease_until`."""

    claimed: bool
    sent: bool
    lease_until: float | None


@dataclass(frozen=True)
class ReportBucket:
    """Messages created in one quarter hour (`bucket` * 900 s since the epoch), of one provider."""

    bucket: int
    provider: str | None  # None: not sent (yet)
    total: int
    sent: int
    delivered: int
    failed: int  # FAILED or UNDELIVERED
    parts: int  # of the messages sent
    cost: float


REPORT_BUCKET_SECONDS = 900  # every UTC offset in use is a whole number of quarter hours
DUPLICATE = "duplicate"  # a batch request's message CANCELED as a repeat starts its last_error so
REPORT_COLUMNS = ("id", "created_at", "status", "phone", "text", "provider", "segments", "cost", "currency",
                  "request_id", "mailing_id", "sent_at", "last_error")


def webhook_dedup_key(payload: dict[str, Any]) -> str:
    """Identical deliveries of one webhook share this key; `time` is left out on purpose."""
    identity = {k: payload.get(k) for k in ("event", "companyId", "object")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def run_script(db: Any, script: str) -> None:
    """Each statement of a migration's SQL, in the caller's transaction (execute takes one at a time)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _placeholders(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _client_filter(tags: list[str], operator_codes: list[str]) -> tuple[list[str], list[Any]]:
    """SQL conditions on `clients c` for a filter: any of the tags, any of the codes, both together."""
    conditions, params = [], []
    if tags:
        conditions.append(f"c.id IN (SELECT client_id FROM client_tags WHERE tag IN ({_placeholders(tags)}))")
        params += tags
    if operator_codes:
        conditions.append(f"c.operator_code IN ({_placeholders(operator_codes)})")
        params += operator_codes
    return conditions, params


def _client_conflict(error: Exception) -> ClientConflict:
    field = "moyklass_user_id" if "moyklass_user_id" in str(error) else "phone"
    return ClientConflict(f"another client has this {field}")


class Store:
    """The outbox on SQLite: one connection per thread and process, opened on first use; WAL so
    readers never block; writers take turns (`transaction`). PostgresStore (store_postgresql.py)
    runs the same SQL on PostgreSQL."""

    skip_locked = ""  # claims: SQLite has one writer at a time, so no row can be locked by another

    def __init__(self, path: Path, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout
        self._write_lock = FileLock(path.with_name(path.name + ".writelock"))
        self._local = threading.local()

    def initialize(self) -> None:
        """Apply the migrations this database has not had yet, each in its own transaction."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made by us, private, before SQLite opens it: SQLite gives its -wal and -shm files (which
        # hold the latest rows: phones, password hashes) the database file's own mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = self.connection()
        db.execute("PRAGMA foreign_keys = OFF")  # a table rebuild must not cascade its drop
        try:
            with self.transaction() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                    if callable(migration):
                        migration(db)
                    else:
                        run_script(db, migration)
                    db.execute(f"PRAGMA user_version = {number}")
                broken = db.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise DatabaseUnavailable(f"the migration left {len(broken)} rows with broken references")
        finally:
            db.execute("PRAGMA foreign_keys = ON")
        os.chmod(self.path, 0o600)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection. Only this module writes SQL; tests and benchmarks use it to set up and inspect."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def _write_turn(self) -> Iterator[float]:
        """This thread's turn to write; yields the deadline (monotonic) of the whole wait.

        Writers queue on a FileLock, whose thread lock wakes the next thread the moment it is
        free, where SQLite's busy handler would poll with sleeps of up to 100 ms (at 32
        threads that alone cut throughput fivefold). That wait, and SQLite's own, end
        DATABASE_TIMEOUT after the request for the turn.
        """
        deadline = time.monotonic() + self.timeout
        try:
            with self._write_lock.hold(deadline):
                yield deadline
        except WouldWait:
            raise DatabaseUnavailable(f"no turn to write within {self.timeout:g} s (DATABASE_TIMEOUT)")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, atomic for check-then-insert (BEGIN IMMEDIATE), that waits for
        the database at most DATABASE_TIMEOUT in all. Any SQLite failure (locked by another
        program, disk full, read-only) is DatabaseUnavailable, after a rollback."""
        db = self.connection()
        with self._write_turn() as deadline:
            try:
                db.execute(f"PRAGMA busy_timeout = {max(int((deadline - time.monotonic()) * 1000), 0)}")
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise DatabaseUnavailable(str(error)) from error
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as error:
                if db.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
                    db.execute("ROLLBACK")
                if isinstance(error, sqlite3.OperationalError):
                    raise DatabaseUnavailable(str(error)) from error
                raise

    def rate_limiter(self, name: str, rate_per_sec: float, state_dir: Path) -> SharedRateLimiter:
        """At most `rate_per_sec` calls a second for all processes using this database: on one
        machine, through a file in `state_dir`."""
        return SharedRateLimiter(state_dir / f"{name}.rate", rate_per_sec)

    def send_slots(self, name: str, count: int, state_dir: Path) -> SharedSlots:
        """At most `count` holders at once for all processes using this database (files in `state_dir`)."""
        return SharedSlots(state_dir / f"{name}.slots", count)

    @contextmanager
    def snapshot(self) -> Iterator[Callable[[str], Iterator[tuple[list[str], list[tuple]]]]]:
        """A consistent read of every table at one moment (one read transaction, while writers go
        on): yields `batches(table)`, which gives (columns, up to 1000 rows) at a time."""
        db = sqlite3.connect(self.path, timeout=self.timeout)
        try:
            db.execute("BEGIN")

            def batches(table: str) -> Iterator[tuple[list[str], list[tuple]]]:
                cursor = db.execute(f"SELECT * FROM {table}")
                columns = [column[0] for column in cursor.description]
                while rows := cursor.fetchmany(1000):
                    yield columns, rows

            yield batches
        finally:
            db.close()

    def table_counts(self) -> dict[str, int]:
        """Rows in each of DATA_TABLES."""
        db = self.connection()
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in DATA_TABLES}

    def token_keeper(self, token_file: Path) -> TokenKeeper:
        """Where the MoyKlass token is shared: on one machine, the file TOKEN_FILE_PATH."""
        return FileTokenKeeper(token_file)

    def serialize_on(self, db: sqlite3.Connection, key: str) -> None:
        """Make a check-then-insert on `key` atomic: SQLite's writers already take turns."""

    # --- putting messages in ---

    def accept_webhook(self, payload: dict[str, Any], event: str | None, user_id: int, fields: dict[str, Any],
                       recipients: tuple[str, ...], dedup_seconds: int, valid_seconds: int,
                       lease: tuple[str, float] | None = None) -> Accepted:
        """Journal a webhook as one message per recipient (student, parent), with the fields of its
        object its text may use, unless the same one is already journaled and has not FAILED.

        With `lease` (owner, seconds) the caller sends the first message itself right away: it
        starts SENDING under that lease, and the worker takes it over only if the lease expires.
        The others are QUEUED for the worker. The Accepted names the first.
        """
        key = webhook_dedup_key(payload)
        now = time.time()
        with self.transaction() as db:
            self.serialize_on(db, key)
            earlier: dict[str, Any] = {}  # recipient -> its latest message of this webhook that did not fail
            if dedup_seconds:
                for row in db.execute(
                        "SELECT id, status, coalesce(recipient, ?) AS recipient FROM messages WHERE dedup_key = ?"
                        " AND created_at >= ? AND status NOT IN (?, ?) ORDER BY id DESC",
                        (recipients[0], key, now - dedup_seconds, FAILED, EXPIRED)):
                    earlier.setdefault(row["recipient"], row)
            if all(recipient in earlier for recipient in recipients):
                first = earlier[recipients[0]]
                return Accepted(first["id"], True, first["status"])
            rows = []
            for recipient in (r for r in recipients if r not in earlier):  # a repeat: only the failed ones again
                leased = lease is not None and not rows
                status, owner, until = (SENDING, lease[0], now + lease[1]) if leased else (QUEUED, None, None)
                rows.append(dict(db.execute(
                    "INSERT INTO messages (created_at, updated_at, source, event, event_fields, dedup_key, user_id,"
                    " recipient, status, next_attempt_at, deadline, lease_owner, lease_until)"
                    " VALUES (?, ?, 'webhook', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (now, now, event, json.dumps(fields, ensure_ascii=False) if fields else None, key, user_id,
                     recipient, status, now, now + valid_seconds, owner, until)).fetchone()))
            return Accepted(rows[0]["id"], False, rows[0]["status"], tuple(row["id"] for row in rows[1:]), rows[0])

    # --- lesson reminders: states pending -> done | failed ---

    def accept_lesson_reminder(self, payload: dict[str, Any], event: str, lesson_id: int, dedup_seconds: int,
                               valid_seconds: int) -> Accepted:
        """Journal a lesson reminder webhook, unless the same one was journaled within `dedup_seconds`
        (and did not fail); the worker reads the lesson and queues one message per recipient."""
        key = webhook_dedup_key(payload)
        now = time.time()
        with self.transaction() as db:
            self.serialize_on(db, key)
            if dedup_seconds:
                earlier = db.execute(
                    "SELECT id, state FROM lesson_reminders WHERE dedup_key = ? AND created_at >= ?"
                    " AND state != 'failed' ORDER BY id DESC LIMIT 1", (key, now - dedup_seconds)).fetchone()
                if earlier:
                    return Accepted(earlier["id"], True, earlier["state"])
            reminder_id = db.execute(
                "INSERT INTO lesson_reminders (created_at, updated_at, event, lesson_id, dedup_key, state,"
                " next_attempt_at, deadline) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
                (now, now, event, lesson_id, key, now, now + valid_seconds)).fetchone()[0]
            return Accepted(reminder_id, False, "pending")

    def claim_lesson_reminders(self, owner: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease pending reminders that are due (and not leased, or whose lease expired) to `owner`."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE lesson_reminders SET state = 'failed', updated_at = ?, last_error ="
                       " coalesce(last_error, 'its deadline passed before it was done') WHERE state = 'pending'"
                       " AND deadline < ?", (now, now))
            return [dict(row) for row in db.execute(
                "UPDATE lesson_reminders SET lease_owner = ?, lease_until = ?, updated_at = ? WHERE id IN"
                " (SELECT id FROM lesson_reminders WHERE state = 'pending' AND next_attempt_at <= ?"
                f" AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_attempt_at LIMIT ?{self.skip_locked})"
                " AND state = 'pending' AND (lease_until IS NULL OR lease_until < ?) RETURNING *",
                (owner, now + lease_seconds, now, now, now, limit, now))]

    def fan_out_lesson_reminder(self, reminder_id: int, messages: list[dict[str, Any]]) -> int:
        """Queue a reminder's messages and mark it done, in one transaction; how many are new.

        Each message's `dedup_key` names (event, lesson, student, lesson date and time, recipient):
        a message already queued by a repeated or overlapping reminder is not queued again, but one
        that FAILED (the student had no phone then) is queued again when it now can be sent. Two
        workers expanding the same reminder (a lease ran out) so queue nothing twice.
        """
        now = time.time()
        columns = ("event", "dedup_key", "user_id", "recipient", "phone", "text", "status", "last_error",
                   "next_attempt_at", "deadline", "event_fields")
        with self.transaction() as db:
            new = 0
            for message in messages:
                new += db.execute(
                    f"INSERT INTO messages (created_at, updated_at, source, reminder_id, {', '.join(columns)},"
                    f" done_at) VALUES (?, ?, 'reminder', ?, {_placeholders(columns)}, ?)"
                    f" ON CONFLICT (dedup_key) WHERE source = 'reminder' DO UPDATE SET status = excluded.status,"
                    f" phone = excluded.phone, text = excluded.text, last_error = NULL, attempts = 0,"
                    f" next_attempt_at = excluded.next_attempt_at, deadline = excluded.deadline, done_at = NULL,"
                    f" reminder_id = excluded.reminder_id, updated_at = excluded.updated_at"
                    f" WHERE messages.status = '{FAILED}' AND excluded.status = '{QUEUED}'",
                    (now, now, reminder_id, *(message[column] for column in columns),
                     now if message["status"] == FAILED else None)).rowcount
            db.execute("UPDATE lesson_reminders SET state = 'done', messages = ?, lease_owner = NULL,"
                       " lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'pending'",
                       (len(messages), now, reminder_id))
        return new

    def postpone_lesson_reminder(self, reminder_id: int, owner: str, next_at: float | None, error: str) -> None:
        """Try the reminder again at `next_at`, or (None, or past its deadline) mark it failed."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                # A NULL parameter has no type PostgreSQL could infer: the cast gives it one.
                "UPDATE lesson_reminders SET state = CASE WHEN CAST(? AS DOUBLE PRECISION) IS NULL OR ? > deadline"
                " THEN 'failed' ELSE 'pending' END, next_attempt_at = coalesce(?, next_attempt_at),"
                " attempts = attempts + 1,"
                " last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND lease_owner = ?",
                (next_at, next_at, next_at, error, now, reminder_id, owner))

    def lesson_reminder_counts(self) -> dict[str, int]:
        """Lesson reminders by state: pending, done, failed."""
        found = dict(self.connection().execute("SELECT state, count(*) FROM lesson_reminders GROUP BY state"))
        return {state: found.get(state, 0) for state in ("pending", "done", "failed")}

    def lesson_reminder(self, reminder_id: int) -> dict[str, Any] | None:
        row = self.connection().execute("SELECT * FROM lesson_reminders WHERE id = ?", (reminder_id,)).fetchone()
        return dict(row) if row else None

    def enqueue(self, source: str, valid_seconds: int, *, phone: str | None = None,
                text: str | None = None, user_id: int | None = None, event: str | None = None) -> int:
        """Queue one message: to a phone with a text, or to a MoyKlass user (resolved by the worker)."""
        return self.enqueue_many(source, valid_seconds, [(phone, text, user_id, event)])[0]

    def enqueue_many(self, source: str, valid_seconds: int,
                     rows: list[tuple[str | None, str | None, int | None, str | None]]) -> list[int]:
        """Queue (phone, text, user_id, event) rows in one transaction; returns their ids."""
        now = time.time()
        with self.transaction() as db:
            return [db.execute(
                "INSERT INTO messages (created_at, updated_at, source, phone, text, user_id, event,"
                " status, next_attempt_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (now, now, source, phone, text, user_id, event, QUEUED, now, now + valid_seconds)).fetchone()[0]
                for phone, text, user_id, event in rows]

    # --- the worker's side ---

    def claim(self, owner: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease up to `limit` due messages to `owner`: QUEUED ones whose time has come, the higher
        priority first, then SENDING ones whose lease expired (their worker died: they may have
        reached the gateway).

        Returns the rows the UPDATE changed, as they are after it: under a database with
        several writers a row picked by the subquery may be gone by the time it is updated.
        """
        now = time.time()
        allowed = sorted(TRANSITIONS[SENDING])
        with self.transaction() as db:
            rows: list[Any] = []
            # A priority at a time, each the index messages_due's (status, priority, next_attempt_at)
            # range: one ORDER BY priority, next_attempt_at would scan past every message not yet due.
            for priority in PRIORITIES.values():
                if len(rows) < limit:
                    rows += db.execute(
                        f"UPDATE messages SET status = ?, lease_owner = ?, lease_until = ?, updated_at = ?"
                        f" WHERE id IN (SELECT id FROM messages WHERE status = ? AND priority = ?"
                        f" AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?{self.skip_locked})"
                        f" AND status IN ({_placeholders(allowed)}) RETURNING *",
                        (SENDING, owner, now + lease_seconds, now, QUEUED, priority, now, limit - len(rows),
                         *allowed)).fetchall()
            if len(rows) < limit:
                rows += db.execute(
                    "UPDATE messages SET lease_owner = ?, lease_until = ?, updated_at = ?"
                    " WHERE id IN (SELECT id FROM messages WHERE status = ? AND lease_until < ?"
                    f" LIMIT ?{self.skip_locked})"
                    " AND status = ? AND lease_until < ? RETURNING *",
                    (owner, now + lease_seconds, now, SENDING, now, limit - len(rows), SENDING, now)).fetchall()
        return [dict(row) for row in rows]

    def renew_leases(self, owner: str, message_ids: Iterable[int], lease_seconds: float) -> int:
        """Push back the leases `owner` still holds on these messages; the count renewed."""
        ids = list(message_ids)
        if not ids:
            return 0
        with self.transaction() as db:
            return db.execute(
                f"UPDATE messages SET lease_until = ? WHERE status = ? AND lease_owner = ?"
                f" AND id IN ({_placeholders(ids)})", (time.time() + lease_seconds, SENDING, owner, *ids)).rowcount

    def lease_state(self, message_id: int, owner: str) -> LeaseState:
        """Whether `owner` may still send this message, read just before the send (no write)."""
        row = self.connection().execute(
            "SELECT m.status, m.lease_owner, m.lease_until, g.state FROM messages m"
            " LEFT JOIN mailings g ON g.id = m.mailing_id WHERE m.id = ?", (message_id,)).fetchone()
        if row is None:
            return LeaseState(False, False, 0.0)
        ours = row["status"] == SENDING and row["lease_owner"] == owner
        return LeaseState(ours, row["state"] == CANCELED_STATE, (row["lease_until"] or 0.0) - time.time())

    def transition(self, message_id: int, status: str, owner: str | None = None,
                   count_attempt: bool = False, **fields: Any) -> None:
        """Move one message to `status`, setting `fields` with it (see `apply`)."""
        if self.apply([Change(message_id, status, fields, count_attempt)], owner):
            raise InvalidTransition(f"message {message_id} cannot move to {status}")

    def apply(self, changes: list[Change], owner: str | None = None) -> list[int]:
        """Apply status changes in one transaction; return the ids of those refused.

        A change is refused when the status machine forbids it or, with `owner`, when the
        message's lease is no longer that owner's (another worker took it over).
        """
        refused = []
        with self.transaction() as db:
            for change in changes:
                statement, params = self._update(change, owner)
                if db.execute(statement, params).rowcount != 1:
                    refused.append(change.message_id)
        return refused

    @staticmethod
    def _update(change: Change, owner: str | None) -> tuple[str, list[Any]]:
        status, allowed = change.status, TRANSITIONS[change.status]
        now = time.time()
        fields = dict(change.fields, updated_at=now)
        if status == SENT:
            fields["sent_at"] = now
        if status != SENDING:
            fields.setdefault("lease_owner", None)
            fields.setdefault("lease_until", None)
        if status in FINAL_STATUSES:
            fields["done_at"] = now
            fields["report_next_at"] = None
        assignments = ", ".join(f"{name} = ?" for name in fields)
        if change.count_attempt:
            assignments += f", attempts = attempts + {int(change.count_attempt)}"
        if change.unknown_outcome:
            assignments += ", unknown_outcomes = unknown_outcomes + 1"
        condition = f"status IN ({_placeholders(allowed)})"
        params = [status, *fields.values(), change.message_id, *sorted(allowed)]
        if owner is not None:
            condition += " AND lease_owner = ?"
            params.append(owner)
        return f"UPDATE messages SET status = ?, {assignments} WHERE id = ? AND {condition}", params

    def release(self, owner: str, message_ids: list[int]) -> int:
        """Give leased messages back to the queue untouched (a worker shutting down)."""
        if not message_ids:
            return 0
        with self.transaction() as db:
            return db.execute(
                f"UPDATE messages SET status = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
                f" WHERE status = ? AND lease_owner = ? AND id IN ({_placeholders(message_ids)})",
                (QUEUED, time.time(), SENDING, owner, *message_ids)).rowcount

    def claim_reports(self, provider: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """SENT messages of `provider` whose delivery report is due; pushed back by a lease so one
        worker polls each. Reports not final by their `report_until` are no longer asked for."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE messages SET report_next_at = NULL WHERE report_next_at <= ? AND status = ?"
                       " AND report_until < ?", (now, SENT, now))
            return [dict(row) for row in db.execute(
                "UPDATE messages SET report_next_at = ? WHERE id IN (SELECT id FROM messages"
                " WHERE report_next_at <= ? AND status = ? AND provider = ? ORDER BY report_next_at"
                f" LIMIT ?{self.skip_locked})"
                " RETURNING *", (now + lease_seconds, now, SENT, provider, limit))]

    def schedule_report(self, message_id: int, next_at: float | None, report_text: str | None) -> None:
        """Poll the report of a SENT message again at `next_at` (None: stop polling, leave it SENT)."""
        with self.transaction() as db:
            db.execute("UPDATE messages SET report_next_at = ?, report_text = coalesce(?, report_text),"
                       " updated_at = ? WHERE id = ? AND status = ?",
                       (next_at, report_text, time.time(), message_id, SENT))

    # --- operators ---

    def retry_failed(self, deadline: float, since: float | None = None, mailing_id: int | None = None,
                     message_id: int | None = None) -> int:
        """Re-queue FAILED and UNDELIVERED messages (created since `since`, of one mailing, or the one
        message `message_id`), with fresh attempts, to be sent before `deadline` (a lesson reminder's:
        before its lesson, still)."""
        now = time.time()
        allowed = sorted(TRANSITIONS[QUEUED] - {SENDING})
        where, params = f"status IN ({_placeholders(allowed)}) AND created_at >= ?", [*allowed, since or 0]
        if mailing_id is not None:
            where, params = where + " AND mailing_id = ?", params + [mailing_id]
        if message_id is not None:
            where, params = where + " AND id = ?", params + [message_id]
        with self.transaction() as db:
            return db.execute(
                f"UPDATE messages SET status = ?, attempts = 0, next_attempt_at = ?,"
                f" deadline = CASE WHEN source = 'reminder' THEN CASE WHEN deadline < ? THEN deadline ELSE ? END"
                " ELSE ? END,"
                f" lease_owner = NULL, lease_until = NULL, done_at = NULL, updated_at = ? WHERE {where}",
                (QUEUED, now, deadline, deadline, deadline, now, *params)).rowcount

    def expire_overdue(self, now: float) -> int:
        """QUEUED messages whose deadline has passed become EXPIRED (a mailing's end_at, SMS_VALID_SECONDS)."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE messages SET status = ?, done_at = ?, updated_at = ?, last_error = coalesce(last_error,"
                " 'its deadline passed before it was sent') WHERE status = ? AND deadline < ?",
                (EXPIRED, now, now, QUEUED, now)).rowcount

    # --- mailings: their state lives in `mailings`, their messages here ---

    def start_mailing(self, mailing_id: int, read_at_update: float, now: float, fan_out: FanOut) -> int:
        """Mark a scheduled mailing started and queue its messages, all in one transaction: a
        crash leaves it either not started or started with every message. One message per client
        per mailing, ever; a client whose window opens only after the end is EXPIRED at once.

        `fan_out` was made from the mailing as it was at `read_at_update` (its updated_at): if
        it was changed since, nothing happens (0) and the next turn starts it as it is now.

        The messages are written by the database itself, INSERT ... SELECT from the clients
        joined to the openings of their time zones (computed here, once per zone): rendering and
        inserting a row at a time in Python took 28 s for a million clients on SQLite, 65 s on
        PostgreSQL. Only clients whose names SQL cannot split as Python does are written from here.
        """
        with self.transaction() as db:
            started = db.execute(f"UPDATE mailings SET state = '{STARTED}', started_at = ?, updated_at = ?"
                                 f" WHERE id = ? AND state = '{SCHEDULED}' AND updated_at = ?",
                                 (now, now, mailing_id, read_at_update))
            if started.rowcount != 1:
                return 0
            conditions, params = _client_filter(fan_out.tags, fan_out.operator_codes)
            text, text_params = self._text_sql(fan_out.pieces)
            if any(placeholder == "first_name" for _, placeholder in fan_out.pieces):
                plain, plain_params = self._plain_name()
            else:
                plain, plain_params = "1 = 1", []
            openings: dict[str, float] = {}
            count = 0
            # Zones are read, then their clients written; a client added meanwhile (PostgreSQL
            # writes go on) in a zone not read yet is found by the next round.
            while zones := [row[0] for row in db.execute(
                    "SELECT DISTINCT c.timezone FROM clients c" + _where(
                        [*conditions, f"c.timezone NOT IN ({_placeholders(openings)})"] if openings else conditions),
                    (*params, *openings)).fetchall()]:
                new = {zone: fan_out.opening(zone) for zone in zones}
                openings |= new
                values = ", ".join("(CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION))" for _ in new)
                late = "o.opening >= ?"
                insert = (
                    "INSERT INTO messages (source, created_at, updated_at, mailing_id, status, done_at, last_error,"
                    " client_id, phone, timezone, text, next_attempt_at, window_from, window_to, deadline)"
                    f" WITH openings (timezone, opening) AS (VALUES {values})"
                    f" SELECT 'mailing', ?, ?, ?, CASE WHEN {late} THEN '{EXPIRED}' ELSE '{QUEUED}' END,"
                    f" CASE WHEN {late} THEN CAST(? AS DOUBLE PRECISION) END,"
                    f" CASE WHEN {late} THEN CAST(? AS TEXT) END,"
                    f" c.id, c.phone, c.timezone, {text}, o.opening, CAST(? AS TEXT), CAST(? AS TEXT),"
                    " CAST(? AS DOUBLE PRECISION) FROM clients c JOIN openings o ON o.timezone = c.timezone"
                    f" WHERE {' AND '.join([*conditions, plain])} AND c.id >= ? AND c.id < ? ON CONFLICT DO NOTHING")
                fixed = (*(value for item in new.items() for value in item), now, now, mailing_id, fan_out.deadline,
                         fan_out.deadline, now, fan_out.deadline, LATE_ERROR, *text_params, fan_out.window_from,
                         fan_out.window_to, fan_out.deadline, *params, *plain_params)
                low, high = db.execute("SELECT min(id), max(id) FROM clients").fetchone()
                for first in range(low, high + 1, FAN_OUT_CLIENTS):
                    count += db.execute(insert, (*fixed, first, first + FAN_OUT_CLIENTS)).rowcount
            if plain_params:
                count += self._start_by_name(db, mailing_id, now, fan_out, openings,
                                             _where([*conditions, f"NOT {plain}"]), [*params, *plain_params])
        return count

    def _start_by_name(self, db: sqlite3.Connection, mailing_id: int, now: float, fan_out: FanOut,
                       openings: dict[str, float], where: str, params: list[Any]) -> int:
        """The messages to clients whose texts Python renders (see start_mailing), 5,000 to an INSERT."""
        count, batch = 0, []
        for client in self._stream(f"SELECT c.id, c.phone, c.name, c.timezone FROM clients c{where}", params):
            zone = client["timezone"]
            if zone not in openings:
                openings[zone] = fan_out.opening(zone)
            late = openings[zone] >= fan_out.deadline
            batch.append((now, now, mailing_id, EXPIRED if late else QUEUED, now if late else None,
                          LATE_ERROR if late else None, client["id"], client["phone"], zone,
                          fan_out.render(client["name"]), openings[zone], fan_out.window_from, fan_out.window_to,
                          fan_out.deadline))
            if len(batch) == 5000:
                count += self._insert_mailing_messages(db, batch)
                batch = []
        return count + self._insert_mailing_messages(db, batch)

    @staticmethod
    def _insert_mailing_messages(db: sqlite3.Connection, batch: list[tuple]) -> int:
        names = ("created_at", "updated_at", "mailing_id", "status", "done_at", "last_error", "client_id", "phone",
                 "timezone", "text", "next_attempt_at", "window_from", "window_to", "deadline")
        db.executemany(f"INSERT INTO messages (source, {', '.join(names)})"
                       f" VALUES ('mailing', {_placeholders(names)}) ON CONFLICT DO NOTHING", batch)
        return len(batch)

    # A name's first word in SQL, for a name _plain_name accepts.
    first_word_sql = "CASE WHEN instr(c.name, ' ') > 0 THEN substr(c.name, 1, instr(c.name, ' ') - 1) ELSE c.name END"

    def _plain_name(self) -> tuple[str, list[Any]]:
        """SQL true for a client's name made of words between single spaces, no other space of
        PYTHON_SPACES in it (its first word in SQL is then str.split()'s), and its parameters."""
        return ("(c.name NOT GLOB ? AND c.name NOT GLOB ' *' AND c.name NOT GLOB '* ' AND c.name NOT GLOB '*  *')",
                [f"*[{OTHER_SPACES}]*"])

    def _text_sql(self, pieces: list[tuple[str, str | None]]) -> tuple[str, list[Any]]:
        """A mailing's text for client `c` as an SQL expression, and its parameters (FanOut.pieces)."""
        parts, params = [], []
        for literal, placeholder in pieces:
            if literal:
                parts.append("CAST(? AS TEXT)")
                params.append(literal)
            if placeholder is not None:
                parts.append({"name": "c.name", "first_name": self.first_word_sql}[placeholder])
        return " || ".join(parts) or "''", params

    def cancel_mailing(self, mailing_id: int) -> bool:
        """A scheduled or started mailing will not start, or its QUEUED messages become CANCELED at
        once (False: it was neither, nothing changed). Messages a
        worker has leased (SENDING) become CANCELED by that worker, which reads the mailing's state
        just before each send (`lease_state`): only sends already on the wire finish."""
        now = time.time()
        with self.transaction() as db:
            canceled = db.execute(f"UPDATE mailings SET state = '{CANCELED_STATE}', updated_at = ? WHERE id = ?"
                                  f" AND state IN ('{SCHEDULED}', '{STARTED}')", (now, mailing_id)).rowcount
            if canceled:
                db.execute("UPDATE messages SET status = ?, done_at = ?, updated_at = ? WHERE mailing_id = ?"
                           " AND status = ?", (CANCELED, now, now, mailing_id, QUEUED))
            return canceled == 1

    def create_mailing(self, mailing: dict[str, Any]) -> Mailing:
        """Insert a scheduled mailing (its MAILING_COLUMNS); it as stored."""
        now = time.time()
        with self.transaction() as db:
            return Mailing(*db.execute(
                f"INSERT INTO mailings (created_at, updated_at, state, {', '.join(MAILING_COLUMNS)})"
                f" VALUES (?, ?, '{SCHEDULED}', {_placeholders(MAILING_COLUMNS)}) RETURNING {MAILING_ROW}",
                (now, now, *(mailing[column] for column in MAILING_COLUMNS))).fetchone())

    def mailing(self, mailing_id: int) -> Mailing | None:
        row = self.connection().execute(f"SELECT {MAILING_ROW} FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
        return Mailing(*row) if row else None

    def mailings(self) -> list[Mailing]:
        return [Mailing(*row) for row in self.connection().execute(f"SELECT {MAILING_ROW} FROM mailings ORDER BY id")]

    def due_mailings(self, now: float) -> list[Mailing]:
        """Scheduled mailings whose start_at has come, the earliest first."""
        return [Mailing(*row) for row in self.connection().execute(
            f"SELECT {MAILING_ROW} FROM mailings WHERE state = '{SCHEDULED}' AND start_at <= ? ORDER BY start_at",
            (now,))]

    def change_scheduled_mailing(self, mailing_id: int, mailing: dict[str, Any]) -> bool:
        """Set all MAILING_COLUMNS of a mailing still scheduled; False when it is not (any more)."""
        with self.transaction() as db:
            return db.execute(
                f"UPDATE mailings SET {', '.join(f'{column} = ?' for column in MAILING_COLUMNS)}, updated_at = ?"
                f" WHERE id = ? AND state = '{SCHEDULED}'",
                (*(mailing[column] for column in MAILING_COLUMNS), time.time(), mailing_id)).rowcount == 1

    def delete_unstarted_mailing(self, mailing_id: int) -> bool | None:
        """Delete a mailing that never started: True; False when it has started (it is kept for
        its messages); None when there is no such mailing."""
        with self.transaction() as db:
            row = db.execute("SELECT started_at FROM mailings WHERE id = ?", (mailing_id,)).fetchone()
            if row is None:
                return None
            if row["started_at"] is not None:
                return False
            db.execute("DELETE FROM mailings WHERE id = ?", (mailing_id,))
            return True

    def restart_finished_mailing(self, mailing_id: int, now: float) -> None:
        """A finished mailing whose messages were queued again is started again."""
        with self.transaction() as db:
            db.execute(f"UPDATE mailings SET state = '{STARTED}', updated_at = ? WHERE id = ? AND state = '{FINISHED}'",
                       (now, mailing_id))

    # A mailing `g` with its counters (mailing_counts, kept by triggers) and first and last sent_at
    # (an index probe each): constant time, where counting its messages took 0.7 s for a million.
    _PROGRESS = (f"SELECT g.id, g.state, {', '.join(f'c.{column}' for column in COUNT_COLUMNS)}, c.segments,"
                 " (SELECT min(m.sent_at) FROM messages m WHERE m.mailing_id = g.id AND m.sent_at IS NOT NULL),"
                 " (SELECT max(m.sent_at) FROM messages m WHERE m.mailing_id = g.id AND m.sent_at IS NOT NULL)"
                 " FROM mailings g LEFT JOIN mailing_counts c ON c.mailing_id = g.id")

    @staticmethod
    def _progress(row: Any) -> MailingProgress:
        counts = {status: row[2 + index] for index, status in enumerate(STATUSES) if row[2 + index]}
        return MailingProgress(row[0], row[1], counts, row[2 + len(STATUSES)] or 0, *row[3 + len(STATUSES):])

    def mailing_progress(self, mailing_id: int) -> MailingProgress | None:
        row = self.connection().execute(f"{self._PROGRESS} WHERE g.id = ?", (mailing_id,)).fetchone()
        return self._progress(row) if row else None

    def mailings_progress(self) -> list[MailingProgress]:
        """The progress of every mailing, by id."""
        return [self._progress(row) for row in self.connection().execute(f"{self._PROGRESS} ORDER BY g.id")]

    def mailing_messages(self, mailing_id: int, status: str | None, limit: int, offset: int
                         ) -> tuple[list[dict[str, Any]], int]:
        """A page of the mailing's messages (MESSAGE_COLUMNS), by id, and how many there are in all."""
        where, params = self._mailing_messages_where(mailing_id, status)
        db = self.connection()
        total = db.execute(f"SELECT count(*) FROM messages WHERE {where}", params).fetchone()[0]
        rows = db.execute(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE {where} ORDER BY id"
                          f" LIMIT ? OFFSET ?", (*params, limit, offset))
        return [dict(row) for row in rows], total

    def mailing_message_chunks(self, mailing_id: int, status: str | None) -> Iterator[list[sqlite3.Row]]:
        """All the mailing's messages (MESSAGE_COLUMNS) by id, 1000 at a time: never all of them in memory."""
        where, params = self._mailing_messages_where(mailing_id, status)
        cursor = self.connection().execute(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE {where} ORDER BY id", params)
        while rows := cursor.fetchmany(1000):
            yield rows

    @staticmethod
    def _mailing_messages_where(mailing_id: int, status: str | None) -> tuple[str, list[Any]]:
        if status:
            return "mailing_id = ? AND status = ?", [mailing_id, status]
        return "mailing_id = ?", [mailing_id]

    def counts(self) -> dict[str, int]:
        rows = self.connection().execute("SELECT status, count(*) FROM messages GROUP BY status")
        found = dict(rows.fetchall())
        return {status: found.get(status, 0) for status in STATUSES}

    def oldest_queued_at(self) -> float | None:
        """Each status's first on the index (status, created_at): one look-up each, whatever the outbox holds."""
        return self.connection().execute(
            f"SELECT min(m) FROM (SELECT min(created_at) AS m FROM messages WHERE status = '{QUEUED}' UNION ALL"
            f" SELECT min(created_at) FROM messages WHERE status = '{SENDING}') AS o").fetchone()[0]

    def message(self, message_id: int) -> dict[str, Any] | None:
        row = self.connection().execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return dict(row) if row else None

    # --- providers that refused our credentials ---

    def pause_provider(self, provider: str, retry_at: float, reason: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO provider_pauses (provider, paused_at, retry_at, reason)"
                       " VALUES (?, ?, ?, ?) ON CONFLICT (provider)"
                       " DO UPDATE SET retry_at = excluded.retry_at, reason = excluded.reason",
                       (provider, time.time(), retry_at, reason))

    def resume_provider(self, provider: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM provider_pauses WHERE provider = ?", (provider,)).rowcount > 0

    def provider_pause(self, provider: str) -> ProviderPause | None:
        row = self.connection().execute(
            "SELECT provider, retry_at, reason FROM provider_pauses WHERE provider = ?",
            (provider,)).fetchone()
        return ProviderPause(*row) if row else None

    def provider_states(self) -> dict[str, ProviderState]:
        """Every provider paused, down or failing, by name; those missing are healthy."""
        db = self.connection()
        states: dict[str, dict[str, Any]] = {}
        for provider, retry_at, reason in db.execute("SELECT provider, retry_at, reason FROM provider_pauses"):
            states.setdefault(provider, {}).update(paused_until=retry_at, pause_reason=reason)
        for provider, failures, down_until, reason in db.execute(
                "SELECT provider, failures, down_until, reason FROM provider_health"):
            states.setdefault(provider, {}).update(failures=failures, down_until=down_until, down_reason=reason)
        return {provider: ProviderState(**state) for provider, state in states.items()}

    def record_provider_failure(self, provider: str, reason: str, down_after: int, down_until: float) -> bool:
        """Count a failed send (not taken, or no answer) of `provider`; from the `down_after`-th in a
        row it is down until `down_until`, each further failure pushing that back. True if it is down."""
        with self.transaction() as db:
            failures = db.execute(
                "INSERT INTO provider_health (provider, failures, reason) VALUES (?, 1, ?) ON CONFLICT (provider)"
                " DO UPDATE SET failures = provider_health.failures + 1, reason = excluded.reason RETURNING failures",
                (provider, reason)).fetchone()[0]
            if failures < down_after:
                return False
            db.execute("UPDATE provider_health SET down_until = ? WHERE provider = ?", (down_until, provider))
            return True

    def record_provider_success(self, provider: str) -> bool:
        """A send through `provider` was taken: its run of failures ends. True if it had one."""
        with self.transaction() as db:
            return db.execute("DELETE FROM provider_health WHERE provider = ?", (provider,)).rowcount > 0

    def provider_activity(self, since: float) -> dict[str, tuple[int, int]]:
        """(messages sent, messages FAILED) since `since`, by provider. The sends are read from the index
        messages_sent_at (the subquery's ORDER BY keeps SQLite from reading every provider's whole index)."""
        db = self.connection()
        sent = dict(db.execute("SELECT provider, count(*) FROM (SELECT provider FROM messages WHERE sent_at >= ?"
                               " ORDER BY sent_at) AS s WHERE provider IS NOT NULL GROUP BY provider",
                               (since,)).fetchall())
        failed = dict(db.execute(f"SELECT provider, count(*) FROM messages WHERE status = '{FAILED}' AND done_at >= ?"
                                 " AND provider IS NOT NULL GROUP BY provider", (since,)).fetchall())
        return {provider: (sent.get(provider, 0), failed.get(provider, 0)) for provider in sent.keys() | failed.keys()}

    # The UTC day (YYYY-MM-DD) of a message's sent_at.
    sent_day_sql = "date(sent_at, 'unixepoch')"
    _COST_COLUMNS = ("provider, coalesce(currency, ''), count(*), CAST(coalesce(sum(segments), 0) AS BIGINT),"
                     " coalesce(sum(cost), 0)")

    def costs_by_day(self, since: float) -> list[CostLine]:
        """What was sent since `since`, by UTC day (the latest first), provider and currency."""
        rows = self.connection().execute(
            f"SELECT {self.sent_day_sql} AS day, {self._COST_COLUMNS} FROM messages WHERE sent_at >= ?"
            f" AND provider IS NOT NULL GROUP BY day, provider, currency ORDER BY day DESC, provider", (since,))
        return [CostLine(*row) for row in rows]

    def mailing_costs(self, mailing_id: int | None = None) -> list[CostLine]:
        """What each mailing (or the one) sent, by provider and currency: from message_activity (migration
        17), a few rows per mailing and quarter hour, not its messages (a mailing's providers vary)."""
        where, params = ("mailing_id = ?", [mailing_id]) if mailing_id is not None else ("mailing_id > 0", [])
        rows = self.connection().execute(
            "SELECT mailing_id, provider, currency, CAST(sum(sent) AS BIGINT), CAST(sum(parts) AS BIGINT),"
            f" round(CAST(sum(cost) AS NUMERIC), 6) FROM message_activity WHERE {where} AND provider != ''"
            " GROUP BY mailing_id, provider, currency HAVING sum(sent) != 0 ORDER BY mailing_id, provider", params)
        return [CostLine(row[0], row[1], row[2], row[3], row[4], float(row[5])) for row in rows]

    def count_clients_by_prefix(self, tags: list[str], operator_codes: list[str], prefixes: list[str]) -> list[int]:
        """The clients a filter matches (all with neither list), by the first of `prefixes` (digits of
        E.164 without "+", the longest first) their phone starts with; the last count: no prefix."""
        conditions, params = _client_filter(tags, operator_codes)
        cases = " ".join(f"WHEN c.phone LIKE ? THEN {index}" for index in range(len(prefixes)))
        bucket = f"CASE {cases} ELSE {len(prefixes)} END" if prefixes else "0"
        counts = [0] * (len(prefixes) + 1)
        for index, count in self.connection().execute(
                f"SELECT {bucket} AS route, count(*) FROM clients c{_where(conditions)} GROUP BY route",
                [*(f"+{prefix}%" for prefix in prefixes), *params]):
            counts[index] = count
        return counts

    def unknown_outcomes(self) -> tuple[int, int]:
        """(messages, sends) whose send reached the gateway without a verdict coming back."""
        count, sends = self.connection().execute(
            "SELECT count(*), CAST(coalesce(sum(unknown_outcomes), 0) AS BIGINT) FROM messages"
            " WHERE unknown_outcomes > 0").fetchone()
        return count, sends

    def check(self) -> None:
        """Raise if the database cannot be read, or its file written. It takes no write turn, so a
        burst of writers cannot slow down the health check."""
        try:
            self.connection().execute("SELECT count(*) FROM messages WHERE id = -1").fetchone()
        except sqlite3.Error as error:
            raise DatabaseUnavailable(str(error)) from error
        if not os.access(self.path, os.W_OK):
            raise DatabaseUnavailable(f"{self.path} is not writable")

    # --- delivery reports that gateways push (Twilio's callbacks, SMPP's deliver_sm) ---

    def record_pushed_report(self, provider: str, reference: str, state: str, description: str,
                             received_at: float) -> bool:
        """Keep a final report (DELIVERED, UNDELIVERED or FAILED) that `provider` pushed for the message
        it knows as `reference`, and apply it at once if that message is SENT: True if it was.

        Otherwise it waits in `pushed_reports`: a gateway may report before the send's result is
        written (the message still SENDING, its reference not yet stored), and the worker applies
        it once it is (`apply_pushed_reports`)."""
        if state not in PUSHED_STATES:
            raise ValueError(f"a pushed report is one of {', '.join(PUSHED_STATES)}, not {state!r}")
        with self.transaction() as db:
            db.execute("INSERT INTO pushed_reports (provider, reference, state, description, received_at)"
                       " VALUES (?, ?, ?, ?, ?)", (provider, reference, state, description, received_at))
            return self._apply_pushed_reports(db, "AND r.provider = ? AND r.reference = ?", [provider, reference]) > 0

    def apply_pushed_reports(self, now: float, keep_seconds: float) -> int:
        """Apply the kept reports whose message is SENT now; forget those older than `keep_seconds`
        (their message never came). How many messages were given their report. Looked for before a
        write transaction is begun: the worker asks every second."""
        if not self.connection().execute("SELECT 1 FROM pushed_reports LIMIT 1").fetchone():
            return 0
        with self.transaction() as db:
            applied = self._apply_pushed_reports(db, "", [])
            db.execute("DELETE FROM pushed_reports WHERE received_at < ?", (now - keep_seconds,))
        return applied

    @staticmethod
    def _apply_pushed_reports(db: Any, where: str, params: list[Any]) -> int:
        """The newest kept report of each SENT message matched, applied; the reports of messages
        that are final now (applied, or final before) forgotten."""
        now = time.time()
        newest = ("r.id = (SELECT max(id) FROM pushed_reports n"
                  " WHERE n.provider = r.provider AND n.reference = r.reference)")
        applied = db.execute(
            "UPDATE messages SET status = r.state, report_text = r.description, done_at = ?, updated_at = ?,"
            f" report_next_at = NULL FROM pushed_reports r WHERE messages.status = '{SENT}'"
            f" AND messages.provider = r.provider AND messages.gateway_ref = r.reference AND {newest} {where}",
            [now, now, *params]).rowcount
        db.execute("DELETE FROM pushed_reports WHERE EXISTS (SELECT 1 FROM messages m WHERE m.provider ="
                   " pushed_reports.provider AND m.gateway_ref = pushed_reports.reference"
                   f" AND m.status IN ({_placeholders(FINAL_STATUSES)}))", sorted(FINAL_STATUSES))
        return applied

    # --- ignored webhooks and finished mailings ---

    def count_ignored_webhook(self, event: str, now: float) -> None:
        """Count one webhook that was answered "ignored" (its event has no text)."""
        with self.transaction() as db:
            db.execute("INSERT INTO ignored_webhooks (event, count, last_at) VALUES (?, 1, ?) ON CONFLICT (event)"
                       " DO UPDATE SET count = ignored_webhooks.count + 1, last_at = excluded.last_at", (event, now))

    def ignored_webhooks(self) -> dict[str, int]:
        """How many webhooks of each event were ignored, the most ignored first."""
        return dict(self.connection().execute(
            "SELECT event, count FROM ignored_webhooks ORDER BY count DESC, event").fetchall())

    def finish_mailings(self, now: float) -> list[int]:
        """Started mailings with no message left QUEUED or SENDING become finished; their ids.

        Looked for before a write transaction is begun: the scheduler asks every second.
        """
        waiting = f"SELECT 1 FROM messages WHERE mailing_id = mailings.id AND status IN ('{QUEUED}', '{SENDING}')"
        done = f"SELECT id FROM mailings WHERE state = '{STARTED}' AND NOT EXISTS ({waiting})"
        if not self.connection().execute(done).fetchone():
            return []
        with self.transaction() as db:
            return [row[0] for row in db.execute(
                f"UPDATE mailings SET state = '{FINISHED}', updated_at = ? WHERE id IN ({done}) RETURNING id",
                (now,)).fetchall()]

    # --- clients and their tags; a client is a dict of CLIENT_COLUMNS and `tags` ---

    def create_client(self, client: dict[str, Any]) -> dict[str, Any]:
        """Insert a client; it as stored, with its id. Raises ClientConflict."""
        try:
            with self.transaction() as db:
                return self._client(db, self._insert_client(db, client))
        except INTEGRITY_ERRORS as error:
            raise _client_conflict(error) from error

    def client(self, client_id: int) -> dict[str, Any] | None:
        return self._client(self.connection(), client_id)

    def update_client(self, client_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Change the given fields (`tags` replaces them all); None when there is no such client.
        Raises ClientConflict."""
        try:
            with self.transaction() as db:
                if db.execute("SELECT 1 FROM clients WHERE id = ?", (client_id,)).fetchone() is None:
                    return None
                self._change_client(db, client_id, changes)
                return self._client(db, client_id)
        except INTEGRITY_ERRORS as error:
            raise _client_conflict(error) from error

    def delete_client(self, client_id: int) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM clients WHERE id = ?", (client_id,)).rowcount == 1

    def search_clients(self, tags: list[str], operator_codes: list[str], phone: str | None, phone_digits: str | None,
                       limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the clients with any of the tags and any of the operator codes, whose phone is
        `phone` or has `phone_digits` anywhere in it, by id; and how many there are in all."""
        conditions, params = _client_filter(tags, operator_codes)
        if phone:
            conditions, params = conditions + ["c.phone = ?"], params + [phone]
        if phone_digits:
            conditions, params = conditions + ["c.phone LIKE ?"], params + [f"%{phone_digits}%"]
        db = self.connection()
        total = db.execute(f"SELECT count(*) FROM clients c{_where(conditions)}", params).fetchone()[0]
        rows = db.execute(f"SELECT * FROM clients c{_where(conditions)} ORDER BY c.id LIMIT ? OFFSET ?",
                          (*params, limit, offset)).fetchall()
        return self._with_tags(db, rows), total

    def upsert_clients(self, clients: list[ClientUpsert]) -> list[bool | ClientConflict]:
        """Create or change each client, all in one transaction; for each, True when it was created,
        False when changed, or the ClientConflict for which it alone was undone.

        The rows are written together (`_upsert_together`: a few statements, where a savepoint, a
        look-up, an insert and the tags of each row took six round trips a row, 115 s for 100,000
        clients on PostgreSQL); if any of them conflicts, that is undone and the rows are written
        one at a time, each under a savepoint, so the conflicting row alone is refused.
        """
        with self.transaction() as db:
            db.execute("SAVEPOINT client_batch")
            try:
                outcomes = self._upsert_together(db, clients)
            except INTEGRITY_ERRORS:
                db.execute("ROLLBACK TO client_batch")
                outcomes = [self._upsert_alone(db, client) for client in clients]
            db.execute("RELEASE client_batch")
        return outcomes

    def _upsert_together(self, db: sqlite3.Connection, clients: list[ClientUpsert]) -> list[bool | ClientConflict]:
        """The phones looked up at once, the new clients inserted by one INSERT (and their tags by one
        executemany) per 500, the others changed. A phone given twice is written row by row."""
        phones = [client.phone for client in clients]
        if len(set(phones)) < len(phones):
            return [self._upsert_alone(db, client) for client in clients]
        found: dict[str, int] = {}
        for start in range(0, len(phones), 500):
            chunk = phones[start:start + 500]
            found |= {row[0]: row[1] for row in db.execute(
                f"SELECT phone, id FROM clients WHERE phone IN ({_placeholders(chunk)})", chunk)}
        new = [client.new() for client in clients if client.phone not in found]
        created: dict[str, int] = {}
        now = time.time()
        for start in range(0, len(new), 500):
            chunk = new[start:start + 500]
            values = ", ".join(f"({_placeholders(CLIENT_COLUMNS)}, ?)" for _ in chunk)
            created |= {row[1]: row[0] for row in db.execute(
                f"INSERT INTO clients ({', '.join(CLIENT_COLUMNS)}, created_at) VALUES {values} RETURNING id, phone",
                [value for client in chunk for value in (*(client[column] for column in CLIENT_COLUMNS), now)])}
        db.executemany("INSERT INTO client_tags (tag, client_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       [(tag, created[client["phone"]]) for client in new for tag in client["tags"]])
        for client in clients:
            if client.phone in found:
                self._change_client(db, found[client.phone], client.changes())
        return [client.phone not in found for client in clients]

    def _upsert_alone(self, db: sqlite3.Connection, client: ClientUpsert) -> bool | ClientConflict:
        """One client under a savepoint: the ClientConflict, with the row undone, if it conflicts."""
        db.execute("SAVEPOINT client_row")
        try:
            outcome: bool | ClientConflict = self._upsert_client(db, client)
        except INTEGRITY_ERRORS as error:
            db.execute("ROLLBACK TO client_row")
            outcome = _client_conflict(error)
        db.execute("RELEASE client_row")
        return outcome

    def _upsert_client(self, db: sqlite3.Connection, client: ClientUpsert) -> bool:
        found = db.execute("SELECT id FROM clients WHERE phone = ?", (client.phone,)).fetchone()
        if found is None:
            self._insert_client(db, client.new())
            return True
        self._change_client(db, found["id"], client.changes())
        return False

    def _insert_client(self, db: sqlite3.Connection, client: dict[str, Any]) -> int:
        """Its id. (RETURNING * would cost the CSV import a tenth of its time.)"""
        client_id = db.execute(f"INSERT INTO clients ({', '.join(CLIENT_COLUMNS)}, created_at)"
                               f" VALUES ({_placeholders(CLIENT_COLUMNS)}, ?) RETURNING id",
                               (*(client[column] for column in CLIENT_COLUMNS), time.time())).fetchone()[0]
        self._set_tags(db, client_id, client["tags"])
        return client_id

    def _change_client(self, db: sqlite3.Connection, client_id: int, changes: dict[str, Any]) -> None:
        columns = {name: value for name, value in changes.items() if name != "tags"}
        if columns:
            db.execute(f"UPDATE clients SET {', '.join(f'{name} = ?' for name in columns)} WHERE id = ?",
                       (*columns.values(), client_id))
        if changes.get("tags") is not None:
            self._set_tags(db, client_id, changes["tags"])

    def _stream(self, sql: str, params: list[Any]) -> Iterator[Any]:
        """The rows of a big query as they are iterated (SQLite's cursor reads them so)."""
        return self.connection().execute(sql, params)

    @staticmethod
    def _set_tags(db: sqlite3.Connection, client_id: int, tags: Iterable[str]) -> None:
        db.execute("DELETE FROM client_tags WHERE client_id = ?", (client_id,))
        db.executemany("INSERT INTO client_tags (tag, client_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       [(tag, client_id) for tag in tags])

    def _client(self, db: sqlite3.Connection, client_id: int) -> dict[str, Any] | None:
        row = db.execute("SELECT * FROM clients WHERE id = ?", (client_id,)).fetchone()
        return self._with_tags(db, [row])[0] if row else None

    @staticmethod
    def _with_tags(db: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
        """Clients with their tags: one query for the tags of all of them, not one per client."""
        clients = [dict(row, tags=[]) for row in rows]
        by_id = {client["id"]: client for client in clients}
        if by_id:
            for tag, client_id in db.execute(f"SELECT tag, client_id FROM client_tags WHERE client_id IN"
                                             f" ({_placeholders(by_id)}) ORDER BY tag", list(by_id)):
                by_id[client_id]["tags"].append(tag)
        return clients

    # --- API keys: stored as their SHA-256 only, with a daily quota counted here ---

    def create_api_key(self, name: str, key_hash: str, scopes: Iterable[str], daily_quota: int | None) -> int:
        """Store a new key by its hash; its id."""
        with self.transaction() as db:
            return db.execute("INSERT INTO api_keys (name, key_hash, scopes, daily_quota, created_at)"
                              " VALUES (?, ?, ?, ?, ?) RETURNING id",
                              (name, key_hash, " ".join(scopes), daily_quota, time.time())).fetchone()[0]

    def api_keys(self) -> list[dict[str, Any]]:
        """Every key, revoked ones too, with its quota counter; never its hash."""
        return [dict(row) for row in self.connection().execute(
            "SELECT id, name, scopes, daily_quota, created_at, revoked_at, quota_day, quota_used"
            " FROM api_keys ORDER BY id")]

    def revoke_api_key(self, key_id: int) -> bool:
        """False when there is no such key or it was revoked already."""
        with self.transaction() as db:
            return db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                              (time.time(), key_id)).rowcount == 1

    def active_api_key(self, key_hash: str) -> ApiKey | None:
        """The key with this hash unless it was revoked; nothing is counted."""
        row = self.connection().execute(
            "SELECT id, name, scopes FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,)).fetchone()
        return ApiKey(row["id"], row["name"], frozenset(row["scopes"].split())) if row else None

    def count_api_key_request(self, key_id: int, day: str) -> bool:
        """Count one request against the key's quota for `day` (its UTC date, ISO); False when it is used up.

        One UPDATE that increments only while under the quota, so processes counting at the same
        time cannot both take the last request.
        """
        with self.transaction() as db:
            return db.execute(
                "UPDATE api_keys SET quota_used = CASE WHEN quota_day = ? THEN quota_used + 1 ELSE 1 END,"
                " quota_day = ? WHERE id = ? AND (daily_quota IS NULL"
                " OR CASE WHEN quota_day = ? THEN quota_used ELSE 0 END < daily_quota)",
                (day, day, key_id, day)).rowcount == 1

    # --- the audit log (audit.py decides what is written; migration 16) ---

    def record_audit(self, at: float, channel: str, actor: str, actor_id: int | None, action: str,
                     object_type: str, object_id: str | None, detail: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO audit_log (at, channel, actor, actor_id, action, object_type, object_id, detail)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (at, channel, actor, actor_id, action, object_type, object_id, detail))

    def audit_entries(self, actor: str | None, action: str | None, since: float | None, until: float | None,
                      before_id: int | None, limit: int) -> list[AuditEntry]:
        """The newest `limit` entries older than `before_id` (keyset pagination, on the indexes of
        migration 16) that match every filter given."""
        conditions, params = [], []
        for condition, value in (("actor = ?", actor), ("action = ?", action), ("at >= ?", since),
                                 ("at < ?", until), ("id < ?", before_id)):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        return [AuditEntry(*row) for row in self.connection().execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit_log{_where(conditions)} ORDER BY id DESC LIMIT ?", (*params, limit))]

    def audit_actors(self) -> list[str]:
        """Every actor that has an entry, for the filter: there are few, found by skipping along the
        actor index (one look-up each) rather than reading every entry."""
        return [row[0] for row in self.connection().execute(
            "WITH RECURSIVE a (actor) AS (SELECT min(actor) FROM audit_log UNION ALL"
            " SELECT (SELECT min(actor) FROM audit_log WHERE actor > a.actor) FROM a WHERE a.actor IS NOT NULL)"
            " SELECT actor FROM a WHERE actor IS NOT NULL")]

    # --- the console's figures at scale: message_activity (migration 17) and indexed reads ---

    def daily_activity(self, day_starts: list[float]) -> list[DayActivity]:
        """Each day from day_starts[i] to day_starts[i + 1] (local midnights: whole quarter hours):
        messages sent and their parts (by sent_at), DELIVERED and FAILED or UNDELIVERED (by done_at)."""
        days = len(day_starts) - 1
        buckets = [int(start // REPORT_BUCKET_SECONDS) for start in day_starts]
        day_of = "CASE " + " ".join(f"WHEN bucket < ? THEN {day}" for day in range(days)) + " END"
        rows = self.connection().execute(
            f"SELECT {day_of} AS day, sum(sent), sum(parts), sum(delivered), sum(failed) FROM message_activity"
            " WHERE bucket >= ? AND bucket < ? GROUP BY day", (*buckets[1:], buckets[0], buckets[-1]))
        found = {row[0]: DayActivity(*(int(value) for value in row[1:])) for row in rows}
        return [found.get(day, DayActivity(0, 0, 0, 0)) for day in range(days)]

    def recent_failures(self, since: float, limit: int) -> list[dict[str, Any]]:
        """The latest FAILED and UNDELIVERED messages finished since `since`, the newest first: each
        status's newest from the index messages_done, never every failure of the period sorted."""
        newest = ("SELECT id, source, event, mailing_id, phone, provider, status, error_code, last_error, done_at"
                  " FROM messages WHERE status = ? AND done_at >= ? ORDER BY done_at DESC LIMIT ?")
        return [dict(row) for row in self.connection().execute(
            f"SELECT * FROM ({newest}) AS f UNION ALL SELECT * FROM ({newest}) AS u ORDER BY done_at DESC LIMIT ?",
            (FAILED, since, limit, UNDELIVERED, since, limit, limit))]

    def waiting_count(self) -> int:
        """Messages QUEUED or SENDING now, from the index on (status, created_at), not every message counted
        by status (the statuses written in, so that the planner knows they are the few)."""
        return self.connection().execute(f"SELECT count(*) FROM messages WHERE status IN ('{QUEUED}', '{SENDING}')"
                                         ).fetchone()[0]

    # --- the console: people's accounts, their sessions, failed logins, the dashboard's figures ---

    def create_user(self, email: str, role: str, password_hash: str, must_change_password: bool, now: float) -> int:
        """A new account's id; UserExists if the email has one."""
        try:
            with self.transaction() as db:
                return db.execute(
                    "INSERT INTO users (email, role, password_hash, must_change_password, created_at)"
                    " VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (email, role, password_hash, must_change_password, now)).fetchone()[0]
        except INTEGRITY_ERRORS:
            raise UserExists(email) from None

    def users(self) -> list[User]:
        return [_user(row) for row in self.connection().execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY id")]

    def user_by_email(self, email: str) -> User | None:
        row = self.connection().execute(f"SELECT {USER_COLUMNS} FROM users WHERE email = ?", (email,)).fetchone()
        return _user(row) if row else None

    def disable_user(self, user_id: int) -> bool:
        """Disable an active account and end its sessions; False if there is no such active account."""
        with self.transaction() as db:
            db.execute("DELETE FROM console_sessions WHERE user_id = ?", (user_id,))
            return db.execute("UPDATE users SET disabled_at = ? WHERE id = ? AND disabled_at IS NULL",
                              (time.time(), user_id)).rowcount == 1

    def enable_user(self, user_id: int) -> bool:
        """Let a disabled account log in again; False if it is not disabled."""
        with self.transaction() as db:
            return db.execute("UPDATE users SET disabled_at = NULL WHERE id = ? AND disabled_at IS NOT NULL",
                              (user_id,)).rowcount == 1

    def set_user_role(self, user_id: int, role: str) -> bool:
        """False if the account has that role already (or does not exist)."""
        with self.transaction() as db:
            return db.execute("UPDATE users SET role = ? WHERE id = ? AND role <> ?",
                              (role, user_id, role)).rowcount == 1

    def reset_user_password(self, user_id: int, password_hash: str, must_change: bool, failures_key: str) -> None:
        """A password set for the person (by an admin): every session of theirs ends, and the
        failed logins that may have locked the account are forgotten."""
        with self.transaction() as db:
            db.execute("UPDATE users SET password_hash = ?, must_change_password = ? WHERE id = ?",
                       (password_hash, must_change, user_id))
            db.execute("DELETE FROM console_sessions WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM login_failures WHERE key = ?", (failures_key,))

    def set_user_password(self, user_id: int, password_hash: str, keep_session: str) -> None:
        """A new password the person chose; every session of theirs but `keep_session` (a token hash) ends."""
        with self.transaction() as db:
            db.execute("UPDATE users SET password_hash = ?, must_change_password = ? WHERE id = ?",
                       (password_hash, False, user_id))
            db.execute("DELETE FROM console_sessions WHERE user_id = ? AND token_hash <> ?", (user_id, keep_session))

    def create_console_session(self, token_hash: str, user_id: int, now: float, expires_at: float) -> None:
        """Keep a new session (those expired are forgotten)."""
        with self.transaction() as db:
            db.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
            db.execute("INSERT INTO console_sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                       (token_hash, user_id, now, expires_at))

    def console_session_user(self, token_hash: str, now: float) -> User | None:
        """The active account of an unexpired session, or None."""
        row = self.connection().execute(
            f"SELECT {', '.join(f'u.{name}' for name in USER_COLUMNS.split(', '))} FROM console_sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.token_hash = ? AND s.expires_at > ? AND u.disabled_at IS NULL",
            (token_hash, now)).fetchone()
        return _user(row) if row else None

    def end_console_session(self, token_hash: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))

    def record_login_failure(self, keys: list[str], now: float, forget_before: float) -> None:
        """A failed login, counted under each key (the account, the client address); failures
        older than `forget_before` are forgotten."""
        with self.transaction() as db:
            db.execute("DELETE FROM login_failures WHERE failed_at < ?", (forget_before,))
            db.executemany("INSERT INTO login_failures (key, failed_at) VALUES (?, ?)", [(key, now) for key in keys])

    def login_failures(self, keys: list[str], since: float) -> dict[str, tuple[int, float]]:
        """For each key with failed logins since `since`: (how many, the time of the oldest)."""
        rows = self.connection().execute(
            f"SELECT key, count(*), min(failed_at) FROM login_failures WHERE key IN ({_placeholders(keys)})"
            " AND failed_at >= ? GROUP BY key", (*keys, since))
        return {row[0]: (row[1], row[2]) for row in rows}

    def clear_login_failures(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM login_failures WHERE key = ?", (key,))

    # --- the console's pages: messages found by day, phone, status, event and mailing ---

    def find_messages(self, start: float, end: float, phone: str | None, status: str | None, event: str | None,
                      mailing_id: int | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """A page of the messages created in [start, end) with the given phone (E.164), status, event
        and mailing, the newest first. Always bounded by the days, so a search reads a range of the
        index messages_created (of messages_mailing_status with a mailing), never the whole outbox."""
        conditions, params = ["created_at >= ?", "created_at < ?"], [start, end]
        for column, value in (("phone", phone), ("status", status), ("event", event), ("mailing_id", mailing_id)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        return [dict(row) for row in self.connection().execute(
            "SELECT id, created_at, source, event, mailing_id, phone, status, segments, attempts, provider, cost,"
            f" currency, last_error, sent_at, done_at FROM messages{_where(conditions)}"
            " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", (*params, limit, offset))]


    # --- templates, their versions and approval (migration 12) ---

    _TEMPLATE = ("SELECT t.id, t.name, t.created_at, t.updated_at, l.version, l.text, a.version, a.text"
                 " FROM templates t JOIN template_versions l ON l.template_id = t.id AND l.version ="
                 " (SELECT max(version) FROM template_versions WHERE template_id = t.id)"
                 " LEFT JOIN template_versions a ON a.template_id = t.id AND a.version = (SELECT max(version)"
                 " FROM template_versions WHERE template_id = t.id AND approved_at IS NOT NULL)")

    def create_template(self, name: str, text: str, by: str, approved: bool) -> StoredTemplate:
        """A new template, its text version 1 (approved at once when `approved`). Raises TemplateConflict."""
        now = time.time()
        try:
            with self.transaction() as db:
                template_id = db.execute("INSERT INTO templates (name, created_at, updated_at) VALUES (?, ?, ?)"
                                         " RETURNING id", (name, now, now)).fetchone()[0]
                self._add_version(db, template_id, 1, text, by, approved, now)
                return self._template(db, "t.id = ?", template_id)
        except INTEGRITY_ERRORS as error:
            raise TemplateConflict(f"another template is named {name!r}") from error

    def add_template_version(self, template_id: int, text: str, by: str, approved: bool) -> StoredTemplate | None:
        """A new latest version (approved at once when `approved`); None when there is no such template.
        Its row's update makes two editors of one template take turns, so versions are never taken twice."""
        now = time.time()
        with self.transaction() as db:
            if db.execute("UPDATE templates SET updated_at = ? WHERE id = ? RETURNING id",
                          (now, template_id)).fetchone() is None:
                return None
            latest = db.execute("SELECT max(version) FROM template_versions WHERE template_id = ?",
                                (template_id,)).fetchone()[0]
            self._add_version(db, template_id, latest + 1, text, by, approved, now)
            return self._template(db, "t.id = ?", template_id)

    @staticmethod
    def _add_version(db: Any, template_id: int, version: int, text: str, by: str, approved: bool,
                     now: float) -> None:
        db.execute("INSERT INTO template_versions (template_id, version, text, created_at, created_by, approved_at,"
                   " approved_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (template_id, version, text, now, by, now if approved else None, by if approved else None))

    def approve_template(self, template_id: int, version: int, by: str) -> bool:
        """Approve `version` of the template if it is still the latest; False otherwise (a newer one came)."""
        now = time.time()
        with self.transaction() as db:
            return db.execute(
                "UPDATE template_versions SET approved_at = coalesce(approved_at, ?),"
                " approved_by = coalesce(approved_by, ?) WHERE template_id = ? AND version = ? AND version ="
                " (SELECT max(version) FROM template_versions WHERE template_id = ?)",
                (now, by, template_id, version, template_id)).rowcount == 1

    def template(self, template_id: int) -> StoredTemplate | None:
        return self._template(self.connection(), "t.id = ?", template_id)

    def template_named(self, name: str) -> StoredTemplate | None:
        return self._template(self.connection(), "t.name = ?", name)

    def templates(self) -> list[StoredTemplate]:
        """Every template, by name."""
        return [StoredTemplate(*row) for row in self.connection().execute(f"{self._TEMPLATE} ORDER BY t.name")]

    def _template(self, db: Any, where: str, value: Any) -> StoredTemplate | None:
        row = db.execute(f"{self._TEMPLATE} WHERE {where}", (value,)).fetchone()
        return StoredTemplate(*row) if row else None

    def template_versions(self, template_id: int) -> list[TemplateVersion]:
        """Every version of the template, the first first."""
        return [TemplateVersion(*row) for row in self.connection().execute(
            "SELECT version, text, created_at, created_by, approved_at, approved_by FROM template_versions"
            " WHERE template_id = ? ORDER BY version", (template_id,))]

    # --- batch requests: their messages go into the outbox here, with the anti-duplicate window ---

    def accept_batch_request(self, template: StoredTemplate, api_key_id: int | None, recipients: int,
                             rejected: str, messages: list[BatchMessage], dedup_seconds: int,
                             valid_seconds: int) -> tuple[int, dict[int, tuple[int, str]]]:
        """Record a batch request and queue its messages, all in one transaction: (its id, each
        recipient's index -> (message id, status)).

        A message whose phone and text went out (from any batch request) less than `dedup_seconds`
        ago is written CANCELED as a duplicate. Which came first is decided by `recent_texts`, one row
        per phone and text: an INSERT that takes the row, or takes it over once its window has passed,
        is atomic on either database (on PostgreSQL a second request waits for the first's row, then
        finds it taken), so two identical requests at once send once. The rows are taken in key order:
        two requests sharing several texts cannot each hold one the other waits for.
        """
        now = time.time()
        outcome: dict[int, tuple[int, str]] = {}
        with self.transaction() as db:
            request_id = db.execute(
                "INSERT INTO batch_requests (created_at, template_id, template_version, api_key_id, recipients,"
                " rejected) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (now, template.id, template.approved_version, api_key_id, recipients, rejected)).fetchone()[0]
            if dedup_seconds:
                db.execute("DELETE FROM recent_texts WHERE created_at < ?", (now - dedup_seconds,))
            keyed = sorted(messages, key=lambda m: (_text_key(m.phone, m.text), m.index))
            for message in keyed:
                key, error = _text_key(message.phone, message.text), None
                if dedup_seconds and db.execute(
                        "INSERT INTO recent_texts (key, message_id, created_at) VALUES (?, NULL, ?)"
                        " ON CONFLICT (key) DO UPDATE SET message_id = NULL, created_at = excluded.created_at"
                        " WHERE recent_texts.created_at < ? RETURNING key",
                        (key, now, now - dedup_seconds)).fetchone() is None:
                    earlier = db.execute("SELECT message_id FROM recent_texts WHERE key = ?", (key,)).fetchone()[0]
                    error = (f"{DUPLICATE}: the same text went to this phone less than {dedup_seconds} s before"
                             f" (message {earlier})")
                status = QUEUED if error is None else CANCELED
                message_id = db.execute(
                    "INSERT INTO messages (created_at, updated_at, source, request_id, phone, text, priority, status,"
                    " last_error, next_attempt_at, deadline, done_at) VALUES (?, ?, 'request', ?, ?, ?, ?, ?, ?, ?,"
                    " ?, ?) RETURNING id",
                    (now, now, request_id, message.phone, message.text, message.priority, status, error,
                     message.due, message.due + valid_seconds, now if status == CANCELED else None)).fetchone()[0]
                if dedup_seconds and status == QUEUED:
                    db.execute("UPDATE recent_texts SET message_id = ? WHERE key = ?", (message_id, key))
                outcome[message.index] = (message_id, status)
        return request_id, outcome

    def batch_request(self, request_id: int) -> BatchRequestState | None:
        db = self.connection()
        row = db.execute("SELECT id, created_at, template_id, template_version, recipients, rejected"
                         " FROM batch_requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        counts = dict(db.execute("SELECT status, count(*) FROM messages WHERE request_id = ? GROUP BY status",
                                 (request_id,)).fetchall())
        return BatchRequestState(*row, counts={status: counts[status] for status in STATUSES if status in counts})

    # --- reports: messages by the moment they were created (the index messages_created) ---

    quarter_hour_sql = f"CAST(created_at / {REPORT_BUCKET_SECONDS} AS INTEGER)"  # created_at > 0: truncation floors

    def report_buckets(self, start: float, end: float) -> list[ReportBucket]:
        """The messages created in [start, end), by quarter hour and provider."""
        sent = "sent_at IS NOT NULL"
        rows = self.connection().execute(
            f"SELECT {self.quarter_hour_sql} AS bucket, provider, count(*),"
            f" sum(CASE WHEN {sent} THEN 1 ELSE 0 END), sum({is_status_sql('messages', DELIVERED)}),"
            f" sum(CASE WHEN status IN ('{FAILED}', '{UNDELIVERED}') THEN 1 ELSE 0 END),"
            f" CAST(coalesce(sum(CASE WHEN {sent} THEN segments END), 0) AS BIGINT), coalesce(sum(cost), 0)"
            " FROM messages WHERE created_at >= ? AND created_at < ? GROUP BY bucket, provider ORDER BY bucket",
            (start, end))
        return [ReportBucket(*row) for row in rows]

    def report_message_chunks(self, start: float, end: float) -> Iterator[list[Any]]:
        """The messages (REPORT_COLUMNS) created in [start, end), oldest first, 1000 at a time: each
        chunk a query of its own from where the last ended, so no transaction stays open while the
        export is downloaded, and none of it is held in memory."""
        after: tuple[float, int] = (start, 0)
        while rows := self.connection().execute(
                f"SELECT {', '.join(REPORT_COLUMNS)} FROM messages WHERE created_at >= ? AND created_at < ?"
                " AND (created_at > ? OR (created_at = ? AND id > ?)) ORDER BY created_at, id LIMIT 1000",
                (start, end, after[0], after[0], after[1])).fetchall():
            yield rows
            after = (rows[-1]["created_at"], rows[-1]["id"])

    # --- metrics (metrics.py) and the daily report (daily_report.py) ---

    def queue_gauges(self, now: float) -> QueueGauges:
        """Read from the index on (status, priority, next_attempt_at) alone: cheap at every scrape."""
        db = self.connection()
        depth = dict.fromkeys((QUEUED, SENDING), 0) | dict(db.execute(
            "SELECT status, count(*) FROM messages WHERE status IN (?, ?) GROUP BY status",
            (QUEUED, SENDING)).fetchall())
        oldest = db.execute("SELECT min(next_attempt_at) FROM messages WHERE status = ? AND next_attempt_at <= ?",
                            (QUEUED, now)).fetchone()[0]
        return QueueGauges(depth, now - oldest if oldest is not None else 0.0)

    def failure_reasons(self, start: float, end: float) -> list[tuple[str, str, int]]:
        """Messages created in [start, end) that FAILED, were UNDELIVERED or EXPIRED: (status, error
        code or "", how many), the most first."""
        return [tuple(row) for row in self.connection().execute(
            "SELECT status, coalesce(error_code, ''), count(*) FROM messages WHERE created_at >= ? AND created_at < ?"
            " AND status IN (?, ?, ?) GROUP BY status, coalesce(error_code, '') ORDER BY count(*) DESC, status",
            (start, end, FAILED, UNDELIVERED, EXPIRED))]

    def mailings_finished(self, start: float, end: float) -> list[MailingProgress]:
        """The mailings that finished in [start, end) and still are, by id."""
        return [self._progress(row) for row in self.connection().execute(
            f"{self._PROGRESS} WHERE g.state = ? AND g.updated_at >= ? AND g.updated_at < ? ORDER BY g.id",
            (FINISHED, start, end))]

    def claim_daily_report(self, day: str, owner: str, now: float, lease_until: float) -> ReportClaim:
        """Take `day`'s report for `owner` until `lease_until`: the first to ask inserts its row; later,
        one whose lease (or wait before the next try) has passed takes it over, unless it was sent."""
        with self.transaction() as db:
            if db.execute("INSERT INTO daily_reports (day, owner, lease_until, attempts) VALUES (?, ?, ?, 1)"
                          " ON CONFLICT (day) DO NOTHING", (day, owner, lease_until)).rowcount == 1:
                return ReportClaim(True, False, lease_until)
            if db.execute("UPDATE daily_reports SET owner = ?, lease_until = ?, attempts = attempts + 1"
                          " WHERE day = ? AND sent_at IS NULL AND lease_until <= ?",
                          (owner, lease_until, day, now)).rowcount == 1:
                return ReportClaim(True, False, lease_until)
            sent_at, until = db.execute("SELECT sent_at, lease_until FROM daily_reports WHERE day = ?",
                                        (day,)).fetchone()
            return ReportClaim(False, sent_at is not None, until)

    def daily_report_sent(self, day: str, owner: str, now: float) -> bool:
        with self.transaction() as db:
            return db.execute("UPDATE daily_reports SET sent_at = ?, lease_until = NULL, last_error = NULL"
                              " WHERE day = ? AND owner = ? AND sent_at IS NULL", (now, day, owner)).rowcount == 1

    def daily_report_failed(self, day: str, owner: str, retry_at: float, error: str) -> None:
        """The send failed: anyone may try again from `retry_at`."""
        with self.transaction() as db:
            db.execute("UPDATE daily_reports SET lease_until = ?, last_error = ? WHERE day = ? AND owner = ?"
                       " AND sent_at IS NULL", (retry_at, error, day, owner))

    def daily_report(self, day: str) -> dict[str, Any] | None:
        row = self.connection().execute("SELECT * FROM daily_reports WHERE day = ?", (day,)).fetchone()
        return dict(row) if row else None

    # --- phones as gateways (the android pull provider): devices.py decides, these read and write ---
    # A message routed to the phones is SENDING under one of three leases: PHONE_POOL's (waiting for
    # any phone, until its deadline), a phone's (`phone:<id>`, handed to it until device_lease_until),
    # or none (lease_owner NULL, lease_until now: back to the worker, which routes it again).

    def create_device(self, name: str, token_hash: str, login: str, password_hash: str, push_token: str | None,
                      sim_cards: str, app_version: str | None, now: float) -> int:
        """A new phone's id."""
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO devices (name, token_hash, login, password_hash, push_token, sim_cards, app_version,"
                " created_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (name, token_hash, login, password_hash, push_token, sim_cards, app_version, now, now)).fetchone()[0]

    def device_by_token(self, token_hash: str) -> Device | None:
        row = self.connection().execute(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?",
                                        (token_hash,)).fetchone()
        return _device(row) if row else None

    def device(self, device_id: int) -> Device | None:
        row = self.connection().execute(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?", (device_id,)).fetchone()
        return _device(row) if row else None

    def devices(self) -> list[Device]:
        return [_device(row) for row in self.connection().execute(f"SELECT {DEVICE_COLUMNS} FROM devices"
                                                                  " ORDER BY created_at")]

    def update_device(self, device_id: int, push_token: str | None, sim_cards: str | None, now: float) -> None:
        """PATCH /device: a null pushToken or simCards keeps the stored one."""
        with self.transaction() as db:
            db.execute("UPDATE devices SET push_token = coalesce(?, push_token), sim_cards = coalesce(?, sim_cards),"
                       " last_seen_at = ? WHERE id = ?", (push_token, sim_cards, now, device_id))

    def touch_device(self, device_id: int, app_version: str | None, now: float, stale_before: float) -> None:
        """The phone was seen now: written only when the last sighting is older than `stale_before`
        or its app version changed, so a busy phone costs no write per request."""
        with self.transaction() as db:
            db.execute("UPDATE devices SET last_seen_at = ?, app_version = coalesce(?, app_version) WHERE id = ?"
                       " AND (last_seen_at < ? OR coalesce(app_version, '') != coalesce(?, app_version, ''))",
                       (now, app_version, device_id, stale_before, app_version))

    def disable_device(self, device_id: int, now: float) -> bool:
        with self.transaction() as db:
            return db.execute("UPDATE devices SET disabled_at = ? WHERE id = ? AND disabled_at IS NULL",
                              (now, device_id)).rowcount == 1

    def revoke_device_token(self, device_id: int) -> bool:
        with self.transaction() as db:
            return db.execute("UPDATE devices SET token_hash = NULL WHERE id = ? AND token_hash IS NOT NULL",
                              (device_id,)).rowcount == 1

    def set_device_events(self, device_ids: list[int], until: float | None, now: float) -> None:
        """Their event streams are open (until `until`, renewed while they stay open) or closed (None)."""
        if not device_ids:
            return
        with self.transaction() as db:
            db.execute(f"UPDATE devices SET events_until = ?, last_seen_at = ?"
                       f" WHERE id IN ({_placeholders(device_ids)})", (until, now, *device_ids))

    def device_handouts(self, minute_since: float, day_since: float) -> dict[int, tuple[int, int]]:
        """Messages handed to each phone since each moment: (in the last minute, today)."""
        return {row[0]: (row[1], row[2]) for row in self.connection().execute(
            "SELECT device_id, sum(CASE WHEN handed_at >= ? THEN 1 ELSE 0 END),"
            " sum(CASE WHEN handed_at >= ? THEN 1 ELSE 0 END) FROM device_handouts WHERE handed_at >= ?"
            " GROUP BY device_id", (minute_since, day_since, min(minute_since, day_since)))}

    def device_activity(self, since: float) -> dict[int, tuple[int, int]]:
        """Each phone's messages sent, and FAILED or UNDELIVERED, since `since`."""
        return {row[0]: (row[1], row[2]) for row in self.connection().execute(
            "SELECT device_id, sum(CASE WHEN sent_at >= ? THEN 1 ELSE 0 END),"
            " sum(CASE WHEN status IN (?, ?) AND done_at >= ? THEN 1 ELSE 0 END) FROM messages"
            " WHERE device_id IS NOT NULL AND (sent_at >= ? OR done_at >= ?) GROUP BY device_id",
            (since, FAILED, UNDELIVERED, since, since, since))}

    def lease_to_device(self, device_id: int, limit: int, now: float, device_until: float,
                        not_held_before: bool) -> list[dict[str, Any]]:
        """Hand up to `limit` messages of the pool to a phone, the higher priority first; with
        `not_held_before`, none it was handed before (a lease of it expired: another phone's turn)."""
        if limit <= 0:
            return []
        again = " AND (device_id IS NULL OR device_id != ?)" if not_held_before else ""
        with self.transaction() as db:
            rows = db.execute(
                "UPDATE messages SET lease_owner = ?, device_id = ?, device_lease_until = ?, device_acked_at = NULL,"
                " device_states = NULL, updated_at = ? WHERE id IN (SELECT id FROM messages WHERE status = ?"
                f" AND lease_owner = ?{again} ORDER BY priority, id LIMIT ?{self.skip_locked})"
                " AND status = ? AND lease_owner = ? RETURNING *",
                (f"{PHONE_LEASE}{device_id}", device_id, device_until, now, SENDING, PHONE_POOL,
                 *([device_id] if not_held_before else []), limit, SENDING, PHONE_POOL)).fetchall()
            db.executemany("INSERT INTO device_handouts (message_id, device_id, handed_at) VALUES (?, ?, ?)"
                           " ON CONFLICT (message_id, device_id) DO UPDATE SET handed_at = excluded.handed_at",
                           [(row["id"], device_id, now) for row in rows])
        return [dict(row) for row in rows]

    def device_messages(self, device_id: int) -> list[dict[str, Any]]:
        """What a phone holds, with its mailing's state (`mailing_state`): a phone holds at most what
        one GET /message hands out (devices.MAX_PULL)."""
        return [dict(row) for row in self.connection().execute(
            "SELECT m.*, g.state AS mailing_state FROM messages m LEFT JOIN mailings g ON g.id = m.mailing_id"
            " WHERE m.status = ? AND m.lease_owner = ? ORDER BY m.priority, m.id",
            (SENDING, f"{PHONE_LEASE}{device_id}"))]

    def handed_message(self, device_id: int, message_id: int) -> dict[str, Any] | None:
        """The message, if it was ever handed to this phone (a report about any other is ignored)."""
        row = self.connection().execute(
            "SELECT m.* FROM device_handouts h JOIN messages m ON m.id = h.message_id"
            " WHERE h.message_id = ? AND h.device_id = ?", (message_id, device_id)).fetchone()
        return dict(row) if row else None

    def record_device_states(self, device_id: int, message_id: int, states: str, now: float) -> None:
        """A phone's states history of a message it holds or sent; it has the message (acknowledged):
        GET /message stops handing it again."""
        with self.transaction() as db:
            db.execute("UPDATE messages SET device_states = ?, device_acked_at = CASE WHEN status = ? AND"
                       " lease_owner = ? THEN coalesce(device_acked_at, ?) ELSE device_acked_at END"
                       " WHERE id = ? AND device_id = ?",
                       (states, SENDING, f"{PHONE_LEASE}{device_id}", now, message_id, device_id))

    def expire_device_leases(self, before: float, now: float, max_attempts: int) -> tuple[int, int]:
        """Phone leases that ended before `before` unreported: back to the worker, counting an
        attempt, or FAILED once that makes `max_attempts`. (moved back, failed)."""
        held = "status = ? AND lease_owner >= ? AND lease_owner < ? AND device_lease_until < ?"
        params = [SENDING, PHONE_LEASE, PHONE_LEASE_END, before]
        with self.transaction() as db:
            failed = db.execute(
                "UPDATE messages SET status = ?, attempts = attempts + 1, lease_owner = NULL, lease_until = NULL,"
                " device_lease_until = NULL, done_at = ?, updated_at = ?, error_code = 'phone-lease', last_error ="
                " 'not tried again: a phone took it and never reported within its lease; it may have been sent'"
                f" WHERE {held} AND attempts + 1 >= ?", (FAILED, now, now, *params, max_attempts)).rowcount
            moved = db.execute(
                "UPDATE messages SET attempts = attempts + 1, lease_owner = NULL, lease_until = ?,"
                " device_lease_until = NULL, updated_at = ?, error_code = 'phone-lease', last_error ="
                f" 'the phone did not report within its lease' WHERE {held}", (now, now, *params)).rowcount
        return moved, failed

    def release_phone_pool(self, now: float) -> int:
        """Every message waiting for a phone goes back to the worker to be routed again (no phone can take it)."""
        with self.transaction() as db:
            return db.execute("UPDATE messages SET lease_owner = NULL, lease_until = ?, updated_at = ?"
                              " WHERE status = ? AND lease_owner = ?", (now, now, SENDING, PHONE_POOL)).rowcount

    def cancel_phone_pool(self, now: float) -> int:
        """Messages of cancelled mailings still waiting for a phone are CANCELED."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE messages SET status = ?, lease_owner = NULL, lease_until = NULL, done_at = ?, updated_at = ?,"
                " last_error = 'its mailing was cancelled before a phone took it' WHERE status = ? AND lease_owner = ?"
                " AND mailing_id IN (SELECT id FROM mailings WHERE state = ?)",
                (CANCELED, now, now, SENDING, PHONE_POOL, CANCELED_STATE)).rowcount

    def phone_pool(self) -> tuple[int, float]:
        """(messages waiting for a phone, the latest moment one joined): what the event streams watch."""
        row = self.connection().execute("SELECT count(*), coalesce(max(updated_at), 0) FROM messages"
                                        " WHERE status = ? AND lease_owner = ?", (SENDING, PHONE_POOL)).fetchone()
        return row[0], row[1]

    def phones_cancelling(self) -> list[tuple[int, int, float]]:
        """(phone, message id, created_at) of messages phones hold whose mailing was cancelled."""
        return [(int(row[0].removeprefix(PHONE_LEASE)), row[1], row[2]) for row in self.connection().execute(
            "SELECT m.lease_owner, m.id, m.created_at FROM mailings g JOIN messages m ON m.mailing_id = g.id"
            " AND m.status = ? WHERE g.state = ? AND m.lease_owner >= ? AND m.lease_owner < ?",
            (SENDING, CANCELED_STATE, PHONE_LEASE, PHONE_LEASE_END))]


PHONE_POOL = "phones"  # lease_owner of messages waiting for any phone
PHONE_LEASE, PHONE_LEASE_END = "phone:", "phone;"  # lease_owner of one phone's: "phone:<device id>"; the range's end


@dataclass(frozen=True)
class Device:
    """A phone registered as a gateway (devices.py)."""

    id: int
    name: str
    login: str
    push_token: str | None
    sim_cards: str  # JSON, as the phone sent it (the app masks the numbers but for their last 4 digits)
    app_version: str | None  # from its User-Agent: the app sends no battery level nor version otherwise
    created_at: float
    last_seen_at: float
    events_until: float | None  # its event stream is open until then (renewed while it stays open)
    disabled_at: float | None
    revoked: bool  # its token was revoked: it must register again


DEVICE_COLUMNS = ("id, name, login, push_token, sim_cards, app_version, created_at, last_seen_at, events_until,"
                  " disabled_at, token_hash IS NULL")


def _device(row: Any) -> Device:
    return Device(*row[:10], bool(row[10]))


@dataclass(frozen=True)
class AuditEntry:
    """A row of the audit log."""

    id: int
    at: float
    channel: str  # console, api, cli
    actor: str
    actor_id: int | None
    action: str
    object_type: str
    object_id: str | None
    detail: str


AUDIT_COLUMNS = "id, at, channel, actor, actor_id, action, object_type, object_id, detail"


class UserExists(Exception):
    """An account for this email exists already."""


@dataclass(frozen=True)
class User:
    """A person's console account."""

    id: int
    email: str
    role: str
    password_hash: str = field(repr=False)
    must_change_password: bool
    created_at: float
    disabled_at: float | None


USER_COLUMNS = "id, email, role, password_hash, must_change_password, created_at, disabled_at"


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])


@dataclass(frozen=True)
class DayActivity:
    sent: int
    parts: int
    delivered: int
    failed: int  # FAILED or UNDELIVERED


def _text_key(phone: str, text: str) -> str:
    """A phone and a text as `recent_texts` knows them."""
    return hashlib.sha256(f"{phone}\0{text}".encode()).hexdigest()
