"""MoyKlassClient's batch user lookup, lessons and user cache against the fake MoyKlass over HTTP, and
both held to MoyKlass' published spec (the subset the service uses, in tests/fixtures)."""
from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote, unquote_plus

import pytest
import requests

from config import ConfigError, load_config
from locks import SharedRateLimiter, WouldWait
from moyklass import (
    LessonNotFound,
    MoyKlassClient,
    MoyKlassError,
    UserCache,
    UserNotFound,
    template_fields,
)
from phones import to_e164
from sms_bulk_app import create_app
from tests.conftest import FIXTURES, load_fixture
from tests.fakes import moyklass_lesson, moyklass_user, numbered_phone
from tests.openapi_subset import SpecSubset
from token_store import FileTokenKeeper

SUBSET = SpecSubset(FIXTURES / "moyklass-openapi-subset.json", "MoyKlass")
SPEC = SUBSET.document
INT_RANGES = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}


def make_client(moyklass, tmp_path, cache_seconds: float = 300) -> MoyKlassClient:
    """The client as build_services makes it, with no rate limit of its own: the fake's 7/s is the one."""
    url = f"http://127.0.0.1:{moyklass.port}/v1"
    return MoyKlassClient(url, moyklass.api_key, FileTokenKeeper(tmp_path / "token.json"),
                          SharedRateLimiter(tmp_path / "moyklass.rate", 1000), (3.05, 5.0),
                          cache_seconds)


def batches(moyklass) -> list[list[int]]:
    """The userIds of every batch lookup the fake answered, in order."""
    return [[int(i) for i in re.search(r"(?:^|&)userIds=([^&]*)", r["query"]).group(1).split(",")]
            for r in moyklass.received if r["path"] == "/v1/company/users" and r["status"] == 200]


def token(moyklass) -> str:
    return requests.post(f"http://127.0.0.1:{moyklass.port}/v1/company/auth/getToken",
                         json={"apiKey": moyklass.api_key}, timeout=5).json()["accessToken"]


# --- The spec: resolving references, checking requests and answers, its example answers ------------

def scalar_problems(schema: dict[str, Any], text: str) -> list[str]:
    """Whether one value as sent in a URL is of the schema's type and within its bounds."""
    kind = schema.get("type")
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", text):
            return [f"{text!r} is not an integer"]
        low, high = INT_RANGES.get(schema.get("format", "int64"), INT_RANGES["int64"])
        low, high = max(low, schema.get("minimum", low)), min(high, schema.get("maximum", high))
        return [] if low <= int(text) <= high else [f"{text} is not within {low}..{high}"]
    if kind == "boolean":
        return [] if text in ("true", "false") else [f"{text!r} is not true or false"]
    if kind == "string":
        problems = [f"{text!r} is not one of {schema['enum']}"] if text not in schema.get("enum", [text]) else []
        return problems + ([f"{text!r} is too long"] if len(text) > schema.get("maxLength", len(text)) else [])
    return [f"the test cannot check a value of {schema}"]


def parameter_problems(parameter: dict[str, Any], raw_values: list[str]) -> list[str]:
    """A query parameter's values as sent (still percent-encoded), in the parameter's declared style:
    an array of style form with explode false is one comma list whose commas are literal."""
    schema = SUBSET.resolve(parameter["schema"])
    if schema.get("type") != "array":
        if len(raw_values) > 1:
            return ["given more than once"]
        return scalar_problems(schema, unquote_plus(raw_values[0]))
    style = parameter.get("style", "form")
    explode = parameter.get("explode", style == "form")
    if style != "form":
        return [f"the test cannot check style {style}"]
    if explode:
        items = [unquote_plus(value) for value in raw_values]
    elif len(raw_values) > 1:
        return ["given more than once, but declared explode: false (one comma list)"]
    else:
        items = [unquote_plus(item) for item in raw_values[0].split(",")]
    problems = [f"{len(items)} items, more than {schema['maxItems']}"] if len(items) > schema.get(
        "maxItems", len(items)) else []
    return problems + [p for item in items for p in scalar_problems(SUBSET.resolve(schema["items"]), item)]


