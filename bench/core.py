"""Benchmark of amber's transactional core against its floors, side by side in one run.

    sudo python3 bench/core.py [--runs N] [--warmup N] [--cleanup-runs N] [--site] [--json]

Sets up two system roots on loop-mounted copies of the root tests' pristine Debian image (one
with 10 snapshots, one with 1,000), runs every measurement as a whole process, interleaved in a
shuffled order so that drift hits all sides alike, and prints the median of each with ratios:

1. `amber run -- true` (10 snapshots) against the floor in bench/floor.py: a fresh Python process
   doing the bare libbtrfsutil cycle and the chroot's mounts. Target ≤ 1.5×.
2. the same with 1,000 snapshots against with 10. Target ≤ 1.2×.
3. `amber snapshots --json` (1,000) against `btrfs subvolume list` and, where snapper is
   installed, against `snapper --jsonout list` (target ≤ 0.7×); `amber cleanup --keep 10` of
   1,000 snapshots against deleting the same snapshots from a bare Python process. Target < 1 s.
4. `amber status` against `python3 -c 'import btrfsutil'`. Target ≤ 2×. Beside it, what that
   target is up against: `import argparse` alone, `import dataclasses` alone, and the standard
   library of the project's style (STYLE_MODULES), each against `import btrfsutil`.

Every Python process starts clean by default: `python3 -I -S`, sys.path given explicitly (see
Interpreter); `--site` starts them as on this host instead. The output says which.

Between runs, outside the timed part, the new snapshot is deleted with btrfsutil, the default
is put back and the btrfs cleaner is waited for. Everything mounted or attached is released on
every path. Exits 0 unless something failed (a missed target is a result, not an error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import btrfsutil

REPO = Path(__file__).resolve().parents[1]
FLOOR = Path(__file__).resolve().parent / "floor.py"
AMBER = Path(sys.executable).parent / "amber"
SMALL = 10
LARGE = 1000
KEEP = 10
FLOOR_PATH = "AMBER_BENCH_PATH"  # sys.path for floor.py under -I, which ignores PYTHONPATH
# The standard library any amber command imports before a line of its own runs: argparse for
# the command line, frozen dataclasses for configuration, StrEnums, pathlib, typing for
# NamedTuple, and what the transaction's guards need.
STYLE_MODULES = ("argparse, contextlib, dataclasses, enum, fcntl, locale, pathlib, signal, "
                 "typing, btrfsutil")
DEFAULT_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class BenchError(Exception):
    pass


@dataclass
class Interpreter:
    """How the measured Python processes start.

    By default (`clean`) every process runs as `python3 -I -S`: isolated (no PYTHONPATH, no
    user site-packages, no PYTHON* variables) and without the site module, so that no start-up
    hook of the host (.pth files, sitecustomize, usercustomize) lands in the figures. sys.path
    is then given explicitly: amber through a launcher in the work directory that puts this
    checkout's src and btrfsutil's directory first (what tools/launcher.py does), the floors and
    `import btrfsutil` through the same two directories. With `site`, the processes start as a
    user starts them on this host: amber's console script next to the interpreter, the floors
    with the same interpreter, site hooks included.
    Bytecode is cached in a private directory (`-X pycache_prefix`), so that an environment
    with PYTHONDONTWRITEBYTECODE does not make every run compile amber from source."""

    site: bool = False
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    flags: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    launcher: Path = AMBER

    def setup(self, workdir: Path) -> None:
        pycache = workdir / "pycache"
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(pycache)
        if self.site:
            return
        self.flags = ["-I", "-S", "-X", f"pycache_prefix={pycache}"]
        self.path = [str(REPO / "src"), str(Path(btrfsutil.__file__).parent)]
        self.env[FLOOR_PATH] = os.pathsep.join(self.path)
        self.launcher = workdir / "amber"
        self.launcher.write_text(f"import sys\nsys.path[:0] = {self.path!r}\n"
                                 "from amber.cli import entry\n\nentry()\n")

    def describe(self) -> str:
        if self.site:
            return f"as on this host: {AMBER} and {sys.executable}, site hooks included"
        return (f"clean: {sys.executable} -I -S (no site module, no start-up hooks), "
                f"sys.path = {self.path} + the standard library")

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *self.flags, *args]

    def imports(self, modules: str) -> list[str]:
        """A process that imports `modules` (a comma-separated list) and ends."""
        if self.site:
            return self.python("-c", f"import {modules}")
        return self.python("-c", f"import sys; sys.path[:0] = {self.path!r}; import {modules}")

    def amber(self, *args: str) -> list[str]:
        return [str(AMBER), *args] if self.site else self.python(str(self.launcher), *args)


PY = Interpreter()


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# ---- system roots --------------------------------------------------------------------------------

@dataclass
class Root:
    """A system root mounted as a booted system sees it, with snapshots 1..count."""

    path: Path
    count: int = 1
    base_id: int = 0  # subvolume id of snapshot 1, the booted one and the default

    @property
    def store(self) -> str:
        """The writable mount of the filesystem (a booted system's / is read-only)."""
        return str(self.path / ".snapshots")

    def snapshot(self, number: int) -> Path:
        return self.path / ".snapshots" / str(number) / "snapshot"


def _pristine_image() -> Path:
    for folder in (str(REPO / "src"), str(REPO)):  # any Python, amber installed or not
        if folder not in sys.path:
            sys.path.insert(0, folder)
    from testing.images import pristine_image

    return pristine_image()


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def _is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _release(mount_points: list[Path], device: str) -> None:
    for where in reversed(mount_points):
        if _is_mounted(where):
            subprocess.run(["umount", str(where)], check=False, capture_output=True)
        if _is_mounted(where):  # busy: detach it anyway rather than leave it behind
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
    subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def attach_root(stack: contextlib.ExitStack, pristine: Path, workdir: Path, name: str) -> Root:
    from testing import rootfs

    image = workdir / f"{name}.img"
    _run(["cp", "--sparse=always", str(pristine), str(image)])
    device = _run(["losetup", "--find", "--show", str(image)]).strip()
    target = workdir / name
    target.mkdir()
    try:
        mounts = rootfs.mount_root(Path(device), target)
    except BaseException:
        subprocess.run(["losetup", "-d", device], check=False)
        raise
    stack.callback(_release, mounts, device)
    root = Root(target)
    root.base_id = btrfsutil.subvolume_id(str(root.snapshot(1)))
    if btrfsutil.get_default_subvolume(root.store) != root.base_id:
        raise BenchError(f"{name}: snapshot 1 is not the default of the pristine image")
    existing = sorted(int(n) for n in os.listdir(target / ".snapshots") if n.isdigit())
    if existing != [1]:
        raise BenchError(f"{name}: expected only snapshot 1 in the pristine image, got {existing}")
    return root


def info_xml(number: int, date: str) -> str:
    """snapper's info.xml, as amber writes it."""
    return ('<?xml version="1.0"?>\n<snapshot>\n  <type>single</type>\n'
            f"  <num>{number}</num>\n  <date>{date}</date>\n"
            f"  <description>bench snapshot {number}</description>\n"
            "  <cleanup>number</cleanup>\n</snapshot>\n")


def fill(root: Root, numbers: range) -> None:
    """Read-only snapshots of snapshot 1 with their info.xml, directly with btrfsutil."""
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    source = str(root.snapshot(1))
    for n in numbers:
        directory = root.path / ".snapshots" / str(n)
        directory.mkdir()
        (directory / "info.xml").write_text(info_xml(n, date))
        btrfsutil.create_snapshot(source, str(directory / "snapshot"), read_only=True)
    root.count = max(root.count, numbers[-1]) if numbers else root.count
    settle(root)


def settle(root: Root, timeout: float = 30.0) -> None:
    """Commit, and wait until the btrfs cleaner has dropped deleted subvolumes, so that one
    run's background work does not land in the next one's time."""
    btrfsutil.sync(root.store)
    deadline = time.monotonic() + timeout
    while btrfsutil.deleted_subvolumes(root.store) and time.monotonic() < deadline:
        time.sleep(0.01)


def reset(root: Root) -> None:
    """Back to snapshots 1..count with snapshot 1 the default: delete what a run added."""
    btrfsutil.set_default_subvolume(root.store, root.base_id)
    for name in os.listdir(root.path / ".snapshots"):
        if name.isdigit() and int(name) > root.count:
            directory = root.path / ".snapshots" / name
            snapshot = str(directory / "snapshot")
            if btrfsutil.is_subvolume(snapshot):
                # Its /etc and the sync point are subvolumes nested in it (issue 11): they are
                # unlinked from it, which needs it writable.
                if btrfsutil.get_subvolume_read_only(snapshot):
                    btrfsutil.set_subvolume_read_only(snapshot, False)
                btrfsutil.delete_subvolume(snapshot, recursive=True)
            shutil.rmtree(directory)
    settle(root)


# ---- measuring -----------------------------------------------------------------------------------

def timed(argv: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system of the process and the children it waited for)
    of a whole process, in milliseconds; its output is discarded. Both because the machine may
    be shared: CPU time shows what the process itself costs when the wall clock is crowded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=PY.env)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {result.returncode}: "
                         f"{result.stderr.decode(errors='replace').strip()}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


