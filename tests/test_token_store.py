"""token_store.py: one token in a 0600 file, reused, replaced when corrupt or near expiry."""
from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sms_bulk_app import create_app
from tests.conftest import load_fixture
from token_store import parse_expires_at


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
