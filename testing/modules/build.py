"""Build amber's own test kernel modules, and make signed, broken and compressed copies of them.

The modules (C sources next to this file):
- amber_lp_v1, amber_lp_v2: cumulative live patches with atomic replace; /proc/cmdline ends in
  "amber-livepatch-v1" or "amber-livepatch-v2" while they are active;
- amber_lp_stall: a live patch of pause(2) whose transition stalls while a task sleeps in
  pause() (up to the kernel's fake signal, about 15 s later);
- amber_plain: an ordinary module, not a live patch.

They are built with kbuild against /usr/src/linux-headers-<release> (installed with apt when
missing) into a folder named after a hash of the inputs, so repeated runs reuse the build.
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import struct
import tempfile
from pathlib import Path

from amber.run import run
from testing.filelock import locked

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("Makefile", "amber_lp_common.h", "amber_lp_v1.c", "amber_lp_v2.c", "amber_lp_stall.c",
           "amber_plain.c")
MODULES = ("amber_lp_v1", "amber_lp_v2", "amber_lp_stall", "amber_plain")
SIGNATURE_MARKER = b"~Module signature appended~\n"
PKEY_ID_PKCS7 = 2


def headers_dir(kernel_release: str) -> Path:
    path = Path("/usr/src") / f"linux-headers-{kernel_release}"
    if not (path / "Makefile").exists():
        run(["apt-get", "install", "-y", "--no-install-recommends",
             f"linux-headers-{kernel_release}"])
    return path


def _compiler(headers: Path) -> str:
    """The gcc the kernel was built with (kbuild refuses plugins built by another one)."""
    config = (headers / ".config").read_text(errors="replace")
    for line in config.splitlines():
        if line.startswith("CONFIG_CC_VERSION_TEXT="):
            major = line.split("gcc-")[1].split()[0] if "gcc-" in line else ""
            if major and shutil.which(f"gcc-{major}"):
                return f"gcc-{major}"
    return "gcc"


def _inputs_key(kernel_release: str) -> str:
    digest = hashlib.sha256(kernel_release.encode())
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def build_modules(kernel_release: str, out_dir: Path) -> dict[str, Path]:
    """Build the test modules for kernel_release; returns {module name: .ko path}."""
    out_dir = out_dir.resolve()
    target = out_dir / f"{kernel_release}-{_inputs_key(kernel_release)}"
    result = {name: target / f"{name}.ko" for name in MODULES}
    with locked(out_dir / ".build.lock"):
        if not all(path.exists() for path in result.values()):
            _build_into(target, kernel_release, out_dir)
    return result


def _build_into(target: Path, kernel_release: str, out_dir: Path) -> None:
    headers = headers_dir(kernel_release)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        build = Path(tmp)
        for name in SOURCES:
            shutil.copy2(SOURCE_DIR / name, build / name)
        run(["make", "-s", "-C", headers, f"M={build}", f"CC={_compiler(headers)}", "modules"],
            capture=True)
        staging = out_dir / f".{target.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in MODULES:
            shutil.copy2(build / f"{name}.ko", staging / f"{name}.ko")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


# ---- signing --------------------------------------------------------------------------------

def make_signing_key(directory: Path,
                     common_name: str = "amber test signing key") -> tuple[Path, Path]:
    """A fresh RSA key and self-signed certificate fit for module signing: (key.pem, cert.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "signing_key.pem", directory / "signing_cert.pem"
    run(["openssl", "req", "-new", "-nodes", "-x509", "-utf8", "-sha256", "-days", "36500",
         "-newkey", "rsa:2048", "-keyout", key, "-out", cert, "-outform", "PEM",
         "-subj", f"/O=amber tests/CN={common_name}",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-addext", "keyUsage=digitalSignature",
         "-addext", "subjectKeyIdentifier=hash",
         "-addext", "extendedKeyUsage=codeSigning"], capture=True)
    return key, cert


def signature_trailer(signature: bytes) -> bytes:
    """struct module_signature (PKCS#7: only id_type and sig_len set) and the marker."""
    return struct.pack(">5B3xI", 0, 0, PKEY_ID_PKCS7, 0, 0, len(signature)) + SIGNATURE_MARKER


def sign(module: Path, key: Path, cert: Path, dest: Path, hash_algorithm: str = "sha256") -> Path:
    """Copy module to dest with a detached PKCS#7 signature appended, as kbuild's sign-file does."""
    with tempfile.TemporaryDirectory() as tmp:
        signature = Path(tmp) / "signature.p7s"
        run(["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-outform", "DER",
             "-md", hash_algorithm, "-signer", cert, "-inkey", key, "-in", module,
             "-out", signature], capture=True)
        blob = signature.read_bytes()
    dest.write_bytes(module.read_bytes() + blob + signature_trailer(blob))
    return dest


# ---- broken copies ----------------------------------------------------------------------------

def truncated(module: Path, dest: Path, size: int) -> Path:
    dest.write_bytes(module.read_bytes()[:size])
    return dest


def other_release(kernel_release: str) -> str:
    """A kernel release of the same length that is not kernel_release (for vermagic edits)."""
    for i, char in enumerate(kernel_release):
        if char.isdigit():
            replacement = "9" if char != "9" else "8"
            return kernel_release[:i] + replacement + kernel_release[i + 1:]
    raise ValueError(f"no digit in kernel release {kernel_release!r}")


def with_vermagic_release(module: Path, dest: Path, old: str, new: str) -> Path:
    """A copy whose vermagic names another kernel release (same length, so the ELF stays valid)."""
    if len(old) != len(new):
        raise ValueError("the releases must have the same length")
    data = module.read_bytes()
    needle = f"vermagic={old} ".encode()
    if data.count(needle) != 1:
        raise ValueError(f"{module}: vermagic for {old} not found exactly once")
    dest.write_bytes(data.replace(needle, f"vermagic={new} ".encode()))
    return dest


def corrupted_signature(signed: Path, dest: Path) -> Path:
    """Flip one byte inside the RSA signature value (the end of the PKCS#7 blob): still parses."""
    data = bytearray(signed.read_bytes())
    data[-len(SIGNATURE_MARKER) - 12 - 20] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def tampered_content(signed: Path, dest: Path) -> Path:
    """Change a byte of the signed ELF part (in its padding-free header) so the digest differs."""
    data = bytearray(signed.read_bytes())
    data[8] ^= 0x01  # e_ident[EI_ABIVERSION]: ignored by parsers, covered by the signature
    dest.write_bytes(bytes(data))
    return dest


def garbage_trailer(module: Path, dest: Path) -> Path:
    """A signature marker whose struct claims more bytes than the file has."""
    trailer = struct.pack(">5B3xI", 0, 0, PKEY_ID_PKCS7, 0, 0, 0x7FFFFFF0) + SIGNATURE_MARKER
    dest.write_bytes(module.read_bytes() + trailer)
    return dest


# ---- compressed copies ----------------------------------------------------------------------

def compress_xz(module: Path, dest: Path) -> Path:
    # The kernel's xz decoder wants CRC32 checks, as kmod and kbuild write them.
    dest.write_bytes(lzma.compress(module.read_bytes(), check=lzma.CHECK_CRC32))
    return dest


def compress_zst(module: Path, dest: Path) -> Path:
    run(["zstd", "-q", "-f", "-o", dest, module], capture=True)
    return dest
