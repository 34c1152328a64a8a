"""`amber livepatch ...` as a user runs it: a separate process, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from amber.log import ExitCode
from testing.modules import build
from tests.support.modules import Modules, SigningKey

REPO = Path(__file__).resolve().parents[2]


def amber(root: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "amber.cli", "--root", str(root), *args],
                          capture_output=True, text=True, env=environment)


def amber_json(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    result = amber(root, *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def trusting_root(tmp_path: Path, key: SigningKey) -> Path:
    root = tmp_path / "root"
    keys = root / "etc/amber/keys"
    keys.mkdir(parents=True)
    (keys / "amber-test.pem").write_bytes(key.cert.read_bytes())
    return root


def test_inspect_json(modules: Modules, signing_key: SigningKey, tmp_path: Path) -> None:
    root = trusting_root(tmp_path, signing_key)
    signed = build.sign(modules.v1, signing_key.key, signing_key.cert, tmp_path / "v1.ko")
    zst = build.compress_zst(signed, tmp_path / "v1.ko.zst")
    other = build.other_release(modules.release)
    elsewhere = build.with_vermagic_release(modules.v2, tmp_path / "v2.ko", modules.release,
                                            other)
    data = amber_json(root, "livepatch", "inspect", "--json", "--kernel-release",
                      modules.release, str(zst), str(modules.plain), str(elsewhere))
    first, plain, second = data
    assert first["name"] == "amber_lp_v1"
    assert first["livepatch"] is True
    assert first["kernel_release"] == modules.release
    assert first["vermagic"].startswith(modules.release + " ")
    assert first["compatible"] is True and first["reason"] is None
    assert first["signature"]["present"] is True
    assert first["signature"]["signer"] == "amber test signing key"
    assert first["signature"]["hash"] == "sha256"
    assert first["signature"]["verdict"] == "trusted"
    assert first["signature"]["key_id"]
    assert plain["livepatch"] is False
    assert plain["signature"] == {"present": False, "signer": None, "key_id": None,
                                  "hash": None, "verdict": "unsigned"}
    assert second["compatible"] is False
    assert other in second["reason"]


def test_inspect_untrusted_without_keys(modules: Modules, signing_key: SigningKey,
                                        tmp_path: Path) -> None:
    signed = build.sign(modules.v1, signing_key.key, signing_key.cert, tmp_path / "v1.ko")
    data = amber_json(tmp_path, "livepatch", "inspect", "--json", str(signed))
    assert data[0]["signature"]["verdict"] == "untrusted"


def test_inspect_text_and_errors(modules: Modules, tmp_path: Path) -> None:
    result = amber(tmp_path, "livepatch", "inspect", str(modules.v2))
    assert result.returncode == 0
    assert "amber_lp_v2" in result.stdout and "unsigned" in result.stdout
    broken = build.truncated(modules.v1, tmp_path / "broken.ko", 1000)
    result = amber(tmp_path, "livepatch", "inspect", str(broken))
    assert result.returncode == ExitCode.BAD_MODULE
    assert result.stderr.startswith(f"error: {broken}: ")
    assert "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def fake_kernel(tmp_path: Path) -> dict[str, str]:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    patch = sys_root / "kernel/livepatch/amber_lp_v2"
    patch.mkdir(parents=True)
    (patch / "enabled").write_text("1\n")
    (patch / "transition").write_text("0\n")
    for name, refcnt in (("amber_lp_v1", 0), ("amber_lp_v2", 1)):
        (sys_root / "module" / name).mkdir(parents=True)
        (sys_root / "module" / name / "srcversion").write_text(f"SRC{name[-1]}\n")
        (sys_root / "module" / name / "taint").write_text("OEK\n")
        (sys_root / "module" / name / "refcnt").write_text(f"{refcnt}\n")
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/tainted").write_text(f"{(1 << 15) | (1 << 13)}\n")
    (proc / "modules").write_text("amber_lp_v2 16384 1 - Live 0x0 (OEK)\n"
                                  "amber_lp_v1 16384 0 - Live 0x0 (OEK)\n")
    return {"AMBER_SYSFS": str(sys_root), "AMBER_PROCFS": str(proc)}


def test_status_and_list_json(tmp_path: Path) -> None:
    env = fake_kernel(tmp_path)
    status = amber_json(tmp_path, "livepatch", "status", "--json", env=env)
    assert status["state"] == "ready"
    assert status["supported"] is True
    assert status["amber_enabled"] is False
    assert [f["letter"] for f in status["taint_flags"]] == ["E", "K"]
    listing = amber_json(tmp_path, "livepatch", "list", "--json", env=env)
    assert listing["patches"] == [{"name": "amber_lp_v2", "enabled": True, "transition": False,
                                   "srcversion": "SRC2", "refcnt": 1}]
    assert [m["name"] for m in listing["replaced"]] == ["amber_lp_v1"]
    text = amber(tmp_path, "livepatch", "list", env=env).stdout
    assert "amber_lp_v2" in text and "replaced" in text


def test_enable_disable_and_load_refused_while_disabled(modules: Modules,
                                                        tmp_path: Path) -> None:
    env = fake_kernel(tmp_path)
    result = amber(tmp_path, "livepatch", "load", str(modules.v1), env=env)
    assert result.returncode == ExitCode.LIVEPATCH_DISABLED
    assert "amber livepatch enable" in result.stderr
    assert amber(tmp_path, "livepatch", "enable").returncode == 0
    assert amber_json(tmp_path, "livepatch", "status", "--json", env=env)["amber_enabled"]
    # Enabled now: the next refusal is about the kernel release, before anything is loaded.
    result = amber(tmp_path, "livepatch", "load", str(modules.v1),
                   env={**env, "AMBER_KERNEL_RELEASE": build.other_release(modules.release)})
    assert result.returncode == ExitCode.INCOMPATIBLE
    assert "built for kernel" in result.stderr
    assert amber(tmp_path, "livepatch", "disable").returncode == 0
    assert not amber_json(tmp_path, "livepatch", "status", "--json", env=env)["amber_enabled"]


def test_load_enforce_policy_refuses_unsigned(modules: Modules, tmp_path: Path) -> None:
    env = {**fake_kernel(tmp_path), "AMBER_KERNEL_RELEASE": modules.release}
    conf = tmp_path / "etc/amber/amber.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('[livepatch]\nenabled = true\nsignature_policy = "enforce"\n')
    result = amber(tmp_path, "livepatch", "load", str(modules.v1), env=env)
    assert result.returncode == ExitCode.SIGNATURE
    assert "not signed" in result.stderr
