"""A FleetLock client: take a fleet-wide reboot slot before rebooting, give it back after a
healthy boot.

The protocol (zincati's docs/development/fleetlock/protocol.md): `POST {url}/v1/pre-reboot`
locks a slot of a counting semaphore, `POST {url}/v1/steady-state` unlocks it; both carry the
header `fleet-lock-protocol: true` and the body `{"client_params": {"id": ..., "group": ...}}`.
Locks are owned by the id and recursive: asking again for a slot one holds succeeds, and
releasing a slot one does not hold succeeds too. 200 is success; any other status is a failure,
with an error `{"kind": ..., "value": ...}` as JSON when the server is kind.

A full semaphore is the one failure worth waiting for (`FleetLock.acquire`). Everything else
raises a FleetLockError at once, and the caller does not reboot: a server that is down, slow or
answers garbage must never let a machine reboot, nor keep it waiting without bound.
"""

from __future__ import annotations

import enum
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from amber import log
from amber.log import AmberError, ExitCode

PRE_REBOOT = "/v1/pre-reboot"
STEADY_STATE = "/v1/steady-state"
DEFAULT_GROUP = "default"
DEFAULT_TIMEOUT = 10.0  # seconds for each network wait (connecting, each read)
# Kinds servers use for "every slot is taken": airlock and the protocol's example, and
# poseidon/fleetlock (which answers 423 Locked).
FULL_KINDS = frozenset({"failed_lock_semaphore_full", "locked"})
MAX_ANSWER = 64 * 1024  # bytes read from an answer; a FleetLock error is a few dozen

_GROUP = re.compile(r"[a-zA-Z0-9.-]+")


class FleetLockConfigError(ValueError):
    """A malformed fleetlock_url, group or id; the caller names the key (exit CONFIG)."""


class FleetLockError(AmberError):
    """The server did not give what was asked: the caller must not reboot."""

    def __init__(self, message: str, url: str, hint: str | None = None, status: int | None = None,
                 kind: str | None = None, value: str | None = None):
        super().__init__(message, hint=hint or "no reboot now; amber asks again at its next run",
                         code=ExitCode.REFUSED)
        self.url = url
        self.status = status
        self.kind = kind
        self.value = value


class FleetLockUnavailable(FleetLockError):
    """The server cannot be reached, did not answer in time, or answered something that is not
    the protocol (not HTTP, an error that is not FleetLock's JSON, a server error)."""


class FleetLockRefused(FleetLockError):
    """The server answered with a FleetLock error other than a full semaphore (an unknown
    group, a request it rejects)."""


class FleetLockFull(FleetLockError):
    """Every slot stayed taken until the deadline of `acquire`."""


class Outcome(enum.StrEnum):
    GRANTED = "granted"  # pre-reboot: this node holds a slot now
    RELEASED = "released"  # steady-state: this node holds no slot now
    FULL = "full"  # pre-reboot: every slot is taken by other nodes; ask again later


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    status: int  # the HTTP status
    kind: str = ""  # the server's error, for FULL
    value: str = ""


# ---- checking the configuration -------------------------------------------------------------

