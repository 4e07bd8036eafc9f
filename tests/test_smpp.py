"""The SMPP provider against a real SMSC on loopback (tests/smsc/smsc.js): the PDUs it writes, its verdicts,
its session (one per process, kept alive, bound again after a drop) and the receipts it hands over."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from smpplib import exceptions

from providers import PROVIDERS, Delivery, DeliveryReport, Outcome
from providers.smpp import GSM7_CODES, GSM7_TABLE, SmppProvider, encode_parts
from store import DELIVERED
from tests.conftest import free_port, running_worker, settings_store, wait_until
from tests.smsc import PASSWORD, SYSTEM_ID, Smsc, start_smsc, stop_smsc
from texts import GSM7_BASIC, GSM7_EXTENDED, measure

PHONE = "+381641234567"


@pytest.fixture
def smsc(tmp_path) -> Iterator[Smsc]:
    """A fresh test SMSC for one test; what it printed is in smsc.out."""
    server = start_smsc(tmp_path / "smsc.out")
    yield server
    stop_smsc(server)


class Reports(list):
    """A report sink that keeps what it is handed."""

    def __call__(self, provider: str, reference: str, report: DeliveryReport) -> None:
        self.append((provider, reference, report))


@pytest.fixture
def connect(smsc):
    """Build providers bound to the test SMSC (timeouts: 2 s to connect, 5 s a send); closed after the test."""
    made: list[SmppProvider] = []

    def make(sink: Reports | None = None, password: str = PASSWORD, **options) -> SmppProvider:
        provider = SmppProvider("127.0.0.1", smsc.port, SYSTEM_ID, password, report_sink=sink,
                                **{"timeouts": (2.0, 5.0)} | options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def gsm7(text: str) -> bytes:
    return b"".join(GSM7_CODES[char] for char in text)


def test_the_gsm7_table_is_the_one_texts_measures_by():
    assert len(GSM7_TABLE) == 128 and GSM7_TABLE[0x1B] == "\x1b" and GSM7_TABLE[0x5F] == "§"
    assert set(GSM7_CODES) == GSM7_BASIC | GSM7_EXTENDED
    assert gsm7("@a€{") == bytes([0x00, 0x61, 0x1B, 0x65, 0x1B, 0x28])


def test_a_gsm7_text_is_one_submit_sm_with_the_exact_fields(smsc, connect):
    provider = connect()  # no report sink: a transmitter, as the web process binds
    text = "Hello {world} € @ 18h"
    result = provider.send(PHONE, text, "SmartLab")
    assert result.outcome is Outcome.SENT and result.code == "0"
    [bind] = smsc.pdus("bind_transmitter")
    assert (bind["system_id"], bind["password"], bind["interface_version"]) == (SYSTEM_ID, PASSWORD, 0x34)
    [submit] = smsc.pdus("submit_sm")
    assert {key: submit[key] for key in ("source_addr_ton", "source_addr_npi", "source_addr", "dest_addr_ton",
                                         "dest_addr_npi", "destination_addr", "esm_class", "registered_delivery",
                                         "data_coding")} == {
        "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "SmartLab",
        "dest_addr_ton": 1, "dest_addr_npi": 1, "destination_addr": "381641234567",
        "esm_class": 0, "registered_delivery": 1, "data_coding": 0}
    assert bytes.fromhex(submit["short_message"]) == \
        b"Hello \x1b(world\x1b) \x1be \x00 18h"  # { } € as escape pairs, @ as 0x00
    assert result.reference == "1000"  # the SMSC's first message_id


def test_a_text_with_letters_gsm7_lacks_goes_as_ucs2(smsc, connect):
    text = "Čas počinje u 18h, ђаци 📚"
    assert connect().send(PHONE, text, "+381111234567").outcome is Outcome.SENT
    [submit] = smsc.pdus("submit_sm")
    assert (submit["data_coding"], submit["esm_class"]) == (8, 0)
    assert bytes.fromhex(submit["short_message"]) == text.encode("utf-16-be")
    assert (submit["source_addr_ton"], submit["source_addr_npi"], submit["source_addr"]) == (1, 1, "381111234567")


def test_a_long_text_goes_as_concatenated_parts_with_one_udh_reference(smsc, connect):
    text = "Obavestenje: " + "x" * 139 + "{}" + "y" * 160  # `{` at the 153rd septet: its escape pair moves on
    assert measure(text).segments == 3
    result = connect().send(PHONE, text, "SmartLab")
    assert result.outcome is Outcome.SENT
    submits = smsc.pdus("submit_sm")
    assert len(submits) == 3
    parts = [bytes.fromhex(submit["short_message"]) for submit in submits]
    reference = parts[0][3]
    for number, (submit, part) in enumerate(zip(submits, parts, strict=True), 1):
        assert (submit["esm_class"], submit["data_coding"]) == (0x40, 0)
        assert part[:6] == bytes([5, 0, 3, reference, 3, number])
        assert len(part) - 6 <= 153
    bodies = [part[6:] for part in parts]
    assert b"".join(bodies) == gsm7(text)
    assert len(bodies[0]) == 152 and bodies[1].startswith(b"\x1b(")  # the escape pair was not split
    assert result.reference == "1000" and result.message == "3 parts: 1000 1001 1002"


def test_ucs2_parts_never_split_a_surrogate_pair():
    text = "ж" * 66 + "📚" + "ж" * 10  # the emoji's two code units straddle 67
    data_coding, parts, esm_class = encode_parts(text)
    assert (data_coding, esm_class, len(parts)) == (8, 0x40, measure(text).segments)
    assert [len(part) - 6 for part in parts] == [132, 24]
    assert b"".join(part[6:] for part in parts).decode("utf-16-be") == text


@pytest.mark.parametrize("status, outcome", [(0x0B, Outcome.REJECTED), (0x0A, Outcome.AUTH),
                                             (0x08, Outcome.TRANSIENT)])
def test_a_refused_submit_gets_its_verdict(smsc, connect, status, outcome):
    smsc.control(statuses=[status])
    result = connect().send(PHONE, "Zdravo", "SmartLab")
    assert (result.outcome, result.code) == (outcome, f"0x{status:08x}")


def test_throttling_slows_the_sends_down_longer_each_time_in_a_row(smsc, connect):
    provider = connect()
    smsc.control(statuses=[0x58, 0x14])  # ESME_RTHROTTLED, then ESME_RMSGQFUL
    first = provider.send(PHONE, "1", "SmartLab")
    assert (first.outcome, first.code) == (Outcome.TRANSIENT, "0x00000058")
    started = time.monotonic()
    second = provider.send(PHONE, "2", "SmartLab")
    waited_second = time.monotonic() - started
    assert (second.outcome, second.code) == (Outcome.TRANSIENT, "0x00000014")
    started = time.monotonic()
    assert provider.send(PHONE, "3", "SmartLab").outcome is Outcome.SENT
    waited_third = time.monotonic() - started
    assert 0.9 <= waited_second < 1.5 and 1.9 <= waited_third < 2.5  # 1 s, then 2 s without a submit
    assert len(smsc.pdus("submit_sm")) == 3


def test_a_send_that_cannot_wait_out_the_back_off_is_transient_and_not_written(smsc, connect):
    provider = connect(timeouts=(2.0, 0.5))
    smsc.control(statuses=[0x58])
    assert provider.send(PHONE, "1", "SmartLab").outcome is Outcome.TRANSIENT
    held = provider.send(PHONE, "2", "SmartLab")
    assert held.outcome is Outcome.TRANSIENT and "holding back" in held.message
    assert len(smsc.pdus("submit_sm")) == 1


@pytest.mark.parametrize("password, refuse, code", [("wrong", False, "0x0000000e"), (PASSWORD, True, "0x0000000d")])
def test_a_refused_bind_is_auth_and_nothing_is_submitted(smsc, connect, password, refuse, code):
    smsc.control(refuse_binds=refuse)
    provider = connect(password=password)
    result = provider.send(PHONE, "Zdravo", "SmartLab")
    assert (result.outcome, result.code) == (Outcome.AUTH, code)
    again = provider.send(PHONE, "Zdravo", "SmartLab")  # within the bind back-off: not even a bind
    assert again.outcome is Outcome.AUTH
    assert len(smsc.pdus("bind_transmitter")) == 1 and smsc.pdus("submit_sm") == []


def test_an_smsc_that_does_not_listen_is_transient():
    provider = SmppProvider("127.0.0.1", free_port(), SYSTEM_ID, PASSWORD, timeouts=(1.0, 2.0))
    result = provider.send(PHONE, "Zdravo", "SmartLab")
    assert (result.outcome, result.code) == (Outcome.TRANSIENT, "unreachable")


def test_a_dropped_connection_is_bound_again_and_the_next_send_goes_out(smsc, connect):
    provider = connect()
    assert provider.send(PHONE, "1", "SmartLab").outcome is Outcome.SENT
    smsc.control(drop=True)
    wait_until(lambda: any(e["event"] == "closed" for e in smsc.events()), what="the drop")
    time.sleep(0.2)
    assert provider.send(PHONE, "2", "SmartLab").outcome is Outcome.SENT
    assert [bind["session"] for bind in smsc.pdus("bind_transmitter")] == [1, 2]
    assert [submit["session"] for submit in smsc.pdus("submit_sm")] == [1, 2]


def test_nothing_binds_before_the_first_send(smsc, connect):
    connect(Reports())  # as every process builds it, commands that never send included
    time.sleep(0.5)
    assert smsc.events() == []


def test_with_a_report_sink_the_session_is_bound_again_without_a_send(smsc, connect):
    assert connect(Reports()).send(PHONE, "1", "SmartLab").outcome is Outcome.SENT
    assert len(smsc.pdus("bind_transceiver")) == 1
    smsc.control(unbind=True)  # the SMSC unbinds: answered, then bound again at once
    wait_until(lambda: len(smsc.pdus("bind_transceiver")) == 2, what="a second bind")
    assert len(smsc.pdus("unbind_resp")) == 1
    smsc.control(drop=True)
    wait_until(lambda: len(smsc.pdus("bind_transceiver")) == 3, what="a third bind")


def test_a_submit_that_gets_no_answer_is_unknown(smsc, connect):
    provider = connect(timeouts=(2.0, 1.0))
    smsc.control(silent=1)
    result = provider.send(PHONE, "1", "SmartLab")
    assert (result.outcome, result.code) == (Outcome.UNKNOWN, "no-answer")
    smsc.control(drop_on_submit=1)  # the connection drops with the submit unanswered
    started = time.monotonic()
    dropped = provider.send(PHONE, "2", "SmartLab")
    assert (dropped.outcome, dropped.code) == (Outcome.UNKNOWN, "no-answer")
    assert time.monotonic() - started < 0.5  # known at the drop, not at the timeout
    assert provider.send(PHONE, "3", "SmartLab").outcome is Outcome.SENT


def test_a_submit_that_could_not_be_written_is_transient(smsc, connect, monkeypatch):
    provider = connect()
    assert provider.send(PHONE, "1", "SmartLab").outcome is Outcome.SENT

    def broken(pdu):
        raise exceptions.ConnectionError()

    monkeypatch.setattr(provider._session.client, "send_pdu", broken)  # the socket breaks as it is written to
    result = provider.send(PHONE, "2", "SmartLab")
    assert (result.outcome, result.code) == (Outcome.TRANSIENT, "not-written")
    assert provider.send(PHONE, "3", "SmartLab").outcome is Outcome.SENT  # on a new session
    assert len(smsc.pdus("bind_transmitter")) == 2 and len(smsc.pdus("submit_sm")) == 2


def test_an_idle_session_is_kept_alive_with_enquire_link(smsc, connect):
    provider = connect(enquire_link_seconds=0.5)
    assert provider.send(PHONE, "1", "SmartLab").outcome is Outcome.SENT
    time.sleep(2.0)
    assert len(smsc.pdus("enquire_link")) >= 2
    assert provider.send(PHONE, "2", "SmartLab").outcome is Outcome.SENT
    assert len(smsc.pdus("bind_transmitter")) == 1  # the same session all along


@pytest.mark.parametrize("stat, state", [("DELIVRD", Delivery.DELIVERED), ("UNDELIV", Delivery.UNDELIVERED),
                                         ("EXPIRED", Delivery.UNDELIVERED), ("REJECTD", Delivery.FAILED),
                                         ("DELETED", Delivery.FAILED)])
@pytest.mark.parametrize("tlvs", [False, True])
def test_a_delivery_receipt_reaches_the_report_sink(smsc, connect, stat, state, tlvs):
    smsc.control(receipt_stat=stat, receipt_tlvs=tlvs)
    reports = Reports()
    result = connect(reports).send(PHONE, "Zdravo", "SmartLab")
    wait_until(lambda: reports, what="the receipt")
    err = "000" if stat == "DELIVRD" else "001"
    assert reports == [("smpp", result.reference, DeliveryReport(state, f"{stat} err:{err}"))]
    [answer] = smsc.pdus("deliver_sm_resp")
    assert answer["command_status"] == 0


def test_receipts_that_are_not_final_are_answered_but_not_reported(smsc, connect):
    smsc.control(receipt_stat="ACCEPTD")
    reports = Reports()
    connect(reports).send(PHONE, "Zdravo", "SmartLab")
    wait_until(lambda: smsc.pdus("deliver_sm_resp"), what="the answer to the receipt")
    assert reports == []


@pytest.mark.parametrize("stat, reported", [("DELIVRD", 1), ("UNDELIV", 3)])
def test_receipts_of_later_parts_find_the_message_by_its_first_part(smsc, connect, stat, reported):
    smsc.control(receipt_stat=stat)
    reports = Reports()
    result = connect(reports).send(PHONE, "x" * 400, "SmartLab")
    wait_until(lambda: len(smsc.pdus("deliver_sm_resp")) == 3, what="three receipts answered")
    # A later part's DELIVRD adds nothing to the first part's; its failure is the message's.
    assert [reference for _, reference, _ in reports] == [result.reference] * reported


def test_a_receipt_the_sink_cannot_keep_is_asked_for_again(smsc, connect):
    def failing(*_):
        raise RuntimeError("database unavailable")

    connect(failing).send(PHONE, "Zdravo", "SmartLab")
    wait_until(lambda: smsc.pdus("deliver_sm_resp"), what="the answer to the receipt")
    assert smsc.pdus("deliver_sm_resp")[0]["command_status"] == 0x64  # ESME_RX_T_APPN: send it again later


def test_sender_threads_share_one_session(smsc, connect):
    provider = connect()
    results = []

    def send_five(thread: int) -> None:
        results.extend(provider.send(PHONE, f"{thread}-{i}", "SmartLab") for i in range(5))

    threads = [threading.Thread(target=send_five, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.outcome for r in results] == [Outcome.SENT] * 40
    assert len({r.reference for r in results}) == 40
    assert len(smsc.pdus("bind_transmitter")) == 1 and len(smsc.pdus("submit_sm")) == 40


def test_a_queued_message_is_sent_through_the_smsc_by_the_worker_and_its_receipt_delivers_it(smsc, worker_settings):
    worker_settings |= {"SMS_PROVIDERS": "smpp", "SMPP_HOST": "127.0.0.1", "SMPP_PORT": str(smsc.port),
                        "SMPP_SYSTEM_ID": SYSTEM_ID, "SMPP_PASSWORD": PASSWORD, "SMS_SENDER": "SmartLab"}
    assert "smpp" in PROVIDERS
    store = settings_store(worker_settings)
    store.enqueue_many("test", 3600, [(PHONE, "Zdravo iz škole", None, None)])
    with running_worker(worker_settings):
        wait_until(lambda: store.message(1)["status"] == DELIVERED, what="DELIVERED")
    row = store.message(1)
    [submit] = smsc.pdus("submit_sm")
    assert (row["provider"], row["gateway_ref"], row["encoding"], row["report_text"]) == \
        ("smpp", "1000", "UCS-2", "DELIVRD err:000")
    assert submit["destination_addr"] == "381641234567"
    assert bytes.fromhex(submit["short_message"]).decode("utf-16-be") == "Zdravo iz škole"
    assert len(smsc.pdus("bind_transceiver")) == 1 and smsc.pdus("deliver_sm_resp")[0]["command_status"] == 0
