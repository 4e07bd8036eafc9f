"""SMS texts: templates, GSM-7 / UCS-2 detection, segment counting, transliteration."""
from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

# Placeholders a template may use; filled from the MoyKlass user (see moyklass.template_fields).
TEMPLATE_FIELDS = frozenset({"name", "first_name", "user_id", "email", "balans"})

# GSM 03.38 basic character set (one septet each) and its extension table (escape + char).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

# Serbian Cyrillic -> Latin -> GSM-7 ASCII, Serbian Latin diacritics -> ASCII, plus the
# Russian letters Serbian lacks, and typographic punctuation that phones and editors insert.
_TRANSLITERATION = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "ђ": "dj", "е": "e", "ж": "z",
    "з": "z", "и": "i", "ј": "j", "к": "k", "л": "l", "љ": "lj", "м": "m", "н": "n",
    "њ": "nj", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "ћ": "c", "у": "u",
    "ф": "f", "х": "h", "ц": "c", "ч": "c", "џ": "dz", "ш": "s",
    "ё": "e", "й": "j", "щ": "sc", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "ju", "я": "ja",
    "č": "c", "ć": "c", "ž": "z", "š": "s", "đ": "dj",
    "‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "«": '"', "»": '"',
    "–": "-", "—": "-", "…": "...", "\u00a0": " ",
}


def _capitalized(latin: str) -> str:
    return latin[:1].upper() + latin[1:]


_TRANSLITERATION.update(
    {letter.upper(): _capitalized(latin) for letter, latin in list(_TRANSLITERATION.items())
     if letter.upper() != letter}
)


class TemplateError(ValueError):
    pass


class Template:
    """A `str.format` template restricted to plain, known placeholders such as `{name}`."""

    def __init__(self, source: str, fields: frozenset[str] = TEMPLATE_FIELDS):
        self.source = source
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as error:
            raise TemplateError(f"broken template ({error}); write a literal brace as {{{{ or }}}}")
        used = [(name, spec, conversion) for _literal, name, spec, conversion in parsed if name is not None]
        unknown = sorted({name for name, _spec, _conversion in used if name not in fields})
        if unknown:
            raise TemplateError(f"unknown placeholder{'s' if len(unknown) > 1 else ''} "
                                + ", ".join(f"{{{name}}}" for name in unknown) + "; use one of "
                                + ", ".join(f"{{{f}}}" for f in sorted(fields)))
        for name, spec, conversion in used:
            if spec or conversion:
                raise TemplateError(f"placeholder {{{name}}} with a format or conversion"
                                    f" ({'!' + conversion if conversion else ':' + spec}): write it as {{{name}}}")
        self.placeholders = frozenset(name for name, _spec, _conversion in used)

    def render(self, values: Mapping[str, object]) -> str:
        return self.source.format_map({k: "" if v is None else v for k, v in values.items()})


def transliterate(text: str) -> str:
    """Rewrite letters GSM-7 lacks (Serbian Cyrillic, č ć ž š đ, …) into GSM-7 ASCII."""
    out = []
    for char in text:
        if char in GSM7_BASIC or char in GSM7_EXTENDED:
            out.append(char)
        elif char in _TRANSLITERATION:
            out.append(_TRANSLITERATION[char])
        else:
            stripped = "".join(
                c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)
            )
            out.append(stripped if stripped and all(c in GSM7_BASIC for c in stripped) else char)
    return "".join(out)


@dataclass(frozen=True)
class Encoding:
    name: str  # "GSM-7" or "UCS-2"
    segments: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2


def _pack(unit_sizes: list[int], single: int, part: int) -> int:
    """Segments needed, never splitting a character (escape pair, surrogate pair) across two."""
    total = sum(unit_sizes)
    if total <= single:
        return 1
    segments, used = 1, 0
    for size in unit_sizes:
        if used + size > part:
            segments, used = segments + 1, 0
        used += size
    return segments


def measure(text: str) -> Encoding:
    """The encoding a phone will use for `text` and how many SMS it takes."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text):
        sizes = [2 if c in GSM7_EXTENDED else 1 for c in text]
        return Encoding("GSM-7", _pack(sizes, GSM7_SINGLE, GSM7_PART), sum(sizes))
    sizes = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return Encoding("UCS-2", _pack(sizes, UCS2_SINGLE, UCS2_PART), sum(sizes))


def too_many_parts(text: str, max_segments: int, counted: str = "") -> str | None:
    """Why `text` cannot be sent by a provider taking at most `max_segments` parts; None if it can."""
    parts = measure(text).segments
    if parts <= max_segments:
        return None
    return f"the text needs {parts} SMS parts{counted}; the SMS provider takes at most {max_segments}"
