"""A FleetLock server for the tests: the documented protocol on 127.0.0.1, with knobs for the
ways a real server fails.

    with FleetLockServer(slots=2) as server:
        FleetLock(server.url, node_id="a").pre_reboot()

Each group is a counting semaphore of `slots` (or `groups[name]` when `groups` is given, and then
other groups are unknown). Locks are owned by the client id and recursive: a holder asking again
is granted, releasing a slot one does not hold succeeds. Errors are `{"kind", "value"}` JSON with
a 4xx status (the request) or 409 (the semaphore is full). `mode` makes the server misbehave:
down (hangs up without an answer), slow (answers after `delay` seconds), garbage (bytes that are
not HTTP), not-json (an HTML error page), broken (a 500 FleetLock error). Test infrastructure,
never part of amber.
"""

from __future__ import annotations

import enum
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import cast

PRE_REBOOT = "/v1/pre-reboot"
STEADY_STATE = "/v1/steady-state"
_GROUP = re.compile(r"[a-zA-Z0-9.-]+")


class Mode(enum.StrEnum):
    NORMAL = "normal"
    DOWN = "down"
    SLOW = "slow"
    GARBAGE = "garbage"
    NOT_JSON = "not-json"
    BROKEN = "broken"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class _ProtocolError(Exception):
    def __init__(self, status: int, kind: str, value: str):
        super().__init__(value)
        self.status, self.kind, self.value = status, kind, value


class FleetLockServer:
    def __init__(self, slots: int = 1, groups: Mapping[str, int] | None = None,
                 prefix: str = "", delay: float = 5.0):
        self.slots = slots
        self.groups = dict(groups) if groups is not None else None
        self.prefix = prefix.rstrip("/")
        self.delay = delay
        self.mode = Mode.NORMAL
        self.requests: list[Request] = []
        self._holders: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- life -----------------------------------------------------------------------------

    def start(self) -> FleetLockServer:
        self._stopping.clear()
        self._http = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._http.fleetlock = self
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,),
                                        name="fleetlock-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering; the port is closed (connections are refused)."""
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._http = self._thread = None

    def __enter__(self) -> FleetLockServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._http is not None, "the server is not running"
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    # ---- state ----------------------------------------------------------------------------

    def holders(self, group: str = "default") -> frozenset[str]:
        with self._lock:
            return frozenset(self._holders.get(group, ()))

    def posts(self, path: str) -> list[Request]:
        """The requests that came for an endpoint (PRE_REBOOT or STEADY_STATE)."""
        with self._lock:
            return [r for r in self.requests if r.path == self.prefix + path]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _slots(self, group: str) -> int:
        if self.groups is None:
            return self.slots
        if group not in self.groups:
            raise _ProtocolError(400, "unknown_group", f"unknown group '{group}'")
        return self.groups[group]

    def _serve(self, request: Request) -> None:
        """Carry out a request; raises _ProtocolError for every failure."""
        if request.method != "POST":
            raise _ProtocolError(405, "method_not_allowed", "only POST is allowed")
        if request.path not in (self.prefix + PRE_REBOOT, self.prefix + STEADY_STATE):
            raise _ProtocolError(404, "not_found", f"no endpoint {request.path}")
        if request.headers.get("fleet-lock-protocol") != "true":
            raise _ProtocolError(400, "missing_header", "missing header fleet-lock-protocol: true")
        node, group = _client_params(request.body)
        slots = self._slots(group)
        with self._lock:
            holders = self._holders.setdefault(group, set())
            if request.path.endswith(STEADY_STATE):
                holders.discard(node)
            elif node not in holders:
                if len(holders) >= slots:
                    raise _ProtocolError(409, "failed_lock_semaphore_full",
                                         f"semaphore currently full, all {slots} slots of "
                                         f"group '{group}' are locked already")
                holders.add(node)


def _client_params(body: bytes) -> tuple[str, str]:
    try:
        params = json.loads(body)["client_params"]
        node, group = params["id"], params["group"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise _ProtocolError(400, "failed_decoding_request",
                             "the body must be {\"client_params\": {\"id\": ..., "
                             "\"group\": ...}}") from None
    if not isinstance(node, str) or not node:
        raise _ProtocolError(400, "failed_decoding_request", "the id must be a non-empty string")
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise _ProtocolError(400, "invalid_group", f"invalid group {group!r}")
    return node, group


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fleetlock: FleetLockServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # the tests' output stays quiet

    @property
    def fleetlock(self) -> FleetLockServer:
        return cast(_HTTPServer, self.server).fleetlock

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        server = self.fleetlock
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(self.command, self.path,
                          {k.lower(): v for k, v in self.headers.items()},
                          self.rfile.read(length) if length else b"")
        server._record(request)
        mode = server.mode
        if mode is Mode.DOWN:
            self.close_connection = True
            return  # no answer at all: the connection closes
        if mode is Mode.SLOW and server._stopping.wait(server.delay):
            return
        if mode is Mode.GARBAGE:
            self.wfile.write(b"\x00\x17\xfe garbage, not HTTP at all \xff\r\n\r\n")
            self.close_connection = True
            return
        if mode is Mode.NOT_JSON:
            self._reply(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        if mode is Mode.BROKEN:
            self._error(500, "internal_error", "the lock database is unavailable")
            return
        try:
            server._serve(request)
        except _ProtocolError as e:
            self._error(e.status, e.kind, e.value)
        else:
            self._reply(200, b"", "application/json")

    def _error(self, status: int, kind: str, value: str) -> None:
        self._reply(status, json.dumps({"kind": kind, "value": value}).encode(),
                    "application/json")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
