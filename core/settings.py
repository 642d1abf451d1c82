"""Every setting of the worker, read from the environment and `.env`.

One class, so a reader finds where a knob comes from in one place. The booking platform's
names (TWILIO_*, RESEND_API_KEY, ADMIN_*, FROM_EMAIL, CRON_SECRET, NEXT_PUBLIC_APP_URL) are kept
as they are so an existing deployment's config vars carry over unchanged.

Each field is read from the upper-cased variable of its name by environs, which parses it by
the field's type and checks the constraints in its `Annotated` metadata, and reports every bad
variable at once. (pydantic-settings did this too, but pydantic and its compiled core cost a
dyno about 10 MB of resident memory for this one class.)
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import types
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from dotenv import dotenv_values
from environs import Env, EnvValidationError
from marshmallow import ValidationError
from marshmallow.validate import OneOf, Range
from psycopg.conninfo import conninfo_to_dict

from core.crontab import crontab_trigger

#: Exit code for a configuration error (as `sysexits` EX_USAGE-ish; 1 stays "runtime failure").
CONFIG_ERROR_EXIT = 2


def _known_timezone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError("unknown IANA time zone") from exc


def _valid_crontab(value: str) -> None:
    try:
        crontab_trigger(value, UTC)
    except ValueError as exc:
        raise ValidationError(f"not a crontab expression: {exc}") from exc


def _postgres_url(value: str) -> None:
    """Parsed as libpq will, so a typo is a configuration error before any command runs, not a
    connection error later (whose text, from libpq, would quote the URL with its password)."""
    try:
        conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        raise ValidationError(
            "not a PostgreSQL URL: expected postgresql://user:password@host:5432/dbname"
        ) from None


def _http_url(value: str) -> None:
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValidationError("must be an absolute http(s) URL such as https://worker.example.com")


def _signed_base_url(value: str) -> None:
    """Twilio signs the exact public URL, so the base of the webhooks' URLs is checked strictly."""
    _http_url(value)
    if urlsplit(value).query or urlsplit(value).fragment:
        raise ValidationError("must not have a query or fragment (Twilio signs the exact URL)")


def _phone_region(value: str) -> None:
    import phonenumbers  # 50 ms: only when the settings are read, never for `--help`

    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValidationError("not a region phonenumbers knows (an ISO 3166 code such as AU, NZ, GB, US)")


def _string_to_string(value: dict[str, str]) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValidationError('must be a JSON object of strings, e.g. {"booking_approved": "HX..."}')


def _kind_seconds(value: dict[str, float]) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, int | float) and not isinstance(item, bool) and item > 0
        for key, item in value.items()
    ):
        raise ValidationError('must be a JSON object of positive seconds, e.g. {"booking.created": 3600}')


PositiveInt = Annotated[int, Range(min=1)]
PositiveFloat = Annotated[float, Range(min=0, min_inclusive=False)]
Port = Annotated[int, Range(min=1, max=65535)]
Crontab = Annotated[str, _valid_crontab]
TimeZoneName = Annotated[str, _known_timezone]
StringMap = Annotated[dict[str, str], _string_to_string]
KindSeconds = Annotated[dict[str, float], _kind_seconds]
PostgresUrl = Annotated[str, _postgres_url]
HttpUrl = Annotated[str, _http_url]
SignedBaseUrl = Annotated[str, _signed_base_url]
PhoneRegion = Annotated[str, _phone_region]


