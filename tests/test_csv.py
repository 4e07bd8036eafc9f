"""CSV in and out: exports safe to open in a spreadsheet."""
from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta

import api_keys
import mailings
from sms_bulk_app import create_app

FORMULA_NAMES = ["=cmd|' /C calc'!A0", '+HYPERLINK("http://evil.example","x")', "@SUM(1+1)", "-2+3",
                 "\tTab", "\rReturn", "Ana Ilić"]


def test_the_messages_export_neutralizes_cells_a_spreadsheet_would_run_as_formulas(settings):
    app = create_app(settings)
    store = app.extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "test", list(api_keys.SCOPES), None)
    client, headers = app.test_client(), {"Authorization": f"Bearer {key}"}
    for i, name in enumerate(FORMULA_NAMES):
        created = client.post("/api/v1/clients", headers=headers,
                              json={"phone": f"064100000{i}", "name": name, "tags": ["a"]})
        assert created.status_code == 201, created.get_json()
    now = datetime.now(UTC)
    times = {"start_at": (now - timedelta(minutes=1)).isoformat(), "end_at": (now + timedelta(hours=1)).isoformat(),
             "filter": {"tags": ["a"]}}
    by_name = client.post("/api/v1/mailings", headers=headers, json=times | {"text": "{name}"}).get_json()
    formula = client.post("/api/v1/mailings", headers=headers,
                          json=times | {"text": "=1+2 {first_name}", "filter": {"all": True}}).get_json()
    mailings.start_due(store, time.time())

    def export(mailing_id: int) -> list[dict[str, str]]:
        response = client.get(f"/api/v1/mailings/{mailing_id}/messages.csv", headers=headers)
        assert response.status_code == 200
        return list(csv.DictReader(io.StringIO(response.get_data(as_text=True), newline="")))

    rows = export(by_name["id"])
    assert [row["text"] for row in rows] == ["'=cmd|' /C calc'!A0", "'+HYPERLINK(\"http://evil.example\",\"x\")",
                                             "'@SUM(1+1)", "'-2+3", "'\tTab", "'\rReturn", "Ana Ilić"]
    assert [row["phone"] for row in rows] == [f"'+38164100000{i}" for i in range(len(FORMULA_NAMES))]
    assert [row["status"] for row in rows] == ["QUEUED"] * len(FORMULA_NAMES)
    assert rows[0]["id"] == "1" and rows[0]["created_at"][:4] == str(now.year)  # numbers and times as they were
    assert export(formula["id"])[-1]["text"] == "'=1+2 Ana"
