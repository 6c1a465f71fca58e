"""A webhook receiver on 127.0.0.1 for the tests: records every POST, answers 500 to the first of each id."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    """`with Receiver() as r:` serves on a free loopback port; `r.url` is where to send webhooks."""

    def __init__(self, fail_first: bool = True) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(headers.get("webhook-id", ""))
                with receiver._lock:
                    receiver.deliveries.append(Delivery(headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, msg_id: str) -> int:
        with self._lock:
            seen = any(d.headers.get("webhook-id") == msg_id for d in self.deliveries)
        return 200 if seen or not self.fail_first else 500

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/taming"

    def ok(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.status == 200]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
