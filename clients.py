"""The client directory of bulk mailings: CRUD, filters, CSV import, MoyKlass sync."""
from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import phonenumbers
from pydantic import ValidationError

from models import ClientCreate
from phones import InvalidPhone, to_e164
from store import ClientConflict, ClientUpsert, Store

PAGE_SIZE_MOYKLASS = 500
CSV_COLUMNS = ("phone", "name", "tags", "timezone", "moyklass_user_id")
CSV_DELIMITERS = (",", ";", "\t")  # the first wins a tie
IMPORT_BATCH_ROWS = 500  # rows written per transaction


class NotText(ValueError):
    """A CSV file in none of the encodings decode_csv reads."""


def operator_code(e164: str) -> str:
    """The national destination code: 900 for +7 900 …, 64 for +381 64 …

    Only a label: with number portability the operator may have changed since.
    """
    number = phonenumbers.parse(e164)
    national = phonenumbers.national_significant_number(number)
    length = phonenumbers.length_of_national_destination_code(number)
    return national[:length] if length else national[:3]


def _new_client(client: ClientCreate, default_timezone: str) -> dict[str, Any]:
    """Every field of a new client: the operator code derived from its phone and the default
    timezone unless they are given."""
    return {"phone": client.phone, "operator_code": client.operator_code or operator_code(client.phone),
            "timezone": client.timezone or default_timezone, "name": client.name,
            "moyklass_user_id": client.moyklass_user_id, "tags": client.tags}


def _upsert_row(client: ClientCreate, default_timezone: str) -> ClientUpsert:
    """The client to create, or the fields given to change of the one with its phone."""
    return ClientUpsert(client.phone, partial(_new_client, client, default_timezone),
                        partial(client.model_dump, exclude_unset=True, exclude={"phone"}))


def create(store: Store, client: ClientCreate, default_timezone: str) -> dict[str, Any]:
    return store.create_client(_new_client(client, default_timezone))


def get(store: Store, client_id: int) -> dict[str, Any] | None:
    return store.client(client_id)


