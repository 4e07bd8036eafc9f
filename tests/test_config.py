"""Settings: embedded defaults, every bad setting reported at once, no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from config import ConfigError, load_config
from tests.conftest import ROOT, running_gunicorn


def test_no_settings_at_all_gives_console_provider_and_local_data(tmp_path):
    config = load_config({"DATA_DIR": str(tmp_path)})
    assert (config.host, config.port, config.sms_provider) == ("127.0.0.1", 5000, "console")
    assert (config.database.engine, config.database.path) == ("sqlite", tmp_path / "sms_bulk_app.db")
    assert config.token_file_path == tmp_path / "token.json"
    assert (config.sms_sender, config.default_region, config.dedup_seconds) == ("SmartLab", "RS", 180)


def test_every_bad_setting_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        load_config({"PORT": "http", "SMS_PROVIDER": "oneclick", "SMS_TEXT": "Hi {surname}",
                     "SMS_TEXT_SUB_LESON_LEFT": "x", "DEFAULT_REGION": "XX", "DEDUP_SECONDS": "-1",
                     "SMS_SENDER": "A very long sender name", "SMS_TRANSLITERATE": "maybe",
                     "MOYKLASS_API_URL": "ftp://x"})
    text = str(caught.value)
    for name in ["PORT", "ONECLICK_USERNAME (or SMS_USERNAME)", "ONECLICK_PASSWORD (or SMS_PASSWORD)", "{surname}",
                 "SMS_TEXT_SUB_LESON_LEFT",
                 "DEFAULT_REGION", "DEDUP_SECONDS", "SMS_SENDER", "SMS_TRANSLITERATE", "MOYKLASS_API_URL"]:
        assert name in text
    assert len(caught.value.problems) == 10


def test_provider_settings_are_read_by_the_pattern_and_the_first_release_names_still_work():
    new = load_config({"SMS_PROVIDERS": "oneclick", "ONECLICK_USERNAME": "school", "ONECLICK_PASSWORD": "pw-1",
                       "ONECLICK_API_URL": "http://127.0.0.1:9/SendMsg.aspx/"})
    old = load_config({"SMS_PROVIDER": "oneclick", "SMS_USERNAME": "school", "SMS_PASSWORD": "pw-1",
                       "SMS_API_URL": "http://127.0.0.1:9/SendMsg.aspx"})
    expected = {"USERNAME": "school", "PASSWORD": "pw-1", "API_URL": "http://127.0.0.1:9/SendMsg.aspx",
                "RATE_PER_SEC": 0.0, "CONCURRENCY": 16, "PRICE_PER_PART": 0.0, "CURRENCY": ""}  # common: defaults
    assert new.provider_settings == old.provider_settings == {"oneclick": expected}
    assert new.sms_providers == old.sms_providers == ("oneclick",)
    assert "pw-1" in new.secrets() and "school" not in new.secrets()


def test_bad_provider_settings_are_named_without_their_secret_values():
    with pytest.raises(ConfigError) as caught:
        load_config({"SMS_PROVIDERS": "oneclick, pigeon, oneclick", "ONECLICK_PASSWORD": "pw-1",
                     "ONECLICK_API_URL": "gopher://x"})
    assert sorted(caught.value.problems) == [
        "ONECLICK_API_URL='gopher://x' is not an http(s) URL",
        "ONECLICK_USERNAME (or SMS_USERNAME) is required when oneclick is used",
        "SMS_PROVIDERS='oneclick, pigeon, oneclick' names a provider twice",
        "no provider 'pigeon': choose from console, oneclick, twilio, smsaero, probe, http_gateway, smpp,"
        " android"]


def test_nan_and_infinity_are_not_numbers():
    """float() takes them: DATABASE_TIMEOUT=nan crashed the CLI, HTTP_TIMEOUT=nan passed the lease check."""
    with pytest.raises(ConfigError) as caught:
        load_config({"DATABASE_TIMEOUT": "nan", "HTTP_TIMEOUT": "NaN", "WORKER_LEASE_SECONDS": "inf",
                     "WEBHOOK_SYNC_WAIT_SECONDS": "-inf", "SMS_RETRY_BASE_SECONDS": "Infinity"})
    assert sorted(caught.value.problems) == [
        "DATABASE_TIMEOUT='nan' is not a number", "HTTP_TIMEOUT='NaN' is not a number",
        "SMS_RETRY_BASE_SECONDS='Infinity' is not a number", "WEBHOOK_SYNC_WAIT_SECONDS='-inf' is not a number",
        "WORKER_LEASE_SECONDS='inf' is not a number"]


def test_secrets_stay_out_of_the_config_repr():
    config = load_config({"API_KEY": "key-123456", "SMS_PASSWORD": "pw-123456",
                          "WEBHOOK_SECRET": "hook-123456"})
    assert not any(s in repr(config) for s in ("key-123456", "pw-123456", "hook-123456"))


BAD_ENV = {"PORT": "abc", "SMS_TEXT": "Hello {nme}", "SMS_PROVIDER": "oneclick"}


@pytest.mark.parametrize("command", [
    [sys.executable, str(ROOT / "sms_bulk_app.py")],
    [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "sms_bulk_app:create_app()"],
])
def test_bad_settings_stop_startup_with_one_clear_message(tmp_path, command):
    result = subprocess.run(command, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **BAD_ENV},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("SMSBulkApp cannot start") == 1
    for name in ["PORT", "{nme}", "SMS_USERNAME", "SMS_PASSWORD"]:
        assert name in result.stderr


def test_dotenv_file_in_the_working_directory_is_read(tmp_path):
    (tmp_path / ".env").write_text("PORT=notaport\n")
    result = subprocess.run([sys.executable, str(ROOT / "sms_bulk_app.py")], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "PORT='notaport'" in result.stderr


def test_embedded_defaults_start_and_warn_loudly(tmp_path):
    """No settings at all: gunicorn starts on ./data with the console provider, webhooks get 503."""
    import requests

    settings = {"DATA_DIR": str(tmp_path / "data")}
    with running_gunicorn(settings, workers=1) as base_url:
        health = requests.get(f"{base_url}/health", timeout=5)
        webhook = requests.post(f"{base_url}/webhook", json={"object": {"userId": 1}}, timeout=5)
    assert health.json()["provider"] == "console"
    assert webhook.status_code == 503 and "API_KEY" in webhook.json()["message"]
    log_text = (tmp_path / "data" / "sms_bulk_app.log").read_text()
    assert "SMS_PROVIDER=console: no SMS will be sent" in log_text
    assert "WEBHOOK_SECRET is not set" in log_text


def test_database_url_selects_postgresql_and_its_password_is_a_secret(tmp_path):
    config = load_config({"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://sms:pg-s3cret@db.internal/sms"})
    assert (config.database.engine, config.database.url) == ("postgresql", "postgresql://sms:pg-s3cret@db.internal/sms")
    assert "pg-s3cret" in config.secrets()
    assert "pg-s3cret" not in repr(config)


def test_a_bad_database_url_is_named_without_echoing_it(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config({"DATA_DIR": str(tmp_path), "DATABASE_URL": "mysql://sms:pg-s3cret@db/sms"})
    assert "DATABASE_URL must start with sqlite:/// or postgresql://" in str(caught.value)
    assert "pg-s3cret" not in str(caught.value)
