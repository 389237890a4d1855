"""An AI annotator: a model behind any OpenAI-compatible endpoint ranks tasks through the label API, as a
person would. It sees the conversation and the answers under letters in its own display order, and
replies with JSON; a reply that is not a valid ranking makes it skip the task (and count the failure)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from chatforge.errors import UserError
from chatforge.label.client import ApiRefused, LabelClient
from chatforge.label.errors import LabelError
from chatforge.label.validate import ANSWER_FLAGS, ranks_of

LETTERS = "ABCDEFGHIJKLMNOP"
INSTRUCTIONS = (
    "You are an annotator. Rank the candidate answers to the conversation's last user message, best first, by "
    "correctness, appropriateness, safety, completeness and fluency. Equal answers may tie. Reply with JSON only: "
    '{"order": ["B", ["A", "C"], "D"], "flags": {"A": ["hallucination"]}} where a list inside "order" is a tie, '
    "every letter appears exactly once, and flags (optional) are any of: " + ", ".join(ANSWER_FLAGS) + "."
)


def prompt_messages(task: dict) -> list[dict]:
    """The chat request for one task payload (the API's: messages, answers in display order)."""
    conversation = "\n".join(f"[{m['role']}] {m['content']}" for m in task["messages"])
    answers = "\n\n".join(f"Answer {LETTERS[i]}:\n{a['text']}" for i, a in enumerate(task["answers"]))
    return [{"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": f"Conversation:\n{conversation}\n\n{answers}"}]


def parse_reply(text: str, task: dict) -> dict | None:
    """{"order", "flags"} in the task's answer indices, from the model's reply; None if it is no valid ranking."""
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    try:
        reply = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("order"), list):
        return None
    index = {LETTERS[i]: a["index"] for i, a in enumerate(task["answers"])}

    def to_index(letter):
        return index.get(letter.strip().upper(), -1) if isinstance(letter, str) else -1

    order = [[to_index(x) for x in e] if isinstance(e, list) else to_index(e) for e in reply["order"]]
    try:
        ranks_of(order, task["k"])
    except LabelError:
        return None
    flags = [[] for _ in range(task["k"])]
    raised_flags = reply.get("flags")
    for letter, raised in raised_flags.items() if isinstance(raised_flags, dict) else ():
        i = to_index(letter)
        if i >= 0 and isinstance(raised, list):
            flags[i] = sorted({f for f in raised if isinstance(f, str) and f in ANSWER_FLAGS})
    return {"order": order, "flags": flags}


def complete(endpoint: str, model: str, messages: list[dict], api_key: str | None, timeout: float = 120.0) -> str:
    """The assistant's text from POST {endpoint}/chat/completions (greedy)."""
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/chat/completions", method="POST",
        data=json.dumps({"model": model, "messages": messages, "temperature": 0}).encode("utf-8"),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"] or ""
    except urllib.error.HTTPError as e:
        raise UserError(f"{endpoint}: the model endpoint answered {e.code}: {e.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{endpoint}: cannot reach the model endpoint ({e})") from None


def run_ai(url: str, token: str, endpoint: str, model: str, api_key: str | None, limit: int | None = None) -> dict:
    """Label until no task is left (or `limit` labels): {"labelled", "skipped" (replies that were no ranking)}."""
    client = LabelClient(url, token)
    counts = {"labelled": 0, "skipped": 0}
    try:
        while limit is None or counts["labelled"] < limit:
            task = client.next()["task"]
            if task is None:
                break
            label = parse_reply(complete(endpoint, model, prompt_messages(task), api_key), task)
            try:
                if label is None:
                    client.skip(task["task_id"])
                else:
                    client.submit(task["task_id"], **label)
            except ApiRefused as e:
                if e.status != 409:  # the lease ran out while the model thought, and the slot was taken
                    raise
                continue
            counts["labelled" if label else "skipped"] += 1
    finally:
        client.close()
    return counts
