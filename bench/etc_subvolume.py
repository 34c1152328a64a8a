#!/usr/bin/env python3
"""The extra cost of /etc as its own subvolume in a transaction (issue 11): target ≤ 10 ms.

    sudo python3 bench/etc_subvolume.py [--runs N] [--dir DIR] [--baseline REV] [--json]

1. In this process, on a fresh loop-mounted btrfs in DIR (default /dev/shm): snapshot 1, a
   read-only root holding an /etc subvolume of 2,000 files, booted. Timed, interleaved,
   medians of what a transaction does to its snapshot:
   - plain: info.xml and the snapshot of the root, what a transaction did before /etc was a
     subvolume of its own;
   - with /etc: `Store.create` (the same, and the base's /etc snapshotted into the new root),
     `transaction.record_fork_point` (the sync point, read-only, with its marker) and, at
     close, `transaction.record_etc_at_close` (no reference: the first boot's merge makes it).
   The delta is the extra cost, with its parts. Each new snapshot is deleted outside the
   timed part.
2. With --baseline REV (a revision before /etc was a subvolume, e.g. the main branch it was
   merged into): `amber run -- true` as a whole process, this checkout on a copy of the root
   tests' pristine image against REV's amber (`git archive`) on a copy whose /etc is a plain
   directory, as REV's own images had it; interleaved (bench/core.py's processes and reset).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import core
from core import Interpreter, Measure, Root

sys.path.insert(0, str(core.REPO / "src"))

from amber import btrfs
from amber.snapshots import Snapshot, Store, now_utc
from amber.transaction import record_etc_at_close, record_fork_point

ETC_FILES = 2000
TARGET_MS = 10.0


# ---- 1. the parts, in this process ---------------------------------------------------------------

def prepare(top: Path) -> Store:
    store_dir = top / ".snapshots"
    btrfs.create_subvolume(store_dir)
    (store_dir / "1").mkdir()
    base = store_dir / "1/snapshot"
    btrfs.create_subvolume(base)
    btrfs.create_subvolume(base / "etc")
    per_folder = ETC_FILES // 160 + 1
    for d in range(160):
        folder = base / "etc" / f"d{d}"
        folder.mkdir()
        for f in range(per_folder):
            (folder / f"f{f}.conf").write_text(f"key{f} = {d}\n" * 4)
    (base / "usr/lib/amber").mkdir(parents=True)
    store = Store(top)
    store.write_info(Snapshot(number=1, date=now_utc()))
    store.record_etc_origin(1)
    btrfs.set_read_only(base, True)
    btrfs.sync(top)
    return store


def one(store: Store, number: int, with_etc: bool, parts: dict[str, list[float]]) -> float:
    (store.dir / str(number)).mkdir()
    info = Snapshot(number=number, date=now_utc(), description="bench", cleanup="number")
    start = time.perf_counter()
    if with_etc:
        store.create(number, 1, info, read_only=False)
        created = time.perf_counter()
        record_fork_point(store, number, 1, 1)
        forked = time.perf_counter()
        record_etc_at_close(store, number)
        end = time.perf_counter()
        parts["create"].append(created - start)
        parts["fork_point"].append(forked - created)
        parts["at_close"].append(end - forked)
    else:
        store.write_info(info)
        btrfs.create_snapshot(store.path(1), store.path(number))
        end = time.perf_counter()
        parts["plain_create"].append(end - start)
    store.delete(number)
    _settle(store)
    return end - start


def _settle(store: Store, timeout: float = 30.0) -> None:
    """Commit and wait for the btrfs cleaner (as core.settle), so that one run's background
    work does not land in the next one's time."""
    import btrfsutil

    btrfs.sync(store.dir)
    deadline = time.monotonic() + timeout
    while btrfsutil.deleted_subvolumes(str(store.dir)) and time.monotonic() < deadline:
        time.sleep(0.01)


def in_process(runs: int, where: Path) -> dict[str, float]:
    parts: dict[str, list[float]] = {"plain_create": [], "create": [], "fork_point": [],
                                     "at_close": []}
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        image, top = Path(tmp) / "fs.img", Path(tmp) / "top"
        top.mkdir()
        with open(image, "wb") as f:
            f.truncate(512 << 20)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(top)], check=True)
        try:
            store = prepare(top)
            times: dict[bool, list[float]] = {False: [], True: []}
            for run in range(runs):
                for with_etc in ((False, True) if run % 2 else (True, False)):
                    times[with_etc].append(one(store, 2, with_etc, parts))
        finally:
            subprocess.run(["umount", str(top)], check=False)
    ms = {name: statistics.median(values) * 1e3 for name, values in parts.items()}
    plain, full = statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3
    return {"plain_ms": plain, "with_etc_ms": full, "extra_ms": full - plain,
            "create_extra_ms": ms["create"] - ms["plain_create"],
            "fork_point_ms": ms["fork_point"], "at_close_ms": ms["at_close"]}


