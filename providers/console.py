"""The console provider: SMS go to the log, not to a gateway."""
from __future__ import annotations

import logging
import uuid

from providers.base import Outcome, Provider, SendResult

log = logging.getLogger(__name__)


class ConsoleProvider(Provider):
    """Writes each SMS to the log instead of sending it: for trying the service out."""

    name = "console"

    def send(self, phone: str, text: str, sender: str) -> SendResult:
        reference = f"console-{uuid.uuid4().hex[:12]}"
        log.warning("CONSOLE SMS (not sent) from %s to %s, ref %s: %s",
                    sender, self.format_phone(phone), reference, text)
        return SendResult(Outcome.SENT, reference=reference, code="0", message="written to the log")
