"""A generic HTTP gateway, described by settings instead of code (a school's local gateway).

HTTP_GATEWAY_URL        where to send; may hold placeholders (percent-encoded), e.g. http://gw/send/{id}
HTTP_GATEWAY_METHOD     POST (default) or GET
HTTP_GATEWAY_FORMAT     json, form or query: how BODY travels (default json for POST, query for GET)
HTTP_GATEWAY_BODY       json: a JSON document whose strings hold placeholders, {"to": "{phone}"};
                        form, query: name=value pairs, to={phone_digits}&text={text}
HTTP_GATEWAY_HEADERS    a JSON object or "Name: value; Name2: value"; only {secret} is filled in
HTTP_GATEWAY_SECRET     the key or password, put where {secret} stands: hidden in logs as itself
HTTP_GATEWAY_SUCCESS    path=value (value|value...) in the JSON answer that means accepted,
                        e.g. status=0; unset: any HTTP 2xx
HTTP_GATEWAY_REFERENCE  path of the gateway's message id in the answer, e.g. data.id; unset: {id}
HTTP_GATEWAY_AUTH_ERROR HTTP statuses and path=value answers meaning "credentials refused"
                        (sending pauses), comma-separated; default 401,403

Placeholders: {phone} (+381641234567), {phone_digits} (381641234567), {text}, {sender}, {id} (a new
number per send) and {secret}. Each value is encoded for where it stands: JSON-escaped in a JSON
body, form-encoded in a form or a query, percent-encoded in the URL. A path is keys and list
indexes joined by dots: `messages.0.status`.
"""
from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from http_client import HttpAnswer, KeepAliveClient, Unreachable
from phones import international_digits
from providers.base import Outcome, Provider, SendResult, Setting, Shared

PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
PLACEHOLDERS = frozenset({"phone", "phone_digits", "text", "sender", "id", "secret"})
FORMATS = ("json", "form", "query")
DEFAULT_BODIES = {"json": '{"phone": "{phone}", "text": "{text}", "sender": "{sender}"}',
                  "form": "phone={phone}&text={text}&sender={sender}"}
