"""What a request body (a webhook or an API call) must be for the service to keep it."""
from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from flask import abort, request

MAX_JSON_DEPTH = 32  # MoyKlass envelopes nest 4 deep, API bodies 3
NUL = "\x00"
NUL_REFUSED = "the {where} holds a NUL character ({written}): no text kept here may hold one"


class InvalidJson(ValueError):
    """A request body that is not JSON the service can keep."""


def _refuse_constant(name: str) -> NoReturn:
    """json.loads' parse_constant: `NaN`, `Infinity` and `-Infinity` are JavaScript, not JSON."""
    raise InvalidJson(f"the body holds {name}: JSON has no such number")


def parse_json(body: bytes) -> Any:
    """A request body (webhook or API) as JSON, refused unless every part of it can be kept.

    json.loads accepts what SQLite, PostgreSQL and the rest of the service cannot: lone surrogates
    (`"\\ud800"`, which UTF-8 cannot encode), the NUL character (`"\\u0000"`, which no PostgreSQL
    text can hold), nesting as deep as the recursion limit (a
    RecursionError there, or later in json.dumps), and numbers JSON does not have: `NaN`,
    `Infinity`, `-Infinity`, and those too large for a float (`1e999`, read as infinity). All are
    refused here, before anything is written.
    """
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    except ValueError:  # UnicodeDecodeError (bytes that are not UTF-8) included
        raise InvalidJson("the body is not valid JSON")
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, level = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidJson("the body holds a lone surrogate (such as \\ud800): it is not valid Unicode text")
            if NUL in value:
                raise InvalidJson(NUL_REFUSED.format(where="body", written="\\u0000"))
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidJson("the body holds a number too large to keep (such as 1e999)")
        elif isinstance(value, (dict, list)):
            if level > MAX_JSON_DEPTH:
                raise InvalidJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
            children = [*value, *value.values()] if isinstance(value, dict) else value
            pending.extend((child, level + 1) for child in children)
    return data


def refuse_nul_in_query() -> None:
    """Before every request: a query string with a NUL (`%00`) is refused 400, as a body with one is.
    It would reach a PostgreSQL text, which cannot hold it, and fail there with a 500."""
    if any(NUL in value for _, values in request.args.lists() for value in values):
        abort(400, NUL_REFUSED.format(where="query", written="%00"))
