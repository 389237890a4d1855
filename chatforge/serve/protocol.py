"""The OpenAI chat-completions request, validated by hand: every mistake is an ApiError with a 4xx code
and OpenAI's error body ({"error": {"message", "type", "param", "code"}}), whose message names the field.

A schema library would answer in its own shape; OpenAI clients show `message` and `param`. A parameter
that this server cannot honour (tools, logprobs, JSON mode, penalties) is refused with a 400 that
names it, never silently ignored: the caller would otherwise trust an answer made without it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from chatforge.request_body import NotAnObject, json_object
from chatforge.serve.engine import Sampling

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS, MAX_STOP_CHARS = 4, 200
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 * 1024  # a request body larger than this is refused unread (413)
    max_prompt_tokens: int = 4096  # after the chat template; also capped by the model's context
    max_tokens: int = 1024  # the most an answer may ask for
    default_max_tokens: int = 256  # when a request does not say; never above max_tokens
    max_messages: int = 256

    @property
    def default_tokens(self) -> int:
        """The answer length of a request that sets none: a server started with a lower limit lowers it too."""
        return min(self.default_max_tokens, self.max_tokens)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    messages: list  # [{"role": "system" | "user" | "assistant", "content": str}]
    sampling: Sampling
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object, or a 400 saying why not."""
    try:
        return json_object(raw)
    except NotAnObject as e:
        raise ApiError(400, {"deep": "The body is nested too deeply to be a chat request.",
                             "invalid": f"The body is not valid JSON: {e}.",
                             "type": "The body must be a JSON object."}[e.kind]) from None


def parse_chat_request(body: dict, limits: Limits) -> ChatRequest:
    """The validated request of a /v1/chat/completions body, or ApiError naming the field."""
    refuse_unsupported(body)
    messages = parse_messages(body.get("messages"), limits)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise ApiError(400, "'top_p' must be greater than 0.", param="top_p")
    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=_max_tokens(body, limits),
                        seed=_seed(body.get("seed")), stop=parse_stop(body.get("stop")))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean; got {stream!r}.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage")
    return ChatRequest(messages, sampling, stream, include_usage)


# What a parameter may be and still change nothing; anything else is refused by name.
HARMLESS = {
    "n": (1,), "logprobs": (False,), "top_logprobs": (), "tools": ([],), "functions": ([],),
    "tool_choice": ("none", "auto"), "function_call": ("none", "auto"), "parallel_tool_calls": (True, False),
    "response_format": ({"type": "text"},), "logit_bias": ({},), "presence_penalty": (0,), "frequency_penalty": (0,),
    "modalities": (["text"],), "audio": (), "prediction": (), "web_search_options": (),
}


def refuse_unsupported(body: dict):
    """400 for an OpenAI parameter this server cannot honour (null, and its no-op values, pass)."""
    for key, fine in HARMLESS.items():
        value = body.get(key)
        if value is None or any(_same(value, f) for f in fine):
            continue
        what = {"n": "Only 'n': 1 is supported", "logprobs": "Log-probabilities are not supported",
                "top_logprobs": "Log-probabilities are not supported",
                "response_format": "Only 'response_format': {\"type\": \"text\"} is supported"}.get(
            key, f"'{key}' is not supported by this server (it answers in plain text only)")
        raise ApiError(400, f"{what}; got {short(value)}.", param=key, code="unsupported_parameter")


def parse_messages(messages, limits: Limits) -> list[dict]:
    """[{"role", "content": str}] with "developer" read as "system"; at least one user message."""
    if messages is None:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array.", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"'messages' has {len(messages)} items; the limit is {limits.max_messages}.", param="messages")
    clean = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"'{where}' must be an object.", param=where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"'{where}.role' must be one of {', '.join(ROLES)}; got {short(role)}.",
                           param=f"{where}.role")
        clean.append({"role": "system" if role == "developer" else role, "content": _content(m.get("content"), where)})
    if all(m["role"] != "user" for m in clean):
        raise ApiError(400, "'messages' must contain at least one user message.", param="messages")
    return clean


def parse_stop(value) -> tuple[str, ...]:
    """OpenAI's `stop`: a string or a list of up to 4 non-empty strings; the answer ends before the first found."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a string or an array of up to {MAX_STOPS} strings; got {short(value)}.",
                       param="stop")
    for i, s in enumerate(stops):
        param = "stop" if isinstance(value, str) else f"stop[{i}]"
        if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
            raise ApiError(400, f"'{param}' must be a string of 1 to {MAX_STOP_CHARS} characters; got {short(s)}.",
                           param=param)
        text(s, param)
    return tuple(stops)


def text(s: str, param: str) -> str:
    """`s` if it can be encoded as UTF-8: JSON may carry a lone surrogate ("\\ud800"), which is no text at all
    and which the tokenizer cannot encode."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"'{param}' contains a lone surrogate (\\u{ord(s[e.start]):04x} at character {e.start}), "
                            "which is not text.", param=param) from None
    return s


def _content(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return text(content, f"{where}.content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"'{where}.content[{j}]' must be a text part; only text is supported.",
                               param=f"{where}.content[{j}]")
            parts.append(text(part["text"], f"{where}.content[{j}].text"))
        return "".join(parts)
    raise ApiError(400, f"'{where}.content' must be a string or an array of text parts; got {type(content).__name__}.",
                   param=f"{where}.content")


def _max_tokens(body: dict, limits: Limits) -> int:
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(param)
    if value is None:
        return limits.default_tokens
    if not _is_int(value) or not 1 <= value <= limits.max_tokens:
        raise ApiError(400, f"'{param}' must be an integer from 1 to {limits.max_tokens}; got {short(value)}.",
                       param=param)
    return value


def _seed(seed) -> int | None:
    low, high = SEED_RANGE
    if seed is not None and not (_is_int(seed) and low <= seed <= high):
        raise ApiError(400, f"'seed' must be an integer from -2**63 to 2**64-1; got {short(seed)}.", param="seed")
    return seed


def _same(a, b) -> bool:
    """JSON equality: 0 and 0.0 are the same number, but true is not 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    x = body.get(key)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not low <= x <= high:
        raise ApiError(400, f"'{key}' must be a number from {low:g} to {high:g}; got {short(x)}.", param=key)
    return float(x)


def short(value, limit: int = 60) -> str:
    """repr of a client's value for an error message, cut short: a 10,000-digit number is not worth echoing."""
    try:
        r = json.dumps(value, ensure_ascii=True)
    except (ValueError, TypeError):
        r = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"
    return r if len(r) <= limit else r[: limit - 3] + "..."
