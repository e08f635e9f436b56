"""Post-call webhooks (docs/webhooks.md): a durable outbox, a signing worker, the SSRF guard.

`install(runtime)` wires them into a node; the REST API lives in `callstream.server.webhooks_api`.
Importing this package registers the webhook tables on the store's metadata.
"""

from __future__ import annotations

from callstream.webhooks import tables
from callstream.webhooks.config import WebhookConfig
from callstream.webhooks.hooks import install, repo_of
from callstream.webhooks.payloads import EVENT_TYPES, build_payload
from callstream.webhooks.repo import WebhookRepo
from callstream.webhooks.schedule import RetrySchedule
from callstream.webhooks.ssrf import UnsafeURLError, check_url
from callstream.webhooks.worker import WebhookWorker, sign

__all__ = [
    "EVENT_TYPES",
    "RetrySchedule",
    "UnsafeURLError",
    "WebhookConfig",
    "WebhookRepo",
    "WebhookWorker",
    "build_payload",
    "check_url",
    "install",
    "repo_of",
    "sign",
    "tables",
]
