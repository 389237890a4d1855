"""The labelling app over HTTP: the JSON API (documented in docs/labelling.md) and the page that uses it.

    GET  /  and  /dashboard            the page (web/index.html)
    GET  /health
    GET  /api/me                       who the token belongs to
    POST /api/next     {}              the task to label now, leased to you (or null when none is left)
    POST /api/submit   {"task_id", "order", "ratings"?, "flags"?, "not_rankable"?}
    POST /api/skip     {"task_id"}
    POST /api/undo     {}              take back your last label or skip; its task comes back to you
    GET  /api/stats                    the dashboard's numbers

Every /api call needs `Authorization: Bearer TOKEN` (`chatforge label add-annotator`). POSTs must say
`Content-Type: application/json`: a page on another site cannot send that without the browser asking
first, so it cannot post labels in someone's name. Every refusal is a 4xx with
{"error": {"message", "field"}}, the message naming the field.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
import threading
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request  # at module level: FastAPI resolves the string annotations here

from chatforge.label import stats
from chatforge.label.config import LabelConfig
from chatforge.label.errors import LabelError
from chatforge.label.store import LabelStore
from chatforge.label.tasks import display_order
from chatforge.label.validate import order_of, parse_label, require_keys, task_id_of
from chatforge.request_body import NotAnObject, TooLarge, json_object, read_capped

log = logging.getLogger("chatforge.label")
WEB_PAGE = Path(__file__).with_name("web") / "index.html"
MAX_DEPTH = 6  # a valid body nests 3 deep (the body, "order", a tie); anything past 6 is refused unparsed


class Labelling:
    """What the API does, over the store. Every method blocks (SQLite), so the routes run them in worker
    threads; each raises LabelError for what it refuses."""

    def __init__(self, store: LabelStore, cfg: LabelConfig, gold=None):
        self.store, self.cfg, self.gold, self.n = store, cfg, gold, cfg.annotators_per_task

    def who(self, header: str) -> str:
        """The annotator named by an 'Authorization: Bearer TOKEN' header."""
        token = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        name = self.store.annotator_of(token) if token else None
        if name is None:
            problem = "is missing" if not header else "does not hold a known token"
            raise LabelError(401, "Authorization", f"header 'Authorization' {problem}: send "
                                                   f"'Authorization: Bearer TOKEN' (chatforge label add-annotator)")
        return name

    def next(self, name: str, body: dict) -> dict:
        require_keys(body, ())
        task_id = self.store.next_task(name, self.n, self.cfg.lease_seconds)
        return {"task": self._payload(task_id, name), "progress": self.store.progress(name, self.n)}

    def submit(self, name: str, body: dict) -> dict:
        task = self._task(body)
        label = parse_label(body, len(task["answers"]))
        label_id = self.store.submit(name, task["prompt_id"], label, self.n)
        return {"label_id": label_id, "task_id": task["prompt_id"], "progress": self.store.progress(name, self.n)}

    def skip(self, name: str, body: dict) -> dict:
        require_keys(body, ("task_id",), ("task_id",))
        task = self._task(body)
        self.store.skip(name, task["prompt_id"])
        return {"skipped": task["prompt_id"], "progress": self.store.progress(name, self.n)}

    def undo(self, name: str, body: dict) -> dict:
        require_keys(body, ())
        done = self.store.undo(name, self.n, self.cfg.lease_seconds)
        return {"undone": {"kind": done["kind"], "task_id": done["task_id"]},
                "task": self._payload(done["task_id"], name) if done["leased"] else None,
                "label": _shown_label(done) if done["kind"] == "label" else None,
                "progress": self.store.progress(name, self.n)}

    def stats(self) -> dict:
        tasks, now = self.store.tasks(), time.time()
        gold_ranks = self.gold.ranks_of(tasks) if self.gold is not None else None
        out = stats.dashboard(tasks, self.store.live_events(), self.n, now, self.cfg.pace_window_seconds,
                              gold_ranks, self.store.annotators())
        return {**out, "active_leases": self.store.active_leases(now)}

    def _task(self, body: dict) -> dict:
        task_id = task_id_of(body)
        task = self.store.task(task_id)
        if task is None:
            raise LabelError(404, "task_id", f"field 'task_id': no task {task_id[:80]!r} in this store")
        return task

    def _payload(self, task_id: str | None, name: str) -> dict | None:
        return None if task_id is None else task_payload(self.store.task(task_id), name, self.cfg.shuffle)


def create_app(store: LabelStore, cfg: LabelConfig, gold=None):
    """The FastAPI app over `store`; `gold` (a GoldJudge, or None) adds the judge's agreement to the stats."""
    app = FastAPI(title="chatforge label", docs_url=None, redoc_url=None, openapi_url=None)
    _error_handlers(app)
    labelling = Labelling(store, cfg, gold)
    page, page_headers = _page()

    async def call(request: Request, action, with_body: bool = True):
        """Who is asking, then the action in a worker thread."""
        name = await run_in_threadpool(labelling.who, request.headers.get("authorization", ""))
        if not with_body:
            return await run_in_threadpool(action, name)
        body = await read_json(request, cfg.max_body_bytes)
        return await run_in_threadpool(action, name, body)

    @app.get("/", response_class=HTMLResponse)
    @app.get("/dashboard", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers=page_headers)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/api/me")
    async def me(request: Request):
        return await call(request, lambda name: {"annotator": name, "annotators_per_task": cfg.annotators_per_task},
                          with_body=False)

    def action(act):  # one POST route per action of the annotator: next, submit, skip, undo
        async def route(request: Request):
            return await call(request, act)
        return route

    for name, act in (("next", labelling.next), ("submit", labelling.submit), ("skip", labelling.skip),
                      ("undo", labelling.undo)):
        app.add_api_route(f"/api/{name}", action(act), methods=["POST"], name=name)

    @app.get("/api/stats")
    async def dashboard(request: Request):
        return await call(request, lambda name: labelling.stats(), with_body=False)

    return app


