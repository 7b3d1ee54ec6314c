"""A local HTTP server on 127.0.0.1 for the download and catalog tests (nothing touches the
internet), and the small payloads they serve.

``with serving() as srv:`` runs a :class:`Handler` server; ``srv.base`` is its URL and
``srv.files`` maps paths to ``(bytes, content type)`` (``/model.pth`` serves :data:`PAYLOAD`).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PAYLOAD = bytes(range(256)) * 4000  # 1 024 000 bytes, several network chunks

BASELINE_KEYS = ("xydir_head.3.weight", "height_head.0.weight", "mag_head.0.weight")
FOURTH_KEYS = ("scale_xydir_head.3.weight", "height_head.weight")


def tiny(keys: tuple[str, ...], fill: float = 0.0) -> bytes:
    """A torch.save'd state dict with a family's signature keys (what the --file check and the
    archive check read), a few hundred bytes."""
    buf = io.BytesIO()
    torch.save({k: torch.full((1,), fill) for k in keys}, buf)
    return buf.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless ``server.ignore_range``; with
    ``server.cut_after = N`` it announces the full length, sends N bytes and drops the
    connection (once, then it resets to None). With ``server.validators`` it sends an ETag
    (from the content) and a Last-Modified, and honours ``If-Range`` (a validator that does not
    match gets the whole file, 200) unless ``server.ignore_if_range``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        srv.if_ranges.append(self.headers.get("If-Range"))
        if self.path.startswith("/api/yandex"):
            body = json.dumps({"href": srv.yandex_href}).encode()
            return self._send(200, body, {"Content-Type": "application/json"})
        entry = srv.files.get(self.path.split("?")[0])
        if entry is None:
            return self._send(404, b"not here", {"Content-Type": "text/plain"})
        data, ctype = entry
        start, status, headers = 0, 200, {"Content-Type": ctype}
        if srv.validators:
            headers["ETag"] = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
            headers["Last-Modified"] = srv.last_modified
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if (
            if_range is not None
            and srv.validators
            and not srv.ignore_if_range
            and if_range not in (headers["ETag"], headers["Last-Modified"])
        ):
            rng = None  # the file changed: the whole of it
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            n, srv.cut_after = srv.cut_after, None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        self.wfile.write(body)
        return None

    def _send(self, status, body, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serving() -> Iterator[http.server.ThreadingHTTPServer]:
    """A running :class:`Handler` server, shut down on exit."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.files = {"/model.pth": (PAYLOAD, "application/octet-stream")}
    srv.ignore_range = False
    srv.cut_after = None
    srv.validators = True
    srv.ignore_if_range = False
    srv.last_modified = "Wed, 21 Jul 2021 07:28:00 GMT"
    srv.requests = []
    srv.if_ranges = []
    srv.yandex_href = None
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def files_under(folder: Path) -> list[Path]:
    """Every file under ``folder`` (none if it does not exist), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
