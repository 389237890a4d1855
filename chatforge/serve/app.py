"""`chatforge serve`: an OpenAI-compatible HTTP API and a web chat page over one model.

    POST /v1/chat/completions   (stream or not; stream_options.include_usage; stop)
    POST /v1/feedback           (with --feedback FILE: the page's thumbs and "which answer is better")
    GET  /v1/models   GET /health   GET / (the web page)

Requests are parsed and validated in `chatforge.serve.protocol` (every mistake a 4xx naming the
field), checked for origin and content type in `chatforge.serve.guard`, and answered by the engine's
worker thread: concurrent requests are answered in one batch, each as it would be alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import socket
import time
import uuid
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request  # at module level: FastAPI resolves the string annotations here

from chatforge.errors import UserError
from chatforge.request_body import TooLarge, read_capped
from chatforge.serve.arguments import check_serve_arguments
from chatforge.serve.chat import load, moderator_of
from chatforge.serve.engine import Engine, Event, blocked_input, prompt_ids
from chatforge.serve.guard import LOOPBACK_HOSTS, Guard
from chatforge.serve.preferences import FeedbackLog, parse_feedback, thumbs_path
from chatforge.serve.protocol import ApiError, ChatRequest, Limits, parse_chat_request, parse_json

log = logging.getLogger("chatforge.serve")
WEB_PAGE = Path(__file__).with_name("web") / "index.html"


def create_app(engine: Engine, model_name: str, *, moderator=None, api_key: str | None = None,
               limits: Limits = Limits(), feedback: FeedbackLog | None = None,
               trusted_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS, allowed_origins: tuple[str, ...] = ()):
    """The FastAPI application. `engine` holds the model; `moderator` (or None) filters input and output;
    `feedback` (or None: the page hides its buttons) stores what people say about the answers;
    `trusted_hosts` and `allowed_origins` are the Guard's (None: any Host, for a public address)."""
    app = FastAPI(title="chatforge", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, trusted_hosts=trusted_hosts, allowed_origins=allowed_origins)
    api = Api(engine, model_name, moderator, api_key, limits, feedback)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/", api.page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/v1/chat/completions", api.chat_completions, methods=["POST"])
    app.add_api_route("/v1/feedback", api.feedback, methods=["POST"])
    return app


async def api_error(request: Request, e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and wrong methods: the same error shape as the API's own."""
    return JSONResponse(ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code)


@dataclass(frozen=True)
class Reply:
    """The fixed parts of one answer's JSON: its id, time and model."""

    id: str
    created: int
    model: str

    def completion(self, text: str, final: Event) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": final.finish, "logprobs": None}],
                "usage": usage(final)}

    def chunk(self, delta: dict, finish: str | None = None, with_usage: bool = False) -> str:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if with_usage:
            data["usage"] = None
        return sse(data)

    def usage_chunk(self, final: Event) -> str:
        return sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [], "usage": usage(final)})


