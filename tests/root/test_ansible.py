"""The amber.system collection, for real: ansible-playbook with connection: local against three
system roots on loop btrfs, driving the checkout's amber through the module's `root` option."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from testing.packages import build_deb
from tests.conftest import require
from tests.root.conftest import System, booted_like
from tests.root.helpers import dpkg_installed, numbers, status

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "ansible"

PLAY = """\
- hosts: roots
  connection: local
  gather_facts: false
  tasks:
    - name: install
      amber.system.amber:
        packages: ["{{ deb }}"]
        root: "{{ amber_root }}"
      register: outcome
      ignore_errors: true
    - name: record the result
      ansible.builtin.copy:
        content: "{{ outcome | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
      check_mode: false
"""


@pytest.fixture
def roots(pristine: Path, tmp_path: Path) -> Iterator[list[System]]:
    require(shutil.which("ansible-playbook") is not None,
            "needs ansible-core (pip install .[test])")
    with ExitStack() as stack:
        systems = []
        for i in range(3):
            place = tmp_path / f"host{i}"
            place.mkdir()
            systems.append(stack.enter_context(contextmanager(booted_like)(pristine, place)))
        yield systems


def playbook(tmp_path: Path, systems: list[System], play: str, deb: Path,
             *options: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    """Run the play (YAML, or the name of a playbook in the collection); return its exit code,
    each host's result of the amber task (when the play records it), and its output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    launcher = bin_dir / "amber"
    launcher.write_text(f"#!/bin/sh\nPYTHONPATH={REPO / 'src'} exec {sys.executable} "
                        "-m amber.cli \"$@\"\n")
    launcher.chmod(0o755)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[roots]\n" + "".join(
        f"host{i} amber_root={s.root} ansible_connection=local "
        f"ansible_python_interpreter={sys.executable}\n"
        for i, s in enumerate(systems)))
    target = play
    if "\n" in play:
        (tmp_path / "play.yml").write_text(play)
        target = str(tmp_path / "play.yml")
    out_dir = tmp_path / "results"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["ansible-playbook", "-i", str(inventory), target,
                             "-e", f"deb={deb}", "-e", f"out_dir={out_dir}", *options],
                            capture_output=True, text=True, env=env, timeout=900)
    hosts = {f.stem: json.loads(f.read_text()) for f in out_dir.glob("*.json")}
    if "\n" in play:
        assert len(hosts) == len(systems), f"{result.stdout}\n{result.stderr}"
    return result.returncode, hosts, result.stdout + result.stderr


def test_install_is_idempotent_check_mode_is_a_dry_run_and_failures_are_clean(
        roots: list[System], tmp_path: Path) -> None:
    deb = build_deb(tmp_path, "amber-fleet", "1.0", {"/usr/share/amber-fleet/v": "1\n"})
    before = {s.root: numbers(s.root) for s in roots}

    rc, hosts, err = playbook(tmp_path, roots, PLAY, deb)
    assert rc == 0, err
    for i, system in enumerate(roots):
        result = hosts[f"host{i}"]
        assert result["changed"] is True
        assert result["snapshot"] not in before[system.root]
        assert numbers(system.root) == [*before[system.root], result["snapshot"]]
        assert result["reboot_needed"] is True
        assert result["diff"]["added"] == [{"name": "amber-fleet", "version": "1.0"}]
        assert "amber-fleet 1.0" in result["diff"]["after"]
        assert dpkg_installed(system.snapshot(result["snapshot"]), "amber-fleet")
        assert status(system.root)["default"] == result["snapshot"]
    after_first = {s.root: numbers(s.root) for s in roots}

    rc, hosts, err = playbook(tmp_path, roots, PLAY, deb)
    assert rc == 0, err
    for i, system in enumerate(roots):
        result = hosts[f"host{i}"]
        assert result["changed"] is False and result["snapshot"] is None
        assert numbers(system.root) == after_first[system.root]

    newer = build_deb(tmp_path, "amber-fleet", "2.0", {"/usr/share/amber-fleet/v": "2\n"})
    rc, hosts, err = playbook(tmp_path, roots, PLAY, newer, "--check", "--diff")
    assert rc == 0, err
    for i, system in enumerate(roots):
        result = hosts[f"host{i}"]
        assert result["changed"] is True and result["snapshot"] is None
        assert result["diff"]["changed"] == [{"name": "amber-fleet", "old": "1.0", "new": "2.0"}]
        assert numbers(system.root) == after_first[system.root]

    broken = build_deb(tmp_path, "amber-broken", "1.0", {"/usr/share/amber-broken/v": "1\n"},
                       postinst="echo 'postinst refuses' >&2; exit 1")
    rc, hosts, err = playbook(tmp_path, roots, PLAY, broken)
    for i, system in enumerate(roots):
        result = hosts[f"host{i}"]
        assert result.get("failed") is True
        assert result["rc"] == 3, result
        assert "package install" in result["msg"], result["msg"]
        assert numbers(system.root) == after_first[system.root]
        default = status(system.root)["default"]
        assert default == after_first[system.root][-1]
        assert not dpkg_installed(system.snapshot(default), "amber-broken")

    # The rollout playbook in check mode: it resolves the change, reboots nothing, makes nothing.
    rc, _, output = playbook(tmp_path, roots, "amber.system.rollout", newer, "--check",
                             "-e", "amber_rollout_update=false",
                             "-e", f'{{"amber_rollout_packages": ["{newer}"]}}',
                             "-e", "amber_rollout_root={{ amber_root }}",
                             "-e", "amber_hosts=roots", "-e", "amber_become=false")
    assert rc == 0, output
    assert "changed=1" in output
    for system in roots:
        assert numbers(system.root) == after_first[system.root]

    # For real: the reboot cannot be made over a local connection, and the role fails the first
    # host with the reboot module's own reason (only a lost connection is left to the health
    # gate); max_fail_percentage 0 stops the rollout there.
    rc, _, output = playbook(tmp_path, roots, "amber.system.rollout", newer,
                             "-e", "amber_rollout_update=false",
                             "-e", f'{{"amber_rollout_packages": ["{newer}"]}}',
                             "-e", "amber_rollout_root={{ amber_root }}",
                             "-e", "amber_hosts=roots", "-e", "amber_become=false")
    assert rc != 0, output
    _, rescue, after = output.partition("Fail unless the reboot only lost its connection")
    assert rescue and "would reboot the control node" in after, output
    assert "Wait for the boot's health verdict" not in output, output
    first, *others = roots
    assert numbers(first.root) == [*after_first[first.root], after_first[first.root][-1] + 1]
    for system in others:
        assert numbers(system.root) == after_first[system.root]
