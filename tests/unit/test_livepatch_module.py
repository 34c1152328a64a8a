"""Parsing real module files: amber's own test modules, their signed, broken and compressed
copies, modules from Debian's kernel package that amber's tests did not make, and decompression
bombs."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.config import DEFAULT_MAX_MODULE_SIZE
from amber.livepatch import module, signature
from amber.log import AmberError, ExitCode
from testing.modules import build
from tests.support import bombs
from tests.support.modules import Modules, SigningKey

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def modinfo(path: Path, field: str) -> list[str]:
    """What kmod's modinfo says, as the independent reference."""
    result = subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True,
                            check=True)
    return [line.strip() for line in result.stdout.splitlines()]


def cert_serial(cert: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(cert)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split("=", 1)[1]


def expect_bad(path: Path, words: str) -> AmberError:
    with pytest.raises(AmberError) as caught:
        module.read(path)
    assert caught.value.code == ExitCode.BAD_MODULE
    assert str(path) in caught.value.message
    assert words in caught.value.message
    return caught.value


def test_livepatch_modules(modules: Modules) -> None:
    for path, name in ((modules.v1, "amber_lp_v1"), (modules.v2, "amber_lp_v2")):
        info = module.read(path)
        assert info.name == name
        assert info.livepatch
        assert info.kernel_release == modules.release
        assert info.vermagic == modinfo(path, "vermagic")[0] + " "
        assert info.srcversion == modinfo(path, "srcversion")[0]
        assert info.license == "GPL"
        assert info.signature is None
        assert module.incompatibility(info, modules.release) is None
    assert module.read(modules.v1).srcversion != module.read(modules.v2).srcversion


def test_plain_module_and_repeated_keys(modules: Modules) -> None:
    info = module.read(modules.plain)
    assert info.name == "amber_plain"
    assert not info.livepatch
    assert info.depends == ()
    assert sorted(info.values("amber_extra")) == sorted(modinfo(modules.plain, "amber_extra"))
    assert sorted(info.extra()["amber_extra"]) == ["first", "second"]
    assert "name" not in info.extra()


def test_name_from_file_name_when_modinfo_has_none() -> None:
    assert module.module_name_from_path(Path("/x/livepatch-2-2_1.ko.zst")) == "livepatch_2_2_1"


def test_compressed_copies_parse_the_same(modules: Modules, tmp_path: Path) -> None:
    plain = module.read(modules.v1)
    xz = module.read(build.compress_xz(modules.v1, tmp_path / "v1.ko.xz"))
    zst = module.read(build.compress_zst(modules.v1, tmp_path / "v1.ko.zst"))
    assert (xz.compression, zst.compression) == ("xz", "zst")
    for info in (xz, zst):
        assert (info.name, info.vermagic, info.srcversion) == (
            plain.name, plain.vermagic, plain.srcversion)


@pytest.mark.parametrize("hash_algorithm", ["sha256", "sha512"])
def test_signature_fields(modules: Modules, signing_key: SigningKey, tmp_path: Path,
                          hash_algorithm: str) -> None:
    signed = build.sign(modules.v1, signing_key.key, signing_key.cert, tmp_path / "v1.ko",
                        hash_algorithm)
    info = module.read(signed)
    assert info.signature is not None
    assert info.signature.signer == "amber test signing key" == modinfo(signed, "signer")[0]
    assert info.signature.hash == hash_algorithm == modinfo(signed, "sig_hashalgo")[0]
    assert info.signature.key_id.replace(":", "").lstrip("0") == cert_serial(
        signing_key.cert).lstrip("0")
    assert info.signature.key_id == modinfo(signed, "sig_key")[0]
    assert info.signed_length == modules.v1.stat().st_size


def test_verdicts(modules: Modules, signing_key: SigningKey, other_key: SigningKey,
                  tmp_path: Path) -> None:
    trusted = signature.load_trusted(signing_key.trusted)
    strangers = signature.load_trusted(other_key.trusted)
    signed = build.sign(modules.v1, signing_key.key, signing_key.cert, tmp_path / "s.ko")
    corrupted = build.corrupted_signature(signed, tmp_path / "corrupted.ko")
    tampered = build.tampered_content(signed, tmp_path / "tampered.ko")
    xz = build.compress_xz(signed, tmp_path / "s.ko.xz")
    zst = build.compress_zst(signed, tmp_path / "s.ko.zst")

    def verdict(path: Path, certs: list[signature.Certificate]) -> str:
        return str(signature.verdict(module.read(path), certs))

    assert verdict(modules.v1, trusted) == "unsigned"
    assert verdict(signed, trusted) == "trusted"
    assert verdict(xz, trusted) == "trusted"
    assert verdict(zst, trusted) == "trusted"
    assert verdict(signed, strangers) == "untrusted"
    assert verdict(signed, []) == "untrusted"
    assert verdict(corrupted, trusted) == "invalid"
    assert verdict(tampered, trusted) == "invalid"


def test_der_certificates_are_trusted_too(modules: Modules, signing_key: SigningKey,
                                          tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    subprocess.run(["openssl", "x509", "-in", str(signing_key.cert), "-outform", "DER",
                    "-out", str(folder / "key.der")], check=True)
    signed = build.sign(modules.v2, signing_key.key, signing_key.cert, tmp_path / "s.ko")
    assert signature.verdict(module.read(signed), signature.load_trusted(folder)) == "trusted"


def test_private_key_in_trusted_folder_is_an_error(signing_key: SigningKey,
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "key.pem").write_bytes(signing_key.key.read_bytes())
    with pytest.raises(AmberError) as caught:
        signature.load_trusted(folder)
    assert caught.value.code == ExitCode.CONFIG
    assert "key.pem" in caught.value.message


def test_other_release(modules: Modules, tmp_path: Path) -> None:
    other = build.other_release(modules.release)
    copy = build.with_vermagic_release(modules.v1, tmp_path / "v1.ko", modules.release, other)
    info = module.read(copy)
    assert info.kernel_release == other
    reason = module.incompatibility(info, modules.release)
    assert reason is not None and other in reason and modules.release in reason


def test_broken_files(modules: Modules, signing_key: SigningKey, tmp_path: Path) -> None:
    size = modules.v1.stat().st_size
    expect_bad(build.truncated(modules.v1, tmp_path / "t10.ko", 10), "truncated ELF header")
    expect_bad(build.truncated(modules.v1, tmp_path / "t.ko", size // 2), "truncated")
    expect_bad(build.garbage_trailer(modules.v1, tmp_path / "g.ko"), "signature length")
    not_elf = tmp_path / "text.ko"
    not_elf.write_text("hello\n" * 20)
    expect_bad(not_elf, "not an ELF file")
    wrong_name = tmp_path / "plain.ko.xz"
    wrong_name.write_bytes(modules.v1.read_bytes())
    expect_bad(wrong_name, "not xz-compressed")
    cut = tmp_path / "cut.ko.xz"
    cut.write_bytes(build.compress_xz(modules.v1, tmp_path / "full.ko.xz").read_bytes()[:500])
    expect_bad(cut, "xz")
    zst = build.compress_zst(modules.v1, tmp_path / "full.ko.zst").read_bytes()
    (tmp_path / "cut.ko.zst").write_bytes(zst[:200])
    expect_bad(tmp_path / "cut.ko.zst", "zstd")
    signed = build.sign(modules.v1, signing_key.key, signing_key.cert, tmp_path / "s.ko")
    data = bytearray(signed.read_bytes())
    data[size] = 0x05  # the PKCS#7 blob no longer starts with a SEQUENCE
    (tmp_path / "badsig.ko").write_bytes(bytes(data))
    expect_bad(tmp_path / "badsig.ko", "PKCS#7")


def test_elf_without_modinfo(tmp_path: Path) -> None:
    source = tmp_path / "x.c"
    source.write_text("int amber_answer(void) { return 42; }\n")
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / "x.ko"), str(source)], check=True)
    expect_bad(tmp_path / "x.ko", "no .modinfo")


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(AmberError) as caught:
        module.read(tmp_path / "nope.ko")
    assert caught.value.code == ExitCode.NOT_FOUND


def test_debian_modules_match_modinfo_and_are_untrusted(debian_modules: Path,
                                                        signing_key: SigningKey) -> None:
    files = sorted(debian_modules.rglob("*.ko*"))
    assert len(files) > 100
    trusted = signature.load_trusted(signing_key.trusted)
    for path in random.Random(4).sample(files, 12):
        info = module.read(path)
        assert info.name == modinfo(path, "name")[0]
        assert info.vermagic.strip() == modinfo(path, "vermagic")[0]
        assert info.depends == tuple(d for d in modinfo(path, "depends")[0].split(",") if d)
        assert info.signature is not None
        assert info.signature.signer == modinfo(path, "signer")[0]
        assert info.signature.key_id == modinfo(path, "sig_key")[0]
        assert signature.verdict(info, trusted) == "untrusted"


# ---- decompression bombs and endless files --------------------------------------------------

TOO_LARGE = "decompresses to more than 64 MiB; the largest real module is a few MiB"

# Reads one file in a fresh interpreter: how long it took, the peak of the memory it allocated
# for that (tracemalloc sees the decompressors' buffers too, they allocate through Python), the
# peak resident size of its children (the zstd program), and what the reader said.
MEASURE = """
import json, resource, sys, time, tracemalloc
from pathlib import Path
from amber.livepatch import module
from amber.log import AmberError

tracemalloc.start()
start = time.monotonic()
try:
    module.read(Path(sys.argv[1]))
    code, message = 0, ""
except AmberError as e:
    code, message = int(e.code), e.message
print(json.dumps({"seconds": time.monotonic() - start, "code": code, "message": message,
                  "peak": tracemalloc.get_traced_memory()[1],
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def measure(path: Path, tmpdir: Path) -> dict[str, object]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmpdir)}
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                            text=True, env=environment, check=True)
    measured: dict[str, object] = json.loads(result.stdout)
    return measured


def amber_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "amber.cli", "--root", str(root), *args],
                          capture_output=True, text=True, env=environment)


@pytest.fixture(scope="module")
def bomb_files(modules: Modules, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every shape, the module and then a GiB of zeros: each file is at most 1.2 MB."""
    folder = tmp_path_factory.mktemp("bombs")
    image = modules.v1.read_bytes()
    files = {}
    for name, (suffix, make) in bombs.BOMBS.items():
        files[name] = folder / f"{name}.ko.{suffix}"
        files[name].write_bytes(make(image, bombs.GIB))
    return files


@pytest.mark.parametrize("name", bombs.BOMBS)
def test_bomb_shapes_are_valid_files(modules: Modules, tmp_path: Path, name: str) -> None:
    """With one piece of zeros a bomb is a module amber reads, and the real tool checks it."""
    suffix, make = bombs.BOMBS[name]
    small = make(modules.v1.read_bytes(), 1)
    subprocess.run(bombs.TESTERS[suffix], input=small, check=True)
    path = tmp_path / f"small.ko.{suffix}"
    path.write_bytes(small)
    info = module.read(path)
    assert (info.name, info.compression) == ("amber_lp_v1", suffix)
    assert info.signed_length == bombs.size(modules.v1.read_bytes(), 1)


@pytest.mark.parametrize("name", bombs.BOMBS)
def test_bomb_is_refused_in_bounded_memory_and_time(bomb_files: dict[str, Path],
                                                    tmp_path: Path, name: str) -> None:
    path = bomb_files[name]
    assert path.stat().st_size < 2 * MiB
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    measured = measure(path, tmpdir)
    assert measured["code"] == ExitCode.BAD_MODULE
    assert measured["message"] == f"{path}: {TOO_LARGE}"
    assert isinstance(measured["seconds"], float) and measured["seconds"] < 5
    assert isinstance(measured["peak"], int) and measured["peak"] < 200 * MiB
    assert isinstance(measured["children"], int) and measured["children"] < 200 * MiB
    assert list(tmpdir.iterdir()) == []  # nothing was decompressed to a temporary file


def test_inspect_of_a_bomb_is_one_line(bomb_files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("gz-one-member", "xz-one-stream", "zst-one-frame"):
        path = bomb_files[name]
        result = amber_cli(tmp_path, "livepatch", "inspect", str(path))
        assert result.returncode == 20 == ExitCode.BAD_MODULE.value
        assert result.stdout == ""
        error, hint = result.stderr.splitlines()
        assert error == f"error: {path}: {TOO_LARGE}"
        assert hint.strip().startswith("hint:") and "max_module_size" in hint


def test_configured_limit(modules: Modules, tmp_path: Path) -> None:
    image = modules.v1.read_bytes()
    four_mib_more = tmp_path / "padded.ko.gz"
    four_mib_more.write_bytes(bombs.gz_many_members(image, 1))
    strict = tmp_path / "strict"
    (strict / "etc/amber").mkdir(parents=True)
    (strict / "etc/amber/amber.conf").write_text('[livepatch]\nmax_module_size = "2M"\n')
    result = amber_cli(strict, "livepatch", "inspect", str(four_mib_more))
    assert result.returncode == ExitCode.BAD_MODULE
    assert "decompresses to more than 2 MiB" in result.stderr
    assert amber_cli(tmp_path, "livepatch", "inspect", str(four_mib_more)).returncode == 0
    (strict / "etc/amber/amber.conf").write_text('[livepatch]\nmax_module_size = "lots"\n')
    result = amber_cli(strict, "livepatch", "inspect", str(four_mib_more))
    assert result.returncode == ExitCode.CONFIG
    assert "max_module_size" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".zst"])
