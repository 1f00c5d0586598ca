"""An incremental Server-Sent Events parser (WHATWG HTML §9.2.6), for our own clients.

Lines end at CR, LF or CRLF (also across chunk boundaries); an event with empty data is not
dispatched but still moves the last event id, which is how filtered streams advance cursors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Message:
    event: str
    data: str
    id: str


class SSEParser:
    def __init__(self) -> None:
        self.last_id = ""
        self.retry_ms: int | None = None
        self._buf = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""
        self._id = ""

    def feed(self, chunk: bytes) -> list[Message]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._skip_lf = False
        buf = self._buf + chunk
        end = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
        complete, self._buf = buf[:end], buf[end:]
        self._skip_lf = complete.endswith(b"\r")
        out: list[Message] = []
        for raw in _EOL.split(complete)[:-1]:
            message = self._line(raw.decode("utf-8", "replace"))
            if message is not None:
                out.append(message)
        return out

    def _line(self, line: str) -> Message | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Message | None:
        self.last_id = self._id
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Message(event or "message", "\n".join(data), self.last_id)
