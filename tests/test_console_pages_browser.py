"""The console's pages of messages, mailings, clients, templates and API keys in a real browser, by the
rules of test_console_browser.py (its fixtures): headless Chromium against gunicorn, the worker a real
process sending to the fake gateway, a screenshot of each page at 360 and 1280 px in tests/artifacts/.
Without Chromium they are skipped; in CI they fail."""
from __future__ import annotations

import templates
from store import DELIVERED, FAILED, QUEUED
from tests import test_console_browser as frame
from tests.conftest import running_worker, settings_store, wait_until
from tests.test_console_browser import PASSWORD, by_css, click, create_user, log_in, lost_node, screenshots, text_of

# Its fixtures: `browser`, one Chromium for the module, and `web`, the service under gunicorn.
browser, web = frame.browser, frame.web

WORKER = {"HTTP_TIMEOUT": "1", "WORKER_LEASE_SECONDS": "6.5"}


def wait_for(session, condition, what: str, timeout: float = 30):
    """`condition` true; a page that reloads itself (a mailing being sent) may drop what it was reading."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    def holds(_) -> bool:
        try:
            return condition()
        except WebDriverException as error:
            if lost_node(error):
                return False
            raise

    return WebDriverWait(session, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(holds, message=what)


def present(session, selector: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(session.find_elements(By.CSS_SELECTOR, selector))


def type_into(session, selector: str, text: str) -> None:
    field = by_css(session, selector)
    field.clear()
    field.send_keys(text)


def test_import_mailing_to_100_percent_resend_approve_and_keys(web, settings, tmp_path, oneclick):
    browser, base_url = web
    create_user(settings, "admin@school.rs", "admin", PASSWORD)
    store = settings_store(settings)
    log_in(browser, base_url, "admin@school.rs", PASSWORD)

    # Clients: a CSV imported through the page (its upload progress, then the per-row report).
    csv = tmp_path / "clients.csv"
    csv.write_text("phone,name,tags\n0641000001,Ana Ilić,robotika\n0641000002,Marko Petrović,robotika\n"
                   "0641000003,Jelena Jović,robotika;vip\n12,Nije broj,robotika\n", encoding="utf-8")
    browser.get(f"{base_url}/clients/import")
    by_css(browser, "#file").send_keys(str(csv))
    by_css(browser, "#import-button").click()
    wait_for(browser, lambda: present(browser, "#import-report"), "the import's report")
    assert text_of(browser, "#import-created") == "3" and text_of(browser, "#import-rejected") == "1"
    assert "not a valid phone number" in text_of(browser, "#rejected-rows")
    screenshots(browser, "clients-import")
    browser.get(f"{base_url}/clients?tag=robotika")
    assert "Marko Petrović" in text_of(browser, "#clients")
    screenshots(browser, "clients")
    browser.get(f"{base_url}/clients/1")
    screenshots(browser, "client")

    # A mailing: the live preview follows the text, then it is created and the worker sends it.
    browser.get(f"{base_url}/mailings/new")
    type_into(browser, "#text", "Zdravo {first_name}, upis počinje sutra.")
    type_into(browser, "#tags", "robotika")
    wait_for(browser, lambda: present(browser, "#preview-recipients")
             and text_of(browser, "#preview-recipients") == "3", "the preview's 3 recipients")
    assert text_of(browser, "#preview-text") == "Zdravo Ana, upis počinje sutra."
    assert text_of(browser, "#preview-encoding") == "UCS-2"
    screenshots(browser, "mailing-new")
    click(browser, "#create-mailing")
    mailing_url = browser.current_url
    assert "/mailings/" in mailing_url and text_of(browser, ".percent") == "0 %"
    store.enqueue_many("test", 3600, [("+3816", "Kratak broj", None, None)])  # the gateway refuses it
    with running_worker(settings | WORKER):
        # The page reloads itself every 2 s while the mailing is sending.
        wait_for(browser, lambda: text_of(browser, ".percent") == "100 %", "the mailing at 100 %", timeout=60)
        wait_until(lambda: store.counts()[FAILED] == 1, what="the short number FAILED")
        # Finished (none of its messages left to send), the page stops reloading itself.
        wait_for(browser, lambda: text_of(browser, "#mailing-state") == "finished", "the mailing finished")
    assert store.counts()[DELIVERED] + store.counts()["SENT"] == 3
    screenshots(browser, "mailing")
    browser.get(f"{base_url}/mailings")
    screenshots(browser, "mailings")

    # The failed message: found by its status, its history, sent again.
    browser.get(f"{base_url}/messages?status=FAILED")
    screenshots(browser, "messages")
    click(browser, "#messages tbody a")
    assert text_of(browser, "#message-status") == FAILED
    screenshots(browser, "message")
    click(browser, "#resend")
    assert present(browser, "#resent") and text_of(browser, "#message-status") == QUEUED

    # A template an operator drafted: the live counter, the transliteration suggestion, approval.
    draft = templates.create(store, "podsetnik", "Čas je sutra u {TIME}.", "console:operator@school.rs", frozenset())
    browser.get(f"{base_url}/templates/{draft.id}")
    assert text_of(browser, "#counter-encoding") == "UCS-2" and present(browser, "#use-suggestion")
    type_into(browser, "#text", "Чаc je сутра у {TIME}.")
    wait_for(browser, lambda: "Cac je sutra u {TIME}." in text_of(browser, "#suggestion"), "the Cyrillic's suggestion")
    by_css(browser, "#use-suggestion").click()
    wait_for(browser, lambda: text_of(browser, "#counter-encoding") == "GSM-7", "GSM-7 after the suggestion")
    browser.get(f"{base_url}/templates/{draft.id}")  # the edit was not saved: approve what the operator wrote
    screenshots(browser, "template")
    click(browser, "#approve")
    assert store.template(draft.id).approved_version == 1
    assert text_of(browser, "#template-status") == "approved"
    browser.get(f"{base_url}/templates")
    screenshots(browser, "templates")

    # API keys: created (shown once), revoked.
    browser.get(f"{base_url}/keys")
    type_into(browser, "#key-name", "crm")
    click(browser, "#create-key")
    assert text_of(browser, "#new-key").startswith("sba_")
    screenshots(browser, "keys")
    click(browser, "#revoke-1")
    assert "revoked" in text_of(browser, "#keys")


def test_a_viewer_reads_but_is_refused_an_operators_action(web, settings):
    browser, base_url = web
    store = settings_store(settings)
    store.create_client({"phone": "+381641000001", "operator_code": "64", "timezone": "Europe/Belgrade",
                         "name": "Ana", "moyklass_user_id": None, "tags": ["robotika"]})
    from datetime import UTC, datetime, timedelta

    import mailings
    from models import MailingCreate

    now = datetime.now(UTC)
    mailing = mailings.create(store, MailingCreate.model_validate(
        {"start_at": now + timedelta(days=1), "end_at": now + timedelta(days=2), "text": "Zdravo",
         "filter": {"all": True}}))
    create_user(settings, "viewer@school.rs", "viewer", PASSWORD)
    log_in(browser, base_url, "viewer@school.rs", PASSWORD)
    browser.get(f"{base_url}/mailings/{mailing['id']}")
    assert not present(browser, "#cancel") and present(browser, "#export")  # not offered; the export is
    # The viewer forges the operator's form (with the viewer's own CSRF token): refused with 403.
    browser.execute_script(
        "const form = document.querySelector('#logout').form; form.action = arguments[0]; form.submit();",
        f"{base_url}/mailings/{mailing['id']}/cancel")
    wait_for(browser, lambda: text_of(browser, "main h1") == "403", "the 403 page")
    assert store.mailing(mailing["id"]).state == "scheduled"
    screenshots(browser, "error-403-viewer-cancel")
    browser.get(f"{base_url}/mailings/new")
    assert text_of(browser, "main h1") == "403"
