"""Benchmark of the /etc merge (issue 11): 2,000 files, 20 paths changed on each side.

    python3 bench/etc_merge.py [--runs N] [--dir DIR] [--btrfs] [--json]

Builds three trees once: B (the fork), O (B with 20 changed paths: the admin's edits) and T (B
with 20 other changed paths: the transaction's), with 2,000 regular files in 160 directories,
150 symlinks and the account files; a few paths changed on both sides merge line by line or
record by record, one conflicts. Every run is a fresh process (`python3 -I`, isolated: no
site hooks, no PYTHONPATH) that merges a fresh copy of T and reports its own timings, so the
figures are the merge's, not the test harness's. The table shows medians and minimums.

Rows (target: the merge ≤ 0.5 s):

- `merge_into`: plan (read and compare the three trees) + apply into a ready copy of T + store the
  conflict; what the boot-time merge does after snapshotting T (the copy is made outside the
  timed part). Phases: `plan` and `apply+store`.
- `merge`: the whole plain-directory merge, which also copies T aside (2,000 files), flushes it
  (syncfs) and swaps it in with renameat2.
- with `--btrfs`: the trees are subvolumes on a loop-mounted btrfs image in DIR, and the run
  snapshots T, merges into the snapshot, flushes and exchanges them: the layout's real path.
- `process`: the whole child process of `merge_into` (interpreter start, imports, merge, exit).

Reading is warm (the trees were just written): the page cache holds them, as it holds a
just-mounted /etc in the initrd only partly. DIR defaults to /var/tmp (on disk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = 2000
DIRS = 160
SYMLINKS = 150
USERS = 40


# ---- the trees ---------------------------------------------------------------------------------


def _text(rng: random.Random, lines: int) -> bytes:
    return b"".join(b"option_%d = %d\n" % (i, rng.randrange(10_000)) for i in range(lines))


def make_base(root: Path, rng: random.Random) -> list[str]:
    """An /etc-like tree; returns its regular files' paths (relative)."""
    dirs = [f"d{i:03d}" for i in range(DIRS // 4)]
    dirs += [f"{rng.choice(dirs[:DIRS // 4])}/sub{i:03d}" for i in range(DIRS - len(dirs))]
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(FILES - 3):
        path = f"{rng.choice(dirs)}/file{i:04d}.conf" if i % 10 else f"top{i:04d}.conf"
        (root / path).write_bytes(_text(rng, rng.randrange(5, 60)))
        files.append(path)
    for i in range(SYMLINKS):
        os.symlink(f"../{rng.choice(files)}", root / f"{rng.choice(dirs)}/link{i:03d}")
    users = [(f"user{i:02d}", 1000 + i) for i in range(USERS)]
    (root / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n" + "".join(
        f"{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n" for name, uid in users))
    (root / "group").write_text("root:x:0:\n" + "".join(f"{n}:x:{u}:\n" for n, u in users))
    (root / "shadow").write_text("root:!:19000::::::\n" + "".join(
        f"{name}:!:19000::::::\n" for name, _ in users))
    return files


def _edit(path: Path, line: int, value: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[min(line, len(lines) - 1)] = value
    path.write_bytes(b"".join(lines))


def change_old(root: Path, files: list[str]) -> None:
    """20 changed paths: the admin's edits since the fork."""
    for path in files[:10]:
        _edit(root / path, 0, b"option_0 = admin\n")
    for path in files[100:102]:  # also changed by the package, at another line: merged
        _edit(root / path, 0, b"option_0 = admin\n")
    (root / "admin-added.conf").write_text("mine\n")
    (root / "d000/admin-added.conf").write_text("mine too\n")
    (root / files[12]).unlink()
    os.chmod(root / files[13], 0o600)
    os.setxattr(root / files[14], "user.admin", b"1")
    shadow = (root / "shadow").read_text().replace("root:!:", "root:$6$secret:")
    (root / "shadow").write_text(shadow)
    _edit(root / files[110], 1, b"option_1 = admin\n")  # the same line as the package: conflict
    (root / "passwd").write_text((root / "passwd").read_text()
                                 + "alice:x:2000:2000::/home/alice:/bin/bash\n")


def change_new(root: Path, files: list[str]) -> None:
    """20 other changed paths: the transaction's changes."""
    for path in files[200:210]:
        _edit(root / path, 2, b"option_2 = package\n")
    for path in files[100:102]:
        _edit(root / path, 3, b"option_3 = package\n")
    _edit(root / files[110], 1, b"option_1 = package\n")
    for i in range(3):
        (root / f"d001/package-{i}.conf").write_text("from the package\n")
    (root / files[211]).unlink()
    for name, line in (("passwd", "_pkg:x:999:999::/:/usr/sbin/nologin\n"),
                       ("group", "_pkg:x:999:\n"), ("shadow", "_pkg:!:19600::::::\n")):
        (root / name).write_text((root / name).read_text() + line)


def prepare(where: Path, seed: int) -> tuple[Path, Path, Path]:
    rng = random.Random(seed)
    base, old, new = where / "B", where / "O", where / "T.pristine"
    base.mkdir()
    files = make_base(base, rng)
    for tree, change in ((old, change_old), (new, change_new)):
        subprocess.run(["cp", "-a", str(base), str(tree)], check=True)
        change(tree, files)
    return base, old, new


# ---- btrfs -----------------------------------------------------------------------------------


class Btrfs:
    """A btrfs image on a loop device with direct I/O (the host's page cache does not hold its
    blocks), so that `remount` makes the next reads really cold."""

    def __init__(self, where: Path):
        self.image, self.mount = where / "btrfs.img", where / "mnt"
        self.device = ""

    def __enter__(self) -> Btrfs:
        with open(self.image, "wb") as f:
            f.truncate(1 << 30)
        subprocess.run(["mkfs.btrfs", "-q", str(self.image)], check=True)
        self.device = subprocess.run(["losetup", "--direct-io=on", "--find", "--show",
                                      str(self.image)], check=True, capture_output=True,
                                     text=True).stdout.strip()
        self.mount.mkdir()
        subprocess.run(["mount", self.device, str(self.mount)], check=True)
        return self

    def remount(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=True)
        subprocess.run(["mount", self.device, str(self.mount)], check=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mount)], check=False)
        subprocess.run(["losetup", "--detach", self.device], check=False)
        self.image.unlink()


