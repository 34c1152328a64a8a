"""Module files out of live patch packages: only the modules reach the disk, and a package that
unpacks to more than max_module_size (a bomb) is refused in bounded time and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.livepatch import payload, sources
from amber.log import AmberError, ExitCode
from testing.livepatch_packages import build_livepatch_deb, build_livepatch_rpm
from tests.support import bombs
from tests.support.modules import Modules

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20

# sources.resolve() of one package in a fresh interpreter: time, peak of allocated memory,
# peak resident size of the children (dpkg-deb and its decompressor), what it said.
MEASURE = """
import json, resource, sys, time, tracemalloc
from pathlib import Path
from amber.livepatch import sources
from amber.log import AmberError

tracemalloc.start()
start = time.monotonic()
try:
    sources.resolve(Path("/"), sys.argv[1], Path(sys.argv[2]))
    code, message = 0, ""
except AmberError as e:
    code, message = int(e.code), e.message
print(json.dumps({"seconds": time.monotonic() - start, "code": code, "message": message,
                  "peak": tracemalloc.get_traced_memory()[1],
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def module_path(modules: Modules) -> str:
    return f"lib/modules/{modules.release}/livepatch/{modules.v1.name}"


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def test_only_the_modules_are_written(modules: Modules, tmp_path: Path) -> None:
    deb = tmp_path / "small.deb"
    deb.write_bytes(bombs.deb_one_frame(modules.v1.read_bytes(), module_path(modules), 1))
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    assert "usr/share/amber-bomb/zeros" in listing  # the real tool reads the hand-made .deb
    source = sources.resolve(Path("/"), str(deb), tmp_path / "work")
    assert source.package == "amber-bomb"
    assert [m.read_bytes() for m in source.modules] == [modules.v1.read_bytes()]
    assert files_below(tmp_path / "work") == [f"unpacked-small.deb/{module_path(modules)}"]


def test_deb_bomb_is_refused_in_bounded_memory_and_time(modules: Modules,
                                                        tmp_path: Path) -> None:
    deb = tmp_path / "bomb.deb"
    deb.write_bytes(bombs.deb_one_frame(modules.v1.read_bytes(), module_path(modules),
                                        bombs.GIB))
    assert deb.stat().st_size < 2 * MiB
    work, tmpdir = tmp_path / "work", tmp_path / "tmp"
    tmpdir.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmpdir)}
    result = subprocess.run([sys.executable, "-c", MEASURE, str(deb), str(work)],
                            capture_output=True, text=True, env=environment, check=True)
    measured = json.loads(result.stdout)
    assert measured["code"] == ExitCode.BAD_MODULE
    assert measured["message"] == (f"{deb}: unpacks to more than 64 MiB; a live patch package "
                                   "holds one module of a few MiB")
    assert measured["seconds"] < 10
    assert measured["peak"] < 200 * MiB
    assert measured["children"] < 200 * MiB
    assert not work.exists() or files_below(work) == []
    assert list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("kind", ["deb", "rpm"])
def test_configured_limit_counts_the_whole_payload(modules: Modules, tmp_path: Path,
                                                   kind: str) -> None:
    large = tmp_path / "large" / modules.v1.name
    large.parent.mkdir()
    large.write_bytes(modules.v1.read_bytes() + bytes(3 * MiB))
    build = build_livepatch_deb if kind == "deb" else build_livepatch_rpm
    package = build(tmp_path, modules.release, large, "1")
    with pytest.raises(AmberError) as caught:
        sources.resolve(Path("/"), str(package), tmp_path / "work", 2 * MiB)
    assert caught.value.code == ExitCode.BAD_MODULE
    assert "unpacks to more than 2 MiB" in caught.value.message
    assert caught.value.hint is not None and "max_module_size" in caught.value.hint
    source = sources.resolve(Path("/"), str(package), tmp_path / "work2", 4 * MiB)
    assert [m.read_bytes() for m in source.modules] == [large.read_bytes()]


def test_a_file_that_is_no_package(tmp_path: Path) -> None:
    for name in ("junk.deb", "junk.rpm"):
        (tmp_path / name).write_bytes(b"not a package\n" * 100)
        with pytest.raises(AmberError) as caught:
            sources.resolve(Path("/"), str(tmp_path / name), tmp_path / f"work-{name}")
        assert caught.value.code == ExitCode.BAD_MODULE
        assert "cannot be unpacked" in caught.value.message


@pytest.mark.parametrize(("name", "expected"), [
    ("./lib/modules/6.1.0-1-amd64/livepatch/a.ko", "lib/modules/6.1.0-1-amd64/livepatch/a.ko"),
    ("/usr/lib/modules/6.4/updates/b.ko.xz", "usr/lib/modules/6.4/updates/b.ko.xz"),
    ("lib/modules/6.1/c.ko.zst", "lib/modules/6.1/c.ko.zst"),
    ("lib/modules/c.ko", None),  # not below a release
    ("./lib/modules/6.1/../../../etc/evil.ko", None),
    ("../lib/modules/6.1/evil.ko", None),
    ("usr/share/doc/a.ko", None),
    ("lib/modules/6.1/modules.dep", None),
    ("", None),
])
def test_module_paths(name: str, expected: str | None) -> None:
    found = payload.module_path(name)
    assert (str(found) if found else None) == expected


# ---- property tests: a damaged payload is a BadPayload, nothing else ---------------------------

@pytest.fixture(scope="module")
def payloads(modules: Modules, tmp_path_factory: pytest.TempPathFactory) -> list[
        tuple[str, bytes]]:
    folder = tmp_path_factory.mktemp("payloads")
    deb = build_livepatch_deb(folder, modules.release, modules.v1, "1")
    rpm = build_livepatch_rpm(folder, modules.release, modules.v1, "1")
    return [("deb", payload.payload(deb, "deb", 64 * MiB)),
            ("rpm", payload.payload(rpm, "rpm", 64 * MiB))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_payloads(payloads: list[tuple[str, bytes]], data: st.DataObject) -> None:
    kind, original = data.draw(st.sampled_from(payloads))
    blob = bytearray(original)
    # the headers are where the damage matters: near the start, mostly
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, min(len(blob) - 1, 4096)) | st.integers(
            0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    mutated = bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob)
    members = payload.tar_files(mutated) if kind == "deb" else payload.cpio_files(mutated)
    try:
        for name, contents in members:
            assert isinstance(name, str) and isinstance(contents, bytes)
    except payload.BadPayload:
        pass
