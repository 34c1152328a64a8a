"""What amber's boot menu costs a transaction, with 10 and with 1,000 snapshots, side by side.

    python3 bench/boot_menu.py [--runs N] [--warmup N] [--json]      (as root)

Two system roots as bench/core.py makes them (loop-mounted copies of the root tests' pristine
Debian image, snapshots made with btrfsutil), with a kernel, an initrd and /etc/kernel/cmdline in
every snapshot so that each can be in the menu. Measured, interleaved in a shuffled order:

1. the menu update itself, in this process, as a transaction's commit makes it: the menu for
   the new default, written by rename, without a btrfs commit of its own (it rides on the one
   that moves the default). At 10 and at 1,000 snapshots. Target ≤ 5 ms at both.
2. `amber run -- true` on a root that boots through the menu against the same root without a
   menu (the file renamed away between runs, outside the timed part): the whole cost the menu
   adds to a no-op transaction, as a whole process (python3 -I -S, as bench/core.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import core
from core import LARGE, PY, SMALL, BenchError, Case, Root, Row

sys.path.insert(0, str(core.REPO / "src"))

from amber import btrfs
from amber.boot import menu
from amber.snapshots import Store

RELEASE = "6.1.0-99-amd64"


def give_kernel(root: Root) -> None:
    """A kernel's files in snapshot 1 (briefly writable), before the others are made from it."""
    snapshot = root.snapshot(1)
    btrfs.set_read_only(snapshot, False)
    try:
        (snapshot / "boot").mkdir(exist_ok=True)
        (snapshot / f"boot/vmlinuz-{RELEASE}").write_bytes(b"kernel")
        (snapshot / f"boot/initrd.img-{RELEASE}").write_bytes(b"initrd")
        (snapshot / "vmlinuz").unlink(missing_ok=True)
        (snapshot / "vmlinuz").symlink_to(f"boot/vmlinuz-{RELEASE}")
        (snapshot / "etc/kernel").mkdir(exist_ok=True)
        (snapshot / "etc/kernel/cmdline").write_text("root=UUID=0ddba11 ro console=ttyS0\n")
    finally:
        btrfs.set_read_only(snapshot, True)


def manage_menu(root: Root) -> Path:
    path = menu.menu_path(Store(root.path))
    path.parent.mkdir(exist_ok=True)
    menu.install(Store(root.path))
    return path


def refresh_case(root: Root) -> Case:
    store = Store(root.path)
    default = store.default()

    def run() -> tuple[float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        menu.refresh(store, default=default, commit=False)
        return (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
    return Case(f"menu update, {root.count}", run)


def transaction_case(root: Root, path: Path, with_menu: bool) -> Case:
    aside = path.with_name("menu.cfg.aside")

    def run() -> tuple[float, float]:
        if not with_menu:
            os.rename(path, aside)
        try:
            return core.timed(PY.amber("--root", str(root.path), "run", "--", "true"))
        finally:
            if not with_menu:
                os.rename(aside, path)
            core.reset(root)
    name = "amber run" + (" with menu" if with_menu else " without menu")
    return Case(f"{name}, {root.count}", run)


def bench(runs: int, warmup: int, seed: int, where: Path) -> list[Row]:
    pristine = core._pristine_image()
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="amber-bench-", dir=where))
        stack.callback(shutil.rmtree, workdir, True)
        PY.setup(workdir)
        core.say(f"Python processes: {PY.describe()}")
        rows = []
        roots = []
        for name, count in (("small", SMALL), ("large", LARGE)):
            root = core.attach_root(stack, pristine, workdir, name)
            give_kernel(root)
            core.fill(root, range(2, count + 1))
            roots.append((root, manage_menu(root)))
        cases = {}
        for root, path in roots:
            cases[root.count] = (refresh_case(root), transaction_case(root, path, True),
                                 transaction_case(root, path, False))
        core.say(f"measuring: {warmup} warm-up and {runs} timed rounds")
        core.interleaved([case for trio in cases.values() for case in trio], runs, warmup, seed)
        for count, (refresh, with_menu, without) in cases.items():
            rows.append(Row(f"menu update ({count} snapshots), ms", refresh, None, "≤ 5 ms",
                            None, seconds_limit=0.005))
            rows.append(Row(f"no-op transaction with vs without menu ({count})", with_menu,
                            without, "-", None))
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=11, help="timed runs of each (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run order")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--dir", type=Path, default=Path(core.DEFAULT_DIR),
                        help="where the images go (default: %(default)s)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, mounts, btrfs ioctls)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, core._interrupt)
    try:
        rows = bench(args.runs, args.warmup, args.seed, args.dir)
    except KeyboardInterrupt:
        print("bench: interrupted; everything was released", file=sys.stderr)
        return 130
    except (BenchError, OSError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"runs": args.runs, "load": os.getloadavg()[0],
                          "rows": [r.as_json() for r in rows]}, indent=2))
    else:
        print(f"amber boot menu benchmark: median of {args.runs} runs, "
              f"load {os.getloadavg()[0]:.1f}, max RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
        print(core.render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
