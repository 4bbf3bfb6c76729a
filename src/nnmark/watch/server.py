"""The watch's HTTP face: ``/metrics`` (Prometheus text format), ``/healthz`` and ``/`` (the page), from a
background thread; nothing else is served."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nnmark.errors import NnmarkError

DEFAULT_HOST = "127.0.0.1"


class ServerError(NnmarkError):
    """The metrics address cannot be bound."""


def _handler(registry: CollectorRegistry, page: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            elif path == "/":
                try:
                    self._send(200, "text/html; charset=utf-8", page().encode("utf-8"))
                except NnmarkError as e:  # the state folder closed under a stopping watch
                    self._send(503, "text/plain; charset=utf-8", f"{e}\n".encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 (the stdlib's signature)
            pass

    return Handler


class Server:
    """Serves ``registry`` and ``page()`` on ``host``:``port`` (0: a free port) until ``close()``."""

    def __init__(self, registry: CollectorRegistry, page: Callable[[], str], host: str = DEFAULT_HOST, port: int = 0):
        try:
            self._httpd = ThreadingHTTPServer((host, port), _handler(registry, page))
        except OSError as e:
            raise ServerError(f"--metrics-port: cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        daemon=True, name="nnmark-watch-http")
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
