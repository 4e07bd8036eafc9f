"""SMPP 3.4: an aggregator's SMSC (or Jasmin, Kannel) over one long-lived TCP session per process.

The session is bound on first use and shared by every sender thread of the process. Each send
writes its submit_sm (one writer at a time) and waits for the submit_sm_resp with its sequence
number, which one reader thread per session hands over; so up to SMS_CONCURRENCY submits are
in flight at once (the window). A submit_sm that could not be written is TRANSIENT; one written
whose answer never came (the session dropped, or the send's time ran out) is UNKNOWN: the SMSC
may have taken it.

Nothing binds before the first send, so a command that never sends never binds. Delivery receipts
come as deliver_sm on the session. With a report sink the provider binds as a transceiver and, from
its first send on, keeps a session bound (binding again after a drop or an unbind) so receipts keep
coming while nothing is sent. Without one it binds as a transmitter: the SMSC then routes receipts
to a session that can keep them, instead of one that would have to drop them.

A long text goes as concatenated parts (a UDH with an 8-bit reference). The message's reference is
its first part's message_id; the ids of the other parts are remembered by the process that sent
them, so a receipt for one of them that says the part was not delivered is reported under the
first part's id (a later part's DELIVRD adds nothing to the first part's). A receipt for a later
part that reaches another process, or comes after a restart, is reported under its own id, which
no message has.
"""
from __future__ import annotations

import logging
import os
import random
import re
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from smpplib import consts, exceptions, smpp
from smpplib.client import Client
from smpplib.command import Command

from phones import international_digits
from providers.base import Delivery, DeliveryReport, Outcome, Provider, ReportSink, SendResult, Setting, Shared
from texts import GSM7_PART, GSM7_SINGLE, UCS2_PART, UCS2_SINGLE, measure

log = logging.getLogger(__name__)
# smpplib logs every PDU in hex at DEBUG (numbers and texts the log's phone masking cannot see), and
# warns of what this module reports itself (a broken connection, closing a bound session).
logging.getLogger("smpplib").setLevel(logging.ERROR)

# GSM 03.38, one character per octet (the SMSC packs the septets): the basic table by position
# (0x1B is the escape), and the extension table reached through the escape. smpplib's own table
# lacks `§` and has "`" in its place.
GSM7_TABLE = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
              "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_CODES = {char: bytes([code]) for code, char in enumerate(GSM7_TABLE) if char != "\x1b"}
GSM7_CODES.update({char: bytes([0x1B, code]) for char, code in
                   {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D,
                    "]": 0x3E, "|": 0x40, "€": 0x65}.items()})
DATA_CODING = {"GSM-7": 0x00, "UCS-2": 0x08}
UDHI = 0x40  # esm_class: short_message starts with a user data header
RECEIPT = 0x04  # esm_class of a deliver_sm that is an SMSC delivery receipt
TON_INTERNATIONAL, TON_ALPHANUMERIC, TON_UNKNOWN = 0x01, 0x05, 0x00
NPI_UNKNOWN, NPI_E164 = 0x00, 0x01

ESME_RTHROTTLED, ESME_RMSGQFUL = consts.SMPP_ESME_RTHROTTLED, consts.SMPP_ESME_RMSGQFUL
# Bind: the SMSC refused who we are.
AUTH_BIND_STATUSES = frozenset({consts.SMPP_ESME_RBINDFAIL, consts.SMPP_ESME_RINVPASWD, consts.SMPP_ESME_RINVSYSID,
                                consts.SMPP_ESME_RINVSYSTYP})
# submit_sm: our sender (source address) is refused, so no message can go out.
AUTH_SUBMIT_STATUSES = frozenset({consts.SMPP_ESME_RINVSRCADR, consts.SMPP_ESME_RINVSRCTON,
                                  consts.SMPP_ESME_RINVSRCNPI})