def test_the_limit_is_exact(modules: Modules, suffix: str) -> None:
    image = modules.v1.read_bytes()
    data = {"": image, ".gz": gzip.compress(image), ".xz": lzma.compress(image),
            ".zst": bombs.zstd(image)}[suffix]
    path = Path(f"exact.ko{suffix}")
    assert module.parse(data, path, len(image)).signed_length == len(image)
    with pytest.raises(AmberError) as caught:
        module.parse(data, path, len(image) - 1)
    assert caught.value.code == ExitCode.BAD_MODULE
    verb = "decompresses to more than" if suffix else "is larger than"
    assert f"{verb} {module.format_size(len(image) - 1)};" in caught.value.message


@pytest.mark.parametrize(("target", "kind"), [("/dev/zero", "a character device"),
                                              ("/dev/urandom", "a character device"),
                                              ("fifo", "a pipe")])
@pytest.mark.parametrize("name", ["endless.ko", "endless.ko.gz", "endless.ko.zst"])
def test_what_is_no_regular_file_is_not_read(tmp_path: Path, target: str, kind: str,
                                             name: str) -> None:
    if target == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    (tmp_path / name).symlink_to(target)
    script = ("import sys\nfrom pathlib import Path\nfrom amber.livepatch import module\n"
              "module.read(Path(sys.argv[1]))\n")
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # in a child, so that a reader that blocks or reads forever fails the test instead of
    # hanging it
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], timeout=20,
                            capture_output=True, text=True, env=environment)
    assert f"{tmp_path / name}: is not a regular file but {kind}" in result.stderr
    expect_bad(tmp_path / name, f"is not a regular file but {kind}")


