"""CSV in and out: exports safe to open in a spreadsheet, imports of what spreadsheets write."""
from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta

import pytest

import api_keys
import mailings
from sms_bulk_app import create_app
from tests.conftest import input_only, run_command

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

    rows = sorted(export(by_name["id"]), key=lambda row: row["phone"])  # the clients' order
    assert [row["text"] for row in rows] == ["'=cmd|' /C calc'!A0", "'+HYPERLINK(\"http://evil.example\",\"x\")",
                                             "'@SUM(1+1)", "'-2+3", "'\tTab", "'\rReturn", "Ana Ilić"]
    assert [row["phone"] for row in rows] == [f"'+38164100000{i}" for i in range(len(FORMULA_NAMES))]
    assert [row["status"] for row in rows] == ["QUEUED"] * len(FORMULA_NAMES)
    assert {row["id"] for row in rows} == {str(i) for i in range(1, len(FORMULA_NAMES) + 1)}  # numbers as they were
    assert rows[0]["created_at"][:4] == str(now.year)  # and times
    texts = {row["phone"]: row["text"] for row in export(formula["id"])}
    assert texts[f"'+38164100000{len(FORMULA_NAMES) - 1}"] == "'=1+2 Ana"


# --- imports as spreadsheets write them ---

@pytest.fixture
def api(settings):
    app = create_app(settings)
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "test", list(api_keys.SCOPES), None)
    client, headers = app.test_client(), {"Authorization": f"Bearer {key}"}

    def import_csv(body: bytes) -> dict:
        response = client.post("/api/v1/clients/import", data=body, content_type="text/csv", headers=headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def names() -> dict[str, tuple[str, list[str]]]:
        """Every client, page by page: phone -> (name, tags)."""
        found: dict[str, tuple[str, list[str]]] = {}
        while page := client.get(f"/api/v1/clients?limit=500&offset={len(found)}", headers=headers).get_json()["items"]:
            found |= {item["phone"]: (item["name"], item["tags"]) for item in page}
        return found

    return import_csv, names


@pytest.mark.parametrize("encoding, reported", [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig")])
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_delimiter_is_taken_from_the_header_and_utf8_with_or_without_bom(api, encoding, reported, delimiter):
    import_csv, names = api
    lines = [["phone", "name", "tags"], ["0641000001", "Ana Ilić", "a;b"], ["0641000002", "Đorđe, mlađi", ""]]
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerows(lines)  # as Excel writes it
    report = import_csv(buffer.getvalue().encode(encoding))
    assert report == {"created": 2, "updated": 0, "rejected": [], "ignored_columns": [],
                      "encoding": reported, "delimiter": delimiter}
    assert names() == {"+381641000001": ("Ana Ilić", ["a", "b"]), "+381641000002": ("Đorđe, mlađi", [])}


def test_a_cp1250_serbian_latin_file_is_read_as_cp1250(api):
    import_csv, names = api
    text = "phone;name;tags\r\n0641000001;Đorđe Čolić;učenici\r\n0641000002;Šćepan Žižić;\r\n0641000003;Ana Ilić;\r\n"
    report = import_csv(text.encode("cp1250"))
    assert (report["created"], report["encoding"], report["delimiter"]) == (3, "cp1250", ";")
    assert names() == {"+381641000001": ("Đorđe Čolić", ["učenici"]), "+381641000002": ("Šćepan Žižić", []),
                       "+381641000003": ("Ana Ilić", [])}


def test_a_cp1251_cyrillic_file_is_read_as_cp1251(api):
    import_csv, names = api
    text = ("phone;name;tags;timezone\r\n+79001234567;Мария Иванова;vip;Europe/Moscow\r\n"
            "0641000001;Ђорђе Чолић;ученици;Europe/Belgrade\r\n")
    report = import_csv(text.encode("cp1251"))
    assert (report["created"], report["encoding"], report["delimiter"]) == (2, "cp1251", ";")
    assert names() == {"+79001234567": ("Мария Иванова", ["vip"]), "+381641000001": ("Ђорђе Чолић", ["ученици"])}


UTF16_ERROR = ('the CSV is UTF-16 (Excel\'s "Unicode Text"): save it from Excel as "CSV UTF-8 (Comma delimited)"'
               " and import that")


NUL_ERROR = "the CSV holds NUL characters, which text never has (UTF-16 without its BOM?)"


@input_only
@pytest.mark.parametrize("raw, error", [
    (b"\xff\xfe" + "phone\tname\r\n0641000001\tĐorđe Čolić\r\n".encode("utf-16-le"), UTF16_ERROR),  # Unicode Text
    (b"\xfe\xff" + "phone\tname\r\n0641000001\tМария\r\n".encode("utf-16-be"), UTF16_ERROR),
    ("phone\tname\r\n0641000001\tĐorđe\r\n".encode("utf-16-le"), NUL_ERROR),  # no BOM: UTF-8, NUL every other byte
    ("phone;name\r\n0641000001;Мария\r\n".encode("utf-16-be"), NUL_ERROR),
    (b"phone,name\n0641000001,Ana\x00\xe8\n", NUL_ERROR),  # not UTF-8, and no cp1250 or cp1251 text either
])
def test_utf16_and_bytes_with_nul_are_refused_clearly_instead_of_read_as_cp1250(settings, raw, error):
    app = create_app(settings)
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "test", ["clients:write", "read"], None)
    client, headers = app.test_client(), {"Authorization": f"Bearer {key}"}
    response = client.post("/api/v1/clients/import", data=raw, content_type="text/csv", headers=headers)
    assert (response.status_code, response.get_json()["message"]) == (400, error)
    assert client.get("/api/v1/clients", headers=headers).get_json()["total"] == 0


def test_a_malformed_row_is_rejected_with_its_line_and_the_rows_around_it_are_kept(api):
    import_csv, names = api
    text = ('phone,name\n'
            '0641000001,"Ana Ilić\n'         # line 2: the quote never closes
            '0641000002,Marko\n'
            '0641000003,Jelena,extra\n'     # line 4: more fields than the header
            '\n'
            '0641000005,"Petar ""Pera"" Perić"\n'
            '0641000006,"Mila" Mi\n')       # line 7: text after the closing quote
    report = import_csv(text.encode())
    assert report["created"] == 2
    assert report["rejected"] == [
        {"row": 2, "reason": "malformed CSV: a quote is not closed on this line (a row is one line)"},
        {"row": 4, "reason": "3 fields, the header has 2"},
        {"row": 7, "reason": "malformed CSV: ',' expected after '\"'"}]
    assert names() == {"+381641000002": ("Marko", []), "+381641000005": ('Petar "Pera" Perić', [])}


def test_import_clients_cli_reads_a_cp1251_semicolon_file_and_says_so(settings, tmp_path):
    path = tmp_path / "clients.csv"
    path.write_bytes("phone;name\r\n+79001234567;Мария Иванова\r\n0641000001;Ђорђе Чолић\r\n".encode("cp1251"))
    result = run_command(settings, "import-clients", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["2 created, 0 updated, 0 rejected",
                                              "  read as cp1251, delimiter ';'"]
    store = create_app(settings).extensions["sms_bulk_app"].store
    assert [tuple(row) for row in store.connection().execute("SELECT phone, name FROM clients ORDER BY id")] == [
        ("+79001234567", "Мария Иванова"), ("+381641000001", "Ђорђе Чолић")]


def test_a_large_import_keeps_its_semantics_across_batches(api):
    """Rows go 500 to a transaction: a conflicting row is still rejected alone, with its line, and a
    phone repeated further down still updates the client its earlier line created."""
    import_csv, names = api
    lines = ["phone,name,moyklass_user_id"] + [f"0641{i:06d},Klijent {i}," for i in range(1200)]
    lines[600] = "0642000000,Prvi,77"    # line 601: MoyKlass user 77
    lines[700] = "0642000001,Drugi,77"   # line 701: user 77 again, another phone: a conflict
    lines[1100] = "0641000005,Peti opet,"  # line 1101: the phone of line 7
    lines[1150] = "12,Broj,"             # line 1151: no phone
    report = import_csv("\n".join(lines).encode())
    assert (report["created"], report["updated"]) == (1197, 1)
    assert [rejected["row"] for rejected in report["rejected"]] == [701, 1151]
    assert report["rejected"][0]["reason"] == "another client has this moyklass_user_id"
    clients = names()
    assert len(clients) == 1197
    assert clients["+381641000005"] == ("Peti opet", []) and "+381642000001" not in clients


def test_bytes_in_none_of_the_encodings_are_a_clear_400(settings):
    app = create_app(settings)
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "test", ["clients:write"], None)
    response = app.test_client().post("/api/v1/clients/import", data=b"phone\n\x98\x81\n", content_type="text/csv",
                                      headers={"Authorization": f"Bearer {key}"})
    assert (response.status_code, response.get_json()["message"]) == (
        400, "the CSV is not text in UTF-8, cp1250 or cp1251: byte 0x98 on line 2 is no letter in any of them")


def test_a_batch_written_together_creates_updates_and_tags_as_row_by_row_would(api):
    """A batch's new clients go in one INSERT, their tags in one statement; a client already there is
    changed (its tags replaced only when given), and a phone twice in one batch updates its first line."""
    import_csv, names = api
    assert import_csv(b"phone,name,tags\n0641000001,Ana,a;b\n0641000002,Bojan,\n")["created"] == 2
    report = import_csv(b"phone,name,tags\n0641000001,Ana Nova,\n0641000002,,c\n0641000003,Vera,d;e\n"
                        b"0641000004,Goran,f\n0641000004,Goran Drugi,g\n")
    assert (report["created"], report["updated"], report["rejected"]) == (2, 3, [])
    assert names() == {"+381641000001": ("Ana Nova", ["a", "b"]), "+381641000002": ("Bojan", ["c"]),
                       "+381641000003": ("Vera", ["d", "e"]), "+381641000004": ("Goran Drugi", ["g"])}