DEFAULT_BODIES["query"] = DEFAULT_BODIES["form"]
CONTENT_TYPES = {"json": "application/json; charset=utf-8", "form": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Match:
    """`path=value|value` in a JSON answer."""

    path: tuple[str, ...]
    values: frozenset[str]

    @classmethod
    def parse(cls, raw: str) -> Match:
        path, equals, values = raw.partition("=")
        if not equals or not path.strip():
            raise ValueError(f"{raw!r} is not path=value")
        return cls(tuple(path.strip().split(".")), frozenset(v.strip() for v in values.split("|")))

    def found_in(self, answer: Any) -> bool:
        return as_text(lookup(answer, self.path)) in self.values


class HttpGatewayProvider(Provider):
    """Any HTTP gateway, described by HTTP_GATEWAY_* settings (see the module's docstring)."""

    name = "http_gateway"
    settings = (
        Setting("URL", required=True, kind="url", help="may hold placeholders: http://gw/send?to={phone_digits}"),
        Setting("METHOD", default="POST", help="POST or GET"),
        Setting("FORMAT", help="json, form or query (default json for POST, query for GET)"),
        Setting("BODY", help='json: {"to": "{phone}", "message": "{text}"}; form, query: to={phone}&message={text}'),
        Setting("HEADERS", secret=True, help='{"X-Key": "{secret}"} or X-Key: {secret}; Accept: application/json'),
        Setting("SECRET", secret=True, help="what {secret} stands for"),
        Setting("SUCCESS", help="path=value in the JSON answer meaning accepted, e.g. status=0; unset: HTTP 2xx"),
        Setting("REFERENCE", help="path of the gateway's message id in the answer, e.g. data.id"),
        Setting("AUTH_ERROR", default="401,403", help="HTTP statuses and path=value meaning credentials refused"),
    )

    def __init__(self, values: Mapping[str, Any], http: KeepAliveClient):
        """`values` as `from_settings` checked them."""
        self._http = http
        self.method = values["METHOD"]
        self.format = values["FORMAT"]
        parts = urlsplit(values["URL"])
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.body = values["BODY"]
        self.headers = values["HEADERS"]
        self.success = values["SUCCESS"]
        self.reference = values["REFERENCE"]
        self.auth_statuses, self.auth_answers = values["AUTH_ERROR"]
        self._secret = values["SECRET"] or ""
        self._hidden = [s for s in (self._secret, *self.headers.values()) if s]

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> list[str]:
        return check_settings(values)[1]

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], shared: Shared) -> HttpGatewayProvider:
        checked, problems = check_settings(values)
        if problems:
            raise ValueError("; ".join(problems))
        return cls(checked, KeepAliveClient(values["URL"], shared.http_timeouts))

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        our_id = str(secrets.randbits(62) + 1)
        fields = {"phone": phone, "phone_digits": international_digits(phone), "text": text, "sender": sender,
                  "id": our_id, "secret": self._secret}
        target = fill(self.target, fields, lambda value: quote(value, safe=""))
        headers = {name: value.replace("{secret}", self._secret) for name, value in self.headers.items()}
        body = None
        if self.format == "json":
            body = json.dumps(fill_json(self.body, fields), ensure_ascii=False).encode()
        else:
            pairs = urlencode([(name, fill(value, fields, str)) for name, value in self.body])
            if self.format == "form":
                body = pairs.encode()
            else:
                target += ("&" if "?" in target else "?") + pairs
        if body is not None:
            headers.setdefault("Content-Type", CONTENT_TYPES[self.format])
        try:
            response = self._http.request(self.method, target, headers, body)
        except Unreachable as error:
            outcome = Outcome.UNKNOWN if error.reached else Outcome.TRANSIENT
            return SendResult(outcome, code=error.code, message=f"{self.name}: {error}")
        return self._verdict(response, our_id)

    def _verdict(self, response: HttpAnswer, our_id: str) -> SendResult:
        http = response.status
        try:
            answer = response.json()
        except ValueError:
            answer = None
        said = f"{self.name} answered HTTP {http}: {self._excerpt(response.body)}"
        if http in self.auth_statuses or any(match.found_in(answer) for match in self.auth_answers):
            return SendResult(Outcome.AUTH, code=f"http-{http}", message=f"credentials refused; {said}")
        if http == 429 or http >= 500:
            return SendResult(Outcome.TRANSIENT, code=f"http-{http}", message=said)
        if 400 <= http < 500:
            return SendResult(Outcome.REJECTED, code=f"http-{http}", message=said)
        if not 200 <= http < 300:
            return SendResult(Outcome.TRANSIENT, code=f"http-{http}", message=said)
        reference = as_text(lookup(answer, self.reference)) if self.reference and answer is not None else None
        reference = reference if reference not in (None, "null", "") else our_id
        if self.success is None:
            return SendResult(Outcome.SENT, reference=reference, code=str(http), message=said)
        if answer is None:
            return SendResult(Outcome.UNKNOWN, code=f"http-{http}", message=f"no JSON verdict; {said}")
        code = as_text(lookup(answer, self.success.path))
        if self.success.found_in(answer):
            return SendResult(Outcome.SENT, reference=reference, code=code, message=said)
        return SendResult(Outcome.REJECTED, code=code, message=said)

    def _excerpt(self, body: bytes) -> str:
        """The start of an answer, one line, for the journal; the secret and header values hidden."""
        text = body.decode("utf-8", "replace")
        for hidden in self._hidden:
            text = text.replace(hidden, "***")
        return " ".join(text.split())[:200]


