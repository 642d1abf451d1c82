"""Every setting of the worker, read from the environment and `.env`.

One class, so a reader finds where a knob comes from in one place. The seed's names
(TWILIO_*, RESEND_API_KEY, ADMIN_*, FROM_EMAIL, CRON_SECRET, NEXT_PUBLIC_APP_URL) are kept
as they are so an existing deployment's config vars carry over unchanged.
"""

from __future__ import annotations

import contextlib
import re
import sys
from datetime import UTC
from functools import cached_property
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from scheduler.ticks import LocalCronTrigger

#: Exit code for a configuration error (as `sysexits` EX_USAGE-ish; 1 stays "runtime failure").
CONFIG_ERROR_EXIT = 2

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Settings(BaseSettings):
    """The worker's configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- database -----------------------------------------------------------------------
    database_url: str | None = None
    embedded_data_dir: str = ".data/postgres"
    #: Server on which `flavor-worker bench` creates its scratch databases (else an embedded one).
    bench_database_url: str | None = None

    # --- logging ------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- the claim loop -----------------------------------------------------------------
    worker_concurrency: PositiveInt = 50
    claim_batch_size: PositiveInt = 200
    poll_interval_seconds: PositiveFloat = 2.0
    heartbeat_seconds: PositiveFloat = 2.0
    stale_after_seconds: PositiveFloat = 10.0
    max_attempts: PositiveInt = 10
    #: Worker deaths while holding an event before it fails (after the first, it runs alone).
    max_crashes: PositiveInt = 3
    retry_base_seconds: PositiveFloat = 2.0
    retry_max_seconds: PositiveFloat = 3600.0
    shutdown_grace_seconds: PositiveFloat = 20.0
    db_pool_max_size: PositiveInt = 8

    # --- Twilio / WhatsApp (seed names) -------------------------------------------------
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_whatsapp_number: str | None = None
    admin_whatsapp: str | None = None
    twilio_api_base_url: str | None = None
    twilio_status_callback_url: str | None = None
    twilio_rate_per_second: PositiveFloat = 50.0
    #: JSON object: message kind -> Twilio Content SID (approved WhatsApp template).
    whatsapp_content_templates: dict[str, str] = Field(default_factory=dict)
    default_phone_region: str = "AU"

    # --- Resend / email (seed names) ----------------------------------------------------
    resend_api_key: SecretStr | None = None
    admin_email: str | None = None
    from_email: str = "bookings@flavorentertainers.com.au"
    resend_api_url: str | None = None
    resend_rate_per_second: PositiveFloat = 2.0
    provider_timeout_seconds: PositiveFloat = 10.0
    #: auto: Twilio/Resend when their credentials are set, else the console (logged, `simulated`);
    #: console: always the console; null: accept and drop (`simulated`), for benchmarks.
    message_transport: Literal["auto", "console", "null"] = "auto"

    # --- app ----------------------------------------------------------------------------
    next_public_app_url: str = "http://localhost:3000"
    cron_secret: SecretStr | None = None

    # --- scheduler ----------------------------------------------------------------------
    scheduler_enabled: bool = True
    cleanup_schedule: str = "0 2 * * *"
    reminder_schedule: str = "0 * * * *"
    scheduler_timezone: str = "UTC"
    misfire_grace_seconds: PositiveInt = 3600
    stale_booking_hours: PositiveFloat = 24.0
    notification_retention_days: PositiveInt = 30
    audit_log_retention_days: PositiveInt = 90
    critical_audit_categories: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["security", "fraud", "dispute"]
    )
    booking_reminder_hours: PositiveFloat = 24.0
    payment_reminder_days: PositiveFloat = 3.0
    worker_retention_days: PositiveInt = 14
    cleanup_batch_size: PositiveInt = 1000

    # --- HTTP surface -------------------------------------------------------------------
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    webhook_base_url: str | None = None
    health_max_pending_age_seconds: PositiveFloat = 300.0

    @field_validator("critical_audit_categories", mode="before")
    @classmethod
    def _split_categories(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("scheduler_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("cleanup_schedule", "reminder_schedule")
    @classmethod
    def _valid_crontab(cls, value: str) -> str:
        try:
            LocalCronTrigger(value, UTC)
        except ValueError as exc:
            raise ValueError(f"not a crontab expression ({exc})") from exc
        return value

    @field_validator("default_phone_region")
    @classmethod
    def _region_upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _retention_outlives_reminder_windows(self) -> Settings:
        # A reminder's event row is its "already sent" mark: pruned inside the window, the
        # next hourly run would send the reminder again.
        window_days = max(self.booking_reminder_hours / 24, self.payment_reminder_days)
        if self.worker_retention_days <= window_days:
            raise ValueError(
                f"WORKER_RETENTION_DAYS ({self.worker_retention_days}) must be longer than the reminder"
                f" windows ({window_days:g} days), or reminders would be sent again"
            )
        return self

    def secret_values(self) -> list[str]:
        """The configured secrets' values, for the log redaction to mask literally."""
        values = [
            secret.get_secret_value()
            for secret in (self.twilio_auth_token, self.resend_api_key, self.cron_secret)
            if secret is not None
        ]
        for url in (self.database_url, self.bench_database_url):
            with contextlib.suppress(psycopg.ProgrammingError):  # unparseable: nothing to take
                password = conninfo_to_dict(url).get("password") if url else None
                if password:
                    values.append(str(password))
        return values

    @cached_property
    def twilio_configured(self) -> bool:
        """WhatsApp goes to Twilio only with a full set of credentials; else the console."""
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_whatsapp_number)

    @cached_property
    def resend_configured(self) -> bool:
        return self.resend_api_key is not None and bool(self.resend_api_key.get_secret_value())


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per bad variable, naming it; the offending value only for non-secrets."""
    lines = []
    for item in error.errors():
        if not item["loc"]:  # a rule across several settings: its message names them
            lines.append(f"configuration error: {item['msg'].removeprefix('Value error, ')}")
            continue
        name = str(item["loc"][0]).upper()
        secret = any(word in name for word in ("TOKEN", "KEY", "SECRET", "PASSWORD", "URL"))
        shown = "" if secret or "input" not in item else f" (got {item['input']!r})"
        lines.append(f"configuration error: {name}: {item['msg']}{shown}")
    return lines


def load_settings(**overrides: object) -> Settings:
    """Read the settings or exit with code 2 and one readable line per problem."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = describe_validation_error(error)
    except SettingsError as error:  # a complex value (JSON) that does not even parse
        field = re.search(r'field "(\w+)"', str(error))
        name = field.group(1).upper() if field else "settings"
        lines = [f"configuration error: {name}: not valid JSON"]
    for line in lines:
        print(line, file=sys.stderr)
    raise SystemExit(CONFIG_ERROR_EXIT)
