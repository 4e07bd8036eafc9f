"""The shipped nginx.conf and systemd unit, checked with the real tools and real traffic."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

import api_keys
from sms_bulk_app import create_app
from tests.conftest import ROOT, free_port, load_fixture, running_gunicorn
from tests.fakes import numbered_phone

# Skipped where the tool is missing on a developer's machine; in CI a missing tool is a failure.
IN_CI = bool(os.environ.get("CI"))
needs_nginx = pytest.mark.skipif(not IN_CI and shutil.which("nginx") is None,
                                 reason="nginx is not installed (make test installs it as root)")
needs_systemd = pytest.mark.skipif(not IN_CI and shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def nginx_site(tmp_path: Path, upstream_port: int, worker_connections: int | None = None) -> tuple[Path, int]:
    """The shipped nginx.conf with only its paths and ports moved into the test's directory;
    the main config around it sets `worker_connections` when one is given (nginx's default: 512)."""
    port = free_port()
    site = (ROOT / "nginx.conf").read_text()
    site = site.replace("/var/log/nginx", str(tmp_path))
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};").replace("listen [::]:80;", "")
    site = site.replace("server 127.0.0.1:5000;", f"server 127.0.0.1:{upstream_port};")
    (tmp_path / "site.conf").write_text(site)
    main = tmp_path / "nginx-main.conf"
    events = f"worker_connections {worker_connections};" if worker_connections else ""
    main.write_text(f"events {{ {events} }}\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                    f"http {{ include {tmp_path}/site.conf; }}\n")
    return main, port


@contextmanager
def running_nginx(main: Path, port: int):
    """nginx on a config from `nginx_site`, until the block ends; yields its base URL."""
    prefix = main.parent
    subprocess.run(["nginx", "-c", str(main), "-p", str(prefix)], check=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["nginx", "-c", str(main), "-p", str(prefix), "-s", "stop"], check=True)


@needs_nginx
def test_nginx_conf_passes_nginx_t(tmp_path):
    main, _ = nginx_site(tmp_path, 5000)
    result = subprocess.run(["nginx", "-t", "-c", str(main), "-p", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@needs_nginx
def test_through_nginx_the_secret_stays_out_of_its_log_and_errors_are_json(settings, moyklass, oneclick,
                                                                         tmp_path):
    settings["WEBHOOK_SECRET"] = "url-secret-4242"
    moyklass.add_user(1001, "381641000001")
    with running_gunicorn(settings, workers=1) as base_url:
        main, port = nginx_site(tmp_path, int(base_url.rsplit(":", 1)[1]))
        with running_nginx(main, port) as front:
            sent = requests.post(f"{front}/webhook?secret=url-secret-4242",
                                 json=load_fixture("sub_lessons_left"), timeout=10)
            too_large = requests.post(f"{front}/webhook?secret=url-secret-4242",
                                      data=b"x" * 100_000, timeout=10)
            buffered = requests.post(f"{front}/webhook?secret=url-secret-4242",  # past nginx's 16k buffer
                                     json={"object": {"userId": 1001}, "pad": "x" * 40_000}, timeout=10)
            no_secret = requests.post(f"{front}/webhook", json={"object": {"userId": 1}}, timeout=10)
    assert sent.status_code == 200 and sent.json()["status"] == "success"
    assert too_large.status_code == 413
    assert too_large.json() == {"status": "error", "message": "the body is larger than 64 KiB"}
    assert no_secret.status_code == 401 and no_secret.json()["status"] == "error"
    access_log = (tmp_path / "sms_bulk_app.access.log").read_text()
    assert access_log.count("POST /webhook HTTP/1.1") == 4
    assert "url-secret-4242" not in access_log
    error_log = (tmp_path / "sms_bulk_app.error.log").read_text()  # the 413 was logged with the URL
    assert "url-secret-4242" not in error_log
    assert buffered.status_code == 200
    assert len(oneclick.messages) == 2


@needs_systemd
@pytest.mark.parametrize("unit_name, exec_start", [
    ("sms_bulk_app.service", r"\S+/gunicorn -c \S+/gunicorn.conf.py \"sms_bulk_app:create_app\(\)\""),
    ("sms_bulk_app-worker.service", r"\S+/python \S+/sms_bulk_app.py worker"),
    ("sms_bulk_app-phones.service", r"\S+/python \S+/sms_bulk_app.py phones-events"),
])
def test_systemd_units_verify(tmp_path, unit_name, exec_start):
    """systemd-analyze verify, with the install paths pointed at this checkout's venv."""
    install = tmp_path / "opt"
    (install / ".venv" / "bin").mkdir(parents=True)
    for program in ("gunicorn", "python"):
        (install / ".venv" / "bin" / program).symlink_to(Path(sys.executable).parent / program)
    (install / "sms_bulk_app.py").symlink_to(ROOT / "sms_bulk_app.py")
    unit_text = (ROOT / unit_name).read_text()
    unit = tmp_path / unit_name
    unit.write_text(unit_text.replace("/opt/sms_bulk_app", str(install)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for directive in ["User=sms_bulk_app", "EnvironmentFile=", "Restart=on-failure",
                      "ProtectSystem=strict", "NoNewPrivileges=yes", "ReadWritePaths=/var/lib/sms_bulk_app"]:
        assert directive in unit_text
    assert re.search(rf"^ExecStart={exec_start}$", unit_text, re.M)


@needs_nginx
def test_through_nginx_an_import_of_50000_rows_arrives_whole(settings, tmp_path):
    """nginx gives the CSV import its own 10 MiB limit (the API's), not the 64 KiB of every other route.

    Slow: the import itself takes most of the time (the timeout allows a one-transaction-per-row import)."""
    store = create_app(settings).extensions["sms_bulk_app"].store
    _, key = api_keys.create(store, "importer", ["clients:write"], None)
    rows = 50_000
    csv_body = ("phone,name\n" + "".join(f"+{numbered_phone(i)},Client {i}\n" for i in range(rows))).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "text/csv"}
    with running_gunicorn(settings, workers=1) as base_url:
        main, port = nginx_site(tmp_path, int(base_url.rsplit(":", 1)[1]))
        with running_nginx(main, port) as front:
            imported = requests.post(f"{front}/api/v1/clients/import", data=csv_body, headers=headers, timeout=180)
            too_large = requests.post(f"{front}/api/v1/clients/import", data=b"x" * (10 * 1024 * 1024 + 1),
                                      headers=headers, timeout=30)
    assert len(csv_body) > 1024 * 1024
    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert (report["created"], report["updated"], report["rejected"]) == (rows, 0, [])
    assert store.connection().execute("SELECT count(*) FROM clients").fetchone()[0] == rows
    assert too_large.status_code == 413
    assert too_large.json() == {"status": "error", "message": "the body is larger than 10240 KiB"}


@needs_nginx
def test_through_nginx_a_webhook_burst_is_passed_on_at_once_not_spaced_to_the_rate(settings, moyklass, tmp_path):
    """limit_req without nodelay spaced a burst to 30/s: the 300th webhook waited 10 s in nginx."""
    settings["WEBHOOK_MODE"] = "async"
    with running_gunicorn(settings, workers=1) as base_url:
        main, port = nginx_site(tmp_path, int(base_url.rsplit(":", 1)[1]))
        with running_nginx(main, port) as front:

            def fire(user_id: int) -> tuple[int, float]:
                started = time.monotonic()
                answer = requests.post(f"{front}/webhook", json={"event": "sub_lessons_left",
                                                                 "object": {"userId": user_id}}, timeout=30)
                return answer.status_code, time.monotonic() - started

            with ThreadPoolExecutor(60) as pool:
                answers = list(pool.map(fire, range(1, 61)))
    assert [status for status, _ in answers] == [202] * 60
    assert max(took for _, took in answers) < 1.0, sorted(took for _, took in answers)[-5:]
