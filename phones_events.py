"""GET /api/mobile/v1/events: the phones' Server-Sent Events, served by a process of its own.

Each phone keeps its stream open for hours. Under gunicorn's gthread workers every open stream
would hold one of the few threads that webhooks and the API need, so the streams are served here
instead: one asyncio process (`sms_bulk_app.py phones-events`, unit sms_bulk_app-phones.service)
on 127.0.0.1:PHONES_EVENTS_PORT, where an open stream costs a socket and a few kilobytes; nginx
routes /api/mobile/v1/events to it. Standard library only (asyncio), no new dependency.

Wake-ups come from the database, the one truth: every TICK_SECONDS one cheap indexed query
(Store.phone_pool) tells whether messages wait for a phone, for all streams together, whatever
their number (on PostgreSQL as on SQLite; LISTEN/NOTIFY would save the polling but not the query,
and the tick already keeps a message's way to a phone well under a second). A phone with room
under its rate limits, inside PHONES_HOURS, hears `MessageEnqueued` when the pool grows and again
every RESIGNAL_SECONDS while it is not empty (the app pulls only on an event or its own poll);
a phone holding a message of a cancelled mailing hears `MessageCancelled`; every stream gets a
`:keepalive` comment every 15 s, and each phone's `events_until` is renewed then (its health).
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass, field

import devices
from errors import ApiError
from store import Store

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25
RESIGNAL_SECONDS = 2.0
KEEPALIVE_SECONDS = 15.0
CANCEL_CHECK_SECONDS = 1.0
STREAM_ALIVE_SECONDS = 3 * KEEPALIVE_SECONDS  # events_until: open until then, unless renewed
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 10.0
EVENTS_PATH = "/api/mobile/v1/events"


@dataclass(eq=False)
class Stream:
    device: devices.Device
    writer: asyncio.StreamWriter
    signalled_at: float = 0.0  # when it last heard MessageEnqueued (monotonic)
    signalled_for: float = 0.0  # the pool's latest change it was told of
    cancelled: set[int] = field(default_factory=set)  # messages it was told to cancel

    async def send(self, chunk: str) -> None:
        data = chunk.encode()
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()


class EventHub:
    def __init__(self, store: Store, settings: devices.PhoneSettings):
        self.store = store
        self.settings = settings
        self.streams: set[Stream] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            method, path, headers = _parse_head(head)
            if method != "GET" or path.split("?")[0] != EVENTS_PATH:
                return await _answer_error(writer, 404, "not found")
            try:
                device = await asyncio.to_thread(devices.authenticate, self.store, self.settings,
                                                 headers.get("authorization", ""), headers.get("user-agent", ""),
                                                 time.time())
            except ApiError as error:
                return await _answer_error(writer, error.status_code, error.message)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         b"X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n")
            stream = Stream(device, writer)
            self.streams.add(stream)
            await asyncio.to_thread(self.store.set_device_events, [device.id], time.time() + STREAM_ALIVE_SECONDS,
                                    time.time())
            log.info("Phone %d opened its event stream (%d open)", device.id, len(self.streams))
            await stream.send(":connected\n\n")
            while await reader.read(1024):  # the phone sends nothing more; EOF: it went away
                pass
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            if stream is not None:
                self.streams.discard(stream)
                log.info("Phone %d closed its event stream (%d open)", stream.device.id, len(self.streams))
                # Shielded: at shutdown the handler is cancelled, and the phone must not stay shown connected.
                await asyncio.shield(asyncio.to_thread(self.store.set_device_events, [stream.device.id], None,
                                                       time.time()))

    async def run_ticks(self, stop: asyncio.Event) -> None:
        """The wake-ups: one database read a tick for every stream together."""
        next_keepalive = next_cancel_check = time.monotonic()
        while not stop.is_set():
            try:
                if self.streams:
                    await self._signal_pool()
                    if time.monotonic() >= next_cancel_check:
                        await self._signal_cancelled()
                        next_cancel_check = time.monotonic() + CANCEL_CHECK_SECONDS
                    if time.monotonic() >= next_keepalive:
                        await self._keepalive()
                        next_keepalive = time.monotonic() + KEEPALIVE_SECONDS
            except Exception:  # the database away for a while: the streams stay, the next tick tries again
                log.exception("Event streams: a tick failed; trying again")
            try:
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            except TimeoutError:
                pass

    async def _signal_pool(self) -> None:
        waiting, latest = await asyncio.to_thread(self.store.phone_pool)
        now = time.time()
        if not waiting or self.settings.window_close(now) is None:
            return
        due = [s for s in self.streams if latest > s.signalled_for
               or time.monotonic() - s.signalled_at >= RESIGNAL_SECONDS]
        if not due:
            return
        handed = await asyncio.to_thread(self.store.device_handouts, now - 60, self.settings.day_start(now))
        for stream in due:
            minute, day = handed.get(stream.device.id, (0, 0))
            if minute < self.settings.rate_per_minute and day < self.settings.rate_per_day:
                stream.signalled_at, stream.signalled_for = time.monotonic(), latest
                await self._send(stream, "event: MessageEnqueued\ndata: null\n\n")

    async def _signal_cancelled(self) -> None:
        by_device = {}
        for stream in self.streams:
            by_device.setdefault(stream.device.id, []).append(stream)
        for device_id, message_id, created_at in await asyncio.to_thread(self.store.phones_cancelling):
            for stream in by_device.get(device_id, []):
                if message_id not in stream.cancelled:
                    stream.cancelled.add(message_id)
                    payload = json.dumps({"messageId": devices.public_id({"id": message_id, "created_at": created_at})})
                    await self._send(stream, f"event: MessageCancelled\ndata: {payload}\n\n")

    async def _keepalive(self) -> None:
        """A keepalive to each stream; those of a phone disabled or revoked since they opened are
        ended instead (its next connection is refused), at most KEEPALIVE_SECONDS after the change."""
        active = {device.id for device in await asyncio.to_thread(self.store.devices)
                  if device.disabled_at is None and not device.revoked}
        for stream in list(self.streams):
            if stream.device.id in active:
                await self._send(stream, ":keepalive\n\n")
            else:
                stream.writer.close()
                self.streams.discard(stream)
        now = time.time()
        await asyncio.to_thread(self.store.set_device_events, sorted({s.device.id for s in self.streams}),
                                now + STREAM_ALIVE_SECONDS, now)

    async def _send(self, stream: Stream, chunk: str) -> None:
        try:
            await asyncio.wait_for(stream.send(chunk), KEEPALIVE_SECONDS)
        except (TimeoutError, ConnectionError):  # gone or stuck: its handler closes it
            stream.writer.close()
            self.streams.discard(stream)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _answer_error(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = json.dumps({"status": "error", "message": message}).encode()
    writer.write(b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (status, len(body), body))
    await writer.drain()


async def serve(store: Store, settings: devices.PhoneSettings, host: str = "127.0.0.1") -> None:
    """Serve the event streams on host:PHONES_EVENTS_PORT until SIGTERM or SIGINT."""
    hub = EventHub(store, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(hub.handle, host, settings.events_port, limit=HEAD_LIMIT, backlog=1024)
    log.info("Phones' event streams served on %s:%d", host, settings.events_port)
    async with server:
        await hub.run_ticks(stop)
        open_streams = sorted({s.device.id for s in hub.streams})
        for stream in list(hub.streams):
            stream.writer.close()
        await asyncio.to_thread(store.set_device_events, open_streams, None, time.time())
    log.info("Phones' event streams stopped")