class SettingsError(ValueError):
    """Settings that cannot be used: `problems` has one line per bad variable or broken rule,
    naming it (never showing a secret's value)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _secret() -> Any:
    """A credential: unset by default and never shown by `repr` (nor in error lines)."""
    return field(default=None, repr=False)


@dataclass(kw_only=True)
class Settings:
    """The worker's configuration. Field names map to upper-case environment variables.

    `Settings(...)` takes values as given (tests, the demo); `Settings.from_env()` reads and
    validates the environment.
    """

    # --- database -----------------------------------------------------------------------
    database_url: PostgresUrl | None = _secret()
    #: A session connection (direct, or a session-mode pooler) for LISTEN and the advisory locks,
    #: for when DATABASE_URL is a transaction pooler; unset: DATABASE_URL serves both.
    listen_database_url: PostgresUrl | None = _secret()
    #: How long `run` waits for an unreachable database (logging `database.waiting`) before exit 1.
    database_wait_seconds: PositiveFloat = 60.0
    embedded_data_dir: str = ".data/postgres"
    #: Server on which `flavor-worker bench` creates its scratch databases (else an embedded one).
    bench_database_url: PostgresUrl | None = _secret()
    # --- logging ------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- the claim loop -----------------------------------------------------------------
    worker_concurrency: PositiveInt = 50
    claim_batch_size: PositiveInt = 200
    poll_interval_seconds: PositiveFloat = 2.0
    heartbeat_seconds: PositiveFloat = 2.0
    stale_after_seconds: PositiveFloat = 10.0
    #: Times an event's worker died while the event ran alone before it fails (a crash that
    #: took a group of events down halves the group first: bisection).
    max_crashes: PositiveInt = 3
    retry_base_seconds: PositiveFloat = 2.0
    retry_max_seconds: PositiveFloat = 3600.0
    #: How long after its creation an event keeps being retried; per kind in EVENT_DEADLINES
    #: (JSON, kind -> seconds). An event's own expiry (reminders, OTP codes) comes first.
    event_deadline_seconds: PositiveFloat = 86400.0
    event_deadlines: KindSeconds = field(default_factory=dict)
    #: Consecutive provider failures (5xx, timeouts) that open its circuit, and how long it then
    #: stays open before one probe request is let through (doubling while probes fail).
    circuit_failure_threshold: PositiveInt = 5
    circuit_open_seconds: PositiveFloat = 15.0
    circuit_max_open_seconds: PositiveFloat = 120.0
    shutdown_grace_seconds: PositiveFloat = 20.0
    db_pool_max_size: PositiveInt = 8

    # --- Twilio / WhatsApp (the platform's names) -------------------------------------------
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = _secret()
    twilio_whatsapp_number: str | None = None
    admin_whatsapp: str | None = None
    twilio_api_base_url: HttpUrl | None = None
    twilio_status_callback_url: HttpUrl | None = None
    twilio_rate_per_second: PositiveFloat = 50.0
    #: JSON object: message kind -> Twilio Content SID (approved WhatsApp template).
    whatsapp_content_templates: StringMap = field(default_factory=dict)
    default_phone_region: PhoneRegion = "AU"

    # --- Resend / email (the platform's names) ----------------------------------------------
    resend_api_key: str | None = _secret()
    admin_email: str | None = None
    from_email: str = "bookings@flavorentertainers.com.au"
    resend_api_url: HttpUrl | None = None
    resend_rate_per_second: PositiveFloat = 2.0
    provider_timeout_seconds: PositiveFloat = 10.0
    #: Longest a message waits for its slot under a provider's shared rate limit before its event
    #: is retried later instead (freeing its slot); urgent messages (OTP emails) may wait longer.
    rate_limit_max_wait_seconds: PositiveFloat = 1.0
    rate_limit_urgent_max_wait_seconds: PositiveFloat = 5.0
    #: auto: Twilio/Resend when their credentials are set, else the console (logged, `simulated`);
    #: console: always the console; null: accept and drop (`simulated`), for benchmarks.
    message_transport: Literal["auto", "console", "null"] = "auto"

    # --- app ----------------------------------------------------------------------------
    next_public_app_url: HttpUrl = "http://localhost:3000"
    cron_secret: str | None = _secret()

    # --- scheduler ----------------------------------------------------------------------
    scheduler_enabled: bool = True
    cleanup_schedule: Crontab = "0 2 * * *"
    reminder_schedule: Crontab = "0 * * * *"
    scheduler_timezone: TimeZoneName = "UTC"
    misfire_grace_seconds: PositiveInt = 3600
    stale_booking_hours: PositiveFloat = 24.0
    notification_retention_days: PositiveInt = 30
    audit_log_retention_days: PositiveInt = 90
    #: Comma-separated.
    critical_audit_categories: list[str] = field(default_factory=lambda: ["security", "fraud", "dispute"])
    booking_reminder_hours: PositiveFloat = 24.0
    payment_reminder_days: PositiveFloat = 3.0
    worker_retention_days: PositiveInt = 14
    cleanup_batch_size: PositiveInt = 1000

    # --- HTTP surface -------------------------------------------------------------------
    port: Port | None = None
    webhook_base_url: SignedBaseUrl | None = None
    health_max_pending_age_seconds: PositiveFloat = 300.0
    #: A provider circuit open this long makes /healthz answer 503.
    health_max_circuit_open_seconds: PositiveFloat = 600.0

    # --- operator console (/console; closed while neither password setting is set) ----------
    console_password: str | None = _secret()
    #: `flavor-worker console --hash-password` prints one; preferred over the plain password.
    console_password_hash: str | None = _secret()
    console_session_hours: PositiveFloat = 12.0

    def __post_init__(self) -> None:
        self.default_phone_region = self.default_phone_region.upper()
        self.critical_audit_categories = [
            part.strip() for part in self.critical_audit_categories if part.strip()
        ]
        # A reminder's event row is its "already sent" mark: pruned inside the window, the
        # next hourly run would send the reminder again.
        window_days = max(self.booking_reminder_hours / 24, self.payment_reminder_days)
        if self.worker_retention_days <= window_days:
            raise SettingsError([
                f"WORKER_RETENTION_DAYS ({self.worker_retention_days}) must be longer than the reminder"
                f" windows ({window_days:g} days), or reminders would be sent again"
            ])
        # A worker whose last heartbeat is half the stale threshold old stops claiming (others
        # would soon take it for dead): two heartbeats must fit in that half.
        if self.heartbeat_seconds * 2 > self.stale_after_seconds / 2:
            raise SettingsError([
                f"HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be at most a quarter of"
                f" STALE_AFTER_SECONDS ({self.stale_after_seconds:g}), or a live worker would pause"
                " its claims between heartbeats and could be taken for dead"
            ])

    def deadline_seconds(self, kind: str) -> float:
        """How long after its creation an event of `kind` is retried (EVENT_DEADLINES first)."""
        return self.event_deadlines.get(kind, self.event_deadline_seconds)

    @classmethod
    def from_env(cls, env_file: str | None = ".env") -> Settings:
        """Read every field from the environment (and `env_file`, which never overrides it).

        Names are matched whatever their case (`log_level` sets LOG_LEVEL, as it always did):
        a spelling in the environment beats one in the file, and within each the upper-case one
        wins. Raises `SettingsError`.
        """
        env = Env(eager=False)
        dotenv: dict[str, str] = {}
        if env_file:
            env.read_env(env_file, recurse=False)
            # environs keeps the file's values to itself; its names and values are needed here
            # too (their spellings, and the error lines), so the small file is read twice.
            dotenv = {key: value for key, value in dotenv_values(env_file).items() if value is not None}
        raw = {**dotenv, **os.environ}  # what is set, as environs reads it: the environment first
        spelling: dict[str, str] = {}  # NAME -> the variable to read, spelt as set
        for source in (dotenv, os.environ):
            for key in sorted(source, key=str.isupper):
                spelling[key.upper()] = key
        hints = get_type_hints(cls, include_extras=True)
        values = {}
        for setting in fields(cls):
            default = setting.default_factory() if setting.default is MISSING else setting.default  # type: ignore[misc]
            parser, validators = _reader(hints[setting.name])
            key = spelling.get(setting.name.upper(), setting.name.upper())
            values[setting.name] = getattr(env, parser)(key, default, validate=validators)
        try:
            env.seal()
        except EnvValidationError as error:
            raise SettingsError(_describe(error, raw)) from None
        return cls(**values)

    def secret_values(self) -> list[str]:
        """The configured secrets' values, for the log redaction to mask literally."""
        values = [
            secret
            for secret in (
                self.twilio_auth_token,
                self.resend_api_key,
                self.cron_secret,
                self.console_password,
                self.console_password_hash,
            )
            if secret
        ]
        for url in (self.database_url, self.listen_database_url, self.bench_database_url):
            with contextlib.suppress(psycopg.ProgrammingError):  # unparseable: nothing to take
                password = conninfo_to_dict(url).get("password") if url else None
                if password:
                    values.append(str(password))
        return values

    @property
    def twilio_configured(self) -> bool:
        """WhatsApp goes to Twilio only with a full set of credentials; else the console."""
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_whatsapp_number)

    @property
    def resend_configured(self) -> bool:
        return bool(self.resend_api_key)

    @property
    def session_database_url(self) -> str | None:
        """Where a session must hold (LISTEN, advisory locks, migrations): LISTEN_DATABASE_URL,
        else DATABASE_URL."""
        return self.listen_database_url or self.database_url