def request_problems(request: dict[str, Any]) -> list[str]:
    """Everything in one request the fake received that MoyKlass' spec does not allow."""
    operation, path_values = SUBSET.operation_for(request["method"], request["path"])
    parameters = {(p["in"], p["name"]): p for p in map(SUBSET.resolve, operation.get("parameters", []))}
    problems = [f"path {name}: {problem}" for name, value in path_values.items()
                for problem in scalar_problems(SUBSET.resolve(parameters[("path", name)]["schema"]), unquote(value))]
    given: dict[str, list[str]] = {}
    for pair in filter(None, request["query"].split("&")):
        name, _, value = pair.partition("=")
        given.setdefault(unquote_plus(name), []).append(value)
    for name, values in given.items():
        parameter = parameters.get(("query", name))
        if parameter is None:
            problems.append(f"query {name} is not a parameter of this operation")
        else:
            problems += [f"query {name}: {problem}" for problem in parameter_problems(parameter, values)]
    problems += [f"required {where} parameter {name} is missing" for (where, name), p in parameters.items()
                 if p.get("required") and where == "query" and name not in given]
    headers = {name.lower(): value for name, value in request["headers"].items()}
    for requirement in operation.get("security", SPEC["security"]):
        for scheme in map(SPEC["components"]["securitySchemes"].get, requirement):
            if scheme["in"] == "header" and not headers.get(scheme["name"].lower()):
                problems.append(f"header {scheme['name']} is missing")
    body = operation.get("requestBody")
    if body:
        if not headers.get("content-type", "").startswith("application/json"):
            problems.append("the body is not sent as application/json")
        problems += [f"body: {p}" for p in answer_problems(body["content"]["application/json"]["schema"],
                                                           request["body"])]
    return problems


TYPES = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "array": list, "object": dict}


def answer_problems(schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """Whether a JSON value has the schema's required fields and declared types (enough to tell a fake's
    answer from one MoyKlass could not give; formats and patterns are not checked)."""
    nullable = schema.get("nullable", False)
    schema = SUBSET.resolve(schema)
    if value is None:
        return [] if nullable or schema.get("nullable") else [f"{where or 'the value'} is null"]
    if "allOf" in schema:
        return [p for part in schema["allOf"] for p in answer_problems(part, value, where)]
    if "anyOf" in schema or "oneOf" in schema:
        options = [answer_problems(part, value, where) for part in schema.get("anyOf") or schema["oneOf"]]
        return [] if [] in options else min(options, key=len)
    kind = schema.get("type") or ("object" if "properties" in schema else None)
    if kind and (not isinstance(value, TYPES[kind]) or isinstance(value, bool) and kind in ("integer", "number")):
        return [f"{where or 'the value'} is not of type {kind}: {value!r}"]
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in answer_problems(schema["items"], item, f"{where}[{i}]")]
    if isinstance(value, dict):
        problems = [f"{where}.{name} is missing" for name in schema.get("required", []) if name not in value]
        for name, field in schema.get("properties", {}).items():
            if name in value:
                problems += answer_problems(field, value[name], f"{where}.{name}")
        return problems
    return []


def example(schema: dict[str, Any], nulls: bool = False, depth: int = 0) -> Any:
    """The answer the spec's own examples make for a schema (as its published docs show them);
    `nulls`: every nullable field null."""
    if nulls and schema.get("nullable"):
        return None
    schema = SUBSET.resolve(schema)
    if nulls and schema.get("nullable"):
        return None
    if depth > 10:
        return None
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = example(part, nulls, depth + 1)
            merged.update(value if isinstance(value, dict) else {})
        return merged
    if "anyOf" in schema or "oneOf" in schema:
        return example((schema.get("anyOf") or schema["oneOf"])[0], nulls, depth + 1)
    if "example" in schema:
        return schema["example"]
    if "properties" in schema:
        return {name: example(field, nulls, depth + 1) for name, field in schema["properties"].items()}
    if schema.get("type") == "array":
        return [example(schema["items"], nulls, depth + 1)]
    return schema.get("default", {"string": "", "integer": 0, "number": 0, "boolean": False}.get(schema.get("type")))


