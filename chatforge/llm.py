"""A small client for any OpenAI-compatible chat-completions endpoint (`POST {base_url}/chat/completions`).

What an evaluation needs from a remote model, and nothing more: one non-streamed answer per request;
retries with exponential backoff on what passes (429, 5xx, timeouts, dropped connections); a rate limit
shared by every thread; a disk cache so that a re-run asks nothing twice; and, for what the user must fix
(an unreachable endpoint, a wrong key, an unknown model, a reply that is not JSON), one `UserError` line
that names the endpoint. The standard library suffices: the requests are few and slow, so no connection
pool or async client would earn its dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from chatforge.errors import DataError, UserError

# An environment variable's name; anything else in `api_key_env` is most likely the key itself.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this; past it we would rather fail


class Retryable(Exception):
    """A failure that may pass if asked again (429, 5xx, a timeout, a dropped connection)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class RateLimiter:
    """At most `per_second` requests a second over all threads, evenly spaced (0: no limit).

    Each caller reserves the next free slot under a lock and sleeps outside it, so threads queue in the
    order they asked and a burst of N requests takes (N-1)/per_second seconds, not one slot per thread.
    """

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self):
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        time.sleep(max(0.0, slot - now))


def cache_key(model: str, messages: list[dict], temperature: float, max_tokens: int) -> str:
    """The hash that names one request in the cache: whatever could change the answer, and nothing else."""
    text = json.dumps([model, messages, temperature, max_tokens], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ReplyCache:
    """Answers already paid for, as JSON lines `{"key", "model", "reply"}` appended one whole line at a time.

    A run killed while writing leaves at most a torn last line: it is cut off on load (else the next append
    would glue itself to it), and only that one request is asked again. A broken line anywhere else was
    not written by us, and is a DataError naming the file and the line.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._replies = self._load()

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # up to the last newline: everything after it is torn
        if len(whole) < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))
        replies = {}
        for lineno, line in enumerate(whole.decode("utf-8", errors="replace").splitlines(), 1):
            try:
                entry = json.loads(line)
                replies[entry["key"]] = entry["reply"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{self.path}:{lineno}: not a cache entry; delete the file to ask everything "
                                "again") from None
        return replies

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._replies.get(key)

    def put(self, key: str, model: str, reply: str):
        """Append one entry with a single write to an O_APPEND file, then fsync: whole or torn, never mixed."""
        line = (json.dumps({"key": key, "model": model, "reply": reply}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._replies[key] = reply


class LLMClient:
    """One model behind one OpenAI-compatible endpoint; `chat` is safe to call from many threads."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "", timeout_s: float = 60.0,
                 retries: int = 4, backoff_s: float = 1.0, requests_per_second: float = 0.0,
                 cache_path: Path | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s, self.retries, self.backoff_s = model, timeout_s, retries, backoff_s
        self.api_key_env = api_key_env
        self._api_key = read_api_key(api_key_env, self.url)
        self.limiter = RateLimiter(requests_per_second)
        self.cache = ReplyCache(cache_path) if cache_path is not None else None

    def chat(self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512) -> str:
        """The assistant's reply to `messages`: from the cache if asked before, else from the endpoint."""
        key = cache_key(self.model, messages, temperature, max_tokens)
        if self.cache is not None and (reply := self.cache.get(key)) is not None:
            return reply
        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        reply = reply_text(self._post_with_retries(body), self.url)
        if self.cache is not None:
            self.cache.put(key, self.model, reply)
        return reply

    def _post_with_retries(self, body: dict) -> dict:
        """POST once per attempt, each attempt through the rate limit; back off 1, 2, 4... × backoff_s."""
        for attempt in range(self.retries + 1):
            self.limiter.wait()
            try:
                return self._post(body)
            except Retryable as e:
                if attempt == self.retries:
                    raise UserError(f"{self.url}: {e} (gave up after {attempt + 1} attempts)") from None
                delay = self.backoff_s * 2**attempt
                time.sleep(delay if e.retry_after is None else min(max(e.retry_after, delay), MAX_RETRY_AFTER_S))
        raise AssertionError("unreachable")

    def _post(self, body: dict) -> dict:
        """One request: the decoded JSON reply, Retryable for what may pass, UserError for what will not."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise http_failure(e, self.url, self.api_key_env) from None
        except TimeoutError:
            raise Retryable(f"no reply within {self.timeout_s:g} s") from None
        except (ConnectionResetError, http.client.RemoteDisconnected, http.client.IncompleteRead) as e:
            raise Retryable(f"connection dropped ({type(e).__name__})") from None
        except urllib.error.URLError as e:
            raise connection_failure(e, self.url, self.timeout_s) from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{self.url}: the reply is not JSON ({raw[:60]!r}); is this an OpenAI-compatible "
                            "endpoint (the base URL usually ends in /v1)?") from None


def read_api_key(api_key_env: str, url: str) -> str:
    """The key from the environment variable named `api_key_env` ("" asks without a key). The key itself
    never appears in a recipe, a log or an error message."""
    if not api_key_env:
        return ""
    key = os.environ.get(api_key_env, "")
    if not key:
        raise UserError(f"{url}: the environment variable {api_key_env} that should hold the API key is not set")
    return key


def server_message(e: urllib.error.HTTPError) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body, on one line."""
    try:
        raw = e.read()
    except OSError:
        raw = b""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", errors="replace")[:200] or e.reason
    return " ".join(str(message).split())


def http_failure(e: urllib.error.HTTPError, url: str, api_key_env: str) -> Exception:
    """What an HTTP error status means for the caller: Retryable (429, 5xx) or a UserError saying what to fix."""
    message = server_message(e)
    if e.code == 429 or e.code >= 500:
        retry_after = e.headers.get("Retry-After") if e.headers else None
        seconds = float(retry_after) if retry_after and re.fullmatch(r"\d+(\.\d+)?", retry_after.strip()) else None
        return Retryable(f"HTTP {e.code}: {message}", seconds)
    if e.code in (401, 403):
        where = f"the variable {api_key_env}" if api_key_env else "no key sent: set api_key_env"
        return UserError(f"{url}: HTTP {e.code}, the API key was refused ({where}): {message}")
    if e.code == 404:
        return UserError(f"{url}: HTTP 404, unknown model or wrong base URL (it usually ends in /v1): {message}")
    return UserError(f"{url}: HTTP {e.code}, the request was refused: {message}")


def connection_failure(e: urllib.error.URLError, url: str, timeout_s: float) -> Exception:
    """A connection that could not be made: Retryable if it timed out or was reset (a busy server), else a
    UserError (refused, no such host), where retrying will not help and fixing the URL will."""
    if isinstance(e.reason, TimeoutError):
        return Retryable(f"no connection within {timeout_s:g} s")
    if isinstance(e.reason, ConnectionResetError):
        return Retryable("connection reset")
    reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else str(e.reason)
    return UserError(f"{url}: cannot reach the endpoint ({reason}); is the server running and the base URL right?")


def reply_text(payload: dict, url: str) -> str:
    """`choices[0].message.content` of a chat completion ("" when the model sent none)."""
    try:
        content = payload["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise UserError(f"{url}: the reply is not a chat completion (no choices[0].message): "
                        f"{json.dumps(payload)[:120]}") from None
    return content if isinstance(content, str) else ""
