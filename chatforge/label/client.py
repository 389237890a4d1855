"""A small client of the label API (standard library only), for scripts and machine annotators:

    client = LabelClient("http://127.0.0.1:8100", token)
    while (task := client.next()["task"]) is not None:
        client.submit(task["task_id"], order=[a["index"] for a in task["answers"]])

One keep-alive connection per client; use one client per thread.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit


class ApiRefused(Exception):
    """The server answered with an error: its HTTP status, the field it named and its message."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.field, self.message = status, field, message


class LabelClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._con: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request; the JSON answer, or ApiRefused for a 4xx/5xx. A dropped connection (the server closed
        an idle one, or restarted) is opened again once, except for undo: every other call is safe to repeat
        (next gives back the task you hold; a repeated submit or skip is refused with 409)."""
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        for attempt in (0, 1):
            try:
                con = self._connection()
                con.request(method, path, body=data, headers=self.headers)
                response = con.getresponse()
                payload = json.loads(response.read() or b"{}")
                break
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt or path == "/api/undo":
                    raise
        if response.status >= 400:
            error = payload.get("error", {})
            raise ApiRefused(response.status, error.get("field", ""), error.get("message", ""))
        return payload

    def _connection(self) -> http.client.HTTPConnection:
        if self._con is None:
            self._con = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._con

    def close(self):
        if self._con is not None:
            self._con.close()
            self._con = None

    def next(self) -> dict:
        return self.call("POST", "/api/next", {})

    def submit(self, task_id: str, order: list, ratings: list | None = None, flags: list | None = None,
               not_rankable: bool = False) -> dict:
        body = {"task_id": task_id, "order": order, "not_rankable": not_rankable}
        body.update({key: value for key, value in (("ratings", ratings), ("flags", flags)) if value is not None})
        return self.call("POST", "/api/submit", body)

    def skip(self, task_id: str) -> dict:
        return self.call("POST", "/api/skip", {"task_id": task_id})

    def undo(self) -> dict:
        return self.call("POST", "/api/undo", {})

    def stats(self) -> dict:
        return self.call("GET", "/api/stats")
