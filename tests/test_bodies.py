"""Request bodies under real gunicorn: what is read is limited, chunked bodies included.

A chunked body has no Content-Length, so only counting what is read can refuse it; these tests send
one byte over each limit (413, nothing kept) and exactly the limit (accepted whole).
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

import api_keys
from api import MAX_IMPORT_BYTES
from sms_bulk_app import MAX_BODY_BYTES, create_app
from tests.conftest import running_gunicorn

ROW_NOTE = "x" * 2000  # an ignored column: rows of about 2 KB, so 10 MiB is about 5,000 rows


def chunked(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def csv_of_exactly(size: int) -> tuple[bytes, int]:
    """A CSV of `size` bytes, phone and an ignored note column; and how many rows it has."""
    rows = [b"phone,note\n"]
    length = len(rows[0])
    while length + len(row := f"06{len(rows):08d},{ROW_NOTE}\n".encode()) <= size:
        rows.append(row)
        length += len(row)
    body = b"".join(rows)
    body = body[:-1] + b"x" * (size - len(body)) + b"\n"  # the last note grows to fill the rest
    assert len(body) == size
    return body, len(rows) - 1


@pytest.fixture
def served(settings):
    """gunicorn on the test's settings, and an API key with every scope; yields (base URL, headers, store)."""
    settings["WEBHOOK_MODE"] = "async"
    store = create_app(settings).extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "test", list(api_keys.SCOPES), None)
    with running_gunicorn(settings, workers=1, threads=2) as base_url:
        yield base_url, {"Authorization": f"Bearer {key}"}, store


def client_count(store) -> int:
    return store.connection().execute("SELECT count(*) FROM clients").fetchone()[0]


def test_a_chunked_csv_one_byte_over_10_mib_is_refused_and_nothing_imported(served):
    base_url, headers, store = served
    body, _ = csv_of_exactly(MAX_IMPORT_BYTES + 1)
    response = requests.post(f"{base_url}/api/v1/clients/import", data=chunked(body),
                             headers=headers | {"Content-Type": "text/csv"}, timeout=120)
    assert (response.status_code, response.json()) == (
        413, {"status": "error", "message": "the body is larger than 10240 KiB"})
    assert client_count(store) == 0


def test_a_chunked_csv_of_exactly_10_mib_is_imported_whole(served):
    base_url, headers, store = served
    body, rows = csv_of_exactly(MAX_IMPORT_BYTES)
    response = requests.post(f"{base_url}/api/v1/clients/import", data=chunked(body),
                             headers=headers | {"Content-Type": "text/csv"}, timeout=120)
    assert response.status_code == 200, response.text
    assert (response.json()["created"], response.json()["rejected"]) == (rows, [])
    assert client_count(store) == rows


def multipart(csv_body: bytes) -> tuple[bytes, str]:
    boundary = "sms-bulk-app-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clients.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n").encode() + csv_body + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_chunked_multipart_upload_is_limited_too(served):
    base_url, headers, store = served
    url = f"{base_url}/api/v1/clients/import"
    csv_body, rows = csv_of_exactly(MAX_IMPORT_BYTES - 1000)
    within, content_type = multipart(csv_body)
    # A whole form, then an epilogue (which parsers skip) up to one byte over the limit.
    over = within + b"e" * (MAX_IMPORT_BYTES + 1 - len(within))
    response = requests.post(url, data=chunked(over), headers=headers | {"Content-Type": content_type}, timeout=120)
    assert (response.status_code, response.json()["message"]) == (413, "the body is larger than 10240 KiB")
    assert client_count(store) == 0
    response = requests.post(url, data=chunked(within), headers=headers | {"Content-Type": content_type},
                             timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == rows


def json_of_exactly(size: int, document: dict) -> bytes:
    """`document` as JSON padded with trailing spaces (still valid JSON) to `size` bytes."""
    text = json.dumps(document).encode()
    return text + b" " * (size - len(text))


def test_a_chunked_api_json_body_over_64_kib_is_refused_not_cut(served):
    base_url, headers, store = served
    url = f"{base_url}/api/v1/clients"
    over = json_of_exactly(MAX_BODY_BYTES + 1, {"phone": "0641234567", "name": "Ana"})
    response = requests.post(url, data=chunked(over), headers=headers | {"Content-Type": "application/json"},
                             timeout=30)
    assert (response.status_code, response.json()) == (
        413, {"status": "error", "message": "the body is larger than 64 KiB"})
    assert client_count(store) == 0
    exact = json_of_exactly(MAX_BODY_BYTES, {"phone": "0641234567", "name": "Ana"})
    response = requests.post(url, data=chunked(exact), headers=headers | {"Content-Type": "application/json"},
                             timeout=30)
    assert (response.status_code, response.json()["name"]) == (201, "Ana")


def test_a_chunked_webhook_over_64_kib_is_refused_not_cut(served, moyklass):
    base_url, _, store = served
    moyklass.add_user(123456, "381641234567")
    over = json_of_exactly(MAX_BODY_BYTES + 1, {"object": {"userId": 123456}})
    response = requests.post(f"{base_url}/webhook", data=chunked(over),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert (response.status_code, response.json()) == (
        413, {"status": "error", "message": "the body is larger than 64 KiB"})
    assert sum(store.counts().values()) == 0
    exact = json_of_exactly(MAX_BODY_BYTES, {"object": {"userId": 123456}})
    response = requests.post(f"{base_url}/webhook", data=chunked(exact),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert (response.status_code, response.json()["status"]) == (202, "queued")
    assert sum(store.counts().values()) == 1


def test_a_multipart_upload_without_the_file_field_is_a_clear_400(settings):
    app = create_app(settings)
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "test", ["clients:write"], None)
    body, content_type = multipart(b"phone\n0641234567\n")
    response = app.test_client().post("/api/v1/clients/import", data=body.replace(b'name="file"', b'name="csv"'),
                                      headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})
    assert (response.status_code, response.get_json()) == (
        400, {"status": "error", "message": "a multipart upload needs the CSV in the field `file`"})