def test_a_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.ko").mkdir()
    expect_bad(tmp_path / "folder.ko", "is a directory")


def test_huge_sparse_file(tmp_path: Path) -> None:
    huge = tmp_path / "huge.ko"
    with huge.open("wb") as file:
        file.truncate(8 << 30)
    expect_bad(huge, "is larger than 64 MiB")


def test_xz_dictionary_larger_than_allowed(modules: Modules) -> None:
    """The xz decoder may use the limit plus 16 MiB; a 32 MiB dictionary needs more than a
    1 MiB limit allows, and fits the default."""
    image = modules.v1.read_bytes()
    data = lzma.compress(image, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0,
                                          "dict_size": 32 << 20}])
    assert module.parse(data, Path("d.ko.xz")).name == "amber_lp_v1"
    with pytest.raises(AmberError) as caught:
        module.parse(data, Path("d.ko.xz"), 1 * MiB)
    assert "needs more memory to decompress than 17 MiB" in caught.value.message


def test_garbage_after_the_compressed_data(modules: Modules) -> None:
    image = modules.v1.read_bytes()
    for suffix, data in ((".gz", gzip.compress(image)), (".xz", lzma.compress(image))):
        with pytest.raises(AmberError) as caught:
            module.parse(data + b"junk", Path(f"j.ko{suffix}"))
        assert "bytes after the end" in caught.value.message
    with pytest.raises(AmberError) as caught:
        module.parse(bombs.zstd(image) + b"junk", Path("j.ko.zst"))
    assert "bad zstd data" in caught.value.message