def to_subvolumes(mount: Path, trees: tuple[Path, Path, Path]) -> tuple[Path, Path, Path]:
    import btrfsutil

    result = []
    for tree in trees:
        subvolume = mount / tree.name
        btrfsutil.create_subvolume(str(subvolume))
        subprocess.run(["cp", "-a", f"{tree}/.", str(subvolume)], check=True)
        result.append(subvolume)
    return result[0], result[1], result[2]


# ---- one run, in its own process ----------------------------------------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(mode: str, base: Path, old: Path, new: Path, work: Path, conflicts: Path,
          paths: list[str]) -> None:
    sys.path[:0] = [str(REPO / "src"), *paths]
    from amber.etc import conflicts as stored
    from amber.etc import merge, tree, writer

    timings: dict[str, float] = {}
    start, cpu = time.perf_counter(), _cpu()
    if mode == "merge":
        merge.merge(base, old, new, conflicts_dir=conflicts)
    else:
        if mode == "btrfs":
            import btrfsutil

            btrfsutil.create_snapshot(str(new), str(work))
        plan = merge.plan_merge(base, old, new)
        timings[f"{mode}: plan"] = time.perf_counter() - start
        merge.apply_plan(plan, work)
        stored.store(plan, conflicts, sync=False)
        timings[f"{mode}: apply"] = time.perf_counter() - start - timings[f"{mode}: plan"]
        flush = time.perf_counter()
        for flushed in (conflicts, work):
            with tree.opened_root(flushed) as fd:
                writer.syncfs(fd)
        timings[f"{mode}: flush"] = time.perf_counter() - flush
        if mode == "btrfs":
            writer.exchange(new, work)
    timings[mode] = time.perf_counter() - start
    timings[f"{mode} cpu"] = _cpu() - cpu
    print(json.dumps(timings))


def one_run(mode: str, trees: tuple[Path, Path, Path], scratch: Path, *,
            before: Callable[[], None] | None = None, label: str = "") -> dict[str, float]:
    base, old, pristine = trees
    new, work, conflicts = scratch / "T", scratch / "T.work", scratch / "conflicts"
    for leftover in (new, work, conflicts):
        _remove(leftover)
    if mode == "btrfs":
        import btrfsutil

        btrfsutil.create_snapshot(str(pristine), str(new))
    else:
        subprocess.run(["cp", "-a", str(pristine), str(new)], check=True)
    if mode == "merge_into":
        subprocess.run(["cp", "-a", str(new), str(work)], check=True)
    argv = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "--child", mode,
            str(base), str(old), str(new), str(work), str(conflicts), *_btrfsutil_path(mode)]
    if before is not None:
        before()
    start = time.perf_counter()
    output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    timings: dict[str, float] = json.loads(output)
    if label:
        timings = {key.replace(mode, label, 1): value for key, value in timings.items()}
    if mode == "merge_into":
        timings["process"] = time.perf_counter() - start
    return timings


