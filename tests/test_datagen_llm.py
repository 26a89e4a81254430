"""The chat client against a misbehaving loopback server: each fault either
recovers by retrying or is counted and skipped, never crashes the caller."""
import time

import pytest

from datagen.llm import ChatClient, chat_url
from datagen.net import HTTPFatal, HTTPGaveUp, RetryPolicy
from test_datagen_fakes import FakeLLM

FAST = RetryPolicy(timeout=0.5, retries=3, backoff=0.01, max_backoff=0.05)
MESSAGES = [{"role": "user", "content": "Base instruction: x"}]


def once_then_ok(fault):
    return lambda i: fault if i == 0 else "ok"


@pytest.mark.parametrize("fault", ["slow", "500", "429", "drop"])
def test_transient_fault_is_retried(fault):
    server = FakeLLM(once_then_ok(fault), slow_seconds=1.0)
    try:
        client = ChatClient(server.url, "m", policy=FAST)
        assert client.chat(MESSAGES).startswith("Ask a voice assistant")
        assert client.stats["retries"] == 1 and server.requests == 2
    finally:
        server.close()


@pytest.mark.parametrize("fault,counter", [("garbage", "malformed"), ("refuse", "refused")])
def test_useless_answer_is_counted_and_skipped(fault, counter):
    server = FakeLLM(lambda i: fault)
    try:
        client = ChatClient(server.url, "m", policy=FAST)
        assert client.chat(MESSAGES) is None
        assert client.stats[counter] == 1 and client.stats["retries"] == 0
    finally:
        server.close()


def test_several_servers_take_turns_and_a_busy_one_is_passed_over():
    import threading

    slow, fast = FakeLLM(lambda i: "slow", slow_seconds=2.0), FakeLLM(lambda i: "ok")
    try:
        client = ChatClient(f"{slow.url}, {fast.url}/chat/completions", "m", policy=RetryPolicy(timeout=10))
        slow.slow_seconds = 0.01
        for _ in range(4):  # one at a time: nothing in flight, so they take turns
            assert client.chat(MESSAGES)
        assert slow.requests == fast.requests == 2
        slow.slow_seconds = 2.0
        held = threading.Thread(target=client.chat, args=(MESSAGES,))
        held.start()  # the turn is the slow server's, and it keeps this request for 2 s
        while slow.requests < 3:
            time.sleep(0.01)
        for _ in range(3):  # meanwhile every request finds it busy and goes to the other
            assert client.chat(MESSAGES)
        assert fast.requests == 5
        held.join()
        assert slow.requests == 3 and client.stats["ok"] == 8
    finally:
        slow.close()
        fast.close()
    with pytest.raises(ValueError, match="no LLM server"):
        ChatClient(" , ", "m")


def test_gives_up_after_bounded_retries():
    server = FakeLLM(lambda i: "500")
    try:
        client = ChatClient(server.url, "m", policy=FAST)
        start = time.time()
        with pytest.raises(HTTPGaveUp, match="4 attempts.*HTTP 500"):
            client.chat(MESSAGES)
        assert server.requests == 4 and time.time() - start < 2
    finally:
        server.close()


def test_connection_refused_gives_up_with_url_in_message():
    client = ChatClient("http://127.0.0.1:9/v1", "m", policy=FAST)  # port 9: nothing listens
    with pytest.raises(HTTPGaveUp, match="127.0.0.1:9"):
        client.chat(MESSAGES)


def test_client_error_is_not_retried_and_key_is_not_in_message(monkeypatch):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Deny(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(401)
            self.end_headers()
        log_message = lambda *a: None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("DAS_TEST_KEY", "sk-secret-123")
    try:
        client = ChatClient(f"http://127.0.0.1:{httpd.server_address[1]}", "m", "DAS_TEST_KEY", FAST)
        with pytest.raises(HTTPFatal, match="401") as err:
            client.chat(MESSAGES)
        assert "sk-secret-123" not in str(err.value)
        assert client.stats["retries"] == 0
    finally:
        httpd.shutdown()


def test_chat_url_accepts_root_v1_and_endpoint():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
