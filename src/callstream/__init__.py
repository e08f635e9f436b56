"""callstream: live events of voice calls, streamed while the call is going."""

__version__ = "0.1.0"
