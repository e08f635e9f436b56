"""callstream: live events of voice calls, streamed while the call is going."""

__version__ = "0.1.0"

from callstream.errors import CallstreamError, PublishError
from callstream.publisher import Publisher

__all__ = ["CallstreamError", "PublishError", "Publisher", "__version__"]