# ---- property tests: nothing but amber's own error leaves the parser -----------------------

def _only_bad_module(data: bytes, name: str, limit: int = DEFAULT_MAX_MODULE_SIZE) -> None:
    try:
        module.parse(data, Path(name), limit)
    except AmberError as e:
        assert e.code == ExitCode.BAD_MODULE, e.message
        assert name in e.message


MAGICS = [b"", module.GZIP_MAGIC, module.XZ_MAGIC, module.ZSTD_MAGIC]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MAGICS), st.binary(max_size=4096),
       st.sampled_from(["a.ko", "a.ko.xz", "a.ko.gz", "a.ko.zst"]))
def test_random_bytes(magic: bytes, data: bytes, name: str) -> None:
    _only_bad_module(magic + data, name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_modules(modules: Modules, signing_key: SigningKey, tmp_path_factory:
                              pytest.TempPathFactory, data: st.DataObject) -> None:
    signed_path = tmp_path_factory.getbasetemp() / "mutation-base.ko"
    if not signed_path.exists():
        build.sign(modules.v1, signing_key.key, signing_key.cert, signed_path)
    _only_bad_module(mutate(signed_path.read_bytes(), data), "mutated.ko")


def mutate(original: bytes, data: st.DataObject) -> bytes:
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    return bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob)


@pytest.fixture(scope="module")
def compressed(modules: Modules) -> list[tuple[str, bytes]]:
    """A module in each compression format, plainly and in every bomb shape (a little one)."""
    image = modules.v1.read_bytes()
    files = [("gz", gzip.compress(image)), ("xz", lzma.compress(image)),
             ("zst", bombs.zstd(image))]
    return files + [(suffix, make(image, 1)) for suffix, make in bombs.BOMBS.values()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_compressed_modules(compressed: list[tuple[str, bytes]],
                                    data: st.DataObject) -> None:
    suffix, original = data.draw(st.sampled_from(compressed))
    limit = data.draw(st.sampled_from([DEFAULT_MAX_MODULE_SIZE, 2 * MiB, 64 << 10]))
    _only_bad_module(mutate(original, data), f"mutated.ko.{suffix}", limit)
