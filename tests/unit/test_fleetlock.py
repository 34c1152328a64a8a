"""The FleetLock client against the test server on loopback: slots, recursive locks, releases,
a server that is down, slow or answers garbage, and waiting with backoff until a deadline; the
node id against systemd's."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from amber.fleet import fleetlock, node_id
from amber.fleet.fleetlock import (
    Answer,
    FleetLock,
    FleetLockConfigError,
    FleetLockError,
    FleetLockFull,
    FleetLockRefused,
    FleetLockUnavailable,
    Outcome,
    interpret,
)
from amber.log import AmberError, ExitCode
from testing.fleetlock_server import PRE_REBOOT, STEADY_STATE, FleetLockServer, Mode

GRANTED = Outcome.GRANTED
FULL = Outcome.FULL
RELEASED = Outcome.RELEASED


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback requests must not wander off to a proxy of the environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FleetLockServer]:
    with FleetLockServer(slots=2) as running:
        yield running


def client(server: FleetLockServer, node: str, group: str = "default",
           timeout: float = 2.0) -> FleetLock:
    return FleetLock(server.url, group=group, node_id=node, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the semaphore ----------------------------------------------------------------------------

def test_two_slots_for_three_nodes(server: FleetLockServer) -> None:
    a, b, c = (client(server, n) for n in ("node-a", "node-b", "node-c"))
    assert a.pre_reboot().outcome is GRANTED
    assert b.pre_reboot().outcome is GRANTED
    refused = c.pre_reboot()
    assert refused.outcome is FULL and refused.status == 409
    assert refused.kind == "failed_lock_semaphore_full"
    assert "semaphore currently full" in refused.value
    assert c.pre_reboot().outcome is FULL  # still full: nobody released
    assert server.holders() == {"node-a", "node-b"}
    assert a.steady_state().outcome is RELEASED
    assert c.pre_reboot().outcome is GRANTED
    assert server.holders() == {"node-b", "node-c"}


def test_the_lock_is_recursive_per_id(server: FleetLockServer) -> None:
    a, b, c = (client(server, n) for n in ("a", "b", "c"))
    for _ in range(3):
        assert a.pre_reboot().outcome is GRANTED
    assert server.holders() == {"a"}  # one slot, however often a asked
    assert b.pre_reboot().outcome is GRANTED
    assert c.pre_reboot().outcome is FULL
    assert client(server, "a").pre_reboot().outcome is GRANTED  # a new client, the same id
    assert client(server, "A").pre_reboot().outcome is FULL  # ids are case-sensitive


def test_a_slot_is_released_only_by_its_holder_and_only_when_asked(
        server: FleetLockServer) -> None:
    a, b, c = (client(server, n) for n in ("a", "b", "c"))
    a.pre_reboot()
    b.pre_reboot()
    time.sleep(0.2)
    assert server.holders() == {"a", "b"}  # nothing expires, nothing is released by itself
    assert c.steady_state().outcome is RELEASED  # c holds nothing: that is success too
    assert server.holders() == {"a", "b"}
    assert c.pre_reboot().outcome is FULL
    assert b.steady_state().outcome is RELEASED
    assert b.steady_state().outcome is RELEASED  # releasing twice is fine
    assert server.holders() == {"a"}
    assert c.pre_reboot().outcome is GRANTED


def test_racing_nodes_get_exactly_the_slots(server: FleetLockServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    locks = [client(server, f"node-{n}") for n in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(lambda lock: lock.pre_reboot().outcome, locks))
    assert sorted(outcomes) == sorted([GRANTED] * 2 + [FULL] * 10)
    assert len(server.holders()) == 2


def test_groups_are_separate_semaphores() -> None:
    with FleetLockServer(groups={"workers": 1, "db-1": 1}) as server:
        assert client(server, "w1", "workers").pre_reboot().outcome is GRANTED
        assert client(server, "w2", "workers").pre_reboot().outcome is FULL
        assert client(server, "d1", "db-1").pre_reboot().outcome is GRANTED
        assert server.holders("workers") == {"w1"} and server.holders("db-1") == {"d1"}
        with pytest.raises(FleetLockRefused) as caught:
            client(server, "x", "other").pre_reboot()
    error = caught.value
    assert (error.status, error.kind, error.value) == (400, "unknown_group",
                                                       "unknown group 'other'")
    assert "refused a reboot slot: unknown group 'other' [unknown_group] (HTTP 400)" in str(error)
    assert error.code is ExitCode.REFUSED and error.hint


def test_the_requests_follow_the_protocol() -> None:
    with FleetLockServer(prefix="/base") as server:
        lock = FleetLock(server.url + "/", group="workers", node_id="c988d2509fdf4cdcbed39037c")
        assert lock.url == server.url
        lock.pre_reboot()
        lock.steady_state()
        pre, = server.posts(PRE_REBOOT)
        steady, = server.posts(STEADY_STATE)
    for request in (pre, steady):
        assert request.method == "POST"
        assert request.headers["fleet-lock-protocol"] == "true"
        assert request.json() == {"client_params": {"id": "c988d2509fdf4cdcbed39037c",
                                                    "group": "workers"}}
    assert pre.path == "/base/v1/pre-reboot" and steady.path == "/base/v1/steady-state"


# ---- the test server itself speaks the protocol -------------------------------------------

def raw_post(url: str, body: bytes, headers: dict[str, str] | None = None,
             method: str = "POST") -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body if method == "POST" else None,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {}
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


GOOD_BODY = b'{"client_params": {"id": "a", "group": "default"}}'
HEADER = {"fleet-lock-protocol": "true"}


@pytest.mark.parametrize(("path", "body", "headers", "method", "status", "kind"), [
    (PRE_REBOOT, GOOD_BODY, HEADER, "POST", 200, None),
    (PRE_REBOOT, GOOD_BODY, {}, "POST", 400, "missing_header"),
    (PRE_REBOOT, GOOD_BODY, {"fleet-lock-protocol": "yes"}, "POST", 400, "missing_header"),
    (PRE_REBOOT, b"not json", HEADER, "POST", 400, "failed_decoding_request"),
    (PRE_REBOOT, b'{"client_params": {"id": "a"}}', HEADER, "POST", 400,
     "failed_decoding_request"),
    (PRE_REBOOT, b'{"client_params": {"id": "", "group": "default"}}', HEADER, "POST", 400,
     "failed_decoding_request"),
    (PRE_REBOOT, b'{"client_params": {"id": "a", "group": "a b"}}', HEADER, "POST", 400,
     "invalid_group"),
    ("/v1/reboot", GOOD_BODY, HEADER, "POST", 404, "not_found"),
    (PRE_REBOOT, b"", HEADER, "GET", 405, "method_not_allowed"),
    (STEADY_STATE, GOOD_BODY, HEADER, "POST", 200, None),
])
def test_server_answers(server: FleetLockServer, path: str, body: bytes,
                        headers: dict[str, str], method: str, status: int,
                        kind: str | None) -> None:
    got_status, error = raw_post(server.url + path, body, headers, method)
    assert got_status == status
    if kind is None:
        assert error == {}
    else:
        assert error["kind"] == kind and error["value"]
    assert server.holders() == ({"a"} if (path, status) == (PRE_REBOOT, 200) else set())


def test_server_listens_on_loopback_only(server: FleetLockServer) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0


# ---- failures: never a reboot, never a long wait ---------------------------------------------

def timed(call: Callable[[], Answer]) -> tuple[FleetLockError, float]:
    start = time.monotonic()
    with pytest.raises(FleetLockError) as caught:
        call()
    return caught.value, time.monotonic() - start


def test_nothing_listening() -> None:
    lock = FleetLock(f"http://127.0.0.1:{closed_port()}", node_id="a", timeout=2)
    error, elapsed = timed(lock.pre_reboot)
    assert isinstance(error, FleetLockUnavailable)
    assert "cannot be reached: Connection refused" in str(error)
    assert elapsed < 1.5
    assert error.hint == "no reboot now; amber asks again at its next run"


def test_a_stopped_server(server: FleetLockServer) -> None:
    lock = client(server, "a")
    assert lock.pre_reboot().outcome is GRANTED
    server.stop()
    error, elapsed = timed(lock.steady_state)
    assert isinstance(error, FleetLockUnavailable) and elapsed < 1.5


def test_down_hangs_up_without_an_answer(server: FleetLockServer) -> None:
    server.mode = Mode.DOWN
    error, elapsed = timed(client(server, "a").pre_reboot)
    assert isinstance(error, FleetLockUnavailable)
    assert "without answering" in str(error) or "cannot be reached" in str(error)
    assert elapsed < 1.5
    assert server.holders() == set()


def test_slow_is_bounded_by_the_timeout(server: FleetLockServer) -> None:
    server.mode = Mode.SLOW
    server.delay = 30
    error, elapsed = timed(client(server, "a", timeout=0.5).pre_reboot)
    assert isinstance(error, FleetLockUnavailable)
    assert f"{server.url} did not answer within 0.5 s" in str(error)
    assert 0.4 < elapsed < 3


def test_slow_but_in_time(server: FleetLockServer) -> None:
    server.mode = Mode.SLOW
    server.delay = 0.3
    assert client(server, "a", timeout=5).pre_reboot().outcome is GRANTED


@pytest.mark.parametrize(("mode", "message"), [
    (Mode.GARBAGE, "answered something that is not HTTP (BadStatusLine '"),
    (Mode.NOT_JSON, "answered HTTP 502 to {endpoint} without a FleetLock error "
                    "('<html><body>502 Bad Gateway</body></html>')"),
    (Mode.BROKEN, "failed: the lock database is unavailable [internal_error] (HTTP 500)"),
])
def test_garbage_is_a_clear_error(server: FleetLockServer, mode: Mode, message: str) -> None:
    server.mode = mode
    lock = client(server, "a")
    for call, endpoint in ((lock.pre_reboot, PRE_REBOOT), (lock.steady_state, STEADY_STATE)):
        error, elapsed = timed(call)
        assert isinstance(error, FleetLockUnavailable)
        assert message.format(endpoint=endpoint) in str(error)
        assert "\n" not in str(error) and "\x00" not in str(error)
        assert elapsed < 1.5
    assert server.holders() == set()


def test_errors_are_amber_errors() -> None:
    for kind in (FleetLockUnavailable, FleetLockRefused, FleetLockFull):
        assert issubclass(kind, FleetLockError) and issubclass(kind, AmberError)


# ---- what an answer means ---------------------------------------------------------------------

URL = "http://fleetlock.example"


@pytest.mark.parametrize(("endpoint", "status", "body", "answer"), [
    (PRE_REBOOT, 200, b"", Answer(GRANTED, 200)),
    (PRE_REBOOT, 200, b"<html>whatever</html>", Answer(GRANTED, 200)),  # 200 is success
    (STEADY_STATE, 200, b"", Answer(RELEASED, 200)),
    (PRE_REBOOT, 409, b'{"kind": "failed_lock_semaphore_full", "value": "full"}',
     Answer(FULL, 409, "failed_lock_semaphore_full", "full")),
    (PRE_REBOOT, 500, b'{"kind": "failed_lock_semaphore_full", "value": "full"}',
     Answer(FULL, 500, "failed_lock_semaphore_full", "full")),
    (PRE_REBOOT, 423, b'{"kind": "locked", "value": "held by node-b"}',  # poseidon/fleetlock
     Answer(FULL, 423, "locked", "held by node-b")),
    (PRE_REBOOT, 423, b"", Answer(FULL, 423, "locked", "every slot is taken")),
])
def test_interpret(endpoint: str, status: int, body: bytes, answer: Answer) -> None:
    assert interpret(endpoint, status, body, url=URL) == answer


@pytest.mark.parametrize(("endpoint", "status", "body", "error", "message"), [
    (STEADY_STATE, 409, b'{"kind": "failed_lock_semaphore_full", "value": "full"}',
     FleetLockRefused, "refused to release the reboot slot: full [failed_lock_semaphore_full]"),
    (PRE_REBOOT, 400, b'{"kind": "missing_header", "value": "no header"}', FleetLockRefused,
     "refused a reboot slot: no header [missing_header] (HTTP 400)"),
    (PRE_REBOOT, 204, b"", FleetLockUnavailable, "HTTP 204 to /v1/pre-reboot: only 200 is"),
    (PRE_REBOOT, 307, b"", FleetLockUnavailable, "redirects /v1/pre-reboot (HTTP 307)"),
    (PRE_REBOOT, 404, b"<h1>Not Found</h1>", FleetLockUnavailable,
     "HTTP 404 to /v1/pre-reboot without a FleetLock error ('<h1>Not Found</h1>')"),
    (PRE_REBOOT, 400, b'{"kind": 3, "value": "x"}', FleetLockUnavailable,
     "without a FleetLock error"),
    (PRE_REBOOT, 400, b'{"kind": "", "value": "x"}', FleetLockUnavailable,
     "without a FleetLock error"),
    (PRE_REBOOT, 400, b'["kind", "value"]', FleetLockUnavailable, "without a FleetLock error"),
    (PRE_REBOOT, 400, b"\xff\xfe", FleetLockUnavailable, "without a FleetLock error"),
    (PRE_REBOOT, 503, b"", FleetLockUnavailable, "HTTP 503 to /v1/pre-reboot without"),
    (PRE_REBOOT, 500, b'{"kind": "generic_error", "value": "etcd"}', FleetLockUnavailable,
     "failed: etcd [generic_error] (HTTP 500)"),
    (PRE_REBOOT, 400, b'{"kind": "bad", "value": "line one\\nline two\\u001b[31m"}',
     FleetLockRefused, "refused a reboot slot: line one\\nline two\\x1b[31m [bad]"),
    (PRE_REBOOT, 400, b'{"kind": "long", "value": "' + b"x" * 5000 + b'"}', FleetLockRefused,
     "x" * 200 + "… (HTTP 400)"),
])
def test_interpret_failures(endpoint: str, status: int, body: bytes, error: type[Exception],
                            message: str) -> None:
    with pytest.raises(error) as caught:
        interpret(endpoint, status, body, url=URL)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"FleetLock server {URL} ")


def test_a_redirect_is_not_followed(server: FleetLockServer) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", server.url + PRE_REBOOT)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with HTTPServer(("127.0.0.1", 0), Redirect) as redirector:
        thread = threading.Thread(target=redirector.handle_request, daemon=True)
        thread.start()
        lock = FleetLock(f"http://127.0.0.1:{redirector.server_address[1]}", node_id="a")
        with pytest.raises(FleetLockUnavailable, match=f"redirects /v1/pre-reboot to "
                                                       f"{server.url}/v1/pre-reboot"):
            lock.pre_reboot()
        thread.join(5)
    assert server.requests == []  # the server behind the redirect was never asked


# ---- waiting for a slot -----------------------------------------------------------------------

class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda n: None):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


def test_acquire_gets_a_free_slot_at_once(server: FleetLockServer) -> None:
    fake = FakeTime()
    answer = client(server, "a").acquire(fake.now + 600, clock=fake.clock, sleep=fake.sleep)
    assert answer.outcome is GRANTED and fake.sleeps == []


def test_acquire_stops_at_the_deadline(server: FleetLockServer) -> None:
    client(server, "a").pre_reboot()
    client(server, "b").pre_reboot()
    fake = FakeTime()
    with pytest.raises(FleetLockFull) as caught:
        client(server, "c").acquire(fake.now + 1000, clock=fake.clock, sleep=fake.sleep,
                                    jitter=lambda: 0.0, first_delay=10, max_delay=300)
    # 10, 20, 40, ... capped at 300; the last pause ends at the deadline, where c asks once more.
    assert fake.sleeps == [10, 20, 40, 80, 160, 300, 300, 90]
    assert fake.now == 2000
    assert len(server.posts(PRE_REBOOT)) == 2 + len(fake.sleeps) + 1
    error = caught.value
    assert error.kind == "failed_lock_semaphore_full"
    assert "every reboot slot of group 'default' stayed taken" in str(error)
    assert "asked 9 times" in str(error)
    assert server.holders() == {"a", "b"}


def test_acquire_jitter_shortens_pauses_by_up_to_half(server: FleetLockServer) -> None:
    client(server, "a").pre_reboot()
    client(server, "b").pre_reboot()
    fake = FakeTime()
    with pytest.raises(FleetLockFull):
        client(server, "c").acquire(fake.now + 10_000, clock=fake.clock, sleep=fake.sleep,
                                    jitter=lambda: 0.999999, first_delay=8, max_delay=64)
    assert fake.sleeps[:5] == pytest.approx([4, 8, 16, 32, 32], rel=1e-5)
    assert sum(fake.sleeps) == pytest.approx(10_000)


def test_acquire_waits_until_a_slot_is_released(server: FleetLockServer) -> None:
    a, b, c = (client(server, n) for n in ("a", "b", "c"))
    a.pre_reboot()
    b.pre_reboot()

    def a_is_healthy_after_the_third_pause(pauses: int) -> None:
        if pauses == 3:
            a.steady_state()

    fake = FakeTime(on_sleep=a_is_healthy_after_the_third_pause)
    answer = c.acquire(fake.now + 3600, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 0.0,
                       first_delay=5)
    assert answer.outcome is GRANTED
    assert fake.sleeps == [5, 10, 20]
    assert server.holders() == {"b", "c"}


def test_acquire_with_a_deadline_passed_asks_once(server: FleetLockServer) -> None:
    client(server, "a").pre_reboot()
    client(server, "b").pre_reboot()
    fake = FakeTime()
    with pytest.raises(FleetLockFull, match="asked 1 times"):
        client(server, "c").acquire(fake.now - 1, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == []


@pytest.mark.parametrize("mode", [Mode.DOWN, Mode.GARBAGE, Mode.BROKEN])
def test_acquire_does_not_wait_for_a_broken_server(server: FleetLockServer, mode: Mode) -> None:
    server.mode = mode
    fake = FakeTime()
    with pytest.raises(FleetLockUnavailable):
        client(server, "a").acquire(fake.now + 3600, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == []


def test_acquire_real_time_is_bounded(server: FleetLockServer) -> None:
    client(server, "a").pre_reboot()
    client(server, "b").pre_reboot()
    start = time.monotonic()
    with pytest.raises(FleetLockFull):
        client(server, "c").acquire(time.monotonic() + 0.5, first_delay=0.1)
    assert 0.45 < time.monotonic() - start < 2.5


# ---- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "message"), [
    ("", "the URL is empty"),
    ("fleetlock.example", "is not an http:// or https:// URL"),
    ("ftp://fleetlock.example", "is not an http:// or https:// URL"),
    ("http://", "names no host"),
    ("http://fleet lock", "contains blanks"),
    (" http://fleetlock.example", "contains blanks"),
    ("http://fleetlock.example:99999", "bad port number"),
    ("http://fleetlock.example:port", "bad port number"),
    ("http://user:secret@fleetlock.example", "contains credentials"),
    ("http://fleetlock.example/?x=1", "has a query or fragment"),
    ("http://fleetlock.example/#top", "has a query or fragment"),
])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(FleetLockConfigError, match=message):
        FleetLock(url, node_id="a")


@pytest.mark.parametrize(("url", "normalized"), [
    ("http://fleetlock.example", "http://fleetlock.example"),
    ("https://fleetlock.example:3333/", "https://fleetlock.example:3333"),
    ("http://[::1]:8080/base/", "http://[::1]:8080/base"),
])
def test_good_urls(url: str, normalized: str) -> None:
    assert FleetLock(url, node_id="a").url == normalized


@pytest.mark.parametrize("group", ["", "a b", "a/b", "ä", "workers_1"])
def test_bad_groups(group: str) -> None:
    with pytest.raises(FleetLockConfigError, match="may contain only letters, digits"):
        FleetLock(URL, group=group, node_id="a")


def test_good_groups_and_other_checks() -> None:
    assert FleetLock(URL, group="db-1.eu", node_id="a").group == "db-1.eu"
    assert FleetLock(URL, node_id="a").group == fleetlock.DEFAULT_GROUP == "default"
    with pytest.raises(FleetLockConfigError, match="node id is empty"):
        FleetLock(URL)
    with pytest.raises(FleetLockConfigError, match="timeout must be positive"):
        FleetLock(URL, node_id="a", timeout=0)


# ---- the node id ------------------------------------------------------------------------------
# Vectors computed by systemd-id128 252 (`systemd-id128 machine-id --app-specific=APP` with the
# machine id bind-mounted over /etc/machine-id).
VECTORS = [
    ("0123456789abcdef0123456789abcdef", node_id.APP_ID, "8f50f6b4739f44c8bd42cf29cfa119a7"),
]


@pytest.mark.parametrize(("machine", "app", "expected"), VECTORS)
def test_app_specific_vectors(machine: str, app: str, expected: str) -> None:
    assert node_id.app_specific(machine, app) == expected
    assert node_id.app_specific(machine.upper(), app) == expected
    uuid_form = f"{machine[:8]}-{machine[8:12]}-{machine[12:16]}-{machine[16:20]}-{machine[20:]}"
    assert node_id.app_specific(uuid_form, app) == expected


def test_app_specific_is_a_v4_uuid_and_depends_on_both_ids() -> None:
    one = node_id.app_specific("0123456789abcdef0123456789abcdef")
    assert len(one) == 32 and one[12] == "4" and one[16] in "89ab"
    assert one != node_id.app_specific("0123456789abcdef0123456789abcdee")
    assert one != node_id.app_specific("0123456789abcdef0123456789abcdef",
                                       "00000000000000000000000000000001")
    assert one != "0123456789abcdef0123456789abcdef"


@pytest.mark.skipif(shutil.which("systemd-id128") is None, reason="no systemd-id128 here")
@pytest.mark.skipif(not Path("/etc/machine-id").exists(), reason="this host has no machine id")
def test_node_id_equals_systemds() -> None:
    systemd = subprocess.run(["systemd-id128", "machine-id", f"--app-specific={node_id.APP_ID}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert node_id.node_id() == systemd


def test_node_id_of_a_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert node_id.node_id(tmp_path) == "8f50f6b4739f44c8bd42cf29cfa119a7"


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("", "is not initialized"),
    ("uninitialized\n", "is not initialized"),
    ("00000000000000000000000000000000\n", "the id is all zeros"),
    ("0123456789abcdef\n", "'0123456789abcdef' is not a 128-bit id"),
    ("g123456789abcdef0123456789abcdef\n", "is not a 128-bit id"),
])
def test_bad_machine_ids(tmp_path: Path, content: str | None, message: str) -> None:
    (tmp_path / "etc").mkdir()
    if content is not None:
        (tmp_path / "etc/machine-id").write_text(content)
    with pytest.raises(AmberError, match=message) as caught:
        node_id.node_id(tmp_path)
    assert caught.value.code is ExitCode.ENVIRONMENT
    assert caught.value.hint and "systemd-machine-id-setup" in caught.value.hint
