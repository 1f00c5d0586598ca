"""The one place where logbroker's exceptions live.

Hierarchy::

    LogbrokerError
    ├── InvalidEntry        (also a ValueError) bad job id, level, name, fields, size...
    ├── InvalidConfig       (also a ValueError) a setting or keyword argument out of range
    ├── CodecError          stored bytes that cannot be decoded (corruption, foreign writer)
    ├── PublisherClosed     publishing after close()/aclose()
    └── ClientError         the consumer client's errors (refusals, retries exhausted, gaps...):
                            their tree is drawn in broker/client/errors.py

Redis errors are classified (retryable or not) in ``broker.delivery.is_retryable``, never leaked as-is
through the publisher's delivery report.
"""

from __future__ import annotations


class LogbrokerError(Exception):
    """Base class of every error logbroker raises on purpose."""


class InvalidEntry(LogbrokerError, ValueError):
    """An entry or identifier that must not be stored; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidConfig(LogbrokerError, ValueError):
    """A configuration value that cannot work; raised at construction, never later."""


class CodecError(LogbrokerError):
    """Stored data that is not a logbroker entry."""


class PublisherClosed(LogbrokerError):
    """The publisher was closed; nothing more can be queued."""