# submit_sm: this message can never be taken. Any other status (system error, throttling, a
# vendor's own) is worth another try later.
REJECTED_STATUSES = frozenset({
    consts.SMPP_ESME_RINVMSGLEN, consts.SMPP_ESME_RINVDSTADR, consts.SMPP_ESME_RINVDSTTON,
    consts.SMPP_ESME_RINVDSTNPI, consts.SMPP_ESME_RINVESMCLASS, consts.SMPP_ESME_RINVREGDLVFLG,
    consts.SMPP_ESME_RX_P_APPN, consts.SMPP_ESME_RX_R_APPN, consts.SMPP_ESME_RINVOPTPARAMVAL,
})
ESME_RX_T_APPN = consts.SMPP_ESME_RX_T_APPN  # deliver_sm_resp: we cannot keep it now, send it again later

# SMPP 3.4 appendix B `stat:` values, and the message_state TLV's numbers for them. ENROUTE and
# ACCEPTD are not final: they are not reported.
RECEIPT_STATES = {"DELIVRD": Delivery.DELIVERED, "UNDELIV": Delivery.UNDELIVERED,
                  "EXPIRED": Delivery.UNDELIVERED, "REJECTD": Delivery.FAILED, "DELETED": Delivery.FAILED,
                  "UNKNOWN": Delivery.UNKNOWN}
MESSAGE_STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD",
                  7: "UNKNOWN", 8: "REJECTD"}
RECEIPT_FIELD = re.compile(r"\b(id|stat|err):(\S*)", re.IGNORECASE)

READ_TICK_SECONDS = 0.5  # how often the reader looks at the session's health when nothing arrives
BIND_RETRY_FIRST, BIND_RETRY_MAX = 1.0, 30.0  # after a failed bind, no new one for this long (doubling)
THROTTLE_FIRST, THROTTLE_MAX = 1.0, 16.0  # after ESME_RTHROTTLED/RMSGQFUL, no submit for this long (doubling)
REMEMBERED_PARTS = 100_000  # ids of later parts kept to match their receipts (about 10 MB at most)


class _NotWritten(Exception):
    """The submit_sm did not reach the SMSC: sending it again is safe."""


class _NoAnswer(Exception):
    """The submit_sm was written but its submit_sm_resp never came: the SMSC may have taken it."""


class _BindFailed(Exception):
    def __init__(self, result: SendResult):
        super().__init__(result.message)
        self.result = result


