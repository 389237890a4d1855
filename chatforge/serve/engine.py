"""One model, many conversations: requests that arrive together are answered in one batch.

A worker thread owns the model. It takes every request waiting in the queue (up to `max_batch`),
groups them by sampling settings, and runs each group through the KV-cached generator, handing
each row's new text to that request's `sink` as soon as it is decoded. Batching is static: a
request that arrives mid-batch waits for the next one. On a CPU that is still several times the
throughput of answering one request after another, because a step costs about the same for 1 row
as for 32 (the weights are read once per step either way).

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
from chatforge.serve.moderation import SENTENCE_ENDS
from chatforge.tokenizer import IM_END

log = logging.getLogger("chatforge.serve")
MODERATION_CHUNK = 40  # characters of answer a moderated stream may hold back before it checks and sends


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int | None = None  # fixes the draws of a sampled answer (requests with a seed run alone)

    def group(self):
        """Requests with equal keys can share a batch (max_tokens is enforced per row)."""
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
        self.text += after[len(before) :]
        self.prefix, self.read = self.read, len(self.tokens)
        text = self.text
        if self.moderator is None:
            self._send(len(text))
            return
        # Moderated answers stream a sentence (or ~40 characters) at a time: the moderator judges text up
        # to `settled`, and a check per sentence costs far less than one per token for every row.
        upto = self.moderator.settled(text)
        fresh = text[self.sent:upto]
        if len(fresh) >= MODERATION_CHUNK or any(c in fresh for c in SENTENCE_ENDS + "\n"):
            if not self.moderator.check_output(text).allowed:
                self.finish("content_filter")
                return
            self._send(upto)

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
    """The conversation through the model's own chat template, ending where the assistant speaks."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


class Engine:
    def __init__(self, model, tokenizer, max_batch: int = 32, gather_ms: float = 10.0):
        self.model, self.tokenizer = model.eval(), tokenizer
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
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.gather_s
            while len(batch) < self.max_batch:  # wait a moment for the requests that came with it
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)  # close after this batch
                    break
                batch.append(item)
            groups: dict = {}
            for r in batch:
                groups.setdefault(r.sampling.group(), []).append(r)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception:  # a bug or an out-of-memory must not take the server down
                    log.exception("generation failed")
                    for r in group:
                        r.finish("error")

    def _run(self, group: list[Request]):
        live = [r for r in group if not r.cancelled.is_set()]
        for r in group:
            if r.cancelled.is_set():
                r.finish("stop")
        if not live:
            return
        # never past the model's context: the longest prompt leaves room for at least one token
        room = self.max_positions - max(len(r.prompt_ids) for r in live)
        limit = max(1, min(max(r.sampling.max_tokens for r in live), room))
        s = live[0].sampling
        generator = None
        if s.temperature > 0 and s.seed is not None:
            generator = torch.Generator(device=next(self.model.parameters()).device).manual_seed(s.seed)
        self.batch_sizes.append(len(live))

        def on_step(tokens: list[int]) -> list[int]:
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
                    if not r.finished and len(r.tokens) >= min(r.sampling.max_tokens, limit):
                        r.finish("length")
                    if r.finished:
                        ended.append(row)
            return ended

        generate(self.model, [r.prompt_ids for r in live], limit, pad_id=self.pad_id, stop_ids=self.stop_ids,
                 temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=generator, on_step=on_step)
        for r in live:
            if not r.finished:
                r.finish("length")
