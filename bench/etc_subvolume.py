#!/usr/bin/env python3
"""The extra cost of /etc as its own subvolume in a transaction (issue 11): target ≤ 10 ms.

    sudo python3 bench/etc_subvolume.py [--runs N] [--dir DIR] [--json]

On a fresh loop-mounted btrfs in DIR (default /dev/shm): a read-only "snapshot" subvolume
holding an /etc subvolume of 2,000 files. Timed, interleaved, medians:
- plain: snapshotting the root (what a transaction did before);
- with /etc: the same, plus replacing the empty /etc directory by a snapshot of the base's /etc
  (snapshots.carry_etc), the sync point with its marker (transaction.record_fork_point) and, at
  close, the read-only reference (Store.record_etc_origin).
The delta is the extra cost. Outside the timed part each new snapshot is deleted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from amber import btrfs
from amber.snapshots import Store, carry_etc
from amber.transaction import record_fork_point


def prepare(top: Path) -> Store:
    store_dir = top / ".snapshots"
    btrfs.create_subvolume(store_dir)
    (store_dir / "1").mkdir()
    base = store_dir / "1/snapshot"
    btrfs.create_subvolume(base)
    btrfs.create_subvolume(base / "etc")
    for d in range(160):
        folder = base / "etc" / f"d{d}"
        folder.mkdir()
        for f in range(2000 // 160 + 1):
            (folder / f"f{f}.conf").write_text(f"key{f} = {d}\n" * 4)
    (base / "usr/lib/amber").mkdir(parents=True)
    btrfs.set_read_only(base, True)
    return Store(top)


PARTS: dict[str, list[float]] = {"carry_etc": [], "fork_point": []}


def one(store: Store, number: int, with_etc: bool) -> float:
    (store.dir / str(number)).mkdir()
    start = time.perf_counter()
    btrfs.create_snapshot(store.path(1), store.path(number))
    if with_etc:
        carry_etc(store.etc_path(1), store.etc_path(number))
        PARTS["carry_etc"].append(time.perf_counter() - start)
        record_fork_point(store, number, 1, 1)
        PARTS["fork_point"].append(time.perf_counter() - start)
        store.record_etc_origin(number)
    elapsed = time.perf_counter() - start
    store.delete(number)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        image, top = Path(tmp) / "fs.img", Path(tmp) / "top"
        top.mkdir()
        with open(image, "wb") as f:
            f.truncate(512 << 20)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(top)], check=True)
        try:
            store = prepare(top)
            times: dict[bool, list[float]] = {False: [], True: []}
            for run in range(args.runs):
                for with_etc in ((False, True) if run % 2 else (True, False)):
                    times[with_etc].append(one(store, 2, with_etc))
        finally:
            subprocess.run(["umount", str(top)], check=False)
    plain, full = statistics.median(times[False]), statistics.median(times[True])
    carried, forked = (statistics.median(PARTS[k]) for k in ("carry_etc", "fork_point"))
    result = {"runs": args.runs, "plain_ms": plain * 1e3, "with_etc_ms": full * 1e3,
              "carry_etc_ms": (carried - plain) * 1e3, "fork_point_ms": (forked - carried) * 1e3,
              "origin_ms": (full - forked) * 1e3,
              "extra_ms": (full - plain) * 1e3, "target_ms": 10.0}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verdict = "ok" if result["extra_ms"] <= 10 else "MISS"
        print(f"snapshot alone:     {result['plain_ms']:7.2f} ms (median of {args.runs})")
        print(f"with /etc subvol:   {result['with_etc_ms']:7.2f} ms")
        print(f"extra for /etc:     {result['extra_ms']:7.2f} ms  (target ≤ 10 ms: {verdict})")
        for part in ("carry_etc", "fork_point", "origin"):
            print(f"  {part + ':':<17} {result[part + '_ms']:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
