"""A simulated phone running SMS Gateway for Android 1.68.0 in private server mode, "SSE Only".

It makes the app's requests (its GatewayApi) in the app's order: registration with the private
token (or, with a stored token, PATCH /device first: a 401 makes it register again), the event
stream held open (reconnecting after a pause), GET /message on opening and on each event, and a
full state snapshot PATCHed on every change of a message (Processed, Sent, Delivered, or Failed
"TTL expired" past its validUntil, or Cancelled), each retried up to 10 times with backoff.
Instead of a radio it keeps `radio`: every SMS it "sent". `network` off fails its requests (SMS
still go out); `power_off()` stops everything until `power_on()`, which restarts the app.

    python -m tests.phone_sim --url http://127.0.0.1:5000/api/mobile/v1 --token PRIVATE [--phones 3]
"""
from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from tests.fakes import interruptible

USER_AGENT = "me.capcom.smsgateway/1.68.0"
REPORT_TRIES = 10


def app_date(moment: float | None = None) -> str:
    """The app's Gson date form, yyyy-MM-dd'T'HH:mm:ss.SSSXXX."""
    return datetime.fromtimestamp(time.time() if moment is None else moment, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class LocalMessage:
    """A message in the app's own database."""

    id: str
    phones: list[str]
    text: str
    valid_until: float | None
    sim: int | None
    state: str = "Pending"
    states: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    pulled_at: float = field(default_factory=time.time)


class PhoneSim:
    def __init__(self, url: str, private_token: str, name: str = "Google/sdk_gphone64_x86_64",
                 events_url: str | None = None, send_seconds: float = 0.0, delivery_seconds: float = 0.05,
                 reconnect_seconds: float = 5.0, report_backoff: float = 0.25):
        self.url = url.rstrip("/")
        self.events_url = (events_url or self.url).rstrip("/") + "/events"
        self.private_token = private_token
        self.name = name
        self.send_seconds = send_seconds
        self.delivery_seconds = delivery_seconds
        self.reconnect_seconds = reconnect_seconds
        self.report_backoff = report_backoff
        self.registration: dict[str, str] | None = None
        self.local: dict[str, LocalMessage] = {}
        self.radio: list[tuple[str, str, str]] = []  # (message id, number, text) of every SMS sent
        self.events: list[tuple[float, str]] = []  # (time.time(), event type) received
        self.pulls: list[tuple[float, int]] = []  # (time.time(), messages received) of each GET /message
        self.network = True
        self.hold = False  # True: pulled messages wait (the app's own queue), none is sent
        self.send_budget: int | None = None  # a test's control: send this many more, then hold
        self._powered = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.RLock()
        self._reports: queue.Queue[tuple[str, int]] = queue.Queue()
        self._to_send: queue.Queue[str] = queue.Queue()
        self._stream: requests.Response | None = None
        self._http = requests.Session()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---

    def start(self) -> PhoneSim:
        self._powered.set()
        self._boot()
        for target in (self._events_loop, self._send_loop, self._report_loop):
            thread = threading.Thread(target=target, daemon=True, name=f"sim-{self.name}-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._powered.set()  # wake the loops so that they see the stop
        self._close_stream()

    def power_off(self) -> None:
        self._powered.clear()
        self._close_stream()

    def power_on(self) -> None:
        """The app starts again: PATCH /device with its token (registers anew on a 401), then its stream."""
        self._boot()
        self._powered.set()
        with self._lock:  # what it holds goes to the sender again (past validUntil: Failed "TTL expired")
            for message in self.local.values():
                if message.state == "Pending":
                    self._to_send.put(message.id)

    @property
    def device_id(self) -> str:
        assert self.registration
        return self.registration["id"]

    def _boot(self) -> None:
        if self.registration:
            try:
                self._call("PATCH", "/device", self.registration["token"],
                           {"id": self.registration["id"], "pushToken": None, "simCards": self._sims()})
                return
            except requests.HTTPError as error:
                if error.response.status_code != 401:
                    raise
        answer = self._call("POST", "/device", self.private_token,
                            {"name": self.name, "pushToken": None, "simCards": self._sims()})
        self.registration = answer.json()

    @staticmethod
    def _sims() -> list[dict[str, Any]]:
        return [{"slotIndex": 0, "simNumber": 1, "phoneNumber": "********4567", "carrierName": "MTS",
                 "iccid": "***************1234"}]

    def _call(self, method: str, path: str, token: str, body: Any = None,
              params: dict[str, str] | None = None) -> requests.Response:
        if not self.network:
            raise requests.ConnectionError("the phone has no network")
        headers = {"User-Agent": USER_AGENT, "Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        response = self._http.request(method, self.url + path, headers=headers, params=params, timeout=10,
                                      data=None if body is None else json.dumps(body))
        response.raise_for_status()  # the app: any non-2xx is an exception
        return response

    # --- the event stream, and pulls ---

    def _events_loop(self) -> None:
        while not self._stopped.is_set():
            self._powered.wait()
            if self._stopped.is_set():
                return
            try:
                if not self.network:
                    raise requests.ConnectionError("the phone has no network")
                with self._http.get(self.events_url, stream=True, timeout=(5, 60),
                                    headers={"User-Agent": USER_AGENT,
                                             "Authorization": f"Bearer {self.registration['token']}"}) as response:
                    response.raise_for_status()
                    self._stream = response
                    self.pull()  # on opening
                    event = None
                    for line in response.iter_lines(decode_unicode=True):
                        if not self._powered.is_set() or self._stopped.is_set():
                            break
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            self._on_event(event or "MessageEnqueued", line[5:].strip())
                            event = None
            except (requests.RequestException, AttributeError, ValueError):
                pass
            finally:
                self._stream = None
            self._stopped.wait(self.reconnect_seconds)

    def _close_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            try:
                stream.raw._fp.fp.raw._sock.shutdown(2)  # unblock iter_lines at once
            except (AttributeError, OSError):
                stream.close()

    def _on_event(self, event: str, data: str) -> None:
        self.events.append((time.time(), event))
        if event == "MessageEnqueued":
            self.pull()
        elif event == "MessageCancelled":
            message_id = json.loads(data)["messageId"]
            self._cancel_local(message_id)

    def pull(self) -> None:
        """GET /message, and each message handled as the app's GatewayService.processMessage does."""
        try:
            messages = self._call("GET", "/message", self.registration["token"], params={"order": "lifo"}).json()
        except requests.RequestException:
            return
        self.pulls.append((time.time(), len(messages)))
        for item in messages:
            with self._lock:
                known = self.local.get(item["id"])
                if item.get("state") == "Cancelling":
                    if known is None:
                        self._queue_report(LocalMessage(item["id"], item["phoneNumbers"], "", None, None,
                                                        "Cancelled", {"Cancelled": app_date()}))
                    else:
                        self._cancel_local(item["id"])
                    continue
                if known is not None:  # it has it already: its state again (SendStateWorker)
                    self._queue_report(known)
                    continue
                valid_until = datetime.fromisoformat(item["validUntil"]).timestamp() if item.get("validUntil") else None
                message = LocalMessage(item["id"], item["phoneNumbers"], item["textMessage"]["text"], valid_until,
                                       item.get("simNumber"), states={"Pending": app_date()})
                self.local[item["id"]] = message
                self._to_send.put(item["id"])

    def _cancel_local(self, message_id: str) -> None:
        with self._lock:
            message = self.local.get(message_id)
            if message is not None and message.state == "Pending":
                self._change(message, "Cancelled")

    # --- sending, and the reports ---

    def _send_loop(self) -> None:
        while not self._stopped.is_set():
            self._powered.wait()
            try:
                message_id = self._to_send.get(timeout=0.1)
            except queue.Empty:
                continue
            while (self.hold or self.send_budget == 0) and not self._stopped.is_set():
                time.sleep(0.05)
            if not self._powered.is_set():  # switched off: picked up again by power_on
                continue
            with self._lock:
                message = self.local[message_id]
                if message.state != "Pending":
                    continue
                if message.valid_until is not None and message.valid_until < time.time():
                    message.error = "TTL expired"
                    self._change(message, "Failed")
                    continue
                for number in message.phones:
                    self.radio.append((message.id, number, message.text))
                if self.send_budget is not None:
                    self.send_budget -= 1
                self._change(message, "Processed")
            time.sleep(self.send_seconds)
            with self._lock:
                self._change(message, "Sent")
            if self.delivery_seconds >= 0:
                threading.Timer(self.delivery_seconds, self._delivered, (message,)).start()

    def _delivered(self, message: LocalMessage) -> None:
        with self._lock:
            if message.state == "Sent":
                self._change(message, "Delivered")

    def _change(self, message: LocalMessage, state: str) -> None:
        message.state = state
        message.states[state] = app_date()
        self._queue_report(message)

    def _queue_report(self, message: LocalMessage) -> None:
        self.local.setdefault(message.id, message)
        self._reports.put((message.id, 0))

    def _snapshot(self, message: LocalMessage) -> dict[str, Any]:
        return {"id": message.id, "state": message.state,
                "recipients": [{"phoneNumber": number, "state": message.state, "error": message.error}
                               for number in message.phones],
                "states": dict(message.states)}

    def _report_loop(self) -> None:
        """SendStateWorker: the full snapshot, up to 10 tries with a doubling pause."""
        while not self._stopped.is_set():
            self._powered.wait()
            try:
                message_id, tries = self._reports.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                snapshot = self._snapshot(self.local[message_id])
            if not self._powered.is_set():
                self._reports.put((message_id, tries))
                continue
            try:
                self._call("PATCH", "/message", self.registration["token"], [snapshot])
            except requests.RequestException:
                if tries + 1 < REPORT_TRIES:
                    threading.Timer(min(self.report_backoff * 2 ** tries, 8.0), self._reports.put,
                                    ((message_id, tries + 1),)).start()

    def unreported(self) -> int:
        return self._reports.qsize()


def main() -> None:
    interruptible()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server's URL as typed into the app: https://host/api/mobile/v1")
    parser.add_argument("--token", required=True, help="the private token (PHONES_PRIVATE_TOKEN)")
    parser.add_argument("--events-url", help="where /events is served, if not at --url (no nginx in front)")
    parser.add_argument("--phones", type=int, default=1)
    args = parser.parse_args()
    sims = [PhoneSim(args.url, args.token, f"Sim/phone{n}", args.events_url).start() for n in range(args.phones)]
    print("registered phones " + ", ".join(sim.device_id for sim in sims) + "; Ctrl+C stops")
    seen = 0
    try:
        while True:
            time.sleep(1)
            radio = [entry for sim in sims for entry in sim.radio]
            for message_id, number, text in radio[seen:]:
                print(f"sent {message_id} to {number[:4]}***{number[-2:]}: {text}")
            seen = len(radio)
    except KeyboardInterrupt:
        for sim in sims:
            sim.stop()


if __name__ == "__main__":
    main()
