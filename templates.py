"""Named templates: every edit a new version, and approval before use.

A template's placeholders are of two kinds. `{CODE}`, in upper case (A-Z, 0-9, _), is a request
variable: a batch request or POST /messages gives its value with each recipient. `{name}`, in
lower case, is one of the service's own fields, those of texts.TEMPLATE_FIELDS, of mailings and
of the events' objects: a use fills the fields it knows (a mailing {name} and {first_name}, an
event its student's fields and its object's) and refuses a template that needs others.

A version written by a key without the scope `templates:approve` is a draft until a key with it
(or the command line) approves it; the approved version goes on being used meanwhile. Only an
approved version is ever sent.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from events import FAMILIES, family_of
from models import MAILING_FIELDS, MailingCreate
from store import Store, StoredTemplate, TemplateVersion
from texts import TEMPLATE_FIELDS, Template, TemplateError, measure, too_many_parts

if TYPE_CHECKING:  # config reads NAME from here
    from config import Config

APPROVE_SCOPE = "templates:approve"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # also what SMS_TEXT_<EVENT>=template:NAME may name
VARIABLE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
SERVICE_FIELDS = TEMPLATE_FIELDS | MAILING_FIELDS | frozenset().union(*(family.placeholders for family in FAMILIES))


class TemplateUnusable(Exception):
    """A template that cannot serve a use: unknown, never approved, needing what the use cannot fill
    (`field` "template"), or not with these variables (`field` "variables")."""

    def __init__(self, message: str, field: str = "template"):
        super().__init__(message)
        self.field = field


class NotLatest(Exception):
    """Approval of a version that is no longer the latest: a newer one was written since."""


@dataclass(frozen=True)
class Sample:
    """The text with each placeholder written as its own name, as a phone would take it."""

    text: str
    encoding: str
    parts: int


def parse(text: str) -> Template:
    """The text as a template of request variables and service fields; TemplateError says what is wrong."""
    try:
        names = {name for _literal, name, _spec, _conversion in string.Formatter().parse(text) if name}
    except ValueError:
        names = set()  # Template names the broken brace
    return Template(text, SERVICE_FIELDS | {name for name in names if VARIABLE.fullmatch(name)})


def variables(template: Template) -> frozenset[str]:
    """The request variables the template needs."""
    return frozenset(name for name in template.placeholders if VARIABLE.fullmatch(name))


def sample(text: str) -> Sample:
    template = parse(text)
    rendered = template.render({name: name for name in template.placeholders})
    measured = measure(rendered)
    return Sample(rendered, measured.name, measured.segments)


def public(stored: StoredTemplate) -> dict[str, Any]:
    """The template as the API shows it: its latest version, measured on a sample, and the approved one."""
    measured = sample(stored.text)
    return {"id": stored.id, "name": stored.name, "version": stored.version, "text": stored.text,
            "status": "approved" if stored.approved_version == stored.version else "draft",
            "approved_version": stored.approved_version, "approved_text": stored.approved_text,
            "variables": sorted(variables(parse(stored.text))),
            "sample": {"text": measured.text, "encoding": measured.encoding, "parts": measured.parts},
            "created_at": _utc(stored.created_at), "updated_at": _utc(stored.updated_at)}


def public_version(version: TemplateVersion) -> dict[str, Any]:
    return {"version": version.version, "text": version.text,
            "status": "draft" if version.approved_at is None else "approved",
            "created_at": _utc(version.created_at), "created_by": version.created_by,
            "approved_at": _utc(version.approved_at), "approved_by": version.approved_by}


def _utc(moment: float | None) -> datetime | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC)


def create(store: Store, name: str, text: str, by: str, scopes: frozenset[str]) -> StoredTemplate:
    """Raises store.TemplateConflict when the name is taken."""
    return store.create_template(name, text, by, APPROVE_SCOPE in scopes)


def edit(store: Store, template_id: int, text: str, by: str, scopes: frozenset[str]) -> StoredTemplate | None:
    """A new version, unless the text is the latest's already; None when there is no such template."""
    current = store.template(template_id)
    if current is None or current.text == text:
        return current
    return store.add_template_version(template_id, text, by, APPROVE_SCOPE in scopes)


def approve(store: Store, template_id: int, version: int | None, by: str) -> StoredTemplate | None:
    """Approve the latest version (which must be `version`, when given); None when there is no such
    template. Approving an approved version changes nothing. Raises NotLatest."""
    current = store.template(template_id)
    if current is None:
        return None
    wanted = current.version if version is None else version
    if not store.approve_template(template_id, wanted, by):
        raise NotLatest(f"version {wanted} is not the latest of template {current.name!r}:"
                        f" the latest is {store.template(template_id).version}")
    return store.template(template_id)