def _btrfsutil_path(mode: str) -> list[str]:
    """Where btrfsutil lives: -S leaves site-packages off sys.path (and -I PYTHONPATH)."""
    if mode != "btrfs":
        return []
    import btrfsutil

    return [str(Path(str(btrfsutil.__file__)).parent)]


def _remove(path: Path) -> None:
    if not os.path.lexists(path):
        return
    with contextlib.suppress(ImportError):
        import btrfsutil

        with contextlib.suppress(btrfsutil.BtrfsUtilError):
            if btrfsutil.is_subvolume(str(path)):
                btrfsutil.delete_subvolume(str(path))
                return
    shutil.rmtree(path)


def check_trees(trees: tuple[Path, Path, Path]) -> tuple[int, int, int]:
    sys.path.insert(0, str(REPO / "src"))
    from amber.etc.diff import diff
    from amber.etc.tree import Kind, scan

    files = sum(1 for entry in scan(trees[0]).values() if entry.kind is Kind.FILE)
    return files, len(diff(trees[0], trees[1])), len(diff(trees[0], trees[2]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--btrfs", action="store_true", help="also on a loop-mounted btrfs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount and detach on SIGTERM too
    if args.child:
        mode, base, old, new, work, conflicts, *extra = args.child
        child(mode, Path(base), Path(old), Path(new), Path(work), Path(conflicts), extra)
        return 0
    with tempfile.TemporaryDirectory(prefix="amber-etc-bench-", dir=args.dir) as top:
        where = Path(top)
        trees = prepare(where, args.seed)
        files, changed_old, changed_new = check_trees(trees)
        results: dict[str, list[dict[str, float]]] = {"merge_into": [], "merge": []}
        scratch = where / "scratch"
        scratch.mkdir()
        for _ in range(args.runs):
            for mode in ("merge_into", "merge"):
                results[mode].append(one_run(mode, trees, scratch))
        if args.btrfs:
            with Btrfs(where) as btrfs:
                subvolumes = to_subvolumes(btrfs.mount, trees)
                results["btrfs"] = [one_run("btrfs", subvolumes, btrfs.mount)
                                    for _ in range(args.runs)]
                results["btrfs cold"] = []
                for _ in range(args.runs):
                    results["btrfs cold"].append(
                        one_run("btrfs", subvolumes, btrfs.mount, before=btrfs.remount,
                                label="btrfs cold"))
                for leftover in (btrfs.mount / "T", btrfs.mount / "T.work", *subvolumes):
                    _remove(leftover)
        report(results, files, changed_old, changed_new, args)
    return 0


def report(results: dict[str, list[dict[str, float]]], files: int, changed_old: int,
           changed_new: int, args: argparse.Namespace) -> None:
    rows: dict[str, tuple[float, float]] = {}
    for runs in results.values():
        for name in runs[0]:
            values = [run[name] for run in runs]
            rows[name] = (statistics.median(values), min(values))
    summary = {"files": files, "changed_old": changed_old, "changed_new": changed_new,
               "runs": args.runs, "dir": args.dir, "python": sys.version.split()[0],
               "median_s": {k: round(v[0], 4) for k, v in rows.items()},
               "min_s": {k: round(v[1], 4) for k, v in rows.items()}, "target_s": 0.5}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"/etc merge: {files} files, {changed_old} paths changed in O, {changed_new} in T; "
          f"{args.runs} runs in {args.dir}, Python {summary['python']} -I -S, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':22}{'median':>10}{'min':>10}")
    for name, (median, low) in rows.items():
        verdict = ""
        if name in ("merge_into", "btrfs", "btrfs cold", "merge_into cpu", "btrfs cpu"):
            verdict = "  ok (≤ 0.5 s)" if median <= 0.5 else "  MISS (> 0.5 s)"
        print(f"{name:22}{median * 1000:>8.1f}ms{low * 1000:>8.1f}ms{verdict}")
    print("reproduce: python3 bench/etc_merge.py" + (" --btrfs" if args.btrfs else "")
          + f" --runs {args.runs} --dir {args.dir}")


if __name__ == "__main__":
    raise SystemExit(main())