def update(store: Store, client_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Change the given fields of the client; None when there is no such client. A new phone
    brings a new derived operator code unless one is given."""
    if "phone" in changes and "operator_code" not in changes:
        changes = dict(changes, operator_code=operator_code(changes["phone"]))
    return store.update_client(client_id, changes)


def delete(store: Store, client_id: int) -> bool:
    return store.delete_client(client_id)


def search(store: Store, tag: str | None, code: str | None, phone: str | None, limit: int, offset: int,
           region: str) -> tuple[list[dict[str, Any]], int]:
    """Clients with the tag and the operator code; `phone` is a whole number in any form, or digits
    found anywhere in the number."""
    whole, digits = None, None
    if phone:
        try:
            whole = to_e164(phone, region)
        except InvalidPhone:
            digits = re.sub(r"[^0-9]", "", phone)
    return store.search_clients([tag] if tag else [], [code] if code else [], whole, digits, limit, offset)


def upsert(store: Store, client: ClientCreate, default_timezone: str) -> bool:
    """Create the client, or update the one with the same phone; True when created."""
    [outcome] = store.upsert_clients([_upsert_row(client, default_timezone)])
    if isinstance(outcome, ClientConflict):
        raise outcome
    return outcome


def decode_csv(raw: bytes) -> tuple[str, str]:
    """The text of a CSV file and the encoding it was read in: `utf-8`, `utf-8-sig` (with a BOM),
    or what Excel writes on Windows set to Serbian/Croatian Latin (`cp1250`) or Cyrillic (`cp1251`).

    Bytes that are not UTF-8 are told apart by their words (runs of ASCII letters and bytes from
    0x80 up): in Cyrillic every letter of a word is such a byte (А-я are 0xC0-0xFF, Ђ Ј Љ Њ Ћ Џ
    below them), while a Serbian/Croatian Latin word with č ć ž š đ has ASCII letters too, its
    vowels at least. So the file is cp1251 when most words with a byte from 0x80 up have only such
    bytes, and cp1250 otherwise. Raises NotText for bytes that are none of these: UTF-16 (Excel's
    "Unicode Text", told by its BOM), which the other encodings would read as garbage, and any
    text with NUL in it, which no text has (UTF-16 without its BOM passes as UTF-8 or cp1250 with
    a NUL after each letter).
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise NotText('the CSV is UTF-16 (Excel\'s "Unicode Text"): save it from Excel as'
                      ' "CSV UTF-8 (Comma delimited)" and import that')
    if raw.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"  # the codec drops the BOM
    else:
        try:
            raw.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            words = [word for word in re.findall(rb"[A-Za-z\x80-\xff]+", raw) if max(word) >= 0x80]
            only_high = sum(1 for word in words if min(word) >= 0x80)
            encoding = "cp1251" if only_high * 2 > len(words) else "cp1250"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise NotText(f"the CSV is not text in UTF-8, cp1250 or cp1251: byte 0x{raw[error.start]:02X} on line"
                      f" {line} is no letter in any of them") from None
    if "\x00" in text:
        raise NotText("the CSV holds NUL characters, which text never has (UTF-16 without its BOM?)")
    return text, encoding


def sniff_delimiter(header_line: str) -> str:
    """`,` `;` or tab, whichever the header line has most of; `,` for a header of one column."""
    return max(CSV_DELIMITERS, key=header_line.count)


class MalformedRow(ValueError):
    """A line that is not one CSV row of the file's columns."""


def _fields(line: str, delimiter: str, columns: int | None = None) -> list[str]:
    """The fields of one line. A quoted field may hold the delimiter but not a line break: a quote
    left open is this line's error, never a reason to read the next lines into it."""
    try:
        fields = next(csv.reader([line], delimiter=delimiter, strict=True))
    except csv.Error as error:
        if str(error) == "unexpected end of data":
            raise MalformedRow("malformed CSV: a quote is not closed on this line (a row is one line)")
        raise MalformedRow(f"malformed CSV: {error}")
    if columns is not None and any(value.strip() for value in fields[columns:]):
        raise MalformedRow(f"{len(fields)} fields, the header has {columns}")
    return fields


def import_csv(store: Store, raw: bytes, default_timezone: str, region: str,
               progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Upsert every row of a CSV with a header (phone required; name, tags separated by `;`,
    timezone, moyklass_user_id optional); each refused row is reported with its line number and
    reason. The encoding (decode_csv) and the delimiter (from the header) are found and reported.
    Rows are written IMPORT_BATCH_ROWS to a transaction. Raises NotText (decode_csv)."""
    text, encoding = decode_csv(raw)
    lines = io.StringIO(text, newline="")
    header_line = lines.readline()
    delimiter = sniff_delimiter(header_line)
    report: dict[str, Any] = {"created": 0, "updated": 0, "rejected": [], "ignored_columns": [],
                              "encoding": encoding, "delimiter": delimiter}
    try:
        header = [name.strip().lower() for name in _fields(header_line, delimiter)]
    except MalformedRow as error:
        report["rejected"].append({"row": 1, "reason": str(error)})
        return report
    report["ignored_columns"] = sorted(set(header) - set(CSV_COLUMNS))
    if "phone" not in header:
        report["rejected"].append({"row": 1, "reason": "the header has no phone column"})
        return report
    batch: list[tuple[int, ClientCreate]] = []
    line_number = 1
    for line_number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            row = dict(zip(header, _fields(line, delimiter, len(header)), strict=False))  # short rows: empty
            batch.append((line_number, ClientCreate.model_validate(_client_fields(row), context={"region": region})))
        except MalformedRow as error:
            report["rejected"].append({"row": line_number, "reason": str(error)})
        except ValidationError as error:
            report["rejected"].append({"row": line_number, "reason": describe(error)})
        if len(batch) == IMPORT_BATCH_ROWS:
            _upsert_batch(store, batch, report, default_timezone)
            batch = []
            if progress:
                progress(line_number - 1)
    _upsert_batch(store, batch, report, default_timezone)
    if progress:
        progress(line_number - 1)
    report["rejected"].sort(key=lambda rejected: rejected["row"])
    return report


def _client_fields(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as ClientCreate fields: empty cells are left out, tags split at `;`."""
    data = {key: value.strip() for key, value in row.items() if key in CSV_COLUMNS}
    fields: dict[str, Any] = {"phone": data.get("phone", "")}
    if data.get("name"):
        fields["name"] = data["name"]
    if data.get("tags"):
        fields["tags"] = [tag for tag in re.split(r"\s*;\s*", data["tags"]) if tag]
    if data.get("timezone"):
        fields["timezone"] = data["timezone"]
    if data.get("moyklass_user_id"):
        given = data["moyklass_user_id"]  # a CSV cell is text; the schema takes integers only
        fields["moyklass_user_id"] = int(given) if given.isascii() and given.isdigit() else given
    return fields


def _upsert_batch(store: Store, batch: list[tuple[int, ClientCreate]], report: dict[str, Any],
                  default_timezone: str) -> None:
    """Upsert the rows in one transaction; a row that conflicts is undone alone and rejected."""
    if not batch:
        return
    outcomes = store.upsert_clients([_upsert_row(client, default_timezone) for _, client in batch])
    for (line_number, _), outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, ClientConflict):
            report["rejected"].append({"row": line_number, "reason": str(outcome)})
        else:
            report["created" if outcome else "updated"] += 1


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
    except ClientConflict as error:
        return str(error)


def describe(error: ValidationError) -> str:
    """One line for a validation error: `phone: ...; tags.0: ...`."""
    return "; ".join(f"{field_path(e)}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors())


def field_path(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "body"
