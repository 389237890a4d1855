"""One model, many conversations: requests that arrive together are answered in one batch.

A worker thread owns the model. It takes every request waiting in the queue (up to `max_batch`),
groups them by sampling settings, and runs each group through the KV-cached generator, handing
each row's new text to that request's `sink` as soon as it is decoded. Batching is static: a
request that arrives mid-batch waits for the next one. On a CPU that is still several times the
throughput of answering one request after another, because a step costs about the same for 1 row
as for 32 (the weights are read once per step either way).

Each row keeps its own limits: its own max_tokens and its own room in the model's context, never
cut short by a longer prompt beside it; and the model computes each row as it would alone
(`chatforge.serve.invariant`), so a greedy answer is the same alone and in any batch, bit for bit.

Both front ends use it: `chatforge chat` (one request at a time, a queue as its sink) and the
HTTP server (an asyncio queue per request). So the same greedy request gets the same text from both.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from chatforge.generate import generate
from chatforge.serve.invariant import make_batch_invariant
from chatforge.serve.moderation import SENTENCE_ENDS
from chatforge.tokenizer import IM_END, render_chat

log = logging.getLogger("chatforge.serve")
MODERATION_CHUNK = 40  # characters of answer a moderated stream may hold back before it checks and sends


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int | None = None  # fixes the draws of a sampled answer (requests with a seed run alone)
    stop: tuple[str, ...] = ()  # the answer ends before the first of these texts (OpenAI's `stop`)

    def group(self):
        """Requests with equal keys can share a batch (max_tokens and stop are per row)."""
        return (self.temperature, self.top_p, self.top_k, self.seed if self.temperature > 0 else None)


@dataclass
class Event:
    """What a request's sink receives: text deltas, then exactly one event with `finish` set."""

    delta: str = ""
    finish: str | None = None  # "stop" | "length" | "content_filter" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Request:
    prompt_ids: list[int]
    sampling: Sampling
    sink: Callable[[Event], None]
    moderator: object | None = None  # checks the answer as it grows (see chatforge.serve.moderation)
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far
    sent: int = 0  # characters of `text` already handed to the sink
    prefix: int = 0  # tokens[prefix:read] were decoded last time: the left context for decoding the new ones
    read: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    limit: int = 0  # the most tokens this row may generate: its max_tokens, or less where the context ends

    def cancel(self):
        """The client went away: stop generating for it at the next step."""
        self.cancelled.set()

    def feed(self, tok: int, tokenizer):
        """One more generated token: decode, moderate, hand the new text to the sink."""
        self.tokens.append(tok)
        # Only the tail is decoded, not the whole answer at every step: the new tokens with the few before
        # them as context (a tokenizer may spell a piece differently at the start of a text).
        before = tokenizer.decode(self.tokens[self.prefix : self.read], skip_special_tokens=True)
        after = tokenizer.decode(self.tokens[self.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):  # nothing yet, or half a character: wait
            return
        grown_from = len(self.text)
        self.text += after[len(before) :]
        self.prefix, self.read = self.read, len(self.tokens)
        if self.sampling.stop and self._cut_at_stop(grown_from):
            return
        text = self.text
        safe = len(text) - stop_prefix_length(text, self.sampling.stop)  # what may still begin a stop text waits
        if self.moderator is None:
            self._send(safe)
            return
        # Moderated answers stream a sentence (or ~40 characters) at a time: the moderator judges text up
        # to `settled`, and a check per sentence costs far less than one per token for every row.
        upto = min(self.moderator.settled(text), safe)
        fresh = text[self.sent:upto]
        if len(fresh) >= MODERATION_CHUNK or any(c in fresh for c in SENTENCE_ENDS + "\n"):
            if not self.moderator.check_output(text).allowed:
                self.finish("content_filter")
                return
            self._send(upto)

    def _cut_at_stop(self, grown_from: int) -> bool:
        """End the answer before the first stop text, if the text that grew from `grown_from` completed one."""
        start = max(0, grown_from - max(len(t) for t in self.sampling.stop) + 1)
        found = [i for i in (self.text.find(t, start) for t in self.sampling.stop) if i >= 0]
        if not found:
            return False
        self.text = self.text[: min(found)]
        self.finish("stop")
        return True

    def _send(self, upto: int):
        if upto > self.sent:
            self.sink(Event(delta=self.text[self.sent:upto]))
            self.sent = upto

    def finish(self, reason: str):
        """The last event: "stop", "length", "content_filter" or "error". A moderated answer is checked
        whole first; if it is blocked, what was held back is dropped and the polite message takes its place."""
        if self.finished:
            return
        self.finished = True
        usage = {"prompt_tokens": len(self.prompt_ids), "completion_tokens": len(self.tokens)}
        if self.moderator is not None and reason != "error":
            if reason == "content_filter" or not self.moderator.check_output(self.text, final=True).allowed:
                message = ("\n\n" if self.sent else "") + self.moderator.message(self.text)
                self.sink(Event(delta=message, finish="content_filter", **usage))
                return
        self._send(len(self.text))
        self.sink(Event(finish=reason, **usage))


def stop_ids_of(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's and the model's end-of-sequence ids, and <|im_end|>."""
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that begins one of `stops` (0 if none): held back from a
    stream until the next tokens say whether it is a stop text, so a stream never shows part of one."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def blocked_input(moderator, messages: list[dict]) -> str | None:
    """The moderator's polite message if any user or system message is blocked, else None (also when
    there is no moderator). Every front end checks a whole conversation this one way."""
    if moderator is None:
        return None
    for m in messages:
        if m["role"] != "assistant" and not moderator.check_input(m["content"]).allowed:
            return moderator.message(m["content"])
    return None


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation through the model's own chat template, ending where the assistant speaks, rendered as the
    training stages render it: a control token typed by the user (`<|im_end|>`) stays text, never a turn boundary."""
    return render_chat(tokenizer, messages, add_generation_prompt=True)[0]


class Engine:
    """The model's owner: a worker thread that answers queued requests in batches. It switches the model
    to batch-invariant arithmetic (in place), so give it a model of its own."""

    def __init__(self, model, tokenizer, max_batch: int = 32, gather_ms: float = 10.0):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.invariant = make_batch_invariant(model)
        self.max_batch, self.gather_s = max_batch, gather_ms / 1000
        self.stop_ids = stop_ids_of(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", 1 << 30)
        self.queue: queue.Queue[Request | None] = queue.Queue()
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # rows of recent batches: for tests and logs
        self._thread = threading.Thread(target=self._work, name="chatforge-engine", daemon=True)
        self._thread.start()

    # -- the public side ---------------------------------------------------------------------------
    def submit(self, prompt: list[int], sampling: Sampling, sink: Callable[[Event], None], moderator=None) -> Request:
        """Queue a request; `sink` gets its Events on the worker thread. With a moderator, the answer is
        streamed only as far as the moderator has judged it, and checked whole before it ends."""
        request = Request(list(prompt), sampling, sink, moderator)
        self.queue.put(request)
        return request

    def complete(self, prompt: list[int], sampling: Sampling, on_delta: Callable[[str], None] | None = None,
                 moderator=None) -> tuple[str, Event]:
        """Blocking: (whole text, final event); on_delta sees each piece as it comes (streaming)."""
        events: queue.Queue[Event] = queue.Queue()
        self.submit(prompt, sampling, events.put, moderator)
        text = ""
        while True:
            event = events.get()
            text += event.delta
            if event.delta and on_delta:
                on_delta(event.delta)
            if event.finish:
                return text, event

    def close(self):
        self.queue.put(None)
        self._thread.join(timeout=5)

    # -- the worker --------------------------------------------------------------------------------
    def _work(self):
        while True:
            batch = self._gather()
            if batch is None:
                return
            for group in groups_of(batch):
                try:
                    self._run(group)
                except Exception:  # a bug or an out-of-memory must not take the server down
                    log.exception("generation failed")
                    for r in group:
                        r.finish("error")

    def _gather(self) -> list[Request] | None:
        """The next request and those that arrive within gather_ms of it (up to max_batch); None: close."""
        first = self.queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.gather_s
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # close after this batch
                break
            batch.append(item)
        return batch

    def _run(self, group: list[Request]):
        """Generate for one group of requests with the same sampling settings, each row to its own limit."""
        live = []
        for r in group:
            # A row's room is its own: the context less its own prompt, never less because a longer prompt is beside it.
            r.limit = max(0, min(r.sampling.max_tokens, self.max_positions - len(r.prompt_ids)))
            if r.cancelled.is_set() or r.limit == 0:
                r.finish("stop" if r.cancelled.is_set() else "length")
            else:
                live.append(r)
        if not live:
            return
        s = live[0].sampling
        generator = None
        if s.temperature > 0 and s.seed is not None:
            generator = torch.Generator(device=next(self.model.parameters()).device).manual_seed(s.seed)
        self.batch_sizes.append(len(live))
        generate(self.model, [r.prompt_ids for r in live], max(r.limit for r in live), pad_id=self.pad_id,
                 stop_ids=self.stop_ids, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=generator,
                 on_step=lambda tokens: self._step(live, tokens))
        for r in live:
            if not r.finished:
                r.finish("length")

    def _step(self, live: list[Request], tokens: list[int]) -> list[int]:
        """Hand each row its new token; the rows that end here (stop token or text, limit, cancelled)."""
        ended = []
        for row, (r, tok) in enumerate(zip(live, tokens)):
            if r.finished:
                continue
            if tok in self.stop_ids:
                r.finish("stop")
            elif r.cancelled.is_set():
                r.finish("stop")
                ended.append(row)
            else:
                r.feed(tok, self.tokenizer)
                if not r.finished and len(r.tokens) >= r.limit:
                    r.finish("length")
                if r.finished:
                    ended.append(row)
        return ended


def groups_of(batch: list[Request]) -> list[list[Request]]:
    """The batch split by sampling settings; a sampled request with a seed runs alone, so that its seed
    fixes its draws whoever else is asking."""
    groups: dict = {}
    for r in batch:
        s = r.sampling
        key = (s.group(), id(r)) if s.temperature > 0 and s.seed is not None else s.group()
        groups.setdefault(key, []).append(r)
    return list(groups.values())