class _Session:
    """One bound session: its socket, the reader thread that lives as long as it, the requests
    waiting for their response, and the enquire_link that keeps it (and proves it) alive."""

    def __init__(self, client: Client, enquire_link_seconds: float, answer_seconds: float,
                 on_deliver: Callable[[Command], int], on_closed: Callable[[str], None]):
        self.client = client
        self.pid = os.getpid()
        self.closed = threading.Event()
        self._socket: socket.socket = client._socket  # smpplib has no accessor; its own poll() reads it
        self._enquire_link_seconds = enquire_link_seconds
        self._answer_seconds = answer_seconds
        self._on_deliver = on_deliver
        self._on_closed = on_closed
        self._writing = threading.Lock()
        self._lock = threading.Lock()  # the waiting requests, and `closed` as they see it
        self._waiting: dict[int, Future] = {}
        self._heard_at = time.monotonic()
        self._enquired_at: float | None = None
        self._reader = threading.Thread(target=self._read, name="smpp-reader", daemon=True)
        self._reader.start()

    def request(self, command: str, timeout: float, **fields: Any) -> Command:
        """Write a request and wait up to `timeout` seconds for its response (whatever its status)."""
        answer: Future = Future()
        with self._writing:
            with self._lock:
                if self.closed.is_set():
                    raise _NotWritten("the session was closed")
                pdu = smpp.make_pdu(command, client=self.client, **fields)
                self._waiting[pdu.sequence] = answer
            try:
                self.client.send_pdu(pdu)
            except (exceptions.ConnectionError, exceptions.PDUError, OSError) as error:
                self._forget(pdu.sequence)
                self.close(f"writing {command} failed ({_why(error)})")
                raise _NotWritten(f"could not write {command}: the connection broke") from None
        try:
            return answer.result(timeout)
        except FutureTimeout:
            self._forget(pdu.sequence)
            raise _NoAnswer(f"no {command}_resp within {timeout:.1f} s") from None
        except _NoAnswer as error:  # the session closed while waiting
            raise _NoAnswer(f"no {command}_resp: {error}") from None

    def close(self, reason: str) -> None:
        """End the session: requests still waiting get no answer, the reader stops and closes the socket."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.set_exception(_NoAnswer(reason))
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the reader
        except OSError:
            pass
        self._on_closed(reason)

    def unbind(self) -> None:
        """Unbind politely (the SMSC may then route receipts elsewhere at once), then close."""
        try:
            self.request("unbind", self._answer_seconds)
        except (_NotWritten, _NoAnswer):
            pass
        self.close("unbound by us")

    def _forget(self, sequence: int) -> None:
        with self._lock:
            self._waiting.pop(sequence, None)

    def _respond(self, request: Command, command: str, **fields: Any) -> None:
        with self._writing:
            response = smpp.make_pdu(command, client=self.client, **fields)
            response.sequence = request.sequence
            self.client.send_pdu(response)

    def _read(self) -> None:
        reason = "closed"
        try:
            while not self.closed.is_set():
                readable, _, _ = select.select([self._socket], [], [], READ_TICK_SECONDS)
                if readable:
                    self._handle(self.client.read_pdu())
                self._keep_alive()
        except (exceptions.ConnectionError, exceptions.PDUError, OSError, ValueError) as error:
            reason = f"the connection was closed or broke ({_why(error)})"
        except _NoAnswer as error:
            reason = str(error)
        finally:
            self.close(reason)
            with self._writing:
                self.client.disconnect()

    def _handle(self, pdu: Command) -> None:
        self._heard_at, self._enquired_at = time.monotonic(), None
        if pdu.is_response():
            with self._lock:
                answer = self._waiting.pop(pdu.sequence, None)
            if answer is not None:
                answer.set_result(pdu)
        elif pdu.command == "deliver_sm":
            self._respond(pdu, "deliver_sm_resp", status=self._on_deliver(pdu))
        elif pdu.command == "enquire_link":
            self._respond(pdu, "enquire_link_resp")
        elif pdu.command == "unbind":
            self._respond(pdu, "unbind_resp")
            raise _NoAnswer("the SMSC unbound the session")
        else:
            self._respond(pdu, "generic_nack", status=consts.SMPP_ESME_RINVCMDID)

    def _keep_alive(self) -> None:
        """enquire_link after `enquire_link_seconds` without a PDU from the SMSC; no answer in time ends the session."""
        now = time.monotonic()
        if self._enquired_at is not None:
            if now - self._enquired_at > self._answer_seconds:
                raise _NoAnswer(f"no answer to enquire_link within {self._answer_seconds:.1f} s")
        elif now - self._heard_at >= self._enquire_link_seconds:
            with self._writing:
                self.client.send_pdu(smpp.make_pdu("enquire_link", client=self.client))
            self._enquired_at = now


@dataclass(frozen=True)
class _Address:
    ton: int
    npi: int
    addr: str


def source_address(sender: str) -> _Address:
    """An alphanumeric sender (TON 5), an international number written with `+` (TON 1), or a short code."""
    if sender.startswith("+") and sender[1:].isdigit():
        return _Address(TON_INTERNATIONAL, NPI_E164, sender[1:])
    if sender.isdigit():
        return _Address(TON_UNKNOWN, NPI_E164, sender)
    return _Address(TON_ALPHANUMERIC, NPI_UNKNOWN, sender)


def encode_parts(text: str) -> tuple[int, list[bytes], int]:
    """(data_coding, short_message of each part, esm_class): GSM-7 one septet an octet, else UCS-2;
    a text longer than one SMS in parts under a concatenation UDH (05 00 03 ref total seq), never
    splitting an escape or a surrogate pair. The number of parts is what `texts.measure` counts."""
    encoding = measure(text).name
    if encoding == "GSM-7":
        units = [GSM7_CODES[char] for char in text]
        single, part = GSM7_SINGLE, GSM7_PART
    else:
        units = [char.encode("utf-16-be") for char in text]
        single, part = 2 * UCS2_SINGLE, 2 * UCS2_PART
    body = b"".join(units)
    if len(body) <= single:
        return DATA_CODING[encoding], [body], 0
    chunks, current = [], b""
    for unit in units:
        if len(current) + len(unit) > part:
            chunks.append(current)
            current = b""
        current += unit
    chunks.append(current)
    reference = random.randrange(256)
    return (DATA_CODING[encoding],
            [bytes([5, 0, 3, reference, len(chunks), number]) + chunk for number, chunk in enumerate(chunks, 1)],
            UDHI)


def read_receipt(pdu: Command) -> tuple[str, str, str] | None:
    """(message_id, stat, err) of a delivery receipt, from its TLVs or its appendix B text; None if it is not one."""
    if not (pdu.esm_class or 0) & RECEIPT:
        return None
    text = (pdu.short_message or pdu.message_payload or b"").decode("latin-1")
    fields: dict[str, str] = {}
    for key, value in RECEIPT_FIELD.findall(text):
        fields.setdefault(key.lower(), value)  # the first: a `text:` quoting the message comes last
    message_id = pdu.receipted_message_id.decode("latin-1") if pdu.receipted_message_id else fields.get("id")
    stat = MESSAGE_STATES.get(pdu.message_state) if pdu.message_state else fields.get("stat", "").upper()
    if not message_id or not stat:
        return None
    return message_id, stat, fields.get("err", "")


class SmppProvider(Provider):
    """SMPP 3.4 over one bound session per process (see the module's docstring)."""

    name = "smpp"
    settings = (
        Setting("HOST", required=True, help="the SMSC's host name or address"),
        Setting("PORT", default="2775", kind="integer"),
        Setting("SYSTEM_ID", required=True, help="the account's system_id (up to 15 characters)"),
        Setting("PASSWORD", required=True, secret=True, help="up to 8 characters"),
        Setting("SYSTEM_TYPE", default="", help="only if the SMSC asks for one"),
        Setting("SOURCE_ADDR", help="the sender the SMSC knows us by; SMS_SENDER if not set"),
        Setting("ENQUIRE_LINK_SECONDS", default="30", kind="number",
                help="an enquire_link after this long without a PDU from the SMSC"),
    )
    pushes_delivery_reports = True

    def __init__(self, host: str, port: int, system_id: str, password: str, *, system_type: str = "",
                 source_addr: str | None = None, enquire_link_seconds: float = 30.0,
                 timeouts: tuple[float, float] = (3.05, 10.0), report_sink: ReportSink | None = None):
        self.host, self.port = host, port
        self._credentials = {"system_id": system_id, "password": password, "system_type": system_type}
        self._source_addr = source_addr
        self._enquire_link_seconds = max(enquire_link_seconds, READ_TICK_SECONDS)
        self._connect_timeout, self._send_timeout = timeouts
        self._sink = report_sink
        self.bind_mode = "bind_transmitter" if report_sink is None else "bind_transceiver"
        self._session: _Session | None = None
        self._binding = threading.Lock()
        self._bind_delay, self._next_bind_at, self._bind_error = 0.0, 0.0, SendResult(Outcome.TRANSIENT)
        self._throttle_lock = threading.Lock()
        self._throttle_delay, self._throttled_until = 0.0, 0.0
        self._parts_lock = threading.Lock()
        self._later_parts: OrderedDict[str, str] = OrderedDict()  # a later part's id -> the first part's
        self._stopping = threading.Event()
        self._keeper_pid: int | None = None  # the process whose thread keeps the session bound

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], shared: Shared) -> SmppProvider:
        return cls(values["HOST"], values["PORT"], values["SYSTEM_ID"], values["PASSWORD"],
                   system_type=values["SYSTEM_TYPE"], source_addr=values["SOURCE_ADDR"],
                   enquire_link_seconds=values["ENQUIRE_LINK_SECONDS"], timeouts=shared.http_timeouts,
                   report_sink=shared.report_sink)

    def format_phone(self, phone: str) -> str:
        return international_digits(phone)

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        deadline = time.monotonic() + self._send_timeout
        held_back = self._hold_back(deadline)
        if held_back:
            return held_back
        try:
            session = self._bound_session(deadline)
        except _BindFailed as error:
            return error.result
        source = source_address(self._source_addr or sender)
        data_coding, parts, esm_class = encode_parts(text)
        ids: list[str] = []
        for number, short_message in enumerate(parts, 1):
            where = f"part {number} of {len(parts)}" if len(parts) > 1 else "the message"
            try:
                answer = session.request(
                    "submit_sm", max(deadline - time.monotonic(), 0.0),
                    source_addr_ton=source.ton, source_addr_npi=source.npi, source_addr=source.addr,
                    dest_addr_ton=TON_INTERNATIONAL, dest_addr_npi=NPI_E164, destination_addr=self.format_phone(phone),
                    esm_class=esm_class, registered_delivery=1, data_coding=data_coding, short_message=short_message)
            except _NotWritten as error:
                outcome = Outcome.UNKNOWN if ids else Outcome.TRANSIENT
                return self._partly(SendResult(outcome, code="not-written", message=f"SMPP: {error}"), ids, where)
            except _NoAnswer as error:
                return self._partly(SendResult(Outcome.UNKNOWN, code="no-answer", message=f"SMPP: {error}"), ids, where)
            if answer.status != consts.SMPP_ESME_ROK:
                return self._partly(self._refused(answer.status), ids, where)
            ids.append((answer.message_id or b"").decode("latin-1"))
            if number > 1:
                self._remember_part(ids[-1], ids[0])  # before the next part: its receipt may come first
        self._calm_down()
        return SendResult(Outcome.SENT, reference=ids[0], code="0",
                          message=f"{len(ids)} parts: {' '.join(ids)}" if len(ids) > 1 else "")

    def close(self) -> None:
        """Unbind and stop binding again (a worker that stops, the tests)."""
        self._stopping.set()
        with self._binding:
            session, self._session = self._session, None
        if session and not session.closed.is_set():
            session.unbind()

    def _bound_session(self, deadline: float) -> _Session:
        """This process's bound session: the one there is, or a new one (after a drop, in a forked child)."""
        if not self._binding.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise _BindFailed(SendResult(Outcome.TRANSIENT, code="binding", message="SMPP: still binding"))
        try:
            session = self._session
            if session and not session.closed.is_set() and session.pid == os.getpid():
                return session
            if self._stopping.is_set():
                raise _BindFailed(SendResult(Outcome.TRANSIENT, code="closed", message="SMPP: the provider was closed"))
            if time.monotonic() < self._next_bind_at:
                raise _BindFailed(self._bind_error)
            try:
                self._session = self._bind()
            except _BindFailed as error:
                self._bind_delay = min(max(2 * self._bind_delay, BIND_RETRY_FIRST), BIND_RETRY_MAX)
                self._next_bind_at, self._bind_error = time.monotonic() + self._bind_delay, error.result
                log.error("SMPP: could not bind to %s:%d (%s); no new bind for %.0f s",
                          self.host, self.port, error, self._bind_delay)
                raise
            self._bind_delay = 0.0
            if self._sink is not None and self._keeper_pid != os.getpid():
                self._keeper_pid = os.getpid()
                threading.Thread(target=self._keep_bound, name="smpp-binder", daemon=True).start()
            return self._session
        finally:
            self._binding.release()

    def _bind(self) -> _Session:
        client = Client(self.host, self.port, timeout=self._connect_timeout, logger_name="smpplib.client",
                        allow_unknown_opt_params=True)
        try:
            client.connect()
            getattr(client, self.bind_mode)(**self._credentials)
        except exceptions.PDUError as error:
            client.disconnect()
            status = error.args[1] if len(error.args) > 1 else None
            outcome = Outcome.AUTH if status in AUTH_BIND_STATUSES else Outcome.TRANSIENT
            raise _BindFailed(SendResult(outcome, code=_code(status), message=f"SMPP bind refused: {error.args[0]}"))
        except (exceptions.ConnectionError, OSError) as error:
            client.disconnect()
            raise _BindFailed(SendResult(Outcome.TRANSIENT, code="unreachable",
                                         message=f"SMPP: cannot reach {self.host}:{self.port} ({_why(error)})"))
        log.info("SMPP: bound to %s:%d (%s)", self.host, self.port, self.bind_mode)
        return _Session(client, self._enquire_link_seconds, self._connect_timeout, self._on_deliver, self._on_closed)

    def _on_closed(self, reason: str) -> None:
        if not self._stopping.is_set():
            log.warning("SMPP: the session to %s:%d ended: %s", self.host, self.port, reason)

    def _keep_bound(self) -> None:
        """With a report sink, from the first bind on: a session stays bound, for receipts while nothing is sent."""
        while not self._stopping.is_set():
            try:
                session = self._bound_session(time.monotonic() + self._send_timeout)
            except _BindFailed:
                self._stopping.wait(max(self._next_bind_at - time.monotonic(), READ_TICK_SECONDS))
                continue
            session.closed.wait()

    def _refused(self, status: int) -> SendResult:
        message = f"SMPP: {consts.DESCRIPTIONS.get(status, 'vendor-specific status')}"
        if status in (ESME_RTHROTTLED, ESME_RMSGQFUL):
            delay = self._slow_down()
            return SendResult(Outcome.TRANSIENT, code=_code(status), message=f"{message}; no submit for {delay:.0f} s")
        if status in AUTH_SUBMIT_STATUSES:
            return SendResult(Outcome.AUTH, code=_code(status), message=message)
        outcome = Outcome.REJECTED if status in REJECTED_STATUSES else Outcome.TRANSIENT
        return SendResult(outcome, code=_code(status), message=message)

    @staticmethod
    def _partly(result: SendResult, ids: list[str], where: str) -> SendResult:
        """A failed send: as it is when nothing was taken; UNKNOWN once some parts were (they went out)."""
        if not ids:
            return result
        return SendResult(Outcome.UNKNOWN, reference=ids[0], code=result.code,
                          message=f"{result.message} at {where}, after parts {' '.join(ids)} were taken")

    def _slow_down(self) -> float:
        """The SMSC is throttling us: no submit from this process for a while, longer each time in a row."""
        with self._throttle_lock:
            self._throttle_delay = min(max(2 * self._throttle_delay, THROTTLE_FIRST), THROTTLE_MAX)
            self._throttled_until = time.monotonic() + self._throttle_delay
            return self._throttle_delay

    def _calm_down(self) -> None:
        with self._throttle_lock:
            self._throttle_delay = 0.0

    def _hold_back(self, deadline: float) -> SendResult | None:
        """Wait out a throttling back-off if it ends before `deadline`; else TRANSIENT without writing."""
        wait = self._throttled_until - time.monotonic()
        if wait <= 0:
            return None
        if time.monotonic() + wait > deadline:
            return SendResult(Outcome.TRANSIENT, code=_code(ESME_RTHROTTLED),
                              message=f"SMPP: the SMSC throttled us; holding back {wait:.1f} s more")
        time.sleep(wait)
        return None

    def _remember_part(self, later: str, first: str) -> None:
        with self._parts_lock:
            self._later_parts[later] = first
            if len(self._later_parts) > REMEMBERED_PARTS:
                self._later_parts.popitem(last=False)

    def _on_deliver(self, pdu: Command) -> int:
        """A deliver_sm: a receipt goes to the report sink; the status is the deliver_sm_resp's."""
        receipt = read_receipt(pdu)
        if receipt is None:
            log.info("SMPP: a deliver_sm that is not a delivery receipt (esm_class 0x%02x) was ignored",
                     pdu.esm_class or 0)
            return consts.SMPP_ESME_ROK
        message_id, stat, err = receipt
        state = RECEIPT_STATES.get(stat)
        if state is None or self._sink is None:  # ENROUTE, ACCEPTD: not final
            return consts.SMPP_ESME_ROK
        with self._parts_lock:
            first = self._later_parts.get(message_id)
        if first is not None and state is Delivery.DELIVERED:
            return consts.SMPP_ESME_ROK
        try:
            self._sink(self.name, first or message_id, DeliveryReport(state, f"{stat} err:{err}" if err else stat))
        except Exception:
            log.exception("SMPP: the receipt for %s could not be kept; the SMSC is asked to send it again",
                          first or message_id)
            return ESME_RX_T_APPN
        return consts.SMPP_ESME_ROK


def _why(error: Exception) -> str:
    """smpplib raises its ConnectionError without a text."""
    return str(error) or type(error).__name__


def _code(status: int | None) -> str:
    return "bind" if status is None else f"0x{status:08x}"
