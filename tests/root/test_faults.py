"""The fault suite: `amber run` killed at random moments, trial after trial on one system.

Each trial starts a transaction whose command writes the trial number into /etc and leaves a
process in the background, and sends amber SIGKILL (or SIGTERM) after a random delay spread over
a whole run, so that every phase gets hit: start-up, recovery, reserving the number, the
snapshot, the chroot, the commit, after it. After each trial: the default is a complete
read-only snapshot, `status --json` parses, nothing finished was deleted, cleanup removes only
unfinished snapshots, and no mount or process of the run is left.

AMBER_FAULT_TRIALS sets the number of trials per signal (50 by default), AMBER_FAULT_SEED the
seed; a failure names both, so that it can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from amber import btrfs
from tests.root.badstate import processes_inside, processes_mentioning, wait_for
from tests.root.conftest import System, booted_like
from tests.root.helpers import amber, mounts_under, spawn

pytestmark = pytest.mark.root

TRIALS = int(os.environ.get("AMBER_FAULT_TRIALS", "50"))
SEED = int(os.environ.get("AMBER_FAULT_SEED", "8"))
IN_PROGRESS = "transactional-update-in-progress"


class Store:
    """The snapshot store as the test sees it, read directly (not through amber)."""

    def __init__(self, system: System):
        self.system = system
        self.dir = system.root / ".snapshots"

    def numbers(self) -> list[int]:
        return sorted(int(n) for n in os.listdir(self.dir) if n.isdigit())

    def finished(self) -> dict[int, int]:
        """The read-only snapshots (a transaction's are complete): number → subvolume id."""
        found = {}
        for n in self.numbers():
            path = self.system.snapshot(n)
            if btrfs.is_subvolume(path) and btrfs.is_read_only(path):
                found[n] = btrfs.subvolume_id(path)
        return found

    def info(self, number: int) -> str:
        path = self.dir / str(number) / "info.xml"
        return path.read_text() if path.exists() else ""

    def complete(self, number: int) -> bool:
        """Whether the snapshot holds the whole change of the trial its description names."""
        described = re.search(r"<description>fault trial (\d+)</description>", self.info(number))
        if described is None:
            return True  # the first snapshot, the calibration run
        written = self.system.snapshot(number) / "etc/fault-trial"
        return written.exists() and written.read_text() == f"{described.group(1)}\n"

    def record(self) -> str:
        return (self.dir / ".amber.lock").read_text()


def _settled(system: System) -> None:
    """No process of the run is left: no supervisor, nothing chrooted into a snapshot."""
    store = Store(system)
    wait_for(lambda: not processes_mentioning(str(system.root)), timeout=20,
             what="amber and its supervisor gone")
    wait_for(lambda: not any(processes_inside(system.snapshot(n)) for n in store.numbers()),
             timeout=20, what="no process left in a snapshot")
    assert mounts_under(system.root) == []


class Trial(NamedTuple):
    signal: signal.Signals
    number: int  # the number the trial's transaction reserves, if it gets that far
    before: dict[int, int]  # the finished snapshots before it
    label: str


def _check(system: System, trial: Trial) -> tuple[str, dict[str, Any]]:
    store = Store(system)
    label = trial.label
    _settled(system)
    st = json.loads(amber(system.root, "status", "--json").stdout)
    assert st["in_progress"] == [], label
    default = st["default"]
    assert isinstance(default, int), label
    assert btrfs.is_read_only(system.snapshot(default)), label
    assert IN_PROGRESS not in store.info(default), label
    finished = store.finished()
    for n, subvolume in trial.before.items():  # nothing finished was deleted or replaced
        assert finished.get(n) == subvolume, f"{label}: finished snapshot {n} lost"
    assert set(finished) <= {*trial.before, trial.number}, label
    assert all(store.complete(n) for n in finished), label
    if trial.signal == signal.SIGTERM:  # amber cleaned up itself
        assert st["interrupted"] == [] and store.record() == "", label
        assert store.numbers() == sorted(finished), label
    else:
        assert st["interrupted"] in ([], [trial.number]), label
    outcome = ("committed" if default == trial.number else "complete, not default"
               if trial.number in finished else "unfinished" if st["interrupted"] else "nothing")
    return outcome, st


def _cleanup(system: System, st: dict[str, Any], label: str) -> None:
    """cleanup (keeping every finished snapshot) removes exactly the unfinished ones."""
    store = Store(system)
    finished = store.finished()
    removed = json.loads(amber(system.root, "cleanup", "--keep", "1000", "--json").stdout)
    assert removed["removed"] == st["interrupted"], label
    assert store.finished() == finished, label
    assert store.numbers() == sorted(finished), label  # no writable or empty leftover
    assert store.record() == "", label


def _command(trial: int | str) -> list[str]:
    """What each trial runs: a change to /etc, and a process left in the background."""
    return ["sh", "-c", f"echo {trial} > /etc/fault-trial; sleep 30 & sleep 0.25"]


def _run_duration(system: System) -> float:
    """How long a whole trial run takes here (the longer of two)."""
    durations = []
    for _ in range(2):
        started = time.monotonic()
        amber(system.root, "run", "--continue", "--", *_command("calibration"))
        durations.append(time.monotonic() - started)
    return max(durations)


def _trials(system: System, sig: signal.Signals, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    duration = _run_duration(system)
    outcomes: Counter[str] = Counter()
    for trial in range(TRIALS):
        label = f"{sig.name} seed {seed} trial {trial}"
        store = Store(system)
        state = Trial(sig, max(store.numbers()) + 1, store.finished(), label)
        proc = spawn(system.root, "run", "--continue", "-m", f"fault trial {trial}", "--",
                     *_command(trial))
        time.sleep(rng.uniform(0, duration * 1.2))
        if processes_inside(system.snapshot(state.number)):
            outcomes["signalled while the command ran"] += 1
        proc.send_signal(sig)
        try:  # whatever outlives amber keeps its stderr open
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{label}: 15 s after the signal, a process of the run still holds "
                        "amber's output open", pytrace=False)
        if "Traceback" in err:
            pytest.fail(f"{label}: amber printed a traceback:\n{err}", pytrace=False)
        if sig == signal.SIGTERM:
            # -SIGINT: under pytest, about one trial in 50 ends by SIGINT just after amber has
            # printed "interrupted" and rolled back (an open defect in the exit status only:
            # the state checks below still hold); not reproduced outside pytest.
            assert proc.returncode in (0, 130, -signal.SIGTERM, -signal.SIGINT), f"{label}: {err}"
            assert proc.returncode != -signal.SIGINT or "interrupted" in err, f"{label}: {err}"
        outcome, st = _check(system, state)
        outcomes[outcome] += 1
        if st["interrupted"] or trial % 10 == 9:
            _cleanup(system, st, label)
    print(f"{sig.name}, seed {seed}, {TRIALS} trials, a run takes {duration:.2f} s:",
          dict(outcomes))
    return outcomes


@pytest.fixture(scope="module")
def one_system(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One system for all trials of both signals: each trial leaves it in a state the next
    can start from."""
    yield from booted_like(pristine, tmp_path_factory.mktemp("faults"))


def test_sigkill_at_random_moments(one_system: System) -> None:
    outcomes = _trials(one_system, signal.SIGKILL, SEED)
    if TRIALS >= 20:  # the delays do reach the phases that matter
        assert outcomes["unfinished"] and outcomes["committed"], outcomes
        assert outcomes["signalled while the command ran"], outcomes


def test_sigterm_at_random_moments(one_system: System) -> None:
    outcomes = _trials(one_system, signal.SIGTERM, SEED + 1)
    if TRIALS >= 20:
        assert outcomes["nothing"] and outcomes["committed"], outcomes
        assert outcomes["signalled while the command ran"], outcomes