Measure = Callable[[], tuple[float, float]]


@dataclass
class Case:
    name: str
    run: Measure
    samples: list[float] = field(default_factory=list)  # wall, ms
    cpu: list[float] = field(default_factory=list)  # user + system, ms

    def measure(self) -> None:
        wall, cpu = self.run()
        self.samples.append(wall)
        self.cpu.append(cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def transaction(root: Root) -> Measure:
    def run() -> tuple[float, float]:
        try:
            return timed(PY.amber("--root", str(root.path), "run", "--", "true"))
        finally:
            reset(root)
    return run


def floor_noop(root: Root) -> Measure:
    def run() -> tuple[float, float]:
        try:
            return timed(PY.python(str(FLOOR), "noop", str(root.path), "1",
                                   str(root.count + 1)))
        finally:
            reset(root)
    return run


def plain(argv: list[str]) -> Measure:
    return lambda: timed(argv)


def interleaved(cases: list[Case], runs: int, warmup: int, seed: int) -> None:
    order = random.Random(seed)
    for i in range(warmup + runs):
        shuffled = list(cases)
        order.shuffle(shuffled)
        for case in shuffled:
            if i >= warmup:
                case.measure()
            else:
                case.run()


@dataclass
class Row:
    what: str
    amber: Case
    reference: Case | None
    target: str
    limit: float | None  # the ratio not to exceed, or None
    seconds_limit: float | None = None  # an absolute limit on amber's time, in seconds

    @property
    def ratio(self) -> float | None:
        return self.amber.median / self.reference.median if self.reference else None

    @property
    def cpu_ratio(self) -> float | None:
        return self.amber.cpu_median / self.reference.cpu_median if self.reference else None

    @property
    def verdict(self) -> str:
        if self.seconds_limit is not None:
            return "PASS" if self.amber.median / 1000 < self.seconds_limit else "MISS"
        if self.limit is not None and self.ratio is not None:
            return "PASS" if self.ratio <= self.limit else "MISS"
        return "-"

    def as_json(self) -> dict[str, Any]:
        ref = self.reference
        return {"what": self.what, "amber_ms": round(self.amber.median, 2),
                "amber_samples_ms": [round(s, 2) for s in self.amber.samples],
                "amber_cpu_ms": round(self.amber.cpu_median, 2),
                "reference": ref.name if ref else None,
                "reference_ms": round(ref.median, 2) if ref else None,
                "reference_samples_ms": [round(s, 2) for s in ref.samples] if ref else None,
                "reference_cpu_ms": round(ref.cpu_median, 2) if ref else None,
                "ratio": round(self.ratio, 3) if self.ratio is not None else None,
                "cpu_ratio": round(self.cpu_ratio, 3) if self.cpu_ratio is not None else None,
                "target": self.target, "verdict": self.verdict}


def table(header: tuple[str, ...], lines: list[tuple[str, ...]], right: set[int]) -> str:
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                     for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
           for line in [header, *lines]]
    out.insert(1, "-" * max(len(line) for line in out))
    return "\n".join(out)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}×" if value is not None else "-"