def check_url(text: str) -> str:
    """The base URL of a FleetLock server, without a trailing slash."""
    from urllib.parse import urlsplit

    if not text.strip():
        raise FleetLockConfigError("the URL is empty: give the server's base URL, like "
                                   "http://fleetlock.example:3333")
    if text != text.strip() or any(c.isspace() for c in text):
        raise FleetLockConfigError(f"'{text}' contains blanks")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise FleetLockConfigError(f"'{text}' is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 (it checks the port)
    except ValueError:
        raise FleetLockConfigError(f"'{text}' has a bad port number") from None
    if not parts.hostname:
        raise FleetLockConfigError(f"'{text}' names no host")
    if "@" in parts.netloc:
        raise FleetLockConfigError(f"'{text}' contains credentials: FleetLock has none, and "
                                   "they would show in every message")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise FleetLockConfigError(f"'{text}' has a query or fragment: give the base URL, to "
                                   f"which amber adds {PRE_REBOOT}")
    return text.rstrip("/")


def check_group(group: str) -> str:
    if not _GROUP.fullmatch(group):
        raise FleetLockConfigError(f"the group '{group}' may contain only letters, digits, "
                                   "'.' and '-' (and not be empty)")
    return group


# ---- the client -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FleetLock:
    url: str
    group: str = DEFAULT_GROUP
    node_id: str = ""
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", check_url(self.url))
        check_group(self.group)
        if not self.node_id:
            raise FleetLockConfigError("the node id is empty")
        if not self.timeout > 0:
            raise FleetLockConfigError(f"the timeout must be positive, not {self.timeout}")

    def pre_reboot(self) -> Answer:
        """Ask for a reboot slot: GRANTED, or FULL when other nodes hold every slot."""
        return interpret(PRE_REBOOT, *self._post(PRE_REBOOT), url=self.url)

    def steady_state(self) -> Answer:
        """Give back the slot this node holds (RELEASED, also when it holds none)."""
        return interpret(STEADY_STATE, *self._post(STEADY_STATE), url=self.url)

    def acquire(self, deadline: float, *, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep,
                jitter: Callable[[], float] = random.random,
                first_delay: float = 10.0, max_delay: float = 300.0) -> Answer:
        """Take a reboot slot, asking again while the semaphore is full until `deadline` (a time
        of `clock`): the pauses double from `first_delay` up to `max_delay`, each shortened by up
        to half at random (`jitter` in [0, 1)) so that waiting nodes do not ask in step, and the
        last question is asked at the deadline. Raises FleetLockFull after it; any other
        failure raises at once."""
        delay = first_delay
        asked = 0
        while True:
            answer = self.pre_reboot()
            asked += 1
            if answer.outcome is Outcome.GRANTED:
                return answer
            left = deadline - clock()
            if left <= 0:
                raise FleetLockFull(
                    f"FleetLock server {self.url}: every reboot slot of group '{self.group}' "
                    f"stayed taken ({_error_text(answer.kind, answer.value)}; asked {asked} "
                    "times)", self.url, hint="no reboot in this window; amber asks again in the "
                    "next one", status=answer.status, kind=answer.kind, value=answer.value)
            pause = min(left, delay * (1 - jitter() / 2))
            log.info(f"FleetLock: every reboot slot of group '{self.group}' is taken "
                     f"({_error_text(answer.kind, answer.value)}); asking again in {pause:.0f} s")
            sleep(pause)
            delay = min(delay * 2, max_delay)

    def _post(self, endpoint: str) -> tuple[int, bytes, str]:
        """POST the request; the status, (the start of) the body and the Location header of
        whatever HTTP answer came, or FleetLockUnavailable."""
        import http.client
        import urllib.error
        import urllib.request

        class NoRedirects(urllib.request.HTTPRedirectHandler):
            # The protocol's header is there so that redirected requests are not taken for
            # intended ones; a redirect is an answer like any other failure.
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        body = json.dumps({"client_params": {"id": self.node_id, "group": self.group}})
        request = urllib.request.Request(
            self.url + endpoint, data=body.encode(), method="POST",
            headers={"fleet-lock-protocol": "true", "Content-Type": "application/json",
                     "Accept": "application/json"})
        opener = urllib.request.build_opener(NoRedirects)
        try:
            try:
                with opener.open(request, timeout=self.timeout) as response:
                    return response.status, response.read(MAX_ANSWER), ""
            except urllib.error.HTTPError as e:  # an answer other than 2xx
                with e:
                    return e.code, e.read(MAX_ANSWER), e.headers.get("Location", "")
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise self._timed_out() from None
            raise self._unreachable(reason) from None
        except TimeoutError:
            raise self._timed_out() from None
        except http.client.RemoteDisconnected:
            raise FleetLockUnavailable(
                f"FleetLock server {self.url} closed the connection without answering",
                self.url) from None
        except http.client.HTTPException as e:
            raise FleetLockUnavailable(
                f"FleetLock server {self.url} answered something that is not HTTP "
                f"({type(e).__name__} {str(e)[:60]!r})", self.url) from None
        except OSError as e:
            raise self._unreachable(e) from None

    def _timed_out(self) -> FleetLockUnavailable:
        return FleetLockUnavailable(
            f"FleetLock server {self.url} did not answer within {self.timeout:g} s", self.url)

    def _unreachable(self, reason: object) -> FleetLockUnavailable:
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        return FleetLockUnavailable(f"FleetLock server {self.url} cannot be reached: {text}",
                                    self.url)


def interpret(endpoint: str, status: int, body: bytes, location: str = "", *,
              url: str) -> Answer:
    """What an HTTP answer to a FleetLock request means: an Answer, or a FleetLockError."""
    if status == 200:
        return Answer(Outcome.GRANTED if endpoint == PRE_REBOOT else Outcome.RELEASED, status)
    error = protocol_error(body)
    kind, value = error or ("", "")
    if endpoint == PRE_REBOOT and (status == 423 or kind in FULL_KINDS) and status >= 400:
        return Answer(Outcome.FULL, status, kind or "locked", value or "every slot is taken")
    what = "a reboot slot" if endpoint == PRE_REBOOT else "to release the reboot slot"
    if 200 <= status < 300:
        raise FleetLockUnavailable(
            f"FleetLock server {url} answered HTTP {status} to {endpoint}: only 200 is success",
            url, status=status)
    if 300 <= status < 400:
        where = f" to {location}" if location else ""
        raise FleetLockUnavailable(
            f"FleetLock server {url} redirects {endpoint}{where} (HTTP {status}): amber does "
            "not follow redirects with FleetLock requests", url,
            hint="set fleetlock_url to the server's own address", status=status)
    if error and 400 <= status < 500:
        raise FleetLockRefused(f"FleetLock server {url} refused {what}: "
                               f"{_error_text(kind, value)} (HTTP {status})", url,
                               status=status, kind=kind, value=value)
    if error:
        raise FleetLockUnavailable(f"FleetLock server {url} failed: {_error_text(kind, value)} "
                                   f"(HTTP {status})", url, status=status, kind=kind, value=value)
    shown = body[:80].decode(errors="replace").strip()
    raise FleetLockUnavailable(
        f"FleetLock server {url} answered HTTP {status} to {endpoint} without a FleetLock error"
        + (f" ({shown!r})" if shown else ""), url,
        hint=f"check fleetlock_url: amber posts to {url}{endpoint}", status=status)


def protocol_error(body: bytes) -> tuple[str, str] | None:
    """The (kind, value) of a FleetLock error answer, or None when the body is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    kind, value = data.get("kind"), data.get("value")
    if not isinstance(kind, str) or not kind or not isinstance(value, str):
        return None
    return kind, value


def _error_text(kind: str, value: str) -> str:
    """A server's error for a one-line message: control characters escaped, length capped."""
    text = f"{value} [{kind}]" if value else kind
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 200 else text[:200] + "…"
