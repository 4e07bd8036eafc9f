"""Encodings, segment counts, transliteration, templates; phone parsing and masking."""
from __future__ import annotations

import pytest

from phones import InvalidPhone, international_digits, mask, mask_phones_in, to_e164
from texts import TEMPLATE_FIELDS, Template, TemplateError, measure, transliterate


@pytest.mark.parametrize("text, expected", [
    ("a" * 160, ("GSM-7", 1)),
    ("a" * 161, ("GSM-7", 2)),
    ("a" * 306, ("GSM-7", 2)),
    ("a" * 307, ("GSM-7", 3)),
    ("{" * 80, ("GSM-7", 1)),  # escape + char: 160 septets
    ("{" * 81, ("GSM-7", 2)),
    ("a" * 152 + "€" + "a" * 10, ("GSM-7", 2)),  # the escape pair is not split
    ("č" * 70, ("UCS-2", 1)),
    ("č" * 71, ("UCS-2", 2)),
    ("Здраво" + "a" * 128, ("UCS-2", 2)),
    ("😀" * 35, ("UCS-2", 1)),  # surrogate pairs: two units each
    ("", ("GSM-7", 1)),
])
def test_encoding_and_segments(text, expected):
    encoding = measure(text)
    assert (encoding.name, encoding.segments) == expected


def test_transliteration_of_serbian_latin_and_cyrillic():
    assert transliterate("čćžšđ ČĆŽŠĐ") == "cczsdj CCZSDj"
    assert transliterate("Љубица Ђорђевић, Џон, Шабац") == "Ljubica Djordjevic, Dzon, Sabac"
    assert transliterate("„Čas“ — sutra…") == '"Cas" - sutra...'
    assert transliterate("Müller é à") == "Müller é à"  # already GSM-7
    assert measure(transliterate("Поштовани Ђорђе, остала су још два часа.")).name == "GSM-7"


def test_template_renders_known_fields_and_rejects_others():
    assert Template("Zdravo {first_name}!").render({"first_name": "Ana"}) == "Zdravo Ana!"
    assert Template("{{literal}} {name}").render({"name": "X"}) == "{literal} X"
    for bad in ["{surname}", "{name.__class__}", "{0}", "{}", "{name!r}", "{name:>10}", "{name"]:
        with pytest.raises(TemplateError):
            Template(bad)


@pytest.mark.parametrize("source, error", [
    ("{summa} {bogus} {name} {zz}", "unknown placeholders {bogus}, {summa}, {zz}; use one of"),
    ("Zdravo {name!r}", "placeholder {name} with a format or conversion (!r): write it as {name}"),
    ("Zdravo {name:>300}", "placeholder {name} with a format or conversion (:>300): write it as {name}"),
])
def test_a_template_error_names_every_unknown_placeholder_and_never_contradicts_itself(source, error):
    with pytest.raises(TemplateError) as refused:
        Template(source)
    assert str(refused.value).startswith(error)


def test_a_template_knows_its_placeholders():
    assert Template("{first_name}, {summa} din. {{not}}", TEMPLATE_FIELDS | {"summa"}).placeholders == {
        "first_name", "summa"}


@pytest.mark.parametrize("raw", ["0641234567", "064 123 4567", "+381641234567", "00381641234567",
                                 "381641234567", "+381 (64) 123-45-67"])
def test_serbian_forms_parse_to_one_number(raw):
    assert to_e164(raw, "RS") == "+381641234567"
    assert international_digits(to_e164(raw, "RS")) == "381641234567"


def test_russian_numbers_parse_with_their_region_and_bare_digits():
    assert to_e164("89001234567", "RU") == "+79001234567"
    assert to_e164("79001234567", "RS") == "+79001234567"


@pytest.mark.parametrize("raw", ["06012345", "12", "", "abc", "+3816412345678901"])
def test_invalid_numbers_are_refused(raw):
    with pytest.raises(InvalidPhone):
        to_e164(raw, "RS")


def test_masking():
    assert mask("+381641234567") == "+381*******67"
    assert mask("0641234567") == "064*****67"
    assert mask_phones_in("to 381641234567 at 2026-11-23 10:00, ip 127.0.0.1") == \
        "to 381*******67 at 2026-11-23 10:00, ip 127.0.0.1"
    assert mask_phones_in("2026-11-23 381641234567") == "2026-11-23 381*******67"
    assert mask_phones_in("+381 64 123-4567") == "+381*******67"
    assert mask_phones_in("call 064.1234567 or 064/123.45.67") == "call 064*****67 or 064*****67"
    assert mask_phones_in("took 0.125 s from 192.168.100.200 at 23.11.2026") == \
        "took 0.125 s from 192.168.100.200 at 23.11.2026"


@pytest.mark.parametrize("text, expected", [
    ("064+123+4567", "064*****67"),  # a query string's spaces
    ("+381+64+123+45+67", "+381*******67"),
    ("+381+(0)+64+123+4567", "+381********67"),
    ("064 - 123 - 4567", "064*****67"),
    ("(064) (123) (4567)", "064*****67)"),
    ("064_123_4567", "064*****67"),
    ("064,123,4567", "064*****67"),
    ("064\t123\t4567", "064*****67"),
    ("064\u2010123\u20104567", "064*****67"),
    ("064\u2011123\u20114567", "064*****67"),
    ("064\u2012123\u20124567", "064*****67"),
    ("064\u2013123\u20134567", "064*****67"),
    ("064 \u2014 123 \u2014 4567", "064*****67"),
    ("user 064+123+4567 left", "user 064*****67 left"),
    ("phone=123+4567", "phone=*****67"),  # as short as "123 4567", which is masked too
])
def test_phones_with_any_separators_are_masked(text, expected):
    assert mask_phones_in(text) == expected


@pytest.mark.parametrize("text", [
    "2026-11-23", "2026-11-23T08:00:00", "at 2026-11-23 10:00:00", "23.11.2026", "23.11.2026 10:00",
    "2026/11/23", "10:00:00", "0.125", "192.168.100.200", "GET /api/v1/mailings/12/messages",
    "ids 1,2,3,4,5,6,7", "ids 1, 2, 3, 4", "1234.5678", "12_345_678", "v1.2.3", "a+b=12+34",
])
def test_ordinary_figures_stay_readable(text):
    assert mask_phones_in(text) == text