def render(rows: list[Row]) -> str:
    """The wall-clock table the targets are judged on, then the same in CPU time."""
    wall = table(
        ("what", "amber (ms)", "reference (ms)", "reference", "ratio", "target", ""),
        [(r.what, f"{r.amber.median:.1f}", f"{r.reference.median:.1f}" if r.reference else "-",
          r.reference.name if r.reference else "-", _ratio(r.ratio), r.target, r.verdict)
         for r in rows],
        {1, 2, 4})
    cpu = table(
        ("CPU time (user+sys)", "amber (ms)", "reference (ms)", "ratio"),
        [(r.what, f"{r.amber.cpu_median:.1f}",
          f"{r.reference.cpu_median:.1f}" if r.reference else "-", _ratio(r.cpu_ratio))
         for r in rows],
        {1, 2, 3})
    return f"{wall}\n\n{cpu}"


# ---- the benchmark -------------------------------------------------------------------------------

def cleanup_cases(large: Root, runs: int) -> tuple[Case, Case]:
    """`amber cleanup --keep 10` of 1,000 snapshots against the bare deletion of the same ones;
    the deleted snapshots are made again before each run."""
    doomed = range(2, LARGE - KEEP + 1)  # keeps 1 (booted, default) and the newest 10
    amber = Case("amber cleanup", plain(PY.amber("--root", str(large.path), "cleanup",
                                           "--keep", str(KEEP))))
    bare = Case("btrfsutil delete", plain(PY.python(str(FLOOR), "delete", str(large.path),
                                             str(doomed[0]), str(doomed[-1]))))
    for i in range(runs):
        for case in (amber, bare) if i % 2 == 0 else (bare, amber):
            missing = [n for n in doomed if not large.snapshot(n).exists()]
            if missing:
                fill(large, range(missing[0], missing[-1] + 1))
            case.measure()
            left = sorted(int(n) for n in os.listdir(large.path / ".snapshots") if n.isdigit())
            if left != [1, *range(LARGE - KEEP + 1, LARGE + 1)]:
                raise BenchError(f"{case.name} left snapshots {left[:5]}… ({len(left)})")
            settle(large, timeout=120)
    return amber, bare


