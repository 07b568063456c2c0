"""A tiny OpenAI-compatible chat server on 127.0.0.1 for judge tests, with scripted faults.

    with FakeOpenAI(faults={"flap wings": [Status(429), Reply("{'pred': 'yes', 'score': 4.8}")]}) as server:
        os.environ["OPENAI_BASE_URL"] = server.url
        ...
    server.calls  # every request's path, JSON body and headers (names in lower case)

Requests whose user message contains a fault's text consume that fault's actions in order; afterwards, and for
every other request, the default judge answers: yes/5 when the correct answer appears in the prediction, else no/1.
`served_model` is the model name the responses report (default: the requested one, as most servers do); `port`
starts the server at an address used before (the same endpoint, restarted). `Hold` keeps a request in flight until
the test sets `server.release`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """Answer 200 with this message content (None: a null content)."""

    content: str | None


@dataclass
class Status:
    """Answer with an HTTP error status and an OpenAI-style error body."""

    code: int
    message: str = "scripted failure"
    retry_after: float | None = None


@dataclass
class Sleep:
    """Wait this long before answering with the default judgment (longer than the client timeout: a timeout)."""

    seconds: float


@dataclass
class Hold:
    """Wait until the test sets `server.release` (or `seconds` pass), then answer with the default judgment: a
    request in flight while the client is stopped."""

    seconds: float = 60.0


@dataclass
class Raw:
    """Answer 200 with this body and content type (an nginx welcome page, a proxy's login form, broken JSON)."""

    body: str
    content_type: str = "text/html"


@dataclass
class EchoAuth:
    """Answer 500 with the request's Authorization header in the body (a server that leaks the key)."""


Action = Reply | Status | Sleep | Hold | Raw | EchoAuth


def default_judgment(user_message: str) -> str:
    answer = re.search(r"Correct Answer: (.*)\n", user_message)
    pred = re.search(r"Predicted Answer: (.*)\n\n", user_message)
    match = answer is not None and pred is not None and answer.group(1).strip().lower() in pred.group(1).lower()
    return "{'pred': 'yes', 'score': 5}" if match else "{'pred': 'no', 'score': 1}"


class FakeOpenAI:
    def __init__(self, faults: dict[str, list[Action]] | None = None, *, served_model: str | None = None,
                 port: int = 0) -> None:
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.served_model = served_model
        self.port = port
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()
        """Set it to let requests held by `Hold` be answered."""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _next_action(self, user_message: str) -> Action | None:
        with self._lock:
            for needle, actions in self.faults.items():
                if needle in user_message and actions:
                    return actions.pop(0)
        return None

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with fake._lock:
                    fake.calls.append({"path": self.path, "body": body, "headers": {k.lower(): v for k, v in self.headers.items()}})
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
                action = fake._next_action(user)
                if isinstance(action, Status):
                    headers = {"Retry-After": str(action.retry_after)} if action.retry_after is not None else None
                    self._send(action.code, {"error": {"message": action.message, "type": "scripted"}}, headers)
                    return
                if isinstance(action, Raw):
                    data = action.body.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", action.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if isinstance(action, EchoAuth):
                    self._send(500, {"error": {"message": f"bad auth {self.headers.get('Authorization')}"}})
                    return
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                if isinstance(action, Hold):
                    fake.release.wait(action.seconds)
                content = action.content if isinstance(action, Reply) else default_judgment(user)
                try:
                    self._send(200, {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 0,
                        "model": fake.served_model or body.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                    })
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