#: Prefixes only this worker's variables use: anything else under them is a mistake.
_OUR_PREFIXES = ("TWILIO_", "RESEND_", "WORKER_")


def unknown_variable_warnings(names: Iterable[str]) -> list[str]:
    """A warning for each variable that looks meant for us but is not one of our settings: close
    to a setting's name (`WORKER_CONCURENCY`, `LOG_LEVLE`), or under one of our own prefixes.

    Unknown variables are otherwise ignored without a word (a dyno's environment holds plenty
    that are none of ours), which is how a misspelt setting silently keeps its default.
    """
    ours = {setting.name.upper() for setting in fields(Settings)}
    warnings = []
    for name in sorted({name.upper() for name in names} - ours):
        # 0.85: one slip in a name of ours, not TEST_DATABASE_URL beside DATABASE_URL (0.83).
        close = difflib.get_close_matches(name, ours, n=1, cutoff=0.85)
        if close:
            warnings.append(f"{name} is not a setting: did you mean {close[0]}? (ignored)")
        elif name.startswith(_OUR_PREFIXES):
            warnings.append(f"{name} is not a setting of flavor-worker (ignored)")
    return warnings


def configured_names(env_file: str | None = ".env") -> set[str]:
    """The names of the environment's variables and of the `.env` file's, as set."""
    names = set(os.environ)
    if env_file:
        names.update(dotenv_values(env_file))
    return names