def snapper_list(root: Root) -> Case | None:
    """snapper's own listing of the same snapshots (its config written into the root's /etc),
    if snapper is installed."""
    if shutil.which("snapper") is None:
        say("snapper is not installed: no row against snapper's list")
        return None
    config = root.path / "etc/snapper/configs/root"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('SUBVOLUME="/"\nFSTYPE="btrfs"\n')
    version = _run(["snapper", "--version"]).split()[1]
    return Case(f"snapper {version} list", plain(["snapper", "--no-dbus", "--root",
                                                   str(root.path), "-c", "root", "--jsonout",
                                                   "list"]))


def bench(runs: int, warmup: int, cleanup_runs: int, seed: int, where: Path) -> list[Row]:
    for tool in ("btrfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    if PY.site and not AMBER.is_file():
        raise BenchError(f"no amber console script next to the interpreter: {AMBER}")
    pristine = _pristine_image()
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="amber-bench-", dir=where))
        stack.callback(shutil.rmtree, workdir, True)
        PY.setup(workdir)
        say(f"Python processes: {PY.describe()}")
        say(f"system roots from {pristine} in {workdir}")
        small = attach_root(stack, pristine, workdir, "small")
        large = attach_root(stack, pristine, workdir, "large")
        start = time.perf_counter()
        fill(small, range(2, SMALL + 1))
        fill(large, range(2, LARGE + 1))
        say(f"made {SMALL - 1 + LARGE - 1} snapshots in {time.perf_counter() - start:.1f} s")

        floor = Case("floor", floor_noop(small))
        floor_large = Case(f"floor, {LARGE}", floor_noop(large))
        run_small = Case(f"amber run, {SMALL}", transaction(small))
        run_large = Case(f"amber run, {LARGE}", transaction(large))
        status = Case("amber status", plain(PY.amber("--root", str(small.path), "status")))
        imp = Case("import btrfsutil", plain(PY.imports("btrfsutil")))
        imp_argparse = Case("import argparse", plain(PY.imports("argparse")))
        imp_dataclasses = Case("import dataclasses", plain(PY.imports("dataclasses")))
        imp_style = Case("the style's standard library", plain(PY.imports(STYLE_MODULES)))
        listing = Case("amber snapshots", plain(PY.amber("--root", str(large.path),
                                                   "snapshots", "--json")))
        subvols = Case("btrfs subvolume list", plain(["btrfs", "subvolume", "list",
                                                      str(large.path)]))
        snapper = snapper_list(large)
        say(f"measuring: {warmup} warm-up and {runs} timed rounds")
        cases = [floor, floor_large, run_small, run_large, status, imp, imp_argparse,
                 imp_dataclasses, imp_style, listing, subvols, *([snapper] if snapper else [])]
        interleaved(cases, runs, warmup, seed)
        say(f"measuring cleanup of {LARGE} snapshots, {cleanup_runs} round(s)")
        clean, delete = cleanup_cases(large, cleanup_runs)
        return [
            Row(f"no-op transaction ({SMALL} snapshots) vs floor", run_small, floor, "≤ 1.5×",
                1.5),
            Row(f"no-op transaction, {LARGE} vs {SMALL} snapshots", run_large, run_small,
                "≤ 1.2×", 1.2),
            Row(f"floor (btrfs alone), {LARGE} vs {SMALL} snapshots", floor_large, floor, "-",
                None),
            # btrfs's own snapshot cost grows with the number of subvolumes; what amber adds
            # on top of it at 1,000 snapshots is this row.
            Row(f"no-op transaction ({LARGE} snapshots) vs floor ({LARGE})", run_large,
                floor_large, "≤ 1.2×", 1.2),
            Row(f"snapshots --json ({LARGE}) vs btrfs subvolume list", listing, subvols, "-",
                None),
            *([Row(f"snapshots --json ({LARGE}) vs snapper --jsonout list", listing, snapper,
                   "≤ 0.7×", 0.7)] if snapper else []),
            Row(f"cleanup --keep {KEEP} of {LARGE} (s: {clean.median / 1000:.2f})", clean,
                delete, "< 1 s", None, seconds_limit=1.0),
            Row("status start-up vs import btrfsutil", status, imp, "≤ 2×", 2.0),
            # What the status target is up against: the CLI's parser alone, the frozen
            # dataclasses the style asks for alone, then every standard-library module the
            # project's style brings (see STYLE_MODULES).
            Row("import argparse vs import btrfsutil", imp_argparse, imp, "-", None),
            Row("import dataclasses vs import btrfsutil", imp_dataclasses, imp, "-", None),
            Row("the style's standard library vs import btrfsutil", imp_style, imp, "-", None),
            Row("status start-up vs the style's standard library", status, imp_style, "-",
                None),
        ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=11, help="timed runs of each (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--cleanup-runs", type=int, default=2,
                        help="runs of the cleanup measurement (each remakes 989 snapshots)")
    parser.add_argument("--site", action="store_true",
                        help="start the Python processes as on this host (amber's console "
                             "script, site hooks included) instead of the clean default, "
                             "python3 -I -S with sys.path given explicitly")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run order")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--dir", type=Path, default=Path(DEFAULT_DIR),
                        help="where the images go (default: %(default)s; a tmpfs keeps disk "
                             "flush latency out of the figures, a disk directory shows it)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 1 or args.cleanup_runs < 1:
        parser.error("--runs, --warmup and --cleanup-runs must be at least 1")
    PY.site = args.site
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, mounts, btrfs ioctls)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        rows = bench(args.runs, args.warmup, args.cleanup_runs, args.seed, args.dir)
    except KeyboardInterrupt:
        print("bench: interrupted; everything was released", file=sys.stderr)
        return 130
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "machine": platform.machine(),
                          "cpus": os.cpu_count(), "runs": args.runs, "dir": str(args.dir),
                          "python_processes": PY.describe(), "site": args.site,
                          "load": os.getloadavg()[0],
                          "rows": [r.as_json() for r in rows]}, indent=2))
    else:
        print(f"amber core benchmark: median of {args.runs} runs "
              f"(cleanup: {args.cleanup_runs}), Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, images in {args.dir}"
              f", load {os.getloadavg()[0]:.1f}\nPython processes: {PY.describe()}")
        print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
