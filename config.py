"""Settings from the environment (and a .env file), validated in one place.

Every problem is collected and reported at once, so an operator fixes a bad
configuration in one round instead of one restart per typo.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from database import SQLITE, Backend, BadDatabaseUrl, parse_database_url
from events import MOYKLASS_EVENTS, family_of
from models import is_iana_time_zone
from providers import COMMON_SETTINGS, PROVIDERS, Provider, Setting
from templates import NAME as TEMPLATE_NAME
from texts import TEMPLATE_FIELDS, Template, TemplateError

DEFAULT_SMS_TEXT = (
    "Poštovani {name}, na Vašoj pretplati su ostala još dva plaćena časa. SmartLab"
)
# What SMS_TEXT is for: the reminder it was written for, and webhooks with no event (the seed's
# minimal body). Every other event sends only with its own SMS_TEXT_<EVENT>.
DEFAULT_TEXT_EVENTS = (None, "sub_lessons_left")
# SMS_TEXT_<EVENT>=template:NAME: the event's text is the approved version of template NAME when it is sent.
TEMPLATE_PREFIX = "template:"
CONNECT_TIMEOUT = 3.05  # seconds to open a connection to MoyKlass or a gateway
# The largest rate, price or count a provider setting may take: larger ones are typos, and a
# price of 1e308 would make a mailing's cost estimate Infinity, which JSON cannot carry.
MAX_PROVIDER_NUMBER = 10**9
SENDER_PATTERN = re.compile(r"^(?:[A-Za-z0-9 .\-]{1,11}|\+?\d{1,15})$")
DEFAULT_ROUTE = "*"  # SMS_ROUTES' entry for numbers no prefix matches
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")  # ISO 4217, e.g. RSD
MIN_SECRET_KEY_LENGTH = 32  # SECRET_KEY: the console's sessions are only as safe as it is


class ConfigError(Exception):
    """Raised with every problem found in the settings, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def report(self) -> str:
        """One line for the terminal or the journal, every problem in it."""
        return f"SMSBulkApp cannot start: fix these settings (environment or .env): {'; '.join(self.problems)}"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    data_dir: Path
    database: Backend = field(repr=False)  # its URL may hold a password
    token_file_path: Path
    log_file_path: Path
    log_level: str
    access_log_path: Path | None  # request lines of the development server; None: off
    api_key: str | None = field(repr=False)
    moyklass_api_url: str
    moyklass_rate_per_sec: float
    http_timeout: float
    sms_providers: tuple[str, ...]  # SMS_PROVIDERS, in order: every provider in use, and the default route
    provider_settings: dict[str, dict[str, Any]] = field(repr=False)  # by provider, by Setting.name
    # SMS_ROUTES: (E.164 prefix without "+", its providers in order), the longest prefix first; DEFAULT_ROUTE last
    sms_routes: tuple[tuple[str, tuple[str, ...]], ...]
    public_url: str | None
    sms_sender: str
    sms_text: Template
    sms_text_by_event: dict[str, Template] = field(default_factory=dict)
    sms_template_by_event: dict[str, str] = field(default_factory=dict)  # SMS_TEXT_<EVENT>=template:NAME
    sms_transliterate: bool = False
    default_region: str = "RS"
    webhook_secret: str | None = field(default=None, repr=False)
    dedup_seconds: int = 180
    webhook_mode: str = "sync"
    sms_max_attempts: int = 8
    sms_valid_seconds: int = 86400
    sms_retry_base_seconds: float = 15.0
    sms_rate_per_sec: float = 0.0  # 0: no limit
    sms_concurrency: int = 16
    sms_dlr_max_seconds: int = 6 * 3600
    worker_lease_seconds: float = 60.0
    sms_max_unknown_outcomes: int = 2
    webhook_sync_wait_seconds: float = 2.0
    database_timeout: float = 5.0
    default_timezone: str = "Europe/Belgrade"
    user_cache_seconds: int = 300  # MoyKlass users kept per process; 0: every lookup asks MoyKlass
    sms_recipients: str = "student"  # student | parent | both
    sms_parent_phone_attribute: str | None = None  # alias of the students' phone attribute for a parent
    # Signs the console's session cookies; None: console/secret.py keeps a generated one in DATA_DIR.
    secret_key: str | None = field(default=None, repr=False)
    # Metrics (metrics.py): the multiprocess directory of this host, and the bearer token of /metrics.
    metrics_dir: Path = Path("data/metrics")
    metrics_token: str | None = field(default=None, repr=False)
    # Peers whose X-Forwarded-For and X-Forwarded-Proto are believed (nginx); any other client's are ignored.
    trusted_proxies: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    daily_report: DailyReportSettings | None = None  # None: REPORT_EMAIL is not set

    @property
    def sms_provider(self) -> str:
        """The first provider of the default route (the log's warning about console, /health)."""
        return self.sms_providers[0]

    def route_for(self, phone: str) -> tuple[str, ...]:
        """The providers an E.164 number is sent through, in order: its longest matching prefix's
        route of SMS_ROUTES, else the `*` route, else SMS_PROVIDERS."""
        digits = phone.removeprefix("+")
        for prefix, providers in self.sms_routes:
            if prefix == DEFAULT_ROUTE or digits.startswith(prefix):
                return providers
        return self.sms_providers

    @property
    def http_timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts of MoyKlass calls; for a gateway, (connect, the whole request)."""
        return CONNECT_TIMEOUT, self.http_timeout

    def template_for(self, event: str | None) -> Template | None:
        """The event's text: its SMS_TEXT_<EVENT>, else SMS_TEXT for DEFAULT_TEXT_EVENTS; None: the
        event sends nothing (see `ignored_because`)."""
        if event in self.sms_text_by_event:
            return self.sms_text_by_event[event]
        return self.sms_text if event in DEFAULT_TEXT_EVENTS else None

    def ignored_because(self, event: str | None) -> str | None:
        """Why nothing is sent for `event`, naming the setting that would make it send; None if it sends."""
        if self.template_for(event) is not None or event in self.sms_template_by_event:
            return None
        if event not in MOYKLASS_EVENTS:
            return f"MoyKlass has no event {event!r}: nothing is sent for it"
        if family_of(event) is None:
            return f"{event} names no student in its object: SMSBulkApp sends nothing for it"
        return f"no text for {event}: set SMS_TEXT_{event.upper()} to send an SMS for it"

    def cannot_queue_by_hand(self, event: str | None) -> str | None:
        """Why a message for `event` cannot be queued without its webhook (API, `send`): its event
        sends nothing, or its text needs fields only the webhook's object carries ({summa})."""
        ignored_because = self.ignored_because(event)
        if ignored_because:
            return ignored_because
        template = self.template_for(event)  # None: a named template, checked when the message is sent
        needs = sorted(template.placeholders - TEMPLATE_FIELDS) if template else []
        if needs:
            return (f"the text of {event} needs {', '.join(f'{{{name}}}' for name in needs)}, which only its webhook"
                    f" carries: give the text of this SMS")
        return None

    def sending_events(self) -> dict[str, str]:
        """Every MoyKlass event that sends an SMS, with the setting its text comes from."""
        settings = {event: "SMS_TEXT" for event in DEFAULT_TEXT_EVENTS if event}
        settings |= {event: f"SMS_TEXT_{event.upper()}" for event in self.sms_text_by_event}
        settings |= {event: f"SMS_TEXT_{event.upper()}={TEMPLATE_PREFIX}{name}"
                     for event, name in self.sms_template_by_event.items()}
        return dict(sorted(settings.items()))

    def secrets(self) -> list[str]:
        """Values that must never appear in a log line or an error message."""
        database_password = urlsplit(self.database.url).password if self.database.url else None
        provider_secrets = [values[setting.name] for name, values in self.provider_settings.items()
                            for setting in PROVIDERS[name].settings if setting.secret]
        report_secrets = (self.daily_report.smtp_password,) if self.daily_report else ()
        return [s for s in (self.api_key, self.webhook_secret, database_password, self.secret_key, *provider_secrets,
                            self.metrics_token, *report_secrets)
                if s]


