"""The test SMSC (tests/smsc/smsc.js, node-smpp's server mode): started on free 127.0.0.1 ports, driven and
read through its control port.

It needs node and `npm ci --prefix tests/smsc`; without them the tests skip (and fail in CI), as tests/postgres.py
does for PostgreSQL.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest
import requests

SMSC_DIR = Path(__file__).parent / "smsc"
SYSTEM_ID, PASSWORD = "school", "s3cret"
MISSING_REASON = ("node or tests/smsc/node_modules is missing: the SMPP tests are skipped; "
                  "`make test` installs them (or: apt-get install nodejs npm && npm ci --prefix tests/smsc)")


def smsc_missing() -> NoReturn:
    """Skip the test, or fail it in CI (CI must not silently skip the SMPP tests)."""
    if os.environ.get("CI"):
        pytest.fail(MISSING_REASON, pytrace=False)
    pytest.skip(MISSING_REASON)


class Smsc:
    """A running test SMSC: `port` for SMPP; `pdus()` what it received, `control()` what it does next."""

    def __init__(self, process: subprocess.Popen, smpp_port: int, control_port: int):
        self.process = process
        self.port = smpp_port
        self._control_url = f"http://127.0.0.1:{control_port}"

    def control(self, **change: Any) -> None:
        requests.post(f"{self._control_url}/control", json=change, timeout=5).raise_for_status()

    def events(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self._control_url}/pdus", timeout=5)
        response.raise_for_status()
        return response.json()

    def pdus(self, command: str) -> list[dict[str, Any]]:
        """The PDUs `command` it received, in order, with their fields (a short_message as hex)."""
        return [event for event in self.events() if event["event"] == "pdu" and event["command"] == command]


def start_smsc(log_path: Path, receipt_delay_ms: int = 200) -> Smsc:
    """Start it, its output (a JSON line per PDU) to `log_path`; it prints its ports first."""
    node = shutil.which("node")
    if node is None or not (SMSC_DIR / "node_modules" / "smpp").is_dir():
        smsc_missing()
    with open(log_path, "wb") as output:
        process = subprocess.Popen([node, str(SMSC_DIR / "smsc.js"), "--system-id", SYSTEM_ID, "--password", PASSWORD,
                                    "--receipt-delay-ms", str(receipt_delay_ms)],
                                   stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while "\n" not in (printed := log_path.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the test SMSC did not start:\n{log_path.read_text()}")
        time.sleep(0.02)
    listening = json.loads(printed.partition("\n")[0])
    return Smsc(process, listening["smpp_port"], listening["control_port"])


def stop_smsc(smsc: Smsc) -> None:
    smsc.process.terminate()
    smsc.process.wait(timeout=10)