def check_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The settings parsed (BODY, HEADERS, SUCCESS, AUTH_ERROR into their forms), and every problem.

    Secret settings are named in problems, never shown."""
    problems: list[str] = []
    checked = dict(values)
    method = checked["METHOD"] = str(values.get("METHOD") or "POST").upper()
    if method not in ("POST", "GET"):
        problems.append(f"HTTP_GATEWAY_METHOD={method!r} must be POST or GET")
    form = checked["FORMAT"] = str(values.get("FORMAT") or ("query" if method == "GET" else "json")).lower()
    if form not in FORMATS:
        problems.append(f"HTTP_GATEWAY_FORMAT={form!r} must be json, form or query")
        form = checked["FORMAT"] = "json"
    if method == "GET" and form != "query":
        problems.append(f"HTTP_GATEWAY_METHOD=GET sends no body: HTTP_GATEWAY_FORMAT must be query, not {form}")
    if urlsplit(values["URL"]).hostname is None or "{" in (urlsplit(values["URL"]).netloc or ""):
        problems.append("HTTP_GATEWAY_URL needs a fixed host (placeholders only in its path and query)")
    problems += _unknown_placeholders("HTTP_GATEWAY_URL", values["URL"])

    raw_body = values.get("BODY") or DEFAULT_BODIES[form]
    try:
        checked["BODY"] = json.loads(raw_body) if form == "json" else parse_qsl(raw_body, keep_blank_values=True,
                                                                               strict_parsing=True)
    except ValueError as error:
        shape = "a JSON document" if form == "json" else "name=value pairs joined by &"
        problems.append(f"HTTP_GATEWAY_BODY must be {shape} for FORMAT={form} ({error})")
        checked["BODY"] = {} if form == "json" else []
    problems += _unknown_placeholders("HTTP_GATEWAY_BODY", raw_body)

    try:
        checked["HEADERS"] = parse_headers(values.get("HEADERS") or "")
    except ValueError as error:
        problems.append(f"HTTP_GATEWAY_HEADERS: {error}")
        checked["HEADERS"] = {}
    if any(set(PLACEHOLDER.findall(value)) - {"secret"} for value in checked["HEADERS"].values()):
        problems.append("HTTP_GATEWAY_HEADERS may hold only the {secret} placeholder")

    try:
        checked["SUCCESS"] = Match.parse(values["SUCCESS"]) if values.get("SUCCESS") else None
    except ValueError as error:
        problems.append(f"HTTP_GATEWAY_SUCCESS: {error}, e.g. status=0")
    checked["REFERENCE"] = tuple(values["REFERENCE"].split(".")) if values.get("REFERENCE") else None
    statuses, answers = set(), []
    for item in filter(None, (part.strip() for part in str(values.get("AUTH_ERROR") or "").split(","))):
        if re.fullmatch(r"[1-5]\d\d", item):
            statuses.add(int(item))
        else:
            try:
                answers.append(Match.parse(item))
            except ValueError as error:
                problems.append(f"HTTP_GATEWAY_AUTH_ERROR: {error} nor an HTTP status")
    checked["AUTH_ERROR"] = (frozenset(statuses), tuple(answers))
    return checked, problems


def parse_headers(raw: str) -> dict[str, str]:
    """A JSON object of strings, or `Name: value; Name2: value`."""
    if raw.lstrip().startswith("{"):
        try:
            headers = json.loads(raw)
        except ValueError:
            raise ValueError("not a JSON object")
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ValueError("a JSON object of strings is needed")
        return headers
    headers = {}
    for item in filter(None, (part.strip() for part in raw.split(";"))):
        name, colon, value = item.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name.strip()):
            raise ValueError("each header is Name: value, separated by ;")
        headers[name.strip()] = value.strip()
    return headers


def fill(template: str, fields: Mapping[str, str], encode: Callable[[str], str]) -> str:
    """`template` with each placeholder replaced by its field, encoded for where it stands."""
    return PLACEHOLDER.sub(lambda found: encode(fields[found.group(1)]), template)


def fill_json(template: Any, fields: Mapping[str, str]) -> Any:
    """A parsed JSON template with the placeholders in its strings filled (json.dumps escapes them)."""
    if isinstance(template, str):
        return fill(template, fields, str)
    if isinstance(template, list):
        return [fill_json(item, fields) for item in template]
    if isinstance(template, dict):
        return {key: fill_json(value, fields) for key, value in template.items()}
    return template


def lookup(answer: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` (keys, list indexes) in a JSON answer; None if there is none."""
    for key in path:
        if isinstance(answer, dict):
            answer = answer.get(key)
        elif isinstance(answer, list) and key.isdigit() and int(key) < len(answer):
            answer = answer[int(key)]
        else:
            return None
    return answer


def as_text(value: Any) -> str:
    """A JSON value as SUCCESS and AUTH_ERROR write it: 0, true, null, queued."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _unknown_placeholders(name: str, template: str) -> list[str]:
    unknown = sorted(set(PLACEHOLDER.findall(template)) - PLACEHOLDERS)
    if not unknown:
        return []
    return [f"{name}: no placeholder {', '.join(f'{{{n}}}' for n in unknown)}; there are"
            f" {', '.join(f'{{{n}}}' for n in sorted(PLACEHOLDERS))}"]
