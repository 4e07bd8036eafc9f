"""The command line, called in-process through cli.main with the settings in the environment."""
from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import cli
import clients
from store import QUEUED
from tests.conftest import command, command_env, input_only, run_command, settings_store

CliResult = tuple[int, str, str]


@pytest.fixture
def run_cli(settings, tmp_path, monkeypatch, capsys) -> Callable[..., CliResult]:
    """`python sms_bulk_app.py ARGS` in this process: (exit status, stdout, stderr)."""
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> CliResult:
        status = cli.main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_cli_errors_are_clear_and_exit_non_zero(run_cli):
    bad_phone = run_cli("send", "--phone", "12", "--text", "x")
    assert bad_phone[0] == 1 and "not a valid phone number" in bad_phone[2]
    no_text = run_cli("send", "--phone", "0641234567")
    assert no_text[0] == 2 and "--phone needs --text" in no_text[2]
    bad_since = run_cli("retry-failed", "--since", "yesterday")
    assert bad_since[0] == 2 and "not a date" in bad_since[2]
    unknown = run_cli("launch")
    assert unknown[0] == 2 and "invalid choice" in unknown[2]
    for _, _, stderr in (bad_phone, no_text, bad_since, unknown):
        assert "Traceback" not in stderr


def test_send_with_a_phone_refuses_event_and_shows_the_send_usage(run_cli):
    status, stdout, stderr = run_cli("send", "--phone", "0641234567", "--text", "x", "--event", "user_birthday")
    assert (status, stdout) == (2, "")
    assert stderr.startswith("usage: sms_bulk_app.py send ")
    assert stderr.splitlines()[-1] == "sms_bulk_app.py send: error: --event goes with --user-id, not with --phone"
    assert run_cli("status")[1].splitlines()[0] == "QUEUED       0"  # nothing was queued


def test_send_without_text_shows_the_send_usage(run_cli):
    status, _, stderr = run_cli("send", "--phone", "0641234567")
    assert status == 2
    assert stderr.startswith("usage: sms_bulk_app.py send ")
    assert stderr.splitlines()[-1] == "sms_bulk_app.py send: error: --phone needs --text"


def test_send_with_an_unknown_event_is_refused(run_cli):
    status, _, stderr = run_cli("send", "--user-id", "5", "--event", "sub_lesons_left")
    assert status == 2
    assert stderr.splitlines()[-1] == ("sms_bulk_app.py send: error: argument --event: 'sub_lesons_left' "
                                       "is not a MoyKlass event")


def test_an_invalid_phone_is_shown_as_the_operator_typed_it(run_cli):
    assert run_cli("send", "--phone", "12345", "--text", "x") == \
        (1, "", "send: '12345' is not a valid phone number (default region RS)\n")


def test_a_text_longer_than_the_provider_takes_is_refused(run_cli):
    """Before, it was queued and then FAILED in the worker."""
    assert run_cli("send", "--phone", "0641234567", "--text", "ж" * 1000) == \
        (1, "", "send: the text needs 15 SMS parts; the SMS provider takes at most 6\n")
    assert run_cli("status")[1].splitlines()[0] == "QUEUED       0"


@pytest.mark.parametrize("phone, reason", [
    ("011-123-4567", "is a landline number: it cannot receive SMS"),
    ("0800 123456", "is a toll-free number: it cannot receive SMS"),
])
def test_a_number_that_cannot_receive_sms_is_refused_with_its_reason_as_typed(run_cli, phone, reason):
    assert run_cli("send", "--phone", phone, "--text", "x") == (1, "", f"send: {phone!r} {reason}\n")
    assert run_cli("status")[1].splitlines()[0] == "QUEUED       0"


@input_only
@pytest.mark.parametrize("content, reason", [
    (None, "the header has no phone column"),  # /dev/null
    (b"", "the header has no phone column"),
    (b"name,tags\nAna,a\n", "the header has no phone column"),
    (b'phone,"name\n0641000001,Ana\n', "malformed CSV: a quote is not closed on this line (a row is one line)"),
])
def test_import_clients_exits_1_when_the_file_is_no_client_csv(run_cli, tmp_path, content, reason):
    path = Path("/dev/null") if content is None else tmp_path / "clients.csv"
    if content is not None:
        path.write_bytes(content)
    assert run_cli("import-clients", str(path)) == (1, "", f"import-clients: {path}: {reason}\n")


