"""The bodies of HTTP requests, as the chat server and the labelling app both read them: at most so many bytes
(refused as soon as the declared or received length is over), and a JSON object. Each app turns the exceptions
into its own error replies (OpenAI's shape for the server, field-named for the labelling API)."""

from __future__ import annotations

import json


class TooLarge(Exception):
    """The body is over the limit; `declared` is the length its header gave, None when that was not over it."""

    def __init__(self, declared: int | None):
        super().__init__(declared)
        self.declared = declared


class NotAnObject(ValueError):
    """The body is not a JSON object. kind: "deep" (nested past Python's parser), "invalid" (not JSON, not UTF-8),
    or "type" (JSON, but not an object); the text says what the parser said, or the type found."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


async def read_capped(request, max_bytes: int) -> bytes:
    """The raw body of a Starlette request, or TooLarge once it is known to be over `max_bytes`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(int(declared))
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > max_bytes:
            raise TooLarge(None)
    return raw


def json_object(raw: bytes) -> dict:
    """The body as a JSON object, or NotAnObject saying why not."""
    try:
        body = json.loads(raw)
    except RecursionError:  # "[[[[..." thousands deep: Python's parser gives up
        raise NotAnObject("deep", "nested too deeply") from None
    except ValueError as e:  # not JSON, not UTF-8, or an integer of thousands of digits
        raise NotAnObject("invalid", str(e)) from None
    if not isinstance(body, dict):
        raise NotAnObject("type", type(body).__name__)
    return body
