"""The client directory of bulk mailings: CRUD, filters, CSV import, MoyKlass sync."""
from __future__ import annotations

import csv
import io
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import phonenumbers
from pydantic import ValidationError

from phones import InvalidPhone, to_e164
from schemas import ClientCreate
from store import Store

PAGE_SIZE_MOYKLASS = 500
CSV_COLUMNS = ("phone", "name", "tags", "timezone", "moyklass_user_id")


class Conflict(Exception):
    """The phone (or MoyKlass user) belongs to another client already."""


def operator_code(e164: str) -> str:
    """The national destination code: 900 for +7 900 …, 64 for +381 64 …

    Only a label: with number portability the operator may have changed since.
    """
    number = phonenumbers.parse(e164)
    national = phonenumbers.national_significant_number(number)
    length = phonenumbers.length_of_national_destination_code(number)
    return national[:length] if length else national[:3]


def _rows(db: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """Clients with their tags: one query for the tags of all of them, not one per client."""
    clients = [dict(row, tags=[]) for row in rows]
    by_id = {client["id"]: client for client in clients}
    if by_id:
        for tag, client_id in db.execute(
                f"SELECT tag, client_id FROM client_tags WHERE client_id IN ({', '.join('?' * len(by_id))})"
                " ORDER BY tag", list(by_id)):
            by_id[client_id]["tags"].append(tag)
    return clients


def _row(db: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    return _rows(db, [row])[0]


def _conflict(error: sqlite3.IntegrityError) -> Conflict:
    field = "moyklass_user_id" if "moyklass_user_id" in str(error) else "phone"
    return Conflict(f"another client has this {field}")


def _set_tags(db: sqlite3.Connection, client_id: int, tags: Iterable[str]) -> None:
    db.execute("DELETE FROM client_tags WHERE client_id = ?", (client_id,))
    db.executemany("INSERT OR IGNORE INTO client_tags (tag, client_id) VALUES (?, ?)",
                   [(tag, client_id) for tag in tags])


def create(store: Store, client: ClientCreate, default_timezone: str) -> dict[str, Any]:
    try:
        with store.transaction() as db:
            cursor = db.execute(
                "INSERT INTO clients (phone, operator_code, timezone, name, moyklass_user_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (client.phone, client.operator_code or operator_code(client.phone),
                 client.timezone or default_timezone, client.name, client.moyklass_user_id, time.time()))
            _set_tags(db, cursor.lastrowid, client.tags)
            return _row(db, db.execute("SELECT * FROM clients WHERE id = ?", (cursor.lastrowid,)).fetchone())
    except sqlite3.IntegrityError as error:
        raise _conflict(error)


def get(store: Store, client_id: int) -> dict[str, Any] | None:
    db = store.connection()
    row = db.execute("SELECT * FROM clients WHERE id = ?", (client_id,)).fetchone()
    return _row(db, row) if row else None


def update(store: Store, client_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Change the given fields; a new phone brings a new derived operator code unless one is given."""
    changes = dict(changes)
    tags = changes.pop("tags", None)
    if "phone" in changes and "operator_code" not in changes:
        changes["operator_code"] = operator_code(changes["phone"])
    try:
        with store.transaction() as db:
            if db.execute("SELECT 1 FROM clients WHERE id = ?", (client_id,)).fetchone() is None:
                return None
            if changes:
                db.execute(f"UPDATE clients SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                           (*changes.values(), client_id))
            if tags is not None:
                _set_tags(db, client_id, tags)
            return _row(db, db.execute("SELECT * FROM clients WHERE id = ?", (client_id,)).fetchone())
    except sqlite3.IntegrityError as error:
        raise _conflict(error)


def delete(store: Store, client_id: int) -> bool:
    with store.transaction() as db:
        return db.execute("DELETE FROM clients WHERE id = ?", (client_id,)).rowcount == 1


def matching(tags: list[str], operator_codes: list[str]) -> tuple[str, list[Any]]:
    """SQL conditions on `clients c` for a filter: any of the tags, any of the codes, both together."""
    conditions, params = [], []
    if tags:
        conditions.append(f"c.id IN (SELECT client_id FROM client_tags WHERE tag IN ({', '.join('?' * len(tags))}))")
        params += tags
    if operator_codes:
        conditions.append(f"c.operator_code IN ({', '.join('?' * len(operator_codes))})")
        params += operator_codes
    return (" AND ".join(conditions) or "1"), params


def search(store: Store, tag: str | None, code: str | None, phone: str | None, limit: int, offset: int,
           region: str) -> tuple[list[dict[str, Any]], int]:
    """Clients with the tag and the operator code; `phone` is a whole number in any form, or digits
    found anywhere in the number."""
    where, params = matching([tag] if tag else [], [code] if code else [])
    if phone:
        try:
            where, params = where + " AND c.phone = ?", params + [to_e164(phone, region)]
        except InvalidPhone:
            where, params = where + " AND c.phone LIKE ?", params + [f"%{re.sub(r'[^0-9]', '', phone)}%"]
    db = store.connection()
    total = db.execute(f"SELECT count(*) FROM clients c WHERE {where}", params).fetchone()[0]
    rows = db.execute(f"SELECT * FROM clients c WHERE {where} ORDER BY c.id LIMIT ? OFFSET ?",
                      (*params, limit, offset)).fetchall()
    return _rows(db, rows), total


def upsert(store: Store, client: ClientCreate, default_timezone: str) -> bool:
    """Create the client, or update the one with the same phone; True when created."""
    found = store.connection().execute("SELECT id FROM clients WHERE phone = ?", (client.phone,)).fetchone()
    if found is None:
        create(store, client, default_timezone)
        return True
    given = client.model_dump(exclude_unset=True, exclude={"phone"})
    update(store, found["id"], given)
    return False


def import_csv(store: Store, text: str, default_timezone: str, region: str,
               progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Upsert every row of a CSV with a header (phone required; name, tags separated by `;`,
    timezone, moyklass_user_id optional); each refused row is reported with its reason."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in reader.fieldnames or []]
    except csv.Error as error:
        return {"created": 0, "updated": 0, "rejected": [{"row": 1, "reason": f"not CSV: {error}"}],
                "ignored_columns": []}
    ignored = sorted(set(header) - set(CSV_COLUMNS))
    report: dict[str, Any] = {"created": 0, "updated": 0, "rejected": [], "ignored_columns": ignored}
    if "phone" not in header:
        report["rejected"].append({"row": 1, "reason": "the header has no phone column"})
        return report
    reader.fieldnames = header
    try:
        _import_rows(store, reader, report, default_timezone, region, progress)
    except csv.Error as error:
        report["rejected"].append({"row": reader.line_num, "reason": f"not CSV from here on: {error}"})
    return report


def _import_rows(store: Store, reader: csv.DictReader, report: dict[str, Any], default_timezone: str, region: str,
                 progress: Callable[[int], None] | None) -> None:
    for line_number, row in enumerate(reader, start=2):
        data = {key: (value or "").strip() for key, value in row.items() if key in CSV_COLUMNS}
        fields: dict[str, Any] = {"phone": data.get("phone", "")}
        if data.get("name"):
            fields["name"] = data["name"]
        if data.get("tags"):
            fields["tags"] = [tag for tag in re.split(r"\s*;\s*", data["tags"]) if tag]
        if data.get("timezone"):
            fields["timezone"] = data["timezone"]
        if data.get("moyklass_user_id"):
            fields["moyklass_user_id"] = data["moyklass_user_id"]
        try:
            client = ClientCreate.model_validate(fields, context={"region": region})
            report["created" if upsert(store, client, default_timezone) else "updated"] += 1
        except ValidationError as error:
            report["rejected"].append({"row": line_number, "reason": describe(error)})
        except Conflict as error:
            report["rejected"].append({"row": line_number, "reason": str(error)})
        if progress:
            progress(line_number - 1)


def moyklass_users(get_page: Callable[[int, int], dict[str, Any]]) -> Iterator[tuple[list[dict], int]]:
    """Every MoyKlass user, a page of 500 at a time: yields (users, total)."""
    offset = 0
    while True:
        page = get_page(offset, PAGE_SIZE_MOYKLASS)
        users = page.get("users") or []
        total = int((page.get("stats") or {}).get("totalItems", 0))
        yield users, total
        offset += len(users)
        if not users or offset >= total:
            return


def sync_user(store: Store, user: dict[str, Any], default_timezone: str, region: str) -> str:
    """Upsert one MoyKlass user as a client: 'created', 'updated', or why it was skipped."""
    if not user.get("phone"):
        return "no phone"
    fields = {"phone": str(user["phone"]), "name": str(user.get("name") or ""), "moyklass_user_id": user.get("id"),
              "tags": [str(t.get("name")) for t in user.get("tags") or [] if t.get("name")]}
    try:
        client = ClientCreate.model_validate(fields, context={"region": region})
        return "created" if upsert(store, client, default_timezone) else "updated"
    except ValidationError as error:
        return describe(error)
    except Conflict as error:
        return str(error)


def describe(error: ValidationError) -> str:
    """One line for a validation error: `phone: ...; tags.0: ...`."""
    return "; ".join(f"{field_path(e)}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors())


def field_path(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "body"
