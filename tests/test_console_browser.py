"""The console in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by
Selenium against the service under real gunicorn, two workers (sessions and throttling are shared
through the database). A screenshot of each page at 360 px and 1280 px is kept in tests/artifacts/.

Without Chromium these tests are skipped with one line; in CI (CI set) they fail instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import requests

from console import accounts
from store import DELIVERED, FAILED, QUEUED
from tests.conftest import (
    ROOT,
    command,
    command_env,
    run_command,
    running_gunicorn,
    running_worker,
    settings_store,
    wait_until,
)

ARTIFACTS = ROOT / "tests" / "artifacts"
WIDTHS = (360, 1280)
MISSING_REASON = ("Chromium is not installed (chromium, chromium-driver): the browser tests are skipped; "
                  "`make test` as root installs them")
PASSWORD = "correct horse battery"


def chromium_missing() -> NoReturn:
    """Skip the test, or fail it in CI (CI must not silently skip the browser tests)."""
    if os.environ.get("CI"):
        pytest.fail(MISSING_REASON, pytrace=False)
    pytest.skip(MISSING_REASON)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module: Debian's browser and driver, nothing downloaded."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        chromium_missing()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--lang=en-US", "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(30)
    yield session
    session.quit()


@pytest.fixture
def web(browser, settings) -> Iterator[tuple[object, str]]:
    """(the browser, with no cookies, the base URL of the service under gunicorn)."""
    with running_gunicorn(settings | {"WEBHOOK_MODE": "async"}, workers=2, threads=4) as base_url:
        browser.get(f"{base_url}/login")
        browser.delete_all_cookies()  # cookies ignore the port: a previous test's are for this host too
        yield browser, base_url


def screenshots(browser, name: str) -> None:
    """The current page at each of WIDTHS, whole, as tests/artifacts/<name>-<width>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        browser.set_window_size(width, 900)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(width, max(height + 140, 600))
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width, \
            f"{name} is wider than {width} px"
        browser.save_screenshot(str(ARTIFACTS / f"{name}-{width}.png"))
    browser.set_window_size(1280, 900)


def by_css(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector)


def click(browser, selector: str) -> None:
    """Click what submits a form, and wait for the page it leads to (a click does not wait for it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda _: clicked(browser, selector), message=f"{selector} clicked")
    WebDriverWait(browser, 30).until(lambda _: gone(page), message=f"the page after {selector}")


def lost_node(error: Exception) -> bool:
    """Chromium's answer about a node of a document being replaced (a page loading, or a script
    re-laying it out): the node is gone, though Selenium does not call that stale."""
    return "does not belong to the document" in str(error)


def clicked(browser, selector: str) -> bool:
    """True once `selector` is clicked; False if Chromium lost its node between finding and
    clicking it (that is answered before the click is sent, so looking it up again is safe)."""
    from selenium.common.exceptions import WebDriverException

    try:
        by_css(browser, selector).click()
    except WebDriverException as error:
        if lost_node(error):
            return False
        raise
    return True


def gone(element) -> bool:
    """True once `element`'s document has been replaced."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if lost_node(error):
            return True
        raise
    return False


def submit(browser, fields: dict[str, str], button: str = "button.primary") -> None:
    for name, value in fields.items():
        field = by_css(browser, f"[name={name}]")
        field.clear()
        field.send_keys(value)
    click(browser, button)


def log_in(browser, base_url: str, email: str, password: str) -> None:
    browser.get(f"{base_url}/login")
    submit(browser, {"email": email, "password": password})


