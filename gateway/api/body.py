"""A request body read within ``LOGBROKER_MAX_BODY_BYTES``, compressed or not, never inflated past it.

``logbroker serve`` runs aiohttp without its automatic decompression: aiohttp inflates each
network chunk whole into the request's buffer before a handler can refuse it, so a 0.5 MB gzip
bomb became 512 MiB of work and >100 MiB of memory on its way to a 413. Here the compressed bytes
are read (bounded), then inflated a slice at a time, stopping as soon as the inflated size passes
the limit. An application embedding ``create_app`` whose server still decompresses gets the
already inflated body, read with the same bound. Encodings other than gzip and deflate are a 415.
"""

from __future__ import annotations

import zlib

from aiohttp import web

from ..errors import ApiError, bad_request

ENCODINGS = {
    "identity": 0,
    "gzip": zlib.MAX_WBITS | 16,
    "x-gzip": zlib.MAX_WBITS | 16,
    "deflate": zlib.MAX_WBITS,
}
_SLICE = 256 * 1024


def too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if encoding not in ENCODINGS:
        supported = ", ".join(e for e in ENCODINGS if e != "x-gzip")
        raise ApiError(
            415, "unsupported_media_type", f"Content-Encoding {encoding!r:.40} is not supported ({supported})"
        )
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)  # refused before a byte of it is read
    raw = bytearray()
    async for chunk in request.content.iter_chunked(_SLICE):
        raw += chunk
        if len(raw) > limit:
            raise too_large(limit)
    if encoding == "identity" or not _still_compressed(bytes(raw[:1])):
        return bytes(raw)
    return inflate(bytes(raw), ENCODINGS[encoding], limit)


def _still_compressed(head: bytes) -> bool:
    """A gzip stream starts with 0x1f and a zlib one with 0x78 ('x'); a JSON or NDJSON body never
    does. So a body still compressed (no server decompression) is told from one already inflated."""
    return head in (b"\x1f", b"\x78")


def inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """The inflated body, or 413 as soon as it passes ``limit``, or 400 for a corrupt stream. A
    gzip body may hold several members one after another (RFC 1952 §2.2): each is inflated."""
    out = bytearray()
    pending = data
    try:
        while pending:
            inflater = zlib.decompressobj(wbits)
            while pending and not inflater.eof:
                out += inflater.decompress(pending, _SLICE)
                if len(out) > limit:
                    raise too_large(limit)
                pending = inflater.unconsumed_tail
            if not inflater.eof:
                raise bad_request(
                    "invalid_body", "the request body could not be read: the compressed stream is cut short"
                )
            pending = inflater.unused_data
    except zlib.error as e:
        raise bad_request("invalid_body", f"the request body could not be read: {e}") from None
    return bytes(out)
