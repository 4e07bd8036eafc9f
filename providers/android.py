"""Android phones running the SMS Gateway for Android app (private server mode) as gateways.

A pull provider: the worker never sends through it. A message routed to `android` joins the
phones' pool in the outbox (devices.py); the phones lease from it through the device API
(/api/mobile/v1, phones_api.py) and report back. Its settings are read as PHONES_<SETTING>.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from providers.base import Provider, Setting

HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


class AndroidProvider(Provider):
    name = "android"
    pulls = True
    max_segments = 10  # the app sends a long text as a multipart SMS
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting("PRIVATE_TOKEN", required=True, secret=True,
                help="what a phone's user types as the private token (Settings → Cloud Server) to register"),
        Setting("LEASE_SECONDS", kind="integer", default="300",
                help="how long a phone may take to report a message it was handed; it is its validUntil"),
        Setting("GRACE_SECONDS", kind="integer", default="60",
                help="after the lease, how long a late report is still waited for before another phone gets it"),
        Setting("RATE_PER_MINUTE", kind="integer", default="20", help="messages handed to one phone a minute"),
        Setting("RATE_PER_DAY", kind="integer", default="500",
                help="messages handed to one phone a day (DEFAULT_TIMEZONE), under its carrier's cap"),
        Setting("HOURS", default="08:00-21:00", help="when phones send, HH:MM-HH:MM in DEFAULT_TIMEZONE"),
        Setting("OFFLINE_SECONDS", kind="integer", default="180",
                help="a phone unseen this long is offline: it gets nothing new"),
        Setting("SIM", kind="integer", default="0", help="the SIM slot (1-3) phones send from; 0: the phone's default"),
        Setting("EVENTS_PORT", kind="integer", default="5001",
                help="port of the event stream process (sms_bulk_app.py phones-events), on 127.0.0.1"),
    )

    @classmethod
    def env_name(cls, setting: Setting) -> str:
        return f"PHONES_{setting.name}"

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> list[str]:
        found = []
        if values.get("HOURS") is not None and not HOURS.match(values["HOURS"]):
            found.append("PHONES_HOURS must be HH:MM-HH:MM, such as 08:00-21:00")
        if values.get("SIM") is not None and values["SIM"] > 3:
            found.append("PHONES_SIM must be 0 (the phone's default) or a SIM slot from 1 to 3")
        for name in ("LEASE_SECONDS", "RATE_PER_MINUTE", "RATE_PER_DAY", "OFFLINE_SECONDS"):
            if values.get(name) == 0:
                found.append(f"PHONES_{name} must be at least 1")
        return found
