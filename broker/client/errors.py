"""What the consumer client raises, in one tree under :class:`broker.errors.LogbrokerError`.

Hierarchy::

    LogbrokerError
    └── ClientError
        ├── Refused              the gateway answered 4xx: status, code, message (§5 error shape)
        │   ├── BadRequest       400: a malformed job id, cursor, filter or parameter
        │   ├── Unauthorized     401: token missing, malformed, expired or badly signed
        │   ├── Forbidden        403: the token does not cover this job or route
        │   └── NotFound         404: replay of an unknown job (``job_not_found``), or a base URL
        │                        that is not a gateway (``not_found``); a stream waits for a job
        ├── ServerError          the gateway answered 5xx (retried; seen as a RetriesExhausted cause)
        ├── RetriesExhausted     no answer within the Retry bounds; ``__cause__`` is the last failure
        ├── ProtocolError        the answer is not logbroker's protocol (wrong type, bad JSON)
        ├── GapError             entries after the cursor were trimmed by retention (``gaps="raise"``)
        └── ResetError           the job's data was lost and it starts again (``gaps="raise"``)

Refusals are never retried: the same request would be refused again. Connection errors, 5xx,
408 and 429 are retried with backoff (``broker.client.retry``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LogbrokerError

if TYPE_CHECKING:
    from .entries import Gap, Reset


class ClientError(LogbrokerError):
    """Base class of everything ``broker.client`` raises on purpose."""


class Refused(ClientError):
    """The gateway refused the request; ``code`` and ``message`` are its JSON error's (docs/design.md
    §5 "Errors"), or ``http_<status>`` and the start of the body when the answer was not that shape
    (a proxy's own page)."""

    def __init__(self, status: int, code: str, message: str, url: str) -> None:
        super().__init__(f"{status} {code}: {message} ({url})")
        self.status = status
        self.code = code
        self.message = message
        self.url = url


class BadRequest(Refused):
    """400."""


class Unauthorized(Refused):
    """401: give a valid token (``token=``)."""


class Forbidden(Refused):
    """403: the token's ``jobs`` pattern or scope does not cover the request."""


class NotFound(Refused):
    """404."""


class ServerError(ClientError):
    """A 5xx answer (or 408/429); retried, so seen only as the cause of :class:`RetriesExhausted`."""

    def __init__(self, status: int, code: str, message: str, url: str, retry_after_s: float | None) -> None:
        super().__init__(f"{status} {code}: {message} ({url})")
        self.status = status
        self.code = code
        self.message = message
        self.url = url
        self.retry_after_s = retry_after_s


class StreamEnded(ClientError):
    """The stream closed before the job's end event (a gateway shutting down, a proxy timeout):
    resumed like a dropped connection; seen only as the cause of :class:`RetriesExhausted`."""


class RetriesExhausted(ClientError):
    """The gateway could not be reached (or kept failing) within ``Retry.max_attempts`` /
    ``Retry.max_elapsed_s``; ``__cause__`` and ``last_error`` are the last failure."""

    def __init__(self, url: str, attempts: int, elapsed_s: float, last_error: BaseException) -> None:
        super().__init__(
            f"gave up on {url} after {attempts} failed attempts in {elapsed_s:.1f}s: "
            f"{type(last_error).__name__}: {last_error}"
        )
        self.url = url
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last_error = last_error


class ProtocolError(ClientError):
    """The gateway (or whatever answered) does not speak logbroker's protocol; not retried."""


class GapError(ClientError):
    """Entries after ``after`` were trimmed by retention; ``first_available`` is the oldest one
    kept. The cursor has moved past the hole: a new ``follow(..., after=<its cursor>)`` goes on."""

    def __init__(self, gap: Gap) -> None:
        super().__init__(
            f"entries after {gap.after} were lost ({gap.reason}); the oldest kept is {gap.first_available}"
        )
        self.gap = gap
        self.after = gap.after
        self.first_available = gap.first_available
        self.reason = gap.reason


class ResetError(ClientError):
    """The job's data was lost (Redis came back empty) and its stream starts again from
    ``first_available``: whatever was read of it before is not part of it any more."""

    def __init__(self, reset: Reset) -> None:
        super().__init__(
            f"the job's data was lost ({reset.reason}) after {reset.after}; "
            f"it starts again at {reset.first_available or 'its next entry'}"
        )
        self.reset = reset
        self.after = reset.after
        self.first_available = reset.first_available
        self.reason = reset.reason
