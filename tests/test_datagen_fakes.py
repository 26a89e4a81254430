"""Misbehaving loopback servers for the datagen tests (no real LLM, no network).

FakeLLM answers chat-completions like a tiny, very regular LLM, but follows a
fault schedule: a callable `fault(request_index) -> str` picks one of
    ok | slow | 500 | 429 | garbage | drop | refuse
FakeTTS answers /v1/audio/speech with a tone whose length grows with the text,
and fails (HTTP 400) on every text containing `fail_word`.
"""
from __future__ import annotations

import io
import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import soundfile as sf

_WHO = ["Adele", "Coldplay", "Miles Davis", "Beyonce", "Metallica", "Taylor Swift", "Queen", "Nirvana"]
_WHAT = ["first album", "latest single", "longest song", "best selling record", "debut tour",
         "drummer", "violin solo", "record label", "producer", "music video"]
_HOW = ["What was the", "Who made the", "Tell me about the", "When did we get the", "Play the"]


class _Server:
    def __init__(self, handler_cls):
        self.requests = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(handler_cls):
            server_owner = outer

            def log_message(self, *a):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that timed out is expected here
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def next_index(self) -> int:
        with self.lock:
            self.requests += 1
            return self.requests - 1

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _LLMHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        owner = self.server_owner
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fault = owner.fault(owner.next_index())
        if fault == "slow":
            time.sleep(owner.slow_seconds)
        elif fault in ("500", "429"):
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")
            return
        elif fault == "garbage":
            return self._send(200, b'{"choices": [ this is not json')
        elif fault == "drop":  # promise 5000 bytes, send 20, hang up
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"messa')
            self.wfile.flush()
            self.close_connection = True
            return
        text = "I'm sorry, but I can't help with that." if fault == "refuse" else owner.answer(body)
        reply = {"choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text}}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, code, data):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeLLM(_Server):
    def __init__(self, fault=lambda i: "ok", slow_seconds=1.5):
        self.fault, self.slow_seconds = fault, slow_seconds
        self.counter = itertools.count()
        self.counter_lock = threading.Lock()
        super().__init__(_LLMHandler)

    def answer(self, body) -> str:
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("Domain:"):
            return "Adele, Abbey Road, jazz, vinyl, London"
        if prompt.startswith("Base instruction"):
            return "Ask a voice assistant about albums by Adele, like a teenager would."
        n = int(re.search(r"Generate (\d+) chatbot", prompt)[1])
        with self.counter_lock:
            ks = [next(self.counter) for _ in range(n)]
        lines = ["Here are the questions:"]
        for k in ks:  # every k gives a different sentence: unique across the whole test
            a, b = divmod(k, len(_WHO) * len(_WHAT))
            lines.append(f'{len(lines)}. "{_HOW[a % len(_HOW)]} {_WHAT[b % len(_WHAT)]} '
                         f'by {_WHO[b // len(_WHAT)]} number {a}?"')
        lines.append(lines[1].upper())  # a duplicate in other case
        return "\n".join(lines)


class _TTSHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        owner = self.server_owner
        owner.next_index()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["input"]
        if owner.fail_word in text:
            data = b'{"error": "cannot speak this"}'
            code = 400
        else:
            time.sleep(owner.delay)
            seconds = 0.15 * len(text.split())
            t = np.arange(int(seconds * owner.rate)) / owner.rate
            buf = io.BytesIO()
            sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), owner.rate, format="WAV")
            data, code = buf.getvalue(), 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeTTS(_Server):
    def __init__(self, fail_word="violin", delay=0.0, rate=16000):
        self.fail_word, self.delay, self.rate = fail_word, delay, rate
        super().__init__(_TTSHandler)
