"""A "waiting for results" page for ``cueaudit dashboard --wait``.

A dashboard container starts with the cluster, usually before any audit has written to the shared
volume. Instead of exiting (and being restarted in a loop), it serves this page on the dashboard's
address until the results directory holds results, then frees the port for Streamlit. Every path
answers 200, so a healthcheck (Streamlit's ``/_stcore/health``) passes while it waits, and the page
reloads itself, so an open browser tab lands on the dashboard once it is up.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

REFRESH_S = 5
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh}">
<title>cueaudit: waiting for results</title></head>
<body style="font-family: sans-serif; margin: 3em; max-width: 44em">
<h1>cueaudit: waiting for results</h1>
<p>There are no audit results in <code>{root}</code> yet. The dashboard starts as soon as
<code>cueaudit run</code> writes there; this page reloads every {refresh} seconds.</p>
</body></html>
"""


def _handler(body: bytes) -> type[BaseHTTPRequestHandler]:
    class Waiting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            log.debug("waiting page: " + format, *args)

    return Waiting


def wait_for_results(root: Path, host: str, port: int, ready: Callable[[Path], bool],
                     poll_s: float = 2.0) -> None:
    """Serve the waiting page on ``host:port`` until ``ready(root)``; return with the port free again."""
    if ready(root):
        return
    body = PAGE.format(root=html.escape(str(root.resolve())), refresh=REFRESH_S).encode()
    server = ThreadingHTTPServer((host, port), _handler(body))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="cueaudit-waiting-page", daemon=True)
    thread.start()
    try:
        while not ready(root):
            time.sleep(poll_s)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
