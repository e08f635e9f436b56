"""callstream: live events of voice calls, streamed while the call is going."""

__version__ = "0.1.0"

from callstream.client import Client, SyncClient, iter_events
from callstream.control import ControlRequest
from callstream.control_waits import ControlOutcome
from callstream.errors import AuthError, CallstreamError, ClientError, ControlError, PublishError
from callstream.publisher import Publisher

__all__ = [
    "AuthError",
    "CallstreamError",
    "Client",
    "ClientError",
    "ControlError",
    "ControlOutcome",
    "ControlRequest",
    "PublishError",
    "Publisher",
    "SyncClient",
    "__version__",
    "iter_events",
]
