"""One validated configuration object; every option also comes from a `CALLSTREAM_*` variable."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "ValidationError", "describe_errors"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLSTREAM_", extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="the interface to listen on; 0.0.0.0 for every one")
    port: NonNegativeInt = Field(8080, le=65535, description="0: any free port (printed at start)")
    data_dir: str = Field("./callstream-data", description="the embedded store's folder (SQLite, its journal)")
    broker: str | None = Field(None, description="redis://… for several nodes; unset: in-process")
    database: str | None = Field(None, description="postgresql://…; unset: SQLite under data_dir")
    secret: str | None = Field(
        None, min_length=32, description="JWT signing secret; unset: kept in the store"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated Origins allowed on the sockets (403 for others); unset: any"
    )
    public_url: str | None = Field(None, description="the URL users reach this node at, for printed links")
    metrics_token: str | None = Field(
        None, min_length=16, description="when set, /metrics requires `Authorization: Bearer <it>`"
    )

    max_message_bytes: int = Field(
        64 * 1024, ge=256, le=16 * 1024 * 1024, description="largest client message on /v1/events; over it: close 1009"
    )
    max_ingest_message_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest frame on /v1/ingest; over it: refused"
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest REST request body; over it: 413"
    )
    max_subscriptions: int = Field(10_000, ge=1, description="subscriptions one socket may hold")
    client_rate: PositiveFloat = Field(50.0, description="client messages per second per connection")
    client_burst: int = Field(100, ge=1, description="client messages a connection may send at once above client_rate")
    control_rate: PositiveFloat = Field(5.0, description="control requests per second per connection (per key on REST)")
    control_burst: int = Field(10, ge=1, description="control requests at once above control_rate")
    outbox_high_water: int = Field(1024 * 1024, ge=4096, description="bytes buffered per connection")
    history_ttl_s: float = Field(3600.0, ge=3600.0, description="replay log kept after a call ends")
    token_ttl_s: int = Field(900, ge=10, le=86_400, description="a browser JWT's lifetime when none is asked for")
    token_max_ttl_s: int = Field(86_400, ge=10, le=86_400, description="the longest lifetime a JWT may ask for")
    sse_keepalive_s: PositiveFloat = Field(
        15.0, le=300.0, description="a comment on an idle event stream this often, so proxies keep it open"
    )
    revocation_poll_s: PositiveFloat = Field(1.0, le=4.0, description="how often a node looks for revoked keys")
    key_outage_grace_s: NonNegativeFloat = Field(
        300.0, le=300.0, description="a key the store confirmed this recently keeps working while it is down"
    )
    sentiment: bool = Field(True, description="score each transcript.final (VADER)")
    redact: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="personal data replaced before anything is stored or sent: card,ssn,email,phone,iban or all",
    )
    redact_region: str = Field(
        "US", description="the country a phone number without a country code is read as from (ISO 3166)"
    )
    latency_warn_ms: int = Field(
        1500, ge=1, le=600_000, description="a turn slower than this is flagged (dashboard, /v1/stats)"
    )
    log_level: str = Field(
        "info", pattern="^(critical|error|warning|info|debug)$", description="the least level logged: critical|error|warning|info|debug"
    )
    webhooks_allow_private: bool = Field(False, description="allow webhook URLs on private networks (SSRF guard off)")
    webhook_retry_schedule: str = Field(
        "5s,30s,2m,10m,30m,1h", description="delays after the 1st, 2nd, … failed webhook attempt"
    )
    webhook_retry_repeat_s: PositiveFloat = Field(10_800.0, description="retry delay once the schedule is exhausted")
    webhook_retry_jitter: NonNegativeFloat = Field(0.2, lt=1, description="± fraction applied to each retry delay")
    webhook_give_up_s: PositiveFloat = Field(86_400.0, description="fail a webhook message this long after queued")
    webhook_timeout_s: PositiveFloat = Field(10.0, le=120, description="per webhook attempt")
    webhook_concurrency: int = Field(16, ge=1, le=1000, description="webhook attempts in flight per node")
    webhook_concurrency_per_account: int = Field(
        4, ge=1, le=1000, description="webhook attempts one account may have in flight per node"
    )
    webhook_poll_s: PositiveFloat = Field(1.0, le=60, description="how often the webhook worker looks for due deliveries")
    webhook_max_endpoints: int = Field(20, ge=1, description="webhook endpoints per account")
    webhook_secret_overlap_s: NonNegativeFloat = Field(86_400.0, description="a rotated-out secret keeps signing")

    # ---- abuse limits and key rotation (docs/security.md) ----------------------------------
    previous_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated earlier JWT signing secrets: their tokens stay valid until they expire",
    )
    max_connections_per_key: NonNegativeInt = Field(
        10_000, description="open /v1/events + /v1/ingest sockets per API key on this node; 0: no limit"
    )
    max_connections_per_account: NonNegativeInt = Field(
        0, description="open sockets per account on this node (quota_sockets counts all nodes); 0: no limit"
    )
    ingest_rate: NonNegativeFloat = Field(
        10_000.0, description="events per second per API key, REST and /v1/ingest together; 0: no limit"
    )
    ingest_burst: int = Field(20_000, ge=1, description="events a key may send at once above ingest_rate")
    audio_rate: NonNegativeFloat = Field(
        20_000.0, description="audio frames per second per API key on /v1/ingest (apart from events); 0: no limit"
    )
    audio_burst: int = Field(40_000, ge=1, description="audio frames a key may send at once above audio_rate")
    listen_buffer_bytes: int = Field(
        256 * 1024,
        ge=16 * 1024,
        le=64 * 1024 * 1024,
        description="audio buffered per listening socket: past it the oldest is dropped; losing as much again without catching up: slow_consumer",
    )
    listen_backlog: int = Field(
        16_384,
        ge=1,
        le=1_000_000,
        description="connections the kernel queues before accept(); capped by net.core.somaxconn",
    )
    # ---- quotas per account (docs/protocol.md, Quotas per account; cluster-wide on the Redis broker) ---
    quota_live_calls: NonNegativeInt = Field(10_000, description="live calls per account; 0: no quota")
    quota_events_per_call: NonNegativeInt = Field(100_000, description="events per call, partials included; 0: no quota")
    quota_sockets: NonNegativeInt = Field(
        25_000, description="open /v1/events + /v1/ingest sockets per account; 0: no quota"
    )
    control_timeout_s: PositiveFloat = Field(
        10.0, le=300, description="a control request without a producer's result gets a timeout result after this"
    )
    store_timeout_s: PositiveFloat = Field(
        10.0, le=300, description="how long a publish waits for the store's commit before an error"
    )
    # ---- records and privacy (docs/privacy.md) ---------------------------------------------
    retention_days: NonNegativeInt = Field(
        0, le=36_500, description="erase ended calls this many days after they ended; 0: keep them"
    )
    record: bool = Field(False, description="keep each call's audio as a 2-channel WAV (docs/recordings.md)")
    recordings_dir: str | None = Field(
        None, description="where recordings are kept; unset: data_dir/recordings. Several nodes: one shared directory"
    )
    retention_sweep_s: PositiveFloat = Field(
        3600.0, le=86_400, description="how often each node looks for calls past the retention"
    )

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        from callstream.webhooks.schedule import parse_delays

        parse_delays(value)  # raises ValueError with a clear message
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("previous_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("previous_secrets")
    @classmethod
    def _long_secrets(cls, value: list[str]) -> list[str]:
        if any(len(s) < 32 for s in value):
            raise ValueError("every previous secret must be at least 32 characters long")
        return value

    @field_validator("redact", mode="before")
    @classmethod
    def _redact_kinds(cls, value: object) -> object:
        from callstream.pii import parse_kinds

        return list(parse_kinds(value)) if isinstance(value, str | list) else value

    @field_validator("redact_region")
    @classmethod
    def _phone_region(cls, value: str, info: ValidationInfo) -> str:
        """Checked (and libphonenumber loaded) only when phone numbers are redacted."""
        if "phone" in info.data.get("redact", ()):
            import phonenumbers

            if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"unknown region {value!r}; an ISO 3166 country code such as US or GB")
        return value.upper()

    @field_validator("broker")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://", "memory:")):
            raise ValueError("must be a redis:// URL (or unset for the in-process broker)")
        return value or None

    @field_validator("database")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql", "postgres://", "sqlite")):
            raise ValueError("must be a postgresql:// or sqlite:/// URL (or unset for SQLite in data_dir)")
        return value or None


def describe_errors(exc: ValidationError, flags: Collection[str] = ()) -> str:
    """One line per bad option, naming its environment variable and, when the command has one
    (`flags`: the options it takes as flags), its flag."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        variable = f"CALLSTREAM_{name.upper()}"
        where = f"--{name.replace('_', '-')} / {variable}" if name in flags else variable
        lines.append(f"{where}: {error['msg']}")
    return "\n".join(lines)
