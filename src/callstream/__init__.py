"""callstream: live events of voice calls, streamed while the call is going."""

__version__ = "0.1.0"

from callstream.client import Client, SyncClient, iter_events
from callstream.errors import AuthError, CallstreamError, ClientError, PublishError
from callstream.publisher import Publisher

__all__ = [
    "AuthError",
    "CallstreamError",
    "Client",
    "ClientError",
    "PublishError",
    "Publisher",
    "SyncClient",
    "__version__",
    "iter_events",
]