class Api:
    """The routes, over one engine and its settings."""

    def __init__(self, engine: Engine, model_name: str, moderator, api_key: str | None, limits: Limits,
                 feedback: FeedbackLog | None):
        self.engine, self.model_name, self.moderator, self.api_key = engine, model_name, moderator, api_key
        self.limits, self.feedback_log = limits, feedback
        context = getattr(engine.model.config, "max_position_embeddings", limits.max_prompt_tokens + 1)
        self.max_prompt = min(limits.max_prompt_tokens, context - 1)  # at least one token of answer fits
        self.html = WEB_PAGE.read_text(encoding="utf-8")
        self.page_headers = {"Content-Security-Policy": content_security_policy(self.html), "Cache-Control": "no-cache"}

    def authorize(self, request: Request):
        if self.api_key is not None and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise ApiError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    # -- what the server is ------------------------------------------------------------------------
    async def health(self):
        """Also what the web page needs before its first request: the model, the answer length limits,
        and whether to show the feedback buttons."""
        return {"status": "ok", "model": self.model_name, "max_tokens": self.limits.default_tokens,
                "max_tokens_limit": self.limits.max_tokens, "feedback": self.feedback_log is not None}

    async def models(self, request: Request):
        self.authorize(request)
        return {"object": "list",
                "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "chatforge"}]}

    async def page(self):
        return HTMLResponse(self.html, headers=self.page_headers)

    # -- answers -----------------------------------------------------------------------------------
    async def chat_completions(self, request: Request):
        self.authorize(request)
        chat = parse_chat_request(parse_json(await read_body(request, self.limits.max_body_bytes)), self.limits)
        blocked = blocked_input(self.moderator, chat.messages)  # before the length check: blocked at any length
        try:
            ids = prompt_ids(self.engine.tokenizer, chat.messages)
        except UserError as e:  # the model's template refuses the conversation (e.g. it has no system role)
            raise ApiError(400, str(e), param="messages") from None
        if blocked is None and len(ids) > self.max_prompt:
            raise ApiError(400, f"The conversation is {len(ids)} tokens after the chat template; the limit is "
                                f"{self.max_prompt}.", param="messages", code="context_length_exceeded")
        reply = Reply(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), self.model_name)
        events, handle = self.start(ids, chat, blocked)
        if chat.stream:
            return StreamingResponse(self.stream(reply, events, handle, chat.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self.whole_answer(request, reply, events, handle, blocked)

    def start(self, ids: list[int], chat: ChatRequest, blocked: str | None):
        """(the queue the answer's Events arrive on, the engine's handle or None for a blocked request)."""
        events: asyncio.Queue[Event] = asyncio.Queue()
        if blocked is not None:
            events.put_nowait(Event(delta=blocked, finish="content_filter", prompt_tokens=len(ids)))
            return events, None
        loop = asyncio.get_running_loop()
        handle = self.engine.submit(ids, chat.sampling, lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
                                    self.moderator)
        return events, handle

    async def whole_answer(self, request: Request, reply: Reply, events: asyncio.Queue, handle, blocked):
        """The non-streaming answer; generation stops if the client hangs up before it is done."""
        watcher = asyncio.create_task(cancel_on_disconnect(request, handle)) if handle is not None else None
        text, final = "", None
        try:
            while final is None:
                event = await events.get()
                text += event.delta
                final = event if event.finish else None
        finally:
            if watcher is not None:
                watcher.cancel()
            if handle is not None and final is None:
                handle.cancel()
        if final.finish == "error":
            raise ApiError(500, "generation failed", kind="server_error")
        if final.finish == "content_filter":  # only the polite message, not the part generated before it
            text = blocked if blocked is not None else self.moderator.message(text)
        return reply.completion(text, final)

    async def stream(self, reply: Reply, events: asyncio.Queue, handle, include_usage: bool):
        """Server-sent events: a role chunk, content deltas, the finish chunk, usage if asked, [DONE]."""
        finished = False
        try:
            yield reply.chunk({"role": "assistant", "content": ""}, with_usage=include_usage)
            while not finished:
                event = await events.get()
                finished = event.finish is not None
                if event.finish == "error":  # OpenAI's streams report a failure as an error object
                    yield sse(ApiError(500, "generation failed", kind="server_error").body())
                    break
                if event.delta:
                    yield reply.chunk({"content": event.delta}, with_usage=include_usage)
                if event.finish:
                    yield reply.chunk({}, event.finish, with_usage=include_usage)
                    if include_usage:
                        yield reply.usage_chunk(event)
            yield "data: [DONE]\n\n"
        finally:
            if handle is not None and not finished:
                handle.cancel()  # the client went away mid-answer

    # -- feedback ----------------------------------------------------------------------------------
    async def feedback(self, request: Request):
        """Store a preference between two answers, or a thumb on one (chatforge.serve.preferences)."""
        if self.feedback_log is None:
            raise ApiError(404, "Feedback is off: start the server with --feedback FILE to collect it.",
                           code="feedback_off")
        self.authorize(request)
        kind, record = parse_feedback(parse_json(await read_body(request, self.limits.max_body_bytes)), self.limits)
        await run_in_threadpool(self.feedback_log.add, kind, record)  # it syncs to disk: off the event loop
        return {"object": "feedback", "stored": kind}


def usage(event: Event) -> dict:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused (413) as soon as it is known to be over `max_bytes`."""
    try:
        return await read_capped(request, max_bytes)
    except TooLarge as e:
        raise ApiError(413, f"The request body is {e.declared} bytes; the limit is {max_bytes}." if e.declared else
                            f"The request body is over the limit of {max_bytes} bytes.") from None


async def cancel_on_disconnect(request: Request, handle):
    """Cancel the engine's work for a client that hung up: without this a non-streaming request is
    generated to its end for nobody."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handle.cancel()


def content_security_policy(html: str) -> str:
    """The page may run only its own inline script and style (by hash), talk only to this server, and
    be framed by no one: text a model writes can never become markup that loads or runs anything."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        return " ".join(f"'sha256-{b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# -- the command --------------------------------------------------------------------------------------

def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or a UserError that says why not (port in use, no such address)."""
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def main(args) -> None:
    """`chatforge serve`: load the model, build the app, serve until Ctrl-C."""
    check_serve_arguments(args)
    name = args.name or Path(args.model).resolve().name
    feedback = FeedbackLog(Path(args.feedback), name) if args.feedback else None
    sock = listen(args.host, args.port)  # before the model loads: a taken port is said at once
    model, tokenizer = load(args.model)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, gather_ms=args.gather_ms)
    limits = Limits(max_tokens=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens)
    loopback = args.host in LOOPBACK_HOSTS
    app = create_app(engine, name, moderator=moderator_of(args), api_key=args.api_key, limits=limits,
                     feedback=feedback, trusted_hosts=LOOPBACK_HOSTS if loopback else None,
                     allowed_origins=tuple(args.allow_origin))
    if not loopback and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", args.host)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"chatforge serve: {name} on http://{host}:{sock.getsockname()[1]}  (web chat at /, API at /v1)", flush=True)
    if feedback is not None:
        print(f"feedback: preferences to {feedback.path}, thumbs to {thumbs_path(feedback.path)}", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        engine.close()
