"""Fixtures: the fakes as real HTTP servers on loopback, a fresh app on a temporary directory per test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sms_bulk_app import create_app
from tests.fakes import FakeMoyKlass, FakeOneClick

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / "moyklass" / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture
def moyklass():
    fake = FakeMoyKlass().start()
    yield fake
    fake.stop()


@pytest.fixture
def oneclick():
    fake = FakeOneClick().start()
    yield fake
    fake.stop()


@pytest.fixture
def settings(tmp_path, moyklass, oneclick) -> dict[str, str]:
    """Settings for an app wired to the fakes; a test may change them before building the app."""
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "API_KEY": moyklass.api_key,
        "MOYKLASS_API_URL": f"http://127.0.0.1:{moyklass.port}/v1",
        "MOYKLASS_RATE_PER_SEC": "1000",
        "SMS_PROVIDER": "oneclick",
        "SMS_API_URL": oneclick.send_url,
        "SMS_USERNAME": oneclick.username,
        "SMS_PASSWORD": oneclick.password,
        "HTTP_TIMEOUT": "2",
    }


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()
