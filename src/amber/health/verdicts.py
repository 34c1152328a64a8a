"""Where boot health is recorded: `.snapshots/.amber/health.json` on the btrfs filesystem, beside
the snapshots' info.xml files and outside every snapshot, so that a rollback cannot erase the
verdict that caused it.

    {"version": 1,
     "snapshots": {"7": "bad", "6": "good"},          # a snapshot not named here is good
     "trial": {"snapshot": 8, "fallback": 6, "tries": 2, "since": "…"} | null,
     "last_rollback": {"from": 7, "to": 6, "reason": "health-check", "time": "…",
                       "detail": "…", "log": "/var/log/amber/…", "settled": false} | null}

A snapshot is on trial from the commit that makes it the default until its first boot reaches a
verdict; GRUB counts the attempts in its environment block (see trial.py and boot/menu.py).
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

    from amber.snapshots import Store

NAME = "health.json"


class Verdict(StrEnum):
    GOOD = "good"
    BAD = "bad"
    TRIAL = "trial"


class Reason(StrEnum):
    HEALTH_CHECK = "health-check"  # a check failed on the trial boot
    BOOT_FAILED = "boot-failed"  # the tries were used up before userspace said anything
    TIMEOUT = "timeout"  # the trial boot reached no verdict within [health] timeout


# NamedTuples, not dataclasses, and json imported only when there is a file: `amber status`
# and `amber snapshots` read this on every system that boots through amber's menu.
class Trial(NamedTuple):
    snapshot: int
    fallback: int | None  # the last good snapshot, which boots when the tries are used up
    tries: int
    since: str


class Rollback(NamedTuple):
    from_: int
    to: int
    reason: Reason
    time: str
    detail: str = ""
    log: str | None = None
    settled: bool = False  # `to` has since booted healthy (until then a failure is fatal)

    def as_json(self) -> dict[str, Any]:
        return {"from": self.from_, "to": self.to, "reason": str(self.reason),
                "time": self.time, "detail": self.detail, "log": self.log,
                "settled": self.settled}


class Record(NamedTuple):
    snapshots: dict[int, Verdict] = {}  # noqa: RUF012 - never mutated: with_verdict copies
    trial: Trial | None = None
    last_rollback: Rollback | None = None

    def verdict(self, number: int) -> Verdict:
        if self.trial is not None and self.trial.snapshot == number:
            return Verdict.TRIAL
        return self.snapshots.get(number, Verdict.GOOD)

    def with_verdict(self, number: int, verdict: Verdict) -> Record:
        snapshots = dict(self.snapshots)
        if verdict == Verdict.GOOD:
            snapshots.pop(number, None)  # good is what is not named
        else:
            snapshots[number] = verdict
        trial = None if self.trial and self.trial.snapshot == number else self.trial
        return self._replace(snapshots=snapshots, trial=trial)

    def as_json(self) -> dict[str, Any]:
        trial = self.trial
        return {"version": 1,
                "snapshots": {str(n): str(v) for n, v in sorted(self.snapshots.items())},
                "trial": None if trial is None else {
                    "snapshot": trial.snapshot, "fallback": trial.fallback,
                    "tries": trial.tries, "since": trial.since},
                "last_rollback": self.last_rollback.as_json() if self.last_rollback else None}


def path(store: Store) -> Path:
    return store.dir / ".amber" / NAME


def _int(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def parse(data: Any) -> Record:
    """A record from health.json's JSON; what does not make sense is dropped, not trusted."""
    if not isinstance(data, dict):
        return Record()
    snapshots: dict[int, Verdict] = {}
    for key, value in (data.get("snapshots") or {}).items():
        if str(key).isdigit() and value in set(Verdict):
            snapshots[int(key)] = Verdict(value)
    trial = None
    raw = data.get("trial")
    if isinstance(raw, dict) and _int(raw.get("snapshot")) and _int(raw.get("tries")):
        trial = Trial(raw["snapshot"], _int(raw.get("fallback")), raw["tries"],
                      str(raw.get("since", "")))
    rollback = None
    raw = data.get("last_rollback")
    if (isinstance(raw, dict) and _int(raw.get("from")) and _int(raw.get("to"))
            and raw.get("reason") in set(Reason)):
        rollback = Rollback(raw["from"], raw["to"], Reason(raw["reason"]), str(raw.get("time")),
                            str(raw.get("detail", "")),
                            raw["log"] if isinstance(raw.get("log"), str) else None,
                            raw.get("settled") is True)
    return Record(snapshots, trial, rollback)


def load(store: Store) -> Record:
    if not os.path.exists(path(store)):
        return Record()
    import json

    try:
        text = path(store).read_text()
    except FileNotFoundError:
        return Record()
    except OSError as e:
        from amber import log

        log.warn(f"cannot read {path(store)}: {e.strerror}; every snapshot counts as good")
        return Record()
    try:
        return parse(json.loads(text))
    except ValueError:
        from amber import log

        log.warn(f"{path(store)} is not valid JSON; every snapshot counts as good",
                 hint="it is rewritten at the next verdict")
        return Record()


def save(store: Store, record: Record) -> None:
    import json

    from amber.state import atomic_write

    path(store).parent.mkdir(exist_ok=True)
    atomic_write(path(store), json.dumps(record.as_json(), indent=1) + "\n")
