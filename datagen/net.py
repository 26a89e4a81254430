"""One HTTP POST with a timeout and a bounded, jittered exponential backoff.

Both the LLM client and the HTTP TTS adapter go through `post()`, so the retry
policy lives in one place. Standard library only (urllib): the runtime must not
depend on requests/httpx.

What is retried: connection errors (refused, reset, dropped mid-answer),
timeouts, HTTP 429 and 5xx. What is not: other 4xx (a wrong URL, model or key
does not get better by asking again), raised at once as `HTTPFatal`.
"""
from __future__ import annotations

import http.client
import json
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


class HTTPFatal(RuntimeError):
    """A request that will not succeed by retrying (4xx other than 429)."""


class HTTPGaveUp(RuntimeError):
    """All retries were spent on retryable failures."""


@dataclass(frozen=True)
class RetryPolicy:
    timeout: float = 60.0     # seconds for connect + whole answer read, per attempt
    retries: int = 5          # attempts after the first one
    backoff: float = 1.0      # first sleep; doubles per retry
    max_backoff: float = 30.0 # cap on one sleep, so a run never stalls for long

    def sleep_for(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        if retry_after is not None:  # a server's own 429 hint wins, within the cap
            base = min(self.max_backoff, max(base, retry_after))
        # Full jitter: many workers that failed together must not retry together.
        return base * (0.5 + 0.5 * rng.random())


# Errors that mean "the transport failed": the server may well answer next time.
_TRANSIENT = (
    urllib.error.URLError,         # refused, DNS, reset during connect
    http.client.HTTPException,     # RemoteDisconnected, IncompleteRead, BadStatusLine
    ConnectionError,               # reset / aborted mid-answer
    socket.timeout,                # TimeoutError on 3.10+, kept for clarity
    TimeoutError,
)


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: ignore it, the backoff still applies


def post(url: str, payload: dict, headers: dict[str, str], policy: RetryPolicy,
         on_retry=None, rng: random.Random | None = None) -> bytes:
    """POST `payload` as JSON to `url`; return the body of the first 2xx answer.

    `on_retry(reason)` is called before each retry so callers can count them.
    The headers may hold an API key: they are never put into an error message.
    """
    rng = rng or random.Random()
    body = json.dumps(payload).encode()
    last = ""
    for attempt in range(policy.retries + 1):
        retry_after = None
        request = urllib.request.Request(
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=policy.timeout) as answer:
                return answer.read()  # read inside the try: a drop mid-body is transient
        except urllib.error.HTTPError as err:
            detail = err.read(300).decode("utf-8", "replace") if err.fp else ""
            if err.code != 429 and err.code < 500:
                hint = " (check the API key environment variable)" if err.code in (401, 403) else ""
                raise HTTPFatal(f"POST {url}: HTTP {err.code} {err.reason}{hint}: {detail.strip()}") from None
            last = f"HTTP {err.code}"
            retry_after = _retry_after(err) if err.code == 429 else None
        except _TRANSIENT as err:
            last = f"{type(err).__name__}: {err}"
        if attempt == policy.retries:
            break
        if on_retry is not None:
            on_retry(last)
        time.sleep(policy.sleep_for(attempt, retry_after, rng))
    raise HTTPGaveUp(f"POST {url}: gave up after {policy.retries + 1} attempts, last error: {last}")
