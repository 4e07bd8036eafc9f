"""From a journaled message to the gateway's verdict: look up the phone, render, send, record."""
from __future__ import annotations

import logging

from config import Config
from moyklass import MoyKlassClient, MoyKlassError, template_fields
from phones import InvalidPhone, e164, mask, parse_phone
from providers import Outcome, Provider, SendResult
from store import FAILED, SENDING, SENT, Store
from texts import measure, transliterate

log = logging.getLogger(__name__)


class NoPhone(Exception):
    pass


class Dispatcher:
    def __init__(self, config: Config, store: Store, moyklass: MoyKlassClient | None,
                 provider: Provider):
        self.config = config
        self.store = store
        self.moyklass = moyklass
        self.provider = provider

    def deliver_to_user(self, message_id: int, event: str | None, user_id: int) -> SendResult:
        """Send the event's text to a MoyKlass user's phone.

        Raises MoyKlassError (and its UserNotFound, MoyKlassUnavailable), NoPhone or
        InvalidPhone after marking the message FAILED; a gateway refusal is a SendResult.
        """
        try:
            user = self.moyklass.get_user(user_id)
            if not user.get("phone"):
                raise NoPhone(f"MoyKlass user {user_id} has no phone")
            number = parse_phone(user["phone"], self.config.default_region)
        except (MoyKlassError, NoPhone, InvalidPhone) as error:
            log.warning("Message %d (event %s, user %d) failed: %s", message_id, event, user_id, error)
            self.store.transition(message_id, FAILED, error_code=type(error).__name__,
                                  last_error=str(error))
            raise
        text = self.config.template_for(event).render(template_fields(user))
        if self.config.sms_transliterate:
            text = transliterate(text)
        encoding = measure(text)
        self.store.transition(message_id, SENDING, phone=e164(number), text=text,
                              encoding=encoding.name, segments=encoding.segments,
                              provider=self.provider.name)
        if encoding.segments > self.provider.max_segments:
            result = SendResult(Outcome.REJECTED, code="too-long",
                                message=f"the text needs {encoding.segments} SMS; {self.provider.name}"
                                        f" takes at most {self.provider.max_segments}")
        else:
            result = self.provider.send(number, text, self.config.sms_sender)
        where = (f"message {message_id} (event {event}, user {user_id}) to {mask(e164(number))}"
                 f" via {self.provider.name}")
        if result.ok:
            self.store.transition(message_id, SENT, gateway_ref=result.reference, error_code=result.code)
            log.info("Sent %s: ref %s, %d SMS %s", where, result.reference, encoding.segments,
                     encoding.name)
        else:
            self.store.transition(message_id, FAILED, gateway_ref=result.reference,
                                  error_code=result.code, last_error=result.message)
            log.error("Gateway refused %s: %s, code %s: %s", where, result.outcome.value,
                      result.code, result.message)
        return result
