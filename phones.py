"""Phone numbers: parse and validate with libphonenumber, format per provider, mask for logs."""
from __future__ import annotations

import re

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType


class InvalidPhone(ValueError):
    """A number refused. Its text shows the number masked (it may reach a log); `reason` is what is
    wrong with it, for whoever shows the number as it was typed."""

    def __init__(self, shown: str, reason: str) -> None:
        super().__init__(shown, reason)
        self.shown, self.reason = shown, reason

    def __str__(self) -> str:
        return f"{self.shown} {self.reason}"


# The number types libphonenumber says can receive SMS. FIXED_LINE_OR_MOBILE is where a
# country's plan does not tell them apart (the US, Canada). PERSONAL_NUMBER, VOIP, PAGER and
# the rest may or may not take an SMS depending on the service behind them: that cannot be
# relied on, so they are refused along with landlines, premium-rate and toll-free numbers.
SMS_NUMBER_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
NUMBER_TYPE_NAMES = {PhoneNumberType.FIXED_LINE: "landline", PhoneNumberType.PREMIUM_RATE: "premium-rate",
                     PhoneNumberType.TOLL_FREE: "toll-free", PhoneNumberType.SHARED_COST: "shared-cost",
                     PhoneNumberType.VOIP: "VoIP", PhoneNumberType.PERSONAL_NUMBER: "personal (forwarding)",
                     PhoneNumberType.PAGER: "pager", PhoneNumberType.UAN: "company (UAN)",
                     PhoneNumberType.VOICEMAIL: "voicemail"}


def to_e164(raw: str, default_region: str) -> str:
    """Validate any common form (`064…`, `+381…`, `00381…`, MoyKlass' bare `381641234567`)
    and return it in E.164 (`+381641234567`), the form the outbox keeps.

    Only numbers that can receive SMS pass (SMS_NUMBER_TYPES): a landline or a premium-rate
    number is valid but refused, naming what it is. The first form that is a valid number
    decides.
    """
    text = str(raw).strip()
    candidates = [text]
    digits = re.sub(r"\D", "", text)
    if digits and not text.startswith(("+", "0")):
        # MoyKlass stores international numbers as bare digits; libphonenumber would read
        # them as national ones, so try them as international first.
        candidates.insert(0, "+" + digits)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, default_region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
            kind = phonenumbers.number_type(number)
            if kind not in SMS_NUMBER_TYPES:
                raise InvalidPhone(mask(e164), f"is a {NUMBER_TYPE_NAMES.get(kind, 'non-mobile')} number:"
                                               " it cannot receive SMS")
            return e164
    shown = mask(text) if digits else repr(text[:20])
    raise InvalidPhone(shown, f"is not a valid phone number (default region {default_region})")


def international_digits(e164: str) -> str:
    """E.164 without the `+`: the form OneClick and SMS Aero expect."""
    return e164.lstrip("+")


def mask(phone: str) -> str:
    """Hide all but the country prefix and the last two digits: `+381641234567` -> `+381*******67`."""
    digits = re.sub(r"\D", "", phone)
    if len(digits) < 4:
        return "*" * len(digits)
    keep_head = 3 if len(digits) >= 10 else 0
    masked = digits[:keep_head] + "*" * (len(digits) - keep_head - 2) + digits[-2:]
    return ("+" if phone.lstrip().startswith("+") else "") + masked


# What people put between a phone's digit groups: spaces and tabs, dashes (ASCII and U+2010-2014),
# parentheses, dots, slashes, underscores, commas, and `+` (a space in a query string).
PHONE_SEPARATORS = " \t\\-\u2010-\u2014()./_,+"
# A run of 7 or more digits broken by up to 3 separators at a time ("+381 64 123-4567",
# "(064) (123) (4567)", "064 - 123 - 4567", "064+123+4567", "064_123_4567"): anything shaped like a
# phone number in free text. `_phone_shaped` then lets through the ordinary things among them.
PHONE_IN_TEXT = re.compile(rf"\+?\(?\d(?:[{PHONE_SEPARATORS}]{{0,3}}\d){{6,}}")
# Separators that also write dates, decimals, paths, addresses and lists of figures. `+` is not one
# of them: in a URL it is a space.
ORDINARY_SEPARATORS = frozenset("\t./_,")
# A date at the start of a match: ISO (2026-11-23), or day.month.year / year/month/day forms.
LEADING_DATE = re.compile(r"^(?:\d{4}-\d{2}-\d{2}|\d{1,2}([./])\d{1,2}\1\d{4}|\d{4}([./])\d{1,2}\2\d{1,2})(?!\d)")
IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")


def _phone_shaped(found: str) -> bool:
    """Whether a PHONE_IN_TEXT match is a phone rather than a short figure or an IP address.

    A number written with ORDINARY_SEPARATORS must have the 9 digits of the shortest national
    number, and not be an IP address: `23.11.2026`, `0.125`, `1,2,3,4,5,6,7` stay readable. A
    long decimal (a Unix time such as 1795000000.25) is masked too: `064.1234567` is written the
    same way, and a masked figure costs less than a phone in a log.
    """
    if ORDINARY_SEPARATORS.isdisjoint(found):
        return True
    if sum(char.isdigit() for char in found) < 9:
        return False
    return not IPV4.fullmatch(found)


def mask_phones_in(text: str) -> str:
    """Mask every phone-shaped run of digits in free text (log messages, exception texts)."""

    def replace(match: re.Match) -> str:
        found = match.group(0)
        date = LEADING_DATE.match(found)
        if date:
            return found[:date.end()] + PHONE_IN_TEXT.sub(replace, found[date.end():])
        return mask(found) if _phone_shaped(found) else found

    return PHONE_IN_TEXT.sub(replace, text)
