"""The webhook options, read from `Settings` with defaults while the fields are being added."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callstream.webhooks.schedule import RetrySchedule, parse_delays

__all__ = ["WebhookConfig"]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Everything the API, the ended-hook and the worker need to agree on."""

    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    timeout_s: float = 10.0
    concurrency: int = 16
    # One account's share of `concurrency`, so its hanging endpoints cannot take every slot.
    concurrency_per_account: int = 4
    poll_s: float = 1.0
    max_endpoints: int = 20
    secret_overlap_s: float = 24 * 3600.0
    allow_private: bool = False
    # A claimed message is someone's until the lease ends; long enough to cover one attempt.
    lease_s: float = 0.0

    @property
    def lease_ms(self) -> int:
        """The lease: explicit, or three timeouts plus a margin, so a live attempt keeps it."""
        seconds = self.lease_s or self.timeout_s * 3 + 30.0
        return int(seconds * 1000)

    @classmethod
    def from_settings(cls, settings: Any) -> WebhookConfig:
        """Tolerates settings that do not have the webhook fields yet (getattr defaults)."""
        defaults = cls()
        schedule_text = getattr(settings, "webhook_retry_schedule", None)
        schedule = RetrySchedule(
            delays=parse_delays(schedule_text) if schedule_text else defaults.schedule.delays,
            repeat=float(getattr(settings, "webhook_retry_repeat_s", defaults.schedule.repeat)),
            give_up_after=float(getattr(settings, "webhook_give_up_s", defaults.schedule.give_up_after)),
            jitter=float(getattr(settings, "webhook_retry_jitter", defaults.schedule.jitter)),
        )
        return cls(
            schedule=schedule,
            timeout_s=float(getattr(settings, "webhook_timeout_s", defaults.timeout_s)),
            concurrency=int(getattr(settings, "webhook_concurrency", defaults.concurrency)),
            concurrency_per_account=int(
                getattr(settings, "webhook_concurrency_per_account", defaults.concurrency_per_account)
            ),
            poll_s=float(getattr(settings, "webhook_poll_s", defaults.poll_s)),
            max_endpoints=int(getattr(settings, "webhook_max_endpoints", defaults.max_endpoints)),
            secret_overlap_s=float(getattr(settings, "webhook_secret_overlap_s", defaults.secret_overlap_s)),
            allow_private=bool(getattr(settings, "webhooks_allow_private", False)),
        )