#: environs parser by field type; anything else is read as a string.
_PARSERS: dict[Any, str] = {int: "int", float: "float", bool: "bool", dict: "json", list: "list"}


def _reader(annotation: Any) -> tuple[str, list[Any]]:
    """The environs parser and validators for a field's type: `Port | None` reads as an int
    checked by Port's range, `Literal[...]` as a string that must be one of its values."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        [inner] = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _reader(inner)
    if origin is Annotated:
        base, *constraints = get_args(annotation)
        parser, validators = _reader(base)
        return parser, [*validators, *constraints]
    if origin is Literal:
        return "str", [OneOf(get_args(annotation))]
    return _PARSERS.get(origin or annotation, "str"), []


def _is_secret(name: str) -> bool:
    return any(word in name for word in ("TOKEN", "KEY", "SECRET", "PASSWORD", "URL"))


def _describe(error: EnvValidationError, raw: dict[str, str]) -> list[str]:
    """One line per bad variable, naming it; the offending value only for non-secrets."""
    problems = []
    for name, messages in error.error_messages.items():
        value, message = raw.get(name), " ".join(messages)
        hidden = _is_secret(name.upper()) or value is None or repr(value) in message
        problems.append(f"{name}: {message}" + ("" if hidden else f" (got {value!r})"))
    return problems


def load_settings() -> Settings:
    """Read the settings or exit with code 2 and one readable line per problem."""
    try:
        return Settings.from_env()
    except SettingsError as error:
        for problem in error.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
    raise SystemExit(CONFIG_ERROR_EXIT)
