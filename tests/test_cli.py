"""The command line, called in-process through cli.main with the settings in the environment."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import cli

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