def _error_handlers(app):
    """Every refusal as {"error": {"message", "field"}} with its status; a crash as a 500 without details."""

    @app.exception_handler(LabelError)
    async def _refused(request, e: LabelError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):  # unknown paths, wrong methods: the same error shape
        return JSONResponse(LabelError(e.status_code, "path", str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e):
        log.exception("request failed")
        return JSONResponse(LabelError(500, "", "internal error").body(), status_code=500)


def task_payload(task: dict, annotator: str, shuffle: bool) -> dict:
    """What an annotator sees: the conversation and the answers, in their own display order, each with its
    index in the task (the number a ranking uses). Nothing else: not the gold, not the other labels."""
    order = display_order(task["prompt_id"], annotator, len(task["answers"]), shuffle)
    return {"task_id": task["prompt_id"], "messages": task["messages"], "k": len(task["answers"]),
            "answers": [{"index": i, "text": task["answers"][i]} for i in order]}


def _shown_label(done: dict) -> dict:
    """An undone label as the submit body that made it, for the page to restore."""
    body = done["body"]
    return {"task_id": done["task_id"], "order": order_of(body["ranks"]), "ratings": body["ratings"],
            "flags": body["flags"], "not_rankable": body["not_rankable"]}


async def read_json(request, max_bytes: int) -> dict:
    """The body as a JSON object, or a LabelError: wrong Content-Type (415), too large (413), not JSON,
    nested too deep, or not an object (400)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise LabelError(415, "Content-Type", f"header 'Content-Type' must be application/json, "
                                              f"got {content_type or 'none'!r}")
    try:
        raw = await read_capped(request, max_bytes)
    except TooLarge as e:
        raise LabelError(413, "body", f"body: {e.declared} bytes, over the limit of {max_bytes}" if e.declared else
                                      f"body: over the limit of {max_bytes} bytes") from None
    return parse_body(raw)


def parse_body(raw: bytes) -> dict:
    if _depth(raw) > MAX_DEPTH:  # before parsing: a deep enough nesting would exhaust the parser's recursion
        raise LabelError(400, "body", f"body: nested deeper than {MAX_DEPTH} levels")
    try:
        return json_object(raw)
    except NotAnObject as e:
        raise LabelError(400, "body", f"body: must be a JSON object, got {e}" if e.kind == "type" else
                                      f"body: not valid JSON ({e})") from None


def _depth(raw: bytes) -> int:
    """How deep brackets nest in a JSON text, strings skipped (a "[" inside a string is text)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # a backslash: the next byte is escaped
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _page() -> tuple[str, dict]:
    """The page, and headers whose Content-Security-Policy allows exactly its own inline script and style
    (by hash) and requests to this server only: even a bug that put an answer into the page as HTML
    could run nothing."""
    html = WEB_PAGE.read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
              f"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                  "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def background_server(app, host: str = "127.0.0.1"):
    """Run the app with uvicorn in a thread on a free port (for `simulate` and `ai` without --url, and
    tests): (server, thread, base url). Set server.should_exit and join the thread to stop it."""
    import uvicorn  # deferred: only the commands that serve need it

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the label server did not start")
    return server, thread, f"http://{host}:{port}"