def test_import_clients_exits_0_when_only_some_rows_are_rejected(run_cli, tmp_path):
    path = tmp_path / "clients.csv"
    path.write_bytes(b"phone,name\n0641000001,Ana\n12,Broj\n")
    status, stdout, _ = run_cli("import-clients", str(path))
    assert (status, stdout.splitlines()[0], stdout.splitlines()[-1]) == (
        0, "1 created, 0 updated, 1 rejected", "  line 3: phone: ** is not a valid phone number (default region RS)")


@pytest.mark.parametrize("value", ["99999999999999999999999", "0", "-3", "²", "9223372036854775808"])
def test_ids_are_bounded_to_what_the_database_holds(run_cli, value):
    status, stdout, stderr = run_cli("send", "--user-id", value)
    assert (status, stdout) == (2, "")
    assert stderr.splitlines()[-1] == (f"sms_bulk_app.py send: error: argument --user-id: {value!r} "
                                       "is not a whole number from 1 to 9223372036854775807")


def test_the_largest_id_the_database_holds_is_accepted(run_cli):
    assert run_cli("send", "--user-id", "9223372036854775807") == (0, "queued as message 1\n", "")


def test_a_settings_error_is_one_line(run_cli, monkeypatch):
    monkeypatch.setenv("PORT", "abc")
    monkeypatch.setenv("SMS_TEXT", "Hello {nme}")
    status, stdout, stderr = run_cli("status")
    assert (status, stdout) == (2, "")
    assert stderr.count("\n") == 1 and stderr.startswith("SMSBulkApp cannot start: fix these settings")
    assert "PORT='abc' is not a whole number" in stderr and "{nme}" in stderr


@input_only
@pytest.mark.parametrize("name", ["localtime", "Factory", "posixrules"])
def test_a_default_timezone_that_is_no_iana_zone_is_a_settings_error(run_cli, monkeypatch, name):
    monkeypatch.setenv("DEFAULT_TIMEZONE", name)
    status, stdout, stderr = run_cli("status")
    assert (status, stdout) == (2, "")
    assert f"DEFAULT_TIMEZONE={name!r} is not an IANA time zone such as Europe/Belgrade" in stderr


def test_import_clients_help_lists_the_csv_columns(run_cli):
    status, stdout, _ = run_cli("import-clients", "--help")
    assert status == 0
    columns = stdout[stdout.index("CSV columns"):].splitlines()[1:]
    assert [line.split()[0] for line in columns if line.strip()] == list(clients.CSV_COLUMNS)
    assert "required" in columns[0] and "separated by ;" in stdout


@pytest.mark.parametrize("reader, shown", [("head -1", "QUEUED       0\n"), ("true", "")])
def test_status_piped_into_a_reader_that_leaves_stops_quietly(settings, tmp_path, reader, shown):
    """`status | head -1`: head leaves after one line, `true` before the first; the rest finds the pipe closed.

    Whether head leaves before the last line is written is a race, so its exit status may be 0;
    `true` always leaves first.
    """
    run_command(settings, "status")  # creates the database, so the pipeline below only reads
    pipeline = f"{shlex.join(command(settings, 'status'))} | {reader}; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", pipeline], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env=command_env(settings) | {"PYTHONUNBUFFERED": "1"})
    assert (result.stdout, result.stderr) == (shown, "")
    assert result.returncode == 1 or (reader == "head -1" and result.returncode == 0)


def test_serve_on_a_taken_port_exits_before_claiming_anything(worker_settings, oneclick, tmp_path):
    queued = run_command(worker_settings, "send", "--phone", "0641234567", "--text", "ne sme da ode")
    assert queued.returncode == 0, queued.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = worker_settings | {"HOST": "127.0.0.1", "PORT": str(port)}
        result = subprocess.run(command(settings), cwd=tmp_path, env=command_env(settings), capture_output=True,
                                text=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[-1] == \
        f"SMSBulkApp cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in result.stderr
    time.sleep(0.5)  # a send already under way would reach the fake gateway by now
    store = settings_store(worker_settings)
    assert (store.message(1)["status"], store.message(1)["attempts"], oneclick.messages) == (QUEUED, 0, [])
