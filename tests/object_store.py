"""A real S3-compatible server on loopback (moto's ``ThreadedMotoServer``) and a small HTTP proxy
in front of it that counts requests and injects faults: 503 answers, connection resets, bodies
cut short or changed, stalls. Used through the fixtures of ``conftest.py``."""

from __future__ import annotations

import http.client
import socket
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Tuple

from moto.server import ThreadedMotoServer

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
FAULTS = ("503", "reset", "truncate", "corrupt", "stall")


class S3Server:
    """moto's S3 server on 127.0.0.1 (a free port), started and stopped by the tests."""

    def __init__(self):
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.port = port

    def new_bucket(self, name: Optional[str] = None) -> str:
        """Make the bucket ``name`` (a new unique one by default; one that exists is kept)."""
        import boto3

        name = name or f"bucket-{uuid.uuid4().hex[:16]}"
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        if name not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return name

    def environment(self) -> dict:
        """The standard AWS environment of a process that uses this server."""
        return dict(CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint, NO_PROXY="127.0.0.1,localhost")

    def stop(self) -> None:
        self.server.stop()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards every request to ``upstream`` (host, port),
    counts them (``counts[(method, path)]``), and answers a request that ``match`` accepts with
    the next fault of ``faults`` while any is left (see ``FAULTS``): ``503`` answers
    Service Unavailable; ``reset`` closes the connection without an answer; ``truncate`` sends
    the headers and half the body, then closes; ``corrupt`` flips a byte of the body; ``stall``
    waits ``stall_seconds`` before answering."""

    def __init__(self, upstream: Tuple[str, int], stall_seconds: float = 5.0):
        self.upstream = upstream
        self.faults: List[str] = []
        self.match: Callable[[str, str], bool] = lambda method, path: method == "GET" and "/parts/" in path
        self.counts: Counter = Counter()
        self.injected: Counter = Counter()
        self.stall_seconds = stall_seconds
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                method, path = self.command, self.path.split("?", 1)[0]
                with proxy.lock:
                    proxy.counts[(method, path)] += 1
                    fault = proxy.faults.pop(0) if proxy.faults and proxy.match(method, path) else None
                    if fault:
                        proxy.injected[fault] += 1
                if fault == "503":
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault == "stall" and proxy.stopped.wait(proxy.stall_seconds):
                    return  # the proxy stopped meanwhile: nothing is forwarded to a server that may be gone
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                if fault == "corrupt" and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(response.status)
                head = self.command == "HEAD"
                for key, value in response.getheaders():
                    skipped = ("transfer-encoding", "connection") + (() if head else ("content-length",))
                    if key.lower() not in skipped:
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if head:
                    return
                if fault == "truncate":
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.connection.close()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, contains: str = "/parts/") -> Counter:
        """GETs per path, of the paths holding ``contains``."""
        with self.lock:
            return Counter({path: n for (method, path), n in self.counts.items()
                            if method == "GET" and contains in path})

    def reset(self, faults: Optional[List[str]] = None) -> None:
        with self.lock:
            self.counts.clear()
            self.injected.clear()
            self.faults = list(faults or [])

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
