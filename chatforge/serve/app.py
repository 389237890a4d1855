"""`chatforge serve`: an OpenAI-compatible HTTP API and a web chat page over one model.

    POST /v1/chat/completions   (stream or not; stream_options.include_usage)
    GET  /v1/models   GET /health   GET / (the web page)

Requests are validated by hand rather than by a schema library so that every mistake gets the
error body OpenAI clients know ({"error": {"message", "type", "param", "code"}}) with a 4xx code,
and the message names the field. Generation runs on the engine's worker thread; concurrent
requests are answered in one batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request  # at module level: FastAPI resolves the string annotations here

from chatforge.serve.engine import Engine, Event, Sampling, blocked_input, prompt_ids

log = logging.getLogger("chatforge.serve")
WEB_PAGE = Path(__file__).with_name("web") / "index.html"
ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 * 1024  # a request body larger than this is refused unread (413)
    max_prompt_tokens: int = 4096  # after the chat template; also capped by the model's context
    max_tokens: int = 1024  # the most an answer may ask for
    default_max_tokens: int = 256
    max_messages: int = 256


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def create_app(engine: Engine, model_name: str, *, moderator=None, api_key: str | None = None,
               limits: Limits = Limits()):
    """The FastAPI application; `engine` holds the model, `moderator` (or None) filters input and output."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="chatforge", docs_url=None, redoc_url=None, openapi_url=None)
    context = getattr(engine.model.config, "max_position_embeddings", limits.max_prompt_tokens + 1)
    max_prompt = min(limits.max_prompt_tokens, context - 1)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):  # unknown paths, wrong methods: the same error shape
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e):
        log.exception("request failed")
        return JSONResponse(ApiError(500, "internal error", kind="server_error").body(), status_code=500)

    def authorize(request: Request):
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {api_key}":
            raise ApiError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "chatforge"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request, limits.max_body_bytes)
        messages, sampling, stream, usage_in_stream = parse_chat_request(body, limits)
        blocked = blocked_input(moderator, messages)  # before the length check: a blocked message is blocked at any length
        ids = prompt_ids(engine.tokenizer, messages)
        if blocked is None and len(ids) > max_prompt:
            raise ApiError(400, f"The conversation is {len(ids)} tokens after the chat template; the limit is "
                                f"{max_prompt}.", param="messages", code="context_length_exceeded")
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        events = asyncio.Queue()
        loop = asyncio.get_running_loop()
        handle = None
        if blocked is not None:
            events.put_nowait(Event(delta=blocked, finish="content_filter", prompt_tokens=len(ids)))
        else:
            handle = engine.submit(ids, sampling, lambda e: loop.call_soon_threadsafe(events.put_nowait, e), moderator)

        if not stream:
            text, final = "", None
            try:
                while final is None:
                    event = await events.get()
                    text += event.delta
                    final = event if event.finish else None
            finally:
                if handle is not None and final is None:
                    handle.cancel()  # the client hung up before the answer was complete
            if final.finish == "error":
                raise ApiError(500, "generation failed", kind="server_error")
            if final.finish == "content_filter":  # only the polite message, not the part streamed before it
                text = blocked if blocked is not None else moderator.message(text)
            return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": final.finish, "logprobs": None}],
                    "usage": usage(final)}

        async def chunks():
            def chunk(delta: dict, finish=None) -> str:
                data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
                if usage_in_stream:
                    data["usage"] = None
                return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

            finished = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    event = await events.get()
                    if event.delta:
                        yield chunk({"content": event.delta})
                    if event.finish == "error":  # OpenAI's streams report a failure as an error object
                        finished = True
                        yield f"data: {json.dumps(ApiError(500, 'generation failed', kind='server_error').body())}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    if event.finish:
                        finished = True
                        yield chunk({}, event.finish)
                        if usage_in_stream:
                            data = {"id": rid, "object": "chat.completion.chunk", "created": created,
                                    "model": model_name, "choices": [], "usage": usage(event)}
                            yield f"data: {json.dumps(data)}\n\n"
                        yield "data: [DONE]\n\n"
                        return
            finally:
                if handle is not None and not finished:
                    handle.cancel()

        return StreamingResponse(chunks(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def usage(event: Event) -> dict:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


async def read_json(request, max_bytes: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"The request body is {declared} bytes; the limit is {max_bytes}.")
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > max_bytes:
            raise ApiError(413, f"The request body is over the limit of {max_bytes} bytes.")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"The body is not valid JSON: {e}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return body


def parse_chat_request(body: dict, limits: Limits) -> tuple[list[dict], Sampling, bool, bool]:
    """(messages, sampling, stream, include_usage) from a /v1/chat/completions body, or ApiError naming the field."""
    messages = body.get("messages")
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
        if role not in ROLES:
            raise ApiError(400, f"'{where}.role' must be one of {', '.join(ROLES)}; got {role!r}.", param=f"{where}.role")
        clean.append({"role": "system" if role == "developer" else role, "content": _text(m.get("content"), where)})
    if all(m["role"] != "user" for m in clean):
        raise ApiError(400, "'messages' must contain at least one user message.", param="messages")

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if not _is_int(max_tokens) or not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"'{param}' must be an integer from 1 to {limits.max_tokens}; got {max_tokens!r}.", param=param)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise ApiError(400, "'top_p' must be greater than 0.", param="top_p")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "Only 'n': 1 is supported.", param="n")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, f"'seed' must be an integer; got {seed!r}.", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean; got {stream!r}.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage")
    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    return clean, sampling, stream, include_usage


def _text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"'{where}.content[{j}]' must be a text part; only text is supported.",
                               param=f"{where}.content[{j}]")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"'{where}.content' must be a string or an array of text parts; got {type(content).__name__}.",
                   param=f"{where}.content")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    x = body.get(key)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not low <= x <= high:
        raise ApiError(400, f"'{key}' must be a number from {low:g} to {high:g}; got {x!r}.", param=key)
    return float(x)


def main(args) -> None:
    """`chatforge serve`: load the model, build the app, run uvicorn until Ctrl-C."""
    import uvicorn

    from chatforge.serve.chat import load, moderator_of

    model, tokenizer = load(args.model)
    moderator = moderator_of(args)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, gather_ms=args.gather_ms)
    name = args.name or Path(args.model).resolve().name
    limits = Limits(max_tokens=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens)
    app = create_app(engine, name, moderator=moderator, api_key=args.api_key, limits=limits)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", args.host)
    print(f"chatforge serve: {name} on http://{args.host}:{args.port}  (web chat at /, API at /v1)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