class _Reader:
    """Reads typed values from an env mapping, collecting problems instead of raising."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name, "").strip()
        return value if value else default

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not a whole number")
            return default
        if not minimum <= value <= maximum:
            self.problems.append(f"{name}={value} must be between {minimum} and {maximum}")
        return value

    def number(self, name: str, default: float, minimum: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):  # float() also takes "nan" and "inf"
            self.problems.append(f"{name}={raw!r} is not a number")
            return default
        if value < minimum:
            self.problems.append(f"{name}={raw} must be at least {minimum}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={raw!r} must be 1 or 0")
        return default

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.text(name) or default).lower()
        if value not in choices:
            self.problems.append(f"{name}={value!r} must be one of: {', '.join(choices)}")
        return value

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default) or default
        if not re.match(r"^https?://[^/\s]+", value):
            self.problems.append(f"{name}={value!r} is not an http(s) URL")
        return value.rstrip("/")

    def timezone(self, name: str, default: str) -> str:
        value = self.text(name, default) or default
        if not is_iana_time_zone(value):
            self.problems.append(f"{name}={value!r} is not an IANA time zone such as Europe/Belgrade")
        return value

    def template(self, name: str, default: str, event_fields: frozenset[str] = frozenset()) -> Template:
        """A text whose placeholders are the student's fields and `event_fields` of its event's object."""
        raw = self.env.get(name)
        source = raw if raw is not None and raw.strip() else default
        try:
            return Template(source, TEMPLATE_FIELDS | event_fields)
        except TemplateError as error:
            self.problems.append(f"{name}: {error}")
            return Template("")


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from `env` (default: os.environ); raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    read = _Reader(env)

    data_dir = Path(read.text("DATA_DIR", "data")).expanduser().resolve()
    sms_providers = _provider_names(read)
    sms_rate_per_sec = read.number("SMS_RATE_PER_SEC", 0.0, 0.0)
    sms_concurrency = read.integer("SMS_CONCURRENCY", 16, 1, 256)
    provider_settings = {name: _provider_settings(read, PROVIDERS[name], sms_rate_per_sec, sms_concurrency)
                         for name in sms_providers}
    public_url = read.text("PUBLIC_URL")
    sms_sender = read.text("SMS_SENDER", "SmartLab")
    if not SENDER_PATTERN.match(sms_sender):
        read.problems.append(
            f"SMS_SENDER={sms_sender!r} must be 1-11 letters, digits, spaces, '.' or '-', "
            "or a phone number of up to 15 digits"
        )

    default_region = (read.text("DEFAULT_REGION", "RS") or "RS").upper()
    if default_region not in phonenumbers.SUPPORTED_REGIONS:
        read.problems.append(f"DEFAULT_REGION={default_region!r} is not an ISO 3166 region code")

    sms_text_by_event, sms_template_by_event = {}, {}
    for name in sorted(env):
        if name.startswith("SMS_TEXT_"):
            event = name.removeprefix("SMS_TEXT_").lower()
            if event not in MOYKLASS_EVENTS:
                read.problems.append(f"{name}: MoyKlass has no event {event!r}")
                continue
            family = family_of(event)
            if family is None:
                read.problems.append(f"{name}: {event} names no student in its object, so no SMS can be sent for it")
                continue
            if not env[name].strip():
                read.problems.append(f"{name} is empty")
                continue
            if env[name].strip().startswith(TEMPLATE_PREFIX):
                template_name = env[name].strip().removeprefix(TEMPLATE_PREFIX)
                if not TEMPLATE_NAME.fullmatch(template_name):
                    read.problems.append(f"{name}: {template_name!r} is not a template name (a-z 0-9 _ -)")
                sms_template_by_event[event] = template_name
                continue
            sms_text_by_event[event] = read.template(name, "", family.placeholders)

    def data_path(name: str, filename: str) -> Path:
        return Path(read.text(name) or data_dir / filename).expanduser().resolve()

    config = Config(
        host=read.text("HOST", "127.0.0.1"),
        port=read.integer("PORT", 5000, 1, 65535),
        data_dir=data_dir,
        database=_database(read, data_path("DATABASE_PATH", "sms_bulk_app.db")),
        token_file_path=data_path("TOKEN_FILE_PATH", "token.json"),
        log_file_path=data_path("LOG_FILE_PATH", "sms_bulk_app.log"),
        log_level=read.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
        access_log_path=None if (read.text("ACCESS_LOG") or "off").lower() == "off"
        else Path(read.text("ACCESS_LOG")).expanduser().resolve(),
        api_key=read.text("API_KEY"),
        moyklass_api_url=read.url("MOYKLASS_API_URL", "https://api.moyklass.com/v1"),
        moyklass_rate_per_sec=read.number("MOYKLASS_RATE_PER_SEC", 6.0, 0.1),
        http_timeout=read.number("HTTP_TIMEOUT", 10.0, 0.1),
        sms_providers=sms_providers,
        provider_settings=provider_settings,
        sms_routes=_routes(read, sms_providers),
        public_url=read.url("PUBLIC_URL", public_url) if public_url else None,
        sms_sender=sms_sender,
        sms_text=read.template("SMS_TEXT", DEFAULT_SMS_TEXT),
        sms_text_by_event=sms_text_by_event,
        sms_template_by_event=sms_template_by_event,
        sms_transliterate=read.flag("SMS_TRANSLITERATE", False),
        default_region=default_region,
        webhook_secret=read.text("WEBHOOK_SECRET"),
        dedup_seconds=read.integer("DEDUP_SECONDS", 180, 0, 30 * 86400),
        webhook_mode=read.choice("WEBHOOK_MODE", "sync", ("sync", "async")),
        sms_max_attempts=read.integer("SMS_MAX_ATTEMPTS", 8, 1, 100),
        sms_valid_seconds=read.integer("SMS_VALID_SECONDS", 86400, 1, 30 * 86400),
        sms_retry_base_seconds=read.number("SMS_RETRY_BASE_SECONDS", 15.0, 0.01),
        sms_rate_per_sec=sms_rate_per_sec,
        sms_concurrency=sms_concurrency,
        sms_dlr_max_seconds=read.integer("SMS_DLR_MAX_SECONDS", 6 * 3600, 0, 30 * 86400),
        worker_lease_seconds=read.number("WORKER_LEASE_SECONDS", 60.0, 1.0),
        sms_max_unknown_outcomes=read.integer("SMS_MAX_UNKNOWN_OUTCOMES", 2, 1, 100),
        webhook_sync_wait_seconds=read.number("WEBHOOK_SYNC_WAIT_SECONDS", 2.0, 0.0),
        database_timeout=read.number("DATABASE_TIMEOUT", 5.0, 0.1),
        default_timezone=read.timezone("DEFAULT_TIMEZONE", "Europe/Belgrade"),
        user_cache_seconds=read.integer("USER_CACHE_SECONDS", 300, 0, 86400),
        sms_recipients=read.choice("SMS_RECIPIENTS", "student", ("student", "parent", "both")),
        sms_parent_phone_attribute=read.text("SMS_PARENT_PHONE_ATTRIBUTE"),
        secret_key=read.text("SECRET_KEY"),
        metrics_dir=Path(read.text("PROMETHEUS_MULTIPROC_DIR") or data_dir / "metrics").expanduser().resolve(),
        metrics_token=read.text("METRICS_TOKEN"),
        trusted_proxies=frozenset(filter(None, (read.text("TRUSTED_PROXIES", "127.0.0.1,::1") or "").replace(" ", "")
                                         .split(","))),
        daily_report=_daily_report(read),
    )
    if config.secret_key is not None and len(config.secret_key) < MIN_SECRET_KEY_LENGTH:
        read.problems.append(f"SECRET_KEY must have at least {MIN_SECRET_KEY_LENGTH} characters (python3 -c"
                             " 'import secrets; print(secrets.token_hex(32))'), or be unset to have one generated")
    # A lease is renewed every quarter of its length, and a send starts only while more than
    # HTTP_TIMEOUT (its whole deadline) + 1 s of the lease is left: twice that always is.
    lease_floor = 2 * (config.http_timeout + 1)
    if config.worker_lease_seconds < lease_floor:
        read.problems.append(
            f"WORKER_LEASE_SECONDS={config.worker_lease_seconds:g} must be at least 2 x (HTTP_TIMEOUT + 1)"
            f" = {lease_floor:g} s, so that a lease always outlives the send it covers")
    if config.sms_recipients != "student" and not config.sms_parent_phone_attribute:
        read.problems.append(f"SMS_RECIPIENTS={config.sms_recipients} needs SMS_PARENT_PHONE_ATTRIBUTE: the alias of"
                             " the students' attribute that holds a parent's phone")
    if read.problems:
        raise ConfigError(read.problems)
    return config


def _provider_names(read: _Reader) -> tuple[str, ...]:
    """SMS_PROVIDERS (a comma list), else SMS_PROVIDER (one, the first release's), else console."""
    raw = read.text("SMS_PROVIDERS") or read.text("SMS_PROVIDER") or "console"
    names = tuple(name.strip().lower() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown:
        read.problems.append(f"no provider {', '.join(map(repr, unknown))}: choose from {', '.join(PROVIDERS)}")
    if len(set(names)) != len(names):
        read.problems.append(f"SMS_PROVIDERS={raw!r} names a provider twice")
    known = tuple(dict.fromkeys(name for name in names if name in PROVIDERS))
    return known or ("console",)


def _provider_settings(read: _Reader, provider: type[Provider], rate_per_sec: float,
                       concurrency: int) -> dict[str, Any]:
    """Every setting `provider` declares and the COMMON_SETTINGS, from `<PROVIDER>_<SETTING>` (or a
    legacy name), checked and typed, then together (`Provider.problems`); a missing required one is
    named with the provider that needs it. An unset rate or concurrency is SMS_RATE_PER_SEC's or
    SMS_CONCURRENCY's."""
    values = {setting.name: _provider_setting(read, provider, setting)
              for setting in (*provider.settings, *COMMON_SETTINGS)}
    read.problems.extend(provider.problems(values))
    prefix = provider.name.upper()
    if values["RATE_PER_SEC"] is None:
        values["RATE_PER_SEC"] = rate_per_sec
    if values["CONCURRENCY"] is None:
        values["CONCURRENCY"] = concurrency
    elif not 1 <= values["CONCURRENCY"] <= 256:
        read.problems.append(f"{prefix}_CONCURRENCY={values['CONCURRENCY']} must be between 1 and 256")
    currency = values["CURRENCY"] = values["CURRENCY"].upper()
    if currency and not CURRENCY_PATTERN.match(currency):
        read.problems.append(f"{prefix}_CURRENCY={currency!r} must be a currency code of 3 letters, such as RSD")
    if values["PRICE_PER_PART"] and not currency:
        read.problems.append(f"{prefix}_PRICE_PER_PART needs {prefix}_CURRENCY (the price's currency, such as RSD)")
    return values


def _routes(read: _Reader, providers: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """SMS_ROUTES: `prefix=provider,provider; ...`, each prefix the first digits of E.164 numbers
    without "+" (`381`, `7`) or `*` (every other number). A route names only providers of
    SMS_PROVIDERS, which lists every provider in use. The longest prefix first, `*` last."""
    raw = read.text("SMS_ROUTES")
    if raw is None:
        return ()
    routes: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (part.strip() for part in re.split(r"[;\n]", raw))):
        prefix, equals, names = (part.strip() for part in entry.partition("="))
        route = tuple(name.strip().lower() for name in names.split(",") if name.strip())
        where = f"SMS_ROUTES entry {entry!r}"
        if not equals or not route:
            read.problems.append(f"{where} must be prefix=provider[,provider...], such as 381=oneclick,smsaero")
            continue
        if prefix != DEFAULT_ROUTE and not re.fullmatch(r"[1-9]\d{0,14}", prefix):
            read.problems.append(f"{where}: the prefix must be the first 1-15 digits of numbers in E.164 without"
                                 f" '+' (381, 7), or * for every other number")
            continue
        if prefix in routes:
            read.problems.append(f"SMS_ROUTES gives the prefix {prefix} twice")
        unknown = [name for name in route if name not in PROVIDERS]
        unused = [name for name in route if name in PROVIDERS and name not in providers]
        if unknown:
            read.problems.append(f"{where}: no provider {', '.join(map(repr, unknown))}: choose from"
                                 f" {', '.join(PROVIDERS)}")
        if unused:
            read.problems.append(f"{where}: {', '.join(unused)} is not in SMS_PROVIDERS={','.join(providers)}:"
                                 f" list every provider a route uses there")
        if len(set(route)) != len(route):
            read.problems.append(f"{where} names a provider twice")
        routes[prefix] = route
    return tuple(sorted(routes.items(), key=lambda item: (item[0] == DEFAULT_ROUTE, -len(item[0]))))


def _provider_setting(read: _Reader, provider: type[Provider], setting: Setting) -> Any:
    name = provider.env_name(setting)
    raw = read.text(name)
    if raw is None and setting.legacy and read.text(setting.legacy) is not None:
        name, raw = setting.legacy, read.text(setting.legacy)
    if raw is None:
        if setting.required:
            also = f" (or {setting.legacy})" if setting.legacy else ""
            read.problems.append(f"{provider.env_name(setting)}{also} is required when {provider.name} is used")
        raw = setting.default
    if raw is None:
        return None
    shown = "***" if setting.secret else repr(raw)
    if setting.kind == "url":
        if not re.match(r"^https?://[^/\s]+", raw):
            read.problems.append(f"{name}={shown} is not an http(s) URL")
        return raw.rstrip("/")
    if setting.kind in ("integer", "number"):
        try:
            value = int(raw) if setting.kind == "integer" else float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0 <= value <= MAX_PROVIDER_NUMBER:
            read.problems.append(f"{name}={shown} must be a {'whole ' if setting.kind == 'integer' else ''}number"
                                 f" from 0 to {MAX_PROVIDER_NUMBER:,}")
            return None
        return value
    return raw


def _database(read: _Reader, default_path: Path) -> Backend:
    """DATABASE_URL, else SQLite at DATABASE_PATH (or in the data directory). A bad URL is named,
    never echoed: it may hold a password."""
    url = read.text("DATABASE_URL")
    if not url:
        return Backend(SQLITE, path=default_path)
    try:
        return parse_database_url(url)
    except BadDatabaseUrl as error:
        read.problems.append(str(error))
        return Backend(SQLITE, path=default_path)


# --- the daily report by e-mail (daily_report.py) ---

EMAIL_PATTERN = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+$")
REPORT_TIME_PATTERN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class DailyReportSettings:
    """REPORT_* and SMTP_*: when yesterday's report is sent (REPORT_TIME in DEFAULT_TIMEZONE), to
    whom, and through which SMTP server."""

    time: tuple[int, int]  # (hour, minute)
    recipients: tuple[str, ...]
    smtp_host: str
    smtp_port: int
    smtp_starttls: bool
    smtp_user: str | None
    smtp_password: str | None = field(repr=False)
    smtp_from: str
    smtp_ca_file: Path | None  # a CA to trust besides the system's (a relay with its own certificate)
    retry_seconds: float


def _daily_report(read: _Reader) -> DailyReportSettings | None:
    raw_recipients = read.text("REPORT_EMAIL")
    if not raw_recipients:
        return None
    recipients = tuple(address.strip() for address in raw_recipients.split(",") if address.strip())
    bad = [address for address in recipients if not EMAIL_PATTERN.match(address)]
    if bad or not recipients:
        read.problems.append(f"REPORT_EMAIL={raw_recipients!r} must be e-mail addresses separated by commas")
    raw_time = read.text("REPORT_TIME", "08:00")
    match = REPORT_TIME_PATTERN.match(raw_time)
    if not match:
        read.problems.append(f"REPORT_TIME={raw_time!r} must be HH:MM (24 hours), such as 08:00")
    user, password = read.text("SMTP_USER"), read.text("SMTP_PASSWORD")
    if bool(user) != bool(password):
        read.problems.append("SMTP_USER and SMTP_PASSWORD go together: set both to log in, or neither")
    sender = read.text("SMTP_FROM") or (recipients[0] if recipients else "")
    if sender and not EMAIL_PATTERN.match(sender):
        read.problems.append(f"SMTP_FROM={sender!r} is not an e-mail address")
    ca_file = read.text("SMTP_CA_FILE")
    if ca_file and not Path(ca_file).is_file():
        read.problems.append(f"SMTP_CA_FILE={ca_file!r} is not a file")
    return DailyReportSettings(
        time=(int(match[1]), int(match[2])) if match else (8, 0),
        recipients=recipients,
        smtp_host=read.text("SMTP_HOST", "127.0.0.1") or "127.0.0.1",
        smtp_port=read.integer("SMTP_PORT", 25, 1, 65535),
        smtp_starttls=read.flag("SMTP_STARTTLS", False),
        smtp_user=user,
        smtp_password=password,
        smtp_from=sender,
        smtp_ca_file=Path(ca_file).expanduser().resolve() if ca_file else None,
        retry_seconds=read.number("REPORT_RETRY_SECONDS", 300.0, 1.0),
    )