def versions(store: Store, template_id: int) -> list[dict[str, Any]] | None:
    """Every version, the first first; None when there is no such template."""
    if store.template(template_id) is None:
        return None
    return [public_version(version) for version in store.template_versions(template_id)]


def approved(store: Store, name: str, fields: frozenset[str], use: str,
             request_variables: bool = False) -> tuple[StoredTemplate, Template]:
    """Template `name`'s approved version, for `use` (named in the error), which fills `fields` and,
    when `request_variables`, the request's variables. Raises TemplateUnusable."""
    stored = store.template_named(name)
    if stored is None:
        raise TemplateUnusable(f"no template {name!r}")
    if stored.approved_text is None:
        raise TemplateUnusable(f"template {name!r} has no approved version yet: a key with the scope"
                               f" {APPROVE_SCOPE} (or `sms_bulk_app.py templates approve`) must approve it")
    template = parse(stored.approved_text)
    unfilled = sorted(name for name in template.placeholders
                      if name not in fields and not (request_variables and VARIABLE.fullmatch(name)))
    if unfilled:
        raise TemplateUnusable(f"template {name!r} (version {stored.approved_version}) uses "
                               + ", ".join(f"{{{field}}}" for field in unfilled) + f", which {use} cannot fill")
    return stored, template


def text_for(template: Template, values: dict[str, str], max_segments: int) -> str:
    """The text for one recipient's variables; ValueError names a variable missing or unknown, or
    says the text is empty or longer than the providers take."""
    needed = variables(template)
    missing, unknown = sorted(needed - values.keys()), sorted(values.keys() - needed)
    if missing:
        raise ValueError("missing variable" + "s" * (len(missing) > 1) + " " + ", ".join(missing))
    if unknown:
        uses = ", ".join(sorted(needed)) or "none"
        raise ValueError("unknown variable" + "s" * (len(unknown) > 1) + " " + ", ".join(unknown)
                         + f": the template uses {uses}")
    text = template.render(values)
    problem = "the text is empty" if not text.strip() else too_many_parts(text, max_segments)
    if problem:
        raise ValueError(problem)
    return text


def message_text(store: Store, name: str, values: dict[str, str], max_segments: int) -> str:
    """The text of one SMS (POST /messages) from template `name` and the request's variables."""
    template = approved(store, name, frozenset(), "a single SMS", request_variables=True)[1]
    try:
        return text_for(template, values, max_segments)
    except ValueError as error:
        raise TemplateUnusable(str(error), "variables")


def with_mailing_text(store: Store, mailing: MailingCreate) -> MailingCreate:
    """A mailing naming a template, with its text: the template's approved version now (a later
    version does not change a mailing made). Its length is checked with each message, as a long name is."""
    if mailing.template is None:
        return mailing
    stored = approved(store, mailing.template, MAILING_FIELDS, "a mailing")[0]
    return mailing.model_copy(update={"text": stored.approved_text})


def event_template(config: Config, store: Store, event: str | None) -> tuple[Template | None, str | None]:
    """The event's text now, and why there is none: its SMS_TEXT_<EVENT>, or the approved version of the
    template SMS_TEXT_<EVENT>=template:NAME names, checked against the fields the event fills."""
    name = config.sms_template_by_event.get(event)
    if name is None:
        template = config.template_for(event)
        return template, None if template else config.ignored_because(event)
    family = family_of(event)
    try:
        return approved(store, name, TEMPLATE_FIELDS | family.placeholders, f"the event {event}")[1], None
    except TemplateUnusable as error:
        return None, f"SMS_TEXT_{event.upper()}=template:{name}: {error}"


def event_problems(config: Config, store: Store) -> list[str]:
    """Why each event naming a template cannot send now (at start: warned about, not fatal, since a
    template can be approved while the service runs)."""
    return [problem for event in sorted(config.sms_template_by_event)
            if (problem := event_template(config, store, event)[1])]


def ignored_because(config: Config, store: Store, event: str | None) -> str | None:
    """Why a webhook of `event` sends nothing: config's reasons, or its template cannot serve it."""
    return config.ignored_because(event) or (event_template(config, store, event)[1]
                                             if event in config.sms_template_by_event else None)


def check_text(text: str) -> str:
    """For the API's schemas: a template's text, or ValueError."""
    try:
        parse(text)
    except TemplateError as error:
        raise ValueError(str(error))
    return text
