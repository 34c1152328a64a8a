"""The verdict on a module's signature against the certificates amber trusts.

The trusted certificates are the files in one folder (`[livepatch] trusted_keys` in amber.conf,
default /etc/amber/keys), each PEM (one or more certificates) or DER. The verdicts:

- trusted:   signed by the key of a trusted certificate, and the signature verifies;
- untrusted: signed by a key amber does not know (it cannot check such a signature, exactly as
             the kernel cannot check one whose key is not in its keyring);
- invalid:   signed by a trusted key, but the signature does not verify (changed file, wrong
             key, corrupted bytes);
- unsigned:  no signature appended.

The cryptography is done by `openssl cms -verify`; which certificate signed is decided here
from the PKCS#7 SignerInfo (issuer and serial number, or subject key identifier).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amber.livepatch.module import (
    Der,
    ModuleError,
    ModuleInfo,
    der_expect,
    der_oid,
    der_read,
    name_text,
    read_image,
)
from amber.log import AmberError, ExitCode, die
from amber.run import run

OID_SUBJECT_KEY_ID = "2.5.29.14"
PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


class Verdict(enum.StrEnum):
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    INVALID = "invalid"
    UNSIGNED = "unsigned"


@dataclass(frozen=True)
class Certificate:
    path: Path
    subject: str
    issuer: bytes  # DER Name
    serial: bytes
    subject_key_id: bytes
    der: bytes

    def pem(self) -> str:
        body = base64.encodebytes(self.der).decode()
        return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def parse_certificate(der: bytes, path: Path) -> Certificate:
    try:
        top, end = der_read(der)
        if end != len(der):
            raise ModuleError("bytes after the certificate")
        parts = der_expect(top, 0x30, "certificate").children()
        tbs = der_expect(parts[0], 0x30, "TBSCertificate").children()
        if tbs and tbs[0].tag == 0xA0:
            tbs = tbs[1:]
        serial = der_expect(tbs[0], 0x02, "serial number").value
        issuer, subject = tbs[2], tbs[4]
        return Certificate(path=path, subject=name_text(subject), issuer=issuer.raw,
                           serial=serial, subject_key_id=_subject_key_id(tbs), der=der)
    except (ModuleError, IndexError) as e:
        die(f"{path}: not a valid X.509 certificate ({e})",
            hint="the trusted keys folder holds PEM or DER certificates only",
            code=ExitCode.CONFIG)


def _subject_key_id(tbs: list[Der]) -> bytes:
    for item in tbs:
        if item.tag != 0xA3:
            continue
        for extension in der_expect(item.children()[0], 0x30, "extensions").children():
            fields = extension.children()
            if der_oid(fields[0]) == OID_SUBJECT_KEY_ID:
                inner, _ = der_read(der_expect(fields[-1], 0x04, "extension value").value)
                return der_expect(inner, 0x04, "subject key identifier").value
    return b""


def load_certificates(path: Path) -> list[Certificate]:
    try:
        data = path.read_bytes()
    except OSError as e:
        die(f"{path}: cannot read: {e.strerror}", code=ExitCode.CONFIG)
    blocks = PEM_CERTIFICATE.findall(data)
    if not blocks:
        if data.lstrip().startswith(b"-----BEGIN"):
            die(f"{path}: a PEM file without a certificate",
                hint="the trusted keys folder holds certificates only, never private keys",
                code=ExitCode.CONFIG)
        return [parse_certificate(data, path)]
    certificates = []
    for block in blocks:
        try:
            der = base64.b64decode(b"".join(block.split()), validate=True)
        except binascii.Error:
            die(f"{path}: broken base64 in a PEM certificate", code=ExitCode.CONFIG)
        certificates.append(parse_certificate(der, path))
    return certificates


def load_trusted(folder: Path) -> list[Certificate]:
    """Every certificate in folder (not recursive); a missing folder trusts nothing."""
    if not folder.is_dir():
        return []
    certificates = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            certificates.extend(load_certificates(path))
    return certificates


def signing_certificate(info: ModuleInfo, trusted: list[Certificate]) -> Certificate | None:
    signature = info.signature
    if signature is None:
        return None
    for certificate in trusted:
        if signature.subject_key_id:
            if signature.subject_key_id == certificate.subject_key_id:
                return certificate
        elif (signature.issuer == certificate.issuer
              and signature.serial.lstrip(b"\0") == certificate.serial.lstrip(b"\0")):
            return certificate
    return None


def verifies(info: ModuleInfo, certificate: Certificate) -> bool:
    """Whether the signature checks out against certificate's key (openssl does the math)."""
    assert info.signature is not None
    image = read_image(info.path, info.limit)
    with tempfile.TemporaryDirectory(prefix="amber-verify-") as tmp:
        folder = Path(tmp)
        (folder / "content").write_bytes(image[:info.signed_length])
        (folder / "signature.p7s").write_bytes(info.signature.pkcs7)
        (folder / "cert.pem").write_text(certificate.pem())
        result = run(["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                      "-in", folder / "signature.p7s", "-content", folder / "content",
                      "-certfile", folder / "cert.pem", "-nointern", "-noverify",
                      "-out", "/dev/null"], check=False, capture=True)
    return result.returncode == 0


def verdict(info: ModuleInfo, trusted: list[Certificate]) -> Verdict:
    if info.signature is None:
        return Verdict.UNSIGNED
    certificate = signing_certificate(info, trusted)
    if certificate is None:
        return Verdict.UNTRUSTED
    return Verdict.TRUSTED if verifies(info, certificate) else Verdict.INVALID


def check_policy(info: ModuleInfo, result: Verdict, policy: str) -> str | None:
    """None if the policy accepts the verdict; otherwise why not. 'warn' never refuses."""
    if policy == "off" or result == Verdict.TRUSTED:
        return None
    if result == Verdict.UNSIGNED:
        return f"{info.path}: the module is not signed"
    if result == Verdict.INVALID:
        return f"{info.path}: the signature does not verify (the file was changed or corrupted)"
    assert info.signature is not None
    return (f"{info.path}: signed by an unknown key "
            f"(signer '{info.signature.signer}', key {info.signature.key_id})")


def policy_error(message: str, keys_folder: Path) -> AmberError:
    return AmberError(message,
                      hint=f"put the signer's certificate into {keys_folder}, or set "
                           "signature_policy in [livepatch] of /etc/amber/amber.conf",
                      code=ExitCode.SIGNATURE)
