"""http_client.py against the fake OneClick: keep-alive, a connection the gateway closed, timeouts."""
from __future__ import annotations

import threading
import time

import pytest

from http_client import KeepAliveClient, Unreachable

HEADERS = {"username": "smartlab", "pwd": "oneclick-pass", "Content-Type": "application/json; charset=utf-8"}
BODY = {"sender": "SmartLab", "message": "Zdravo", "phone": "381641234567"}


def test_threads_keep_their_connections_open(oneclick):
    gateway = KeepAliveClient(oneclick.send_url, (3, 5))

    def send_many() -> None:
        for _ in range(25):
            assert gateway.post_json(gateway.path, BODY, HEADERS).json()["Status"] == 0

    threads = [threading.Thread(target=send_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(oneclick.messages) == 100
    assert oneclick.connections == 4


def test_a_connection_the_gateway_closed_is_replaced_before_sending(oneclick):
    gateway = KeepAliveClient(oneclick.send_url, (3, 5))
    assert gateway.post_json(gateway.path, BODY, HEADERS).status == 200
    oneclick.drop_connections()  # the gateway's idle timeout
    time.sleep(0.05)
    assert gateway.post_json(gateway.path, BODY, HEADERS).json()["Status"] == 0
    assert len(oneclick.messages) == 2 and oneclick.connections == 2


def test_a_slow_gateway_is_a_timeout_and_a_missing_one_cannot_be_reached(oneclick):
    oneclick.latency = 0.5
    gateway = KeepAliveClient(oneclick.send_url, (3, 0.2))
    with pytest.raises(Unreachable) as slow:
        gateway.post_json(gateway.path, BODY, HEADERS)
    assert slow.value.code == "timeout" and str(slow.value) == "no whole answer within 0.2 s"
    assert slow.value.reached  # the request was sent: the gateway may have taken it
    oneclick.stop()
    with pytest.raises(Unreachable) as gone:
        gateway.post_json(gateway.path, BODY, HEADERS)
    assert gone.value.code == "connection" and "ConnectionRefusedError" in str(gone.value)
    assert not gone.value.reached


def test_an_answer_trickled_byte_by_byte_ends_at_the_whole_request_deadline(oneclick):
    """Each byte comes well inside any per-read timeout; the whole answer would take ~2.5 s."""
    oneclick.trickle_seconds = 0.025
    gateway = KeepAliveClient(oneclick.send_url, (3, 0.5))
    started = time.monotonic()
    with pytest.raises(Unreachable) as trickled:
        gateway.post_json(gateway.path, BODY, HEADERS)
    took = time.monotonic() - started
    assert trickled.value.code == "timeout" and trickled.value.reached
    assert 0.5 <= took < 0.9
    assert len(oneclick.messages) == 1  # it was taken: exactly the case the outbox counts as unknown
