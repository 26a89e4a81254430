"""A client for any OpenAI-compatible chat-completions server.

Works with llama.cpp / llama-cpp-python, vLLM, Ollama (`http://host:11434/v1`)
and hosted APIs alike, since all of them speak `POST /v1/chat/completions`.
Several servers of one model may be given, comma-separated: each request goes to
the one with the fewest requests in flight, so no server idles while another has a
queue (one-thread llama.cpp servers answer one request at a time).

A transport failure is retried (see `datagen.net`); an answer that arrives but
is useless (not JSON, no choices, empty, a refusal) is counted and returned as
None so the caller skips it: one bad answer must never end a long run.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
from collections import Counter

from datagen.net import RetryPolicy, post

# A model that declines writes one of these near the start of its answer.
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i'?m unable|i am unable|as an ai)",
    re.IGNORECASE)


def chat_url(base: str) -> str:
    """Accept a server root, a `/v1` base or the full endpoint; return the endpoint."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


class ChatClient:
    """Thread-safe: one instance is shared by all workers; `stats` counts outcomes."""

    def __init__(self, url: str, model: str, key_env: str | None = None,
                 policy: RetryPolicy = RetryPolicy()):
        self.urls = [chat_url(u.strip()) for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("no LLM server URL given")
        self._in_flight = [0] * len(self.urls)
        self._sent = [0] * len(self.urls)  # ties go to the server sent fewest: turn about
        self.model = model
        self.policy = policy
        key = os.environ.get(key_env, "") if key_env else ""
        # The key lives only in this header dict; nothing here prints or logs it.
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.stats: Counter = Counter()
        self._lock = threading.Lock()

    def count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _pick(self) -> int:
        with self._lock:
            i = min(range(len(self.urls)), key=lambda i: (self._in_flight[i], self._sent[i]))
            self._in_flight[i] += 1
            self._sent[i] += 1
            return i

    def chat(self, messages: list[dict], temperature: float = 0.9,
             max_tokens: int = 512, seed: int | None = None) -> str | None:
        """Return the assistant's text, or None for a malformed or refused answer.

        Raises `datagen.net.HTTPGaveUp` when the server stays unreachable through
        all retries, and `datagen.net.HTTPFatal` on a 4xx such as a bad key.
        """
        payload = {"model": self.model, "messages": messages,
                   "temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            payload["seed"] = seed  # varies the sample per job on servers that honour it
        self.count("requests")
        server = self._pick()
        try:
            raw = post(self.urls[server], payload, self._headers, self.policy,
                       on_retry=lambda reason: self.count("retries"),
                       rng=random.Random(seed))
        finally:
            with self._lock:
                self._in_flight[server] -= 1
        try:
            answer = json.loads(raw)
            choice = answer["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self.count("malformed")
            return None
        if not isinstance(text, str) or not text.strip():
            self.count("malformed")
            return None
        if choice.get("finish_reason") == "content_filter" or _REFUSAL.match(text):
            self.count("refused")
            return None
        self.count("ok")
        return text