# ---- 2. whole transactions against a baseline revision -------------------------------------------

def _baseline_src(rev: str, workdir: Path) -> Path:
    dest = workdir / "baseline"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(core.REPO), "archive", rev, "src"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def _plain_etc(root: Root) -> None:
    """Snapshot 1 with /etc as a plain directory in its read-only root (no reference either),
    as images made before /etc was a subvolume of its own."""
    snapshot = root.snapshot(1)
    btrfs.set_read_only(snapshot, False)
    try:
        etc, copy = snapshot / "etc", snapshot / "etc.plain"
        subprocess.run(["cp", "-a", "--reflink=auto", str(etc), str(copy)], check=True)
        origin = snapshot / "usr/lib/amber/etc-origin"
        if btrfs.is_subvolume(origin):
            btrfs.delete_subvolume(origin)
        btrfs.delete_subvolume(etc)
        os.rename(copy, etc)
    finally:
        btrfs.set_read_only(snapshot, True)
    btrfs.sync(snapshot)


def whole(rev: str, runs: int, warmup: int, where: Path) -> dict[str, float]:
    pristine = core._pristine_image()
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="amber-bench-etc-", dir=where))
        stack.callback(shutil.rmtree, workdir, True)
        core.PY.setup(workdir)
        baseline = replace(core.PY, path=[str(_baseline_src(rev, workdir)), core.PY.path[1]],
                           launcher=workdir / "amber-baseline")
        baseline.launcher.write_text(f"import sys\nsys.path[:0] = {baseline.path!r}\n"
                                     "from amber.cli import entry\n\nentry()\n")
        ours = core.attach_root(stack, pristine, workdir, "etc-subvolume")
        theirs = core.attach_root(stack, pristine, workdir, "etc-plain")
        _plain_etc(theirs)

        def transaction(interpreter: Interpreter, root: Root) -> Measure:
            def run() -> tuple[float, float]:
                try:
                    return core.timed(interpreter.amber("--root", str(root.path), "run", "--",
                                                        "true"))
                finally:
                    core.reset(root)
            return run

        cases = [core.Case("this checkout, /etc subvolume", transaction(core.PY, ours)),
                 core.Case(f"{rev}, plain /etc", transaction(baseline, theirs))]
        core.interleaved(cases, runs, warmup, seed=0)
    return {"ours_ms": cases[0].median, "baseline_ms": cases[1].median,
            "ours_cpu_ms": cases[0].cpu_median, "baseline_cpu_ms": cases[1].cpu_median,
            "extra_ms": cases[0].median - cases[1].median}


# ---- output --------------------------------------------------------------------------------------

def _verdict(extra: float) -> str:
    return "ok" if extra <= TARGET_MS else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2, help="untimed whole runs first")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--baseline", metavar="REV",
                        help="also time whole transactions against this revision's amber")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, mounts, btrfs ioctls)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    result: dict[str, object] = {"runs": args.runs, "target_ms": TARGET_MS,
                                 "in_process": in_process(args.runs, args.dir)}
    if args.baseline:
        result["whole"] = whole(args.baseline, args.runs, args.warmup, args.dir)
    result["load"] = [load_before, os.getloadavg()[0]]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    parts = result["in_process"]
    assert isinstance(parts, dict)
    print(f"load average before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}; "
          f"medians of {args.runs}")
    print(f"snapshot alone:        {parts['plain_ms']:7.2f} ms")
    print(f"with /etc subvolume:   {parts['with_etc_ms']:7.2f} ms")
    print(f"extra for /etc:        {parts['extra_ms']:7.2f} ms  (target ≤ 10 ms: "
          f"{_verdict(parts['extra_ms'])})")
    show: list[tuple[str, Callable[[], float]]] = [
        ("  carrying /etc", lambda: parts["create_extra_ms"]),
        ("  the sync point", lambda: parts["fork_point_ms"]),
        ("  at close", lambda: parts["at_close_ms"])]
    for label, value in show:
        print(f"{label + ':':<22} {value():7.2f} ms")
    if "whole" in result:
        w = result["whole"]
        assert isinstance(w, dict)
        print(f"amber run -- true, this checkout: {w['ours_ms']:7.1f} ms "
              f"(CPU {w['ours_cpu_ms']:.1f} ms)")
        print(f"amber run -- true, {args.baseline}: {w['baseline_ms']:7.1f} ms "
              f"(CPU {w['baseline_cpu_ms']:.1f} ms)")
        print(f"extra per transaction: {w['extra_ms']:7.1f} ms  (target ≤ 10 ms: "
              f"{_verdict(w['extra_ms'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