def answer_schema(path: str, method: str = "get") -> dict[str, Any]:
    return SPEC["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]


# --- Conformance ------------------------------------------------------------------------------------

def test_every_request_the_client_sends_is_one_the_spec_declares(moyklass, tmp_path):
    moyklass.numbered_users = 240
    moyklass.add_lesson(42, "2026-03-02", "17:30", "Robotika", records=[{"userId": 1}, {"userId": 2}])
    client = make_client(moyklass, tmp_path, cache_seconds=0)

    client.get_user(7)
    assert len(client.get_users(list(range(1, 251)))) == 240
    client.get_lesson(42)
    moyklass.revoke_all_tokens()  # the next call is refused 401: a second token is fetched
    with pytest.raises(UserNotFound):
        client.get_user(999)

    received = [(r["method"], r["path"]) for r in moyklass.received]
    assert [r["status"] for r in moyklass.received if r["path"] == "/v1/company/auth/getToken"].count(200) == 2
    assert {path for _, path in received} == {"/v1/company/auth/getToken", "/v1/company/users",
                                              "/v1/company/users/7", "/v1/company/users/999",
                                              "/v1/company/lessons/42"}
    problems = {f"{r['method']} {r['path']}?{r['query']}": request_problems(r) for r in moyklass.received}
    assert {request: found for request, found in problems.items() if found} == {}


def test_the_conformance_check_refuses_what_the_spec_does_not_allow():
    def check(method: str, path: str, query: str = "", headers: dict | None = None, body: Any = None) -> list[str]:
        return request_problems({"method": method, "path": path, "query": query, "body": body,
                                 "headers": {"x-access-token": "t"} if headers is None else headers})

    assert check("GET", "/v1/company/users", "userIds=1,2&limit=2") == []
    assert check("GET", "/v1/company/users", "userIds=1&userIds=2") != []  # explode: false
    assert check("GET", "/v1/company/users", "userIds=1%2C2") != []  # an encoded comma is no delimiter
    assert check("GET", "/v1/company/users", "userIds=" + ",".join(map(str, range(101)))) != []  # maxItems
    assert check("GET", "/v1/company/users", "userIds=2147483648") != []  # int32
    assert check("GET", "/v1/company/users", "limit=501") != [] and check("GET", "/v1/company/users", "ids=1") != []
    assert check("GET", "/v1/company/users/1", headers={}) == ["header x-access-token is missing"]
    assert check("GET", "/v1/company/lessons/1", "includeRecords=True") != []  # Python's bool, not JSON's
    assert check("POST", "/v1/company/auth/getToken", headers={"Content-Type": "application/json"},
                 body={"apiKey": "k"}) == []
    assert check("POST", "/v1/company/auth/getToken", headers={"Content-Type": "application/json"}, body={}) != []
    with pytest.raises(LookupError):
        check("GET", "/v1/company/lessons")


def test_the_fakes_answers_are_shaped_as_the_spec_says(moyklass):
    moyklass.add_user(5, "381641234567")
    moyklass.add_lesson(42, "2026-03-02", "17:30", "Robotika",
                        records=[{"userId": 5, "visit": True}, {"userId": 6, "test": True}])
    headers = {"x-access-token": token(moyklass)}
    base = f"http://127.0.0.1:{moyklass.port}/v1/company"

    token_answer = requests.post(f"{base}/auth/getToken", json={"apiKey": moyklass.api_key}, timeout=5).json()
    user = requests.get(f"{base}/users/5", headers=headers, timeout=5).json()
    users = requests.get(f"{base}/users?userIds=5,6&limit=2", headers=headers, timeout=5).json()
    lesson = requests.get(f"{base}/lessons/42?includeRecords=true", headers=headers, timeout=5).json()

    assert answer_problems(answer_schema("/v1/company/auth/getToken", "post"), token_answer) == []
    assert answer_problems(answer_schema("/v1/company/users/{userId}"), user) == []
    assert answer_problems(answer_schema("/v1/company/users"), users) == []
    assert answer_problems(answer_schema("/v1/company/lessons/{lessonId}"), lesson) == []
    assert [(r["userId"], r["visit"], r["test"], r["free"], r["skip"]) for r in lesson["records"]] == [
        (5, True, False, False, False), (6, False, True, False, False)]
    assert answer_problems(answer_schema("/v1/company/users/{userId}"), moyklass_user(1, None)) == []
    assert answer_problems(answer_schema("/v1/company/lessons/{lessonId}"),
                           moyklass_lesson(1, "2026-03-02", "23:30")) == []
    assert answer_problems(answer_schema("/v1/company/users/{userId}"), {"name": 5}) == [
        ".name is not of type string: 5"]


@pytest.mark.parametrize("nulls", [False, True], ids=["examples", "nullable-fields-null"])
def test_the_client_accepts_the_specs_own_example_answers(moyklass, tmp_path, nulls):
    client = make_client(moyklass, tmp_path, cache_seconds=0)
    user = example(answer_schema("/v1/company/users/{userId}"), nulls)
    listed = example(answer_schema("/v1/company/users"), nulls)["users"][0]
    lesson = example(answer_schema("/v1/company/lessons/{lessonId}"), nulls)
    assert (user["id"], listed["id"], user["phone"], lesson["records"][0]["userId"]) == (
        123456, 123456, None if nulls else 79001234567, 300)  # the spec's phone is a JSON number

    moyklass.users[123456] = user
    got = client.get_user(123456)
    moyklass.users[123456] = listed
    got_listed = client.get_users([123456])[123456]
    moyklass.lessons[1] = lesson

    assert client.get_lesson(1) == lesson
    for answer, sent in ((got, user), (got_listed, listed)):
        assert answer == {**sent, "phone": None if nulls else "79001234567"}
        assert template_fields(answer) == {"name": "Иванов Петр Александрович", "first_name": "Иванов",
                                           "user_id": 123456, "email": "" if nulls else "ivanov@site.com",
                                           "balans": 100}
    if not nulls:
        assert to_e164(got["phone"], "RS") == "+79001234567"


# --- get_users ----------------------------------------------------------------------------------------

def test_250_ids_are_looked_up_in_3_calls_of_at_most_100_and_missing_ones_are_absent(moyklass, tmp_path):
    moyklass.numbered_users = 240
    client = make_client(moyklass, tmp_path)

    users = client.get_users(list(range(1, 251)))

    assert sorted(users) == list(range(1, 241))
    assert all(users[i]["id"] == i and users[i]["phone"] == numbered_phone(i) for i in users)
    assert batches(moyklass) == [list(range(1, 101)), list(range(101, 201)), list(range(201, 251))]
    assert [re.search(r"limit=(\d+)", r["query"]).group(1) for r in moyklass.received
            if r["path"] == "/v1/company/users"] == ["100", "100", "50"]


def test_get_users_asks_once_per_id_and_never_for_ids_moyklass_cannot_have(moyklass, tmp_path):
    moyklass.add_user(5, "381641234567")
    client = make_client(moyklass, tmp_path)

    assert client.get_users([]) == {} and moyklass.received == []
    assert list(client.get_users([5, 5, -1, 2**31, 6])) == [5]
    assert batches(moyklass) == [[5, 6]]


def test_the_fake_refuses_user_ids_encoded_otherwise_than_the_spec_says(moyklass):
    headers = {"x-access-token": token(moyklass)}
    url = f"http://127.0.0.1:{moyklass.port}/v1/company/users"
    for query in ("userIds=1&userIds=2", "userIds=1;2", "userIds=" + ",".join(map(str, range(1, 102))),
                  "userIds=2147483648"):
        response = requests.get(f"{url}?{query}", headers=headers, timeout=5)
        assert response.status_code == 400, query
        assert response.json()["code"] == "RequestValidationError"
    assert requests.get(f"{url}?userIds=1,2", headers=headers, timeout=5).status_code == 200


def test_a_phone_given_as_a_json_number_becomes_its_digits(moyklass, oneclick, settings, tmp_path):
    moyklass.add_user(7, "381641234567", name="Ana Ilić", phone_as_number=True)
    moyklass.add_user(8, "381641234568", phone_as_number=True)
    user = make_client(moyklass, tmp_path / "a").get_user(7)
    assert moyklass.users[7]["phone"] == 381641234567 and user["phone"] == "381641234567"
    assert make_client(moyklass, tmp_path / "b").get_users([7, 8])[8]["phone"] == "381641234568"

    payload = load_fixture("sub_lessons_left")
    payload["object"]["userId"] = 7
    response = create_app(settings).test_client().post("/webhook", json=payload)

    assert response.status_code == 200, response.get_json()
    sent = [(m["phone"], m["message"].split(",")[0]) for m in oneclick.messages]
    assert sent == [("381641234567", "Poštovani Ana Ilić")]


# --- get_lesson ---------------------------------------------------------------------------------------

def test_get_lesson_answers_the_lesson_with_its_records(moyklass, tmp_path):
    moyklass.add_lesson(42, "2026-03-02", "17:30", "Robotika",
                        records=[{"userId": 1, "visit": True}, {"userId": 2, "free": True}])
    lesson = make_client(moyklass, tmp_path).get_lesson(42)

    assert (lesson["id"], lesson["date"], lesson["beginTime"], lesson["endTime"], lesson["topic"]) == (
        42, "2026-03-02", "17:30", "18:15", "Robotika")
    assert [(r["userId"], r["lessonId"], r["visit"], r["free"]) for r in lesson["records"]] == [
        (1, 42, True, False), (2, 42, False, True)]
    assert [r["query"] for r in moyklass.received if r["path"] == "/v1/company/lessons/42"] == ["includeRecords=true"]


def test_a_lesson_moyklass_does_not_have_is_lesson_not_found_asked_once(moyklass, tmp_path):
    with pytest.raises(LessonNotFound, match="no lesson 43") as raised:
        make_client(moyklass, tmp_path).get_lesson(43)
    assert isinstance(raised.value, MoyKlassError)
    assert moyklass.lesson_calls == 1


# --- The cache ----------------------------------------------------------------------------------------

def test_a_user_looked_up_again_within_user_cache_seconds_costs_no_call(moyklass, tmp_path):
    moyklass.numbered_users = 10
    client = make_client(moyklass, tmp_path, cache_seconds=300)

    first = client.get_user(1)
    first["phone"] = "changed by the caller"
    assert client.get_user(1)["phone"] == numbered_phone(1)  # the cache keeps its own copy
    assert moyklass.user_calls == 1
    assert sorted(client.get_users([1, 2, 3])) == [1, 2, 3]
    assert batches(moyklass) == [[2, 3]]
    assert client.get_user(3)["id"] == 3 and client.get_users([1, 2, 3]).keys() == {1, 2, 3}
    assert moyklass.user_calls == 2


def test_after_user_cache_seconds_a_user_is_asked_for_once_again(moyklass, tmp_path):
    moyklass.numbered_users = 10
    client = make_client(moyklass, tmp_path, cache_seconds=0.3)
    client.get_user(1)
    client.get_users([2])
    time.sleep(0.35)

    client.get_user(1)
    client.get_user(1)
    client.get_users([2])
    client.get_users([2])

    assert moyklass.user_calls == 4
    assert batches(moyklass) == [[2], [2]]


def test_user_cache_seconds_0_asks_moyklass_every_time(moyklass, tmp_path):
    moyklass.numbered_users = 10
    client = make_client(moyklass, tmp_path, cache_seconds=0)
    for _ in range(2):
        client.get_user(1)
        client.get_users([1, 2])
    assert moyklass.user_calls == 4


def test_the_cache_keeps_at_most_max_users_dropping_the_oldest():
    cache = UserCache(60, max_users=2)
    for user_id in (1, 2, 3):
        cache.put(user_id, {"id": user_id})
    cache.put(2, {"id": 2, "name": "again"})
    cache.put(4, {"id": 4})
    assert [cache.get(user_id) for user_id in (1, 2, 3, 4)] == [None, {"id": 2, "name": "again"}, None, {"id": 4}]


def test_user_cache_seconds_is_read_checked_and_given_to_the_client(settings):
    assert load_config({}).user_cache_seconds == 300
    assert load_config({"USER_CACHE_SECONDS": "0"}).user_cache_seconds == 0
    for bad in ("-1", "5m", "86401"):
        with pytest.raises(ConfigError, match="USER_CACHE_SECONDS"):
            load_config({"USER_CACHE_SECONDS": bad})
    app = create_app({**settings, "USER_CACHE_SECONDS": "42"})
    assert app.extensions["sms_bulk_app"].dispatcher.moyklass.user_cache.seconds == 42


# --- MoyKlass' rate limit -------------------------------------------------------------------------------

def test_a_429_past_7_requests_a_second_is_waited_out_and_nothing_is_lost(moyklass, tmp_path):
    moyklass.numbered_users = 1000
    moyklass.add_lesson(42, "2026-03-02", "17:30", records=[{"userId": 1}])
    client = make_client(moyklass, tmp_path, cache_seconds=0)

    users = client.get_users(list(range(1, 1001)))
    lesson = client.get_lesson(42)

    assert sorted(users) == list(range(1, 1001)) and lesson["records"][0]["userId"] == 1
    statuses = [r["status"] for r in moyklass.received]
    assert statuses.count(429) >= 1 and statuses.count(200) == 1 + 10 + 1  # token, 10 batches, the lesson
    assert sorted(i for batch in batches(moyklass) for i in batch) == list(range(1, 1001))


@pytest.mark.parametrize("call", ["get_users", "get_lesson"])
def test_a_retry_that_would_end_past_give_up_at_raises_would_wait(moyklass, tmp_path, call):
    moyklass.numbered_users = 10
    moyklass.add_lesson(42, "2026-03-02", "17:30")
    client = make_client(moyklass, tmp_path)
    client.tokens.get()
    moyklass.fail_next = [429]  # Retry-After: 1

    with pytest.raises(WouldWait):
        getattr(client, call)([1] if call == "get_users" else 42, give_up_at=time.monotonic() + 0.2)
