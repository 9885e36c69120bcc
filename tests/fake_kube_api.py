"""FakeKubeApiServer: a fake of the Kubernetes API server's list/watch for custom resources.

A fake of the outside world (no API server can run here), speaking the real wire format the
official client parses: ``GET /apis/<group>/<version>/namespaces/<ns>/<plural>`` returns a
``<Kind>List`` with ``metadata.resourceVersion``; with ``?watch=true&resourceVersion=N`` it
streams newline-delimited ``{"type": ADDED|MODIFIED|DELETED, "object": ...}`` events after N
over chunked HTTP until ``timeoutSeconds``, or a ``410 Gone`` ``ERROR`` event when N is older
than the compaction point. Bearer-token checked like the real server (401 Status otherwise).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

KINDS = {"edgesites": "EdgeSite", "slapolicies": "SlaPolicy"}
_PATH = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)$")


class FakeKubeApiServer:
    def __init__(self, token: str, group: str = "fleetvl.io", version: str = "v1alpha1") -> None:
        self.token, self.group, self.version = token, group, version
        self.rv = 100
        self.compacted = 0  # watches from a resourceVersion below this get 410 Gone
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, str, dict[str, Any]]] = []  # rv, ns, plural
        self.cond = threading.Condition()
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake._get(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- what a kubectl apply/delete would do ---------------------------------------------
    def apply(self, ns: str, plural: str, name: str, spec: dict[str, Any]) -> None:
        with self.cond:
            self.rv += 1
            key = (ns, plural, name)
            kind = "MODIFIED" if key in self.objects else "ADDED"
            obj = {
                "apiVersion": f"{self.group}/{self.version}",
                "kind": KINDS[plural],
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "resourceVersion": str(self.rv),
                    "uid": f"uid-{name}",
                    "generation": 1,
                },
                "spec": spec,
            }
            self.objects[key] = obj
            self.events.append((self.rv, ns, plural, kind, obj))
            self.cond.notify_all()

    def delete(self, ns: str, plural: str, name: str) -> None:
        with self.cond:
            self.rv += 1
            obj = self.objects.pop((ns, plural, name))
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
            self.events.append((self.rv, ns, plural, "DELETED", obj))
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget history, as etcd compaction does: older watches get 410 Gone."""
        with self.cond:
            self.compacted = self.rv + 1

    # -- the wire ----------------------------------------------------------------------
    def _send_json(self, h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, h: BaseHTTPRequestHandler, code: int, reason: str, msg: str) -> None:
        self._send_json(
            h,
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": msg,
                "reason": reason,
                "code": code,
            },
        )

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        u = urlparse(h.path)
        self.requests.append(h.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            self._status(h, 401, "Unauthorized", "Unauthorized")
            return
        m = _PATH.match(u.path)
        if not m or (m[1], m[2]) != (self.group, self.version) or m[4] not in KINDS:
            self._status(h, 404, "NotFound", f"the server could not find {u.path}")
            return
        ns, plural = m[3], m[4]
        if q.get("watch") in ("true", "1", "True"):
            self._watch(
                h,
                ns,
                plural,
                int(q.get("resourceVersion") or 0),
                float(q.get("timeoutSeconds") or 30),
            )
            return
        with self.cond:
            items = [o for (n, p, _), o in sorted(self.objects.items()) if n == ns and p == plural]
            rv = self.rv
        self._send_json(
            h,
            200,
            {
                "apiVersion": f"{self.group}/{self.version}",
                "kind": KINDS[plural] + "List",
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _watch(
        self, h: BaseHTTPRequestHandler, ns: str, plural: str, since: int, timeout: float
    ) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        try:
            if since < self.compacted:
                chunk(
                    {
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Failure",
                            "message": f"too old resource version: {since} ({self.compacted})",
                            "reason": "Expired",
                            "code": 410,
                        },
                    }
                )
            else:
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    with self.cond:
                        new = [
                            e for e in self.events if e[0] > since and e[1] == ns and e[2] == plural
                        ]
                        if not new:
                            self.cond.wait(min(0.2, max(0.0, end - time.monotonic())))
                            continue
                    for rv, _, _, kind, obj in new:
                        chunk({"type": kind, "object": obj})
                        since = rv
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
