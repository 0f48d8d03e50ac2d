"""Real receivers for alerts and mail: an SMTP server and an HTTP server, on loopback."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from jobs_pipeline_tests.support.processes import free_port


@dataclass
class Mailbox:
    """What the SMTP server accepted: (envelope recipients, parsed message) per message."""

    received: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            (list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default))
        )
        return "250 Message accepted for delivery"

    def to(self, recipient: str) -> list[EmailMessage]:
        return [message for rcpts, message in self.received if recipient in rcpts]


@dataclass
class SmtpServer:
    host: str
    port: int
    mailbox: Mailbox


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, mailbox)
    finally:
        controller.stop()


@contextmanager
def serving(port: int, handler: type[BaseHTTPRequestHandler]) -> Iterator[None]:
    """An HTTP server on loopback in a thread of this process, for as long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class WebhookServer:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    port = free_port()
    receiver = WebhookServer(url=f"http://127.0.0.1:{port}/hooks/alerts")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if receiver.down:
                self.send_response(503)
                self.end_headers()
                return
            receiver.posts.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(port, Handler):
        yield receiver


@dataclass
class PingReceiver:
    """A dead man's switch service (healthchecks.io and the like): the paths it was pinged at."""

    base: str
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def ping_receiver() -> Iterator[PingReceiver]:
    port = free_port()
    receiver = PingReceiver(base=f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            receiver.paths.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(port, Handler):
        yield receiver