def create_user(settings, email: str, role: str, password: str | None = None) -> str:
    """`users create` as an operator runs it; the one-time password, or `password`."""
    args = ["users", "create", "--email", email, "--role", role] + (["--password-stdin"] if password else [])
    result = subprocess.run(command(settings, *args), cwd=Path(settings["DATA_DIR"]).parent,
                            env=command_env(settings), input=password or "", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return password or re.search(r"one-time password: (\S+)", result.stdout).group(1)


def text_of(browser, selector: str) -> str:
    return by_css(browser, selector).text.strip()


def test_first_login_password_change_dashboard_with_real_numbers_users_and_logout(web, settings, oneclick):
    browser, base_url = web
    one_time = create_user(settings, "admin@school.rs", "admin")
    store = settings_store(settings)
    # Three messages the worker sends to the fake gateway (reported DELIVERED), one it refuses as a bad number.
    for number in ("064 100 0001", "064 100 0002", "064 100 0003"):
        assert run_command(settings, "send", "--phone", number, "--text", "Zdravo").returncode == 0
    store.enqueue_many("test", 3600, [("+3816", "Kratak broj", None, None)])
    with running_worker(settings | {"HTTP_TIMEOUT": "1", "WORKER_LEASE_SECONDS": "6.5"}):
        wait_until(lambda: store.counts()[DELIVERED] == 3 and store.counts()[FAILED] == 1, what="3 DELIVERED, 1 FAILED")
    run_command(settings, "send", "--phone", "064 100 0004", "--text", "Čeka")  # stays queued: no worker now
    assert store.counts()[QUEUED] == 1

    browser.get(base_url + "/")
    assert browser.current_url.startswith(f"{base_url}/login")
    screenshots(browser, "login")
    log_in(browser, base_url, "admin@school.rs", one_time)
    assert browser.current_url == f"{base_url}/password"  # a one-time password is changed first
    screenshots(browser, "password-first-login")
    submit(browser, {"current": one_time, "new": PASSWORD, "repeat": PASSWORD})
    assert browser.current_url == f"{base_url}/"
    assert text_of(browser, "#sent-today") == "3"
    assert text_of(browser, "#delivered-today") == "3"
    assert text_of(browser, "#failed-today") == "1"
    assert text_of(browser, "#queued-now") == "1"
    assert text_of(browser, "#parts-today") == "3"
    assert "has waited" in text_of(browser, "#oldest-queued")
    failure = text_of(browser, "#failures tbody tr")
    assert "FAILED" in failure and "+3816" not in browser.page_source  # the phone is masked
    screenshots(browser, "dashboard")

    browser.get(f"{base_url}/users")
    submit(browser, {"email": "viewer@school.rs"})
    viewer_password = text_of(browser, "#one-time-password")
    assert "viewer@school.rs" in text_of(browser, "#users")
    screenshots(browser, "users")

    click(browser, "#logout")
    assert browser.current_url.startswith(f"{base_url}/login")
    browser.get(f"{base_url}/")
    assert browser.current_url.startswith(f"{base_url}/login")  # logged out
    assert store.user_by_email("viewer@school.rs").must_change_password and viewer_password


def test_a_viewer_is_refused_an_admins_page_and_a_form_without_its_token(web, settings):
    browser, base_url = web
    create_user(settings, "viewer@school.rs", "viewer", PASSWORD)
    log_in(browser, base_url, "viewer@school.rs", PASSWORD)
    assert browser.current_url == f"{base_url}/"
    assert "Users" not in text_of(browser, "header")  # not offered
    browser.get(f"{base_url}/users")
    assert text_of(browser, "main h1") == "403"
    screenshots(browser, "error-403")
    # The viewer's own logout form, its CSRF token taken out: refused with the 400 page.
    browser.get(f"{base_url}/")
    browser.execute_script("document.querySelector('#logout').form.querySelector('[name=csrf_token]').remove()")
    click(browser, "#logout")
    assert text_of(browser, "main h1") == "400"
    assert "did not come from this site" in text_of(browser, "main")
    screenshots(browser, "error-400-csrf")
    browser.get(f"{base_url}/")
    assert browser.current_url == f"{base_url}/"  # still logged in: the forged logout did nothing
    browser.get(f"{base_url}/no-such-page")
    assert text_of(browser, "main h1") == "404"
    screenshots(browser, "error-404")
    assert requests.get(f"{base_url}/no-such-page", timeout=5).json()["status"] == "error"  # scripts get JSON


def test_repeated_bad_passwords_throttle_the_login_across_workers(web, settings):
    browser, base_url = web
    create_user(settings, "op@school.rs", "operator", PASSWORD)
    for _ in range(accounts.ACCOUNT_LIMIT):
        log_in(browser, base_url, "op@school.rs", "not the password")
        assert "Wrong email or password" in text_of(browser, ".alert")
    log_in(browser, base_url, "op@school.rs", PASSWORD)  # the right one, now too late
    assert "Too many failed logins" in text_of(browser, ".alert")
    assert browser.current_url.startswith(f"{base_url}/login")
    screenshots(browser, "login-throttled")


def test_the_console_speaks_russian_when_switched(web, settings):
    browser, base_url = web
    create_user(settings, "op@school.rs", "operator", PASSWORD)
    log_in(browser, base_url, "op@school.rs", PASSWORD)
    click(browser, "button[lang=ru]")
    assert text_of(browser, "main h1").startswith("Сегодня")
    assert "отправлено" in text_of(browser, ".tiles")
    screenshots(browser, "dashboard-ru")
