"""Reports: per day of the school's time zone and provider, and the CSV export (error column,
cells safe from spreadsheet formulas)."""
from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

import api_keys
from sms_bulk_app import create_app


class Api:
    def __init__(self, app):
        self.client = app.test_client()
        self.store = app.extensions["sms_bulk_app"].store
        self.key = api_keys.create(self.store, "reports", ["read"], None)[1]

    def get(self, path: str):
        return self.client.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {self.key}"})

    def message(self, created: datetime, text: str = "Sutra nema nastave.", **columns) -> int:
        """A message created at `created` (UTC), with the columns given (status, provider, ...)."""
        message_id = self.store.enqueue("api", 3600, phone="+381641234567", text=text)
        columns |= {"created_at": created.timestamp()}
        self.store.connection().execute(
            f"UPDATE messages SET {', '.join(f'{name} = ?' for name in columns)} WHERE id = ?",
            (*columns.values(), message_id))
        return message_id


@pytest.fixture
def api(settings):
    return Api(create_app(settings | {"DEFAULT_TIMEZONE": "Europe/Belgrade"}))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sent(moment: datetime, provider: str, status: str = "DELIVERED", **columns) -> dict:
    return {"status": status, "provider": provider, "sent_at": moment.timestamp() + 5, "segments": 2} | columns


def test_messages_are_counted_on_their_local_day_per_provider(api):
    api.message(utc(2026, 3, 10, 22, 30), **sent(utc(2026, 3, 10, 22, 30), "oneclick", cost=3.5))  # 23:30 local
    api.message(utc(2026, 3, 10, 23, 30), **sent(utc(2026, 3, 10, 23, 30), "oneclick", cost=3.5))  # 00:30 the 11th
    api.message(utc(2026, 3, 10, 23, 45), **sent(utc(2026, 3, 10, 23, 45), "smsaero", "UNDELIVERED", cost=1.25))
    api.message(utc(2026, 3, 11, 10, 0), status="FAILED", last_error="invalid number")  # never sent: no provider
    api.message(utc(2026, 7, 10, 22, 30), **sent(utc(2026, 7, 10, 22, 30), "oneclick", "SENT"))  # summer: the 11th
    api.message(utc(2026, 3, 9, 22, 59))  # 23:59 on the 9th: before the range

    answer = api.get("/reports/summary?from=2026-03-10&to=2026-07-11")
    assert answer.status_code == 200, answer.get_json()
    lines = [(line["day"], line["provider"], line["total"], line["sent"], line["delivered"], line["failed"],
              line["parts"], line["cost"]) for line in answer.get_json()["items"]]
    assert lines == [
        ("2026-03-10", "oneclick", 1, 1, 1, 0, 2, 3.5),
        ("2026-03-11", None, 1, 0, 0, 1, 0, 0.0),
        ("2026-03-11", "oneclick", 1, 1, 1, 0, 2, 3.5),
        ("2026-03-11", "smsaero", 1, 1, 0, 1, 2, 1.25),
        ("2026-07-11", "oneclick", 1, 1, 0, 0, 2, 0.0),
    ]
    assert answer.get_json()["timezone"] == "Europe/Belgrade"


def test_the_range_is_checked(api):
    assert api.get("/reports/summary?from=2026-03-10&to=2026-03-09").get_json()["errors"] == \
        {"body": "to is before from"}
    assert api.get("/reports/summary?from=2026-01-01&to=2027-01-02").status_code == 400
    assert api.get("/reports/summary?from=2026-01-01").get_json()["errors"] == {"to": "Field required"}
    assert api.get("/reports/messages.csv?from=yesterday&to=2026-01-01").status_code == 400


def test_the_csv_export_streams_every_message_with_its_error_and_formula_safe_cells(api):
    first = api.message(utc(2026, 3, 10, 23, 30), text="=HYPERLINK(\"http://evil\")",
                        **sent(utc(2026, 3, 10, 23, 30), "oneclick", "FAILED", last_error="-1 rejected", cost=1.5,
                               currency="RSD"))
    second = api.message(utc(2026, 3, 11, 8, 0), text="@SUM(A1)")
    api.message(utc(2026, 3, 12, 8, 0))  # the day after the range

    response = api.get("/reports/messages.csv?from=2026-03-11&to=2026-03-11")
    assert response.status_code == 200 and response.mimetype == "text/csv" and response.is_streamed
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(row["id"]) for row in rows] == [first, second]
    assert rows[0]["text"] == "'=HYPERLINK(\"http://evil\")" and rows[1]["text"] == "'@SUM(A1)"
    assert rows[0]["error"] == "'-1 rejected" and rows[1]["error"] == ""
    assert rows[0]["phone"] == "'+381641234567"
    assert rows[0]["created_at"] == "2026-03-11T00:30:00+01:00"
    assert (rows[0]["provider"], rows[0]["cost"], rows[0]["currency"], rows[0]["status"]) == \
        ("oneclick", "1.5", "RSD", "FAILED")


def test_the_csv_export_reads_in_chunks(api):
    for minute in range(1203 // 100):
        for _ in range(100):
            api.message(utc(2026, 3, 11, 8, minute))
    rows = list(csv.reader(io.StringIO(api.get("/reports/messages.csv?from=2026-03-11&to=2026-03-11")
                                       .get_data(as_text=True))))
    assert len(rows) == 1 + 1200 and len({row[0] for row in rows[1:]}) == 1200
