"""`python -m tests.fakes`: both fakes for trying the service by hand, with what they received on view."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from tests.conftest import FIXTURES, ROOT, free_port, running_gunicorn, running_worker, wait_until
from tests.fakes import FakeOneClick, numbered_phone


def fakes_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.fakes", *args]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def running_fakes(moyklass_port: int, oneclick_port: int, *args: str) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(fakes_command("--moyklass-port", str(moyklass_port), "--oneclick-port",
                                             str(oneclick_port), *args), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]})
    try:
        wait_until(lambda: process.poll() is not None or (listening(moyklass_port) and listening(oneclick_port)),
                   what="the fakes")
        assert process.poll() is None, process.communicate()
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


def test_both_fakes_run_by_default_and_show_what_they_received(tmp_path):
    moyklass_port, oneclick_port = free_port(), free_port()
    settings = {"DATA_DIR": str(tmp_path / "data"), "API_KEY": "test-api-key",
                "MOYKLASS_API_URL": f"http://127.0.0.1:{moyklass_port}/v1", "SMS_PROVIDER": "oneclick",
                "SMS_API_URL": f"http://127.0.0.1:{oneclick_port}{FakeOneClick.SEND_PATH}",
                "SMS_USERNAME": "smartlab", "SMS_PASSWORD": "oneclick-pass"}
    with running_fakes(moyklass_port, oneclick_port) as fakes, running_gunicorn(settings, workers=1) as base_url:
        webhook = requests.post(f"{base_url}/webhook", timeout=10,
                                data=(FIXTURES / "moyklass" / "sub_lessons_left.json").read_bytes())
        messages = requests.get(f"http://127.0.0.1:{oneclick_port}/_fake/messages", timeout=5).json()
        oneclick_stats = requests.get(f"http://127.0.0.1:{oneclick_port}/_fake/stats", timeout=5).json()
        moyklass_stats = requests.get(f"http://127.0.0.1:{moyklass_port}/_fake/stats", timeout=5).json()
    assert webhook.status_code == 200, webhook.text
    assert [(m["phone"], m["sender"], m["reference"]) for m in messages] == [(numbered_phone(1001), "SmartLab", "1000")]
    assert messages[0]["message"].startswith("Poštovani Marko Petrović")
    assert oneclick_stats == {"messages": 1, "report_calls": 0}
    assert moyklass_stats == {"token_calls": 1, "user_calls": 1, "tokens": 1}
    banner = fakes.stdout.read().splitlines()
    assert banner[0].startswith(f"fake MoyKlass on http://127.0.0.1:{moyklass_port}/v1")
    assert banner[1].startswith(f"fake OneClick on http://127.0.0.1:{oneclick_port}{FakeOneClick.SEND_PATH}")


def test_with_a_lesson_the_fakes_let_a_lesson_reminder_be_tried_by_hand(tmp_path):
    """The README's lesson reminder: --lesson 610882 (the fixture's lesson), a text, a worker."""
    moyklass_port, oneclick_port = free_port(), free_port()
    settings = {"DATA_DIR": str(tmp_path / "data"), "API_KEY": "test-api-key",
                "MOYKLASS_API_URL": f"http://127.0.0.1:{moyklass_port}/v1", "SMS_PROVIDER": "oneclick",
                "SMS_API_URL": f"http://127.0.0.1:{oneclick_port}{FakeOneClick.SEND_PATH}",
                "SMS_USERNAME": "smartlab", "SMS_PASSWORD": "oneclick-pass",
                "SMS_TEXT_LESSON_START_HOURS": "{first_name}: {topic} {lesson_date} u {lesson_time}."}
    with running_fakes(moyklass_port, oneclick_port, "--lesson", "610882"), \
            running_gunicorn(settings, workers=1) as base_url, running_worker(settings):
        webhook = requests.post(f"{base_url}/webhook", timeout=10,
                                data=(FIXTURES / "moyklass" / "lesson_start_hours.json").read_bytes())
        messages = wait_until(lambda: len(got := requests.get(f"http://127.0.0.1:{oneclick_port}/_fake/messages",
                                                              timeout=5).json()) == 3 and got, what="3 SMS")
    assert webhook.status_code == 202, webhook.text
    assert sorted(m["phone"] for m in messages) == [numbered_phone(u) for u in (1001, 1002, 1003)]
    assert all(m["message"].endswith("u 17:00.") and ": Robotika " in m["message"] for m in messages)


def test_a_busy_port_fails_in_one_line():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(fakes_command("--moyklass-port", str(free_port()), "--oneclick-port", str(port)),
                                cwd=ROOT, capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"fake OneClick: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_one_fake_runs_alone_when_named():
    port = free_port()
    process = subprocess.Popen(fakes_command("oneclick", "--oneclick-port", str(port)), cwd=ROOT,
                               stdout=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]})
    try:
        wait_until(lambda: listening(port), what="the fake")
        assert requests.get(f"http://127.0.0.1:{port}/_fake/messages", timeout=5).json() == []
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
