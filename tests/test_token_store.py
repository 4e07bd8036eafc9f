"""token_store.py: one token in a 0600 file, reused, replaced when corrupt or near expiry.

The file is SQLite's keeper: on PostgreSQL the token is a row (tests/test_postgresql.py)."""
from __future__ import annotations

import json
import logging
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sms_bulk_app import create_app
from tests.conftest import load_fixture, sqlite_only
from token_store import parse_expires_at

pytestmark = sqlite_only


@pytest.mark.parametrize("raw", ["2026-11-30T10:00:00+03:00", "2026-11-30T07:00:00.000Z",
                                 "2026-11-30T07:00:00Z"])
def test_both_expires_at_forms_parse_to_the_same_moment(raw):
    assert parse_expires_at(raw) == datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def token_file(settings) -> Path:
    return Path(settings["DATA_DIR"]) / "token.json"


def write_token(settings, value: str, expires_in: timedelta) -> None:
    """A token file as another process would have left it."""
    expires_at = (datetime.now(UTC) + expires_in).isoformat()
    token_file(settings).write_text(json.dumps({"accessToken": value, "expiresAt": expires_at}))


def send_one(app, moyklass, user_id: int = 1001):
    moyklass.add_user(user_id, "381641000001")
    payload = load_fixture("sub_lessons_left")
    payload["object"]["userId"] = user_id
    return app.test_client().post("/webhook", json=payload)


@pytest.mark.parametrize("form", ["z", "offset"])
def test_token_is_written_0600_and_reused_by_another_process_app(settings, moyklass, oneclick, form):
    moyklass.expires_form = form
    assert send_one(create_app(settings), moyklass, 1001).status_code == 200
    path = token_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["accessToken"] in moyklass.tokens
    assert list(path.parent.glob(".token-*")) == []  # the atomic replace left no temp file
    assert send_one(create_app(settings), moyklass, 1002).status_code == 200
    assert moyklass.token_calls == 1


def test_corrupt_token_file_is_replaced(settings, moyklass, oneclick):
    app = create_app(settings)
    token_file(settings).write_text("{not json")
    assert send_one(app, moyklass).status_code == 200
    assert json.loads(token_file(settings).read_text())["accessToken"] in moyklass.tokens


def test_token_near_expiry_is_refreshed(settings, moyklass, oneclick):
    app = create_app(settings)
    write_token(settings, "old", timedelta(minutes=2))
    assert send_one(app, moyklass).status_code == 200
    assert moyklass.token_calls == 1
    assert json.loads(token_file(settings).read_text())["accessToken"] != "old"


def test_rejected_token_is_dropped_and_the_call_retried_once(settings, moyklass, oneclick):
    app = create_app(settings)
    write_token(settings, "revoked-elsewhere", timedelta(days=3))
    assert send_one(app, moyklass).status_code == 200
    assert moyklass.token_calls == 1
    assert moyklass.user_calls == 2


def moyklass_warnings(settings) -> list[str]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_text = (Path(settings["DATA_DIR"]) / "sms_bulk_app.log").read_text(encoding="utf-8")
    return [line for line in log_text.splitlines() if " WARNING: " in line and "MoyKlass" in line]


def test_token_issued_already_expired_is_used_until_rejected_with_one_warning(settings, moyklass, oneclick):
    """The host's clock an hour ahead of MoyKlass': one getToken and one warning, not one per webhook."""
    moyklass.token_lifetime = timedelta(hours=-1)
    moyklass.enforce_rate_limit = False  # nine calls within a second
    app, other_process_app = create_app(settings), create_app(settings)
    for user_id in range(1001, 1004):
        assert send_one(app, moyklass, user_id).status_code == 200
    for user_id in range(1004, 1006):
        assert send_one(other_process_app, moyklass, user_id).status_code == 200
    assert (moyklass.token_calls, moyklass.user_calls) == (1, 5)
    [warning] = moyklass_warnings(settings)
    assert re.search(r"MoyKlass issued a token that expires at \S+, 360[01] s before this host's clock: "
                     r"the host's clock seems to be ahead; using the token until MoyKlass refuses it", warning)

    moyklass.revoke_all_tokens()
    assert send_one(app, moyklass, 1006).status_code == 200
    assert (moyklass.token_calls, moyklass.user_calls) == (2, 7)  # the 401, then the retry with a new token
    assert json.loads(token_file(settings).read_text())["accessToken"] in moyklass.tokens
    assert sum("host's clock seems to be ahead" in line for line in moyklass_warnings(settings)) == 2
